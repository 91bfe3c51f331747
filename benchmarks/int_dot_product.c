/* One integer product of fused_decode.c (int8 or int4 weights, int8 activations, one input row: a decode
 * step's product) timed in isolation, against a plain read of the same bytes; per-thread CPU time, so the
 * figures hold on a shared machine as long as the threads are not preempted by the hypervisor.
 *
 * Build (the kernel's own flags; add -mno-avx512f for the AVX2 build, and -mno-avxvnni for AVX2 without VNNI):
 *   cc -O3 -march=native -mtune=sapphirerapids -funroll-loops -fno-math-errno -pthread \
 *      -o /tmp/int_dot benchmarks/int_dot_product.c -lm
 * Run: /tmp/int_dot BITS K N MATRICES REPS THREADS MODE
 *   BITS 8 | 4 (int4 in groups of 32); weights [N, K] x MATRICES (cycled, so more than the caches hold:
 *   e.g. 4 2048 16384 48 2 2 2 reads 48 x 16 MiB twice); THREADS split N as the engine's parts do;
 *   MODE 0 = quantize the activations + product, 2 = product only, 1 = plain 32-byte read of the weights.
 * Prints GB/s of weight bytes per the slowest thread's CPU second. */
#include "../src/puyu/engine/fused_decode.c"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_THREAD_CPUTIME_ID,&t);return t.tv_sec+t.tv_nsec*1e-9;}
typedef struct { int fmt, K, N, nmat, t, nt, reps; uint8_t *w; float *sc; float *x; float *y; double secs; int mode; } J;
static void *job(void *p){
  J *j=(J*)p; long rb=q_row_bytes(j->fmt,j->K); int ns=j->fmt==FMT_INT8?1:(j->K+31)/32;
  QAct a; QW q; q.fmt=j->fmt; q.group=32; q.act=1;
  int lo,hi; split_range(j->N,j->t,j->nt,16,&lo,&hi);
  double t0=now(); volatile long sink=0;
  for(int r=0;r<j->reps;r++) for(int m=0;m<j->nmat;m++){
    q.data=j->w+(long)m*j->N*rb; q.scales=j->sc+(long)m*j->N*ns;
    if(j->mode==0||j->mode==2){ if(j->mode==0||(r==0&&m==0)) qa_quantize(j->fmt,1,j->K,j->x,j->K,&a); igemm_nt(1,&a,&q,NULL,j->y,j->N,lo,hi,0);} 
    else { /* pure read */
      const __m256i *p=(const __m256i*)(j->w+(long)m*j->N*rb+(long)lo*rb); long n=(long)(hi-lo)*rb/32; __m256i s0=_mm256_setzero_si256(),s1=s0,s2=s0,s3=s0;
      for(long i=0;i<n;i+=4){s0=_mm256_add_epi32(s0,p[i]);s1=_mm256_add_epi32(s1,p[i+1]);s2=_mm256_add_epi32(s2,p[i+2]);s3=_mm256_add_epi32(s3,p[i+3]);}
      s0=_mm256_add_epi32(_mm256_add_epi32(s0,s1),_mm256_add_epi32(s2,s3)); sink+=_mm256_extract_epi32(s0,0);
    }
  }
  j->secs=now()-t0; return NULL;
}
int main(int argc,char**argv){
  int fmt=atoi(argv[1])==8?FMT_INT8:FMT_INT4, K=atoi(argv[2]), N=atoi(argv[3]), nmat=atoi(argv[4]), reps=atoi(argv[5]), nt=atoi(argv[6]), mode=atoi(argv[7]);
  long rb=q_row_bytes(fmt,K); int ns=fmt==FMT_INT8?1:(K+31)/32;
  uint8_t *w=aligned_alloc(64,(long)nmat*N*rb); for(long i=0;i<(long)nmat*N*rb;i++) w[i]=(uint8_t)(i*2654435761u>>13);
  float *sc=malloc(4L*nmat*N*ns); for(long i=0;i<(long)nmat*N*ns;i++) sc[i]=0.01f;
  float *x=malloc(4L*K); for(int i=0;i<K;i++) x[i]=sinf(i);
  pthread_t th[8]; J js[8];
  for(int t=0;t<nt;t++){ js[t]=(J){fmt,K,N,nmat,t,nt,reps,w,sc,x,malloc(4L*N),0,mode}; }
  /* warm */ 
  for(int t=0;t<nt;t++) pthread_create(&th[t],NULL,job,&js[t]);
  double mx=0; for(int t=0;t<nt;t++){pthread_join(th[t],NULL); if(js[t].secs>mx)mx=js[t].secs;}
  double bytes=(double)reps*nmat*N*rb;
  printf("fmt=%s K=%d N=%d nmat=%d reps=%d threads=%d mode=%s: %.3f s, %.2f GB/s\n", fmt==FMT_INT8?"int8":"int4",K,N,nmat,reps,nt,mode==1?"read":mode==2?"idot-noq":"idot",mx,bytes/mx/1e9);
  return 0;
}
