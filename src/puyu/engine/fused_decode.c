/* The whole InternLM2 decode forward for B sequences in one native call (float32, CPU).
 *
 * Built and loaded by puyu/fused_decode.py (which documents when it is used and why); the Python side
 * checks every shape, dtype and layout before calling, so this file trusts its arguments.
 *
 * One call runs: embedding rows -> per layer [RMSNorm, wqkv, RoPE on the query and key slots, store
 * k/v in the paged cache, attention over each sequence's cached keys (streamed in token order, see "KV
 * formats"), wo + residual, RMSNorm, w1/w3,
 * silu(gate) * up, w2 + residual] -> final RMSNorm -> output head -> logits [B, V].
 *
 * Matrix products keep PyTorch's nn.Linear layout (W [N, K], y = x W^T): every output is a dot product
 * of an input row and a weight row. The AVX-512 kernel computes 16 dot products at a time in 16
 * accumulators (tiles of 1x16, 2x8 or 4x4 input rows x weight rows) and folds them into one vector of
 * 16 sums with a transposing reduction; one row against large weights reads 8 weight rows at a time
 * (rows8). A small pool of worker threads (the caller is part 0) splits either each product's weight
 * rows (few input rows) or the batch's rows, each core then running the whole forward for its own rows
 * (task_rows); workers spin briefly between parallel regions and then sleep on a condition variable.
 * A prefill is the same call with one row per prompt token (out_rows picks the rows whose logits are
 * wanted). Without AVX-512 but with AVX2 + FMA the same structure runs 8 wide (tile8: 1x8, 2x4 or 4x2
 * tiles, reduce8; 8-key score blocks; value sums in slices of 64 floats), and blocks of 8 input rows take a
 * broadcast kernel instead (bcast8x8: no horizontal sums; 82-85% of the FMA peak against 73-75% for the
 * 4x2 tiles on the nano products with 8 rows, one Sapphire Rapids core restricted to AVX2, weights in
 * cache), blocks of 16 rows a 16 x 6 one (bcast16: each weight read once for 16 rows; a 16-row product
 * over 13.4 MB of weights, as a nano step's, ran 40 GFLOP/s against 22 for 8 rows: on this VM the weights
 * stream from L3 at ~5 GB/s per core, so GFLOP/s follow rows per weight byte); without either, portable C.
 *
 * Built with -DPUYU_PROFILE, the per-phase seconds of every call accumulate in puyu_prof[8] (see forward).
 *
 * Cache layout (puyu.kv_cache.PagedKVCache): k/v [L, N_blocks, P, K, D]; token t of a sequence sits in
 * block table[t / P], offset t % P. Elements are float32, bfloat16 or int8 with scales [L, N_blocks, P, K]
 * (see "KV formats").
 */
#define _GNU_SOURCE 1  /* RUSAGE_THREAD */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* The instruction set is chosen at build time (fused_decode.py passes the flags): AVX-512 where the
 * compiler targets it, else AVX2 + FMA, else portable C. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define PUYU_AVX512 1
#define PUYU_AVX2 0
#define PUYU_ISA 2
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define PUYU_AVX512 0
#define PUYU_AVX2 1
#define PUYU_ISA 1
#else
#define PUYU_AVX512 0
#define PUYU_AVX2 0
#define PUYU_ISA 0
#endif

#define MAX_THREADS 64

/* ---------------------------------------------------------------- thread pool ---------------- */
/* A parallel region runs fn(ctx, p, parts) once for every p in [0, parts). Parts are not bound to
 * threads: the caller and the workers claim them one at a time from a shared counter tagged with the
 * region's number (a worker that arrives after its region ended claims nothing). So a late worker
 * (asleep, or preempted on a machine with more runnable threads than cores) leaves its parts to the
 * caller, which runs them itself instead of waiting; the caller waits only for parts that a worker has
 * claimed and not yet finished, spinning for WAIT_SPIN_NS and then yielding its core on every check,
 * so that a preempted worker can run.
 *
 * Idle workers spin for spin_ns (a decode step's next region follows within microseconds), then sleep
 * on a condition variable.
 *
 * An oversubscribed machine (more runnable threads than cores) is recognised when a pool thread waited for a
 * core for a good share of its time (its run delay; PUYU_PREEMPT_RULE below says exactly, and the other
 * rules, which count its involuntary context switches instead). For
 * CONTENDED_NS after that, idle workers sleep at once instead of spinning (a spinning worker takes a core
 * from runnable threads, other processes or this process's own caller, and is preempted anyway), and a
 * decode call runs on the caller alone: a region waited for a preempted worker for a whole time slice,
 * so 2 threads decoded one nano stream at 147 tok/s against 902 on 1 thread while other processes kept
 * both cores busy, and a 16-row nano step split by rows took 1.4x the one-thread time at load 8 (a step
 * split by weight rows on the caller alone: 0.97x). */

typedef void (*task_fn)(void *ctx, int part, int parts);

#define WAIT_SPIN_NS 20000L       /* the caller's wait for claimed parts: spin this long, then yield */
#define CONTENDED_NS 100000000L   /* how long a preemption marks the machine oversubscribed (100 ms) */
#define RUSAGE_EVERY_NS 1000000L  /* a worker checks for preemption at most this often */

static struct {
    pthread_mutex_t owner;   /* one caller uses the workers at a time; others run alone */
    pthread_mutex_t m;
    pthread_cond_t cv;
    _Atomic uint64_t claim;  /* region number << 32 | next unclaimed part */
    atomic_int parts;        /* parts of the current region */
    atomic_int done;         /* parts of the current region the workers finished */
    atomic_int sleepers;
    atomic_int hold;         /* tests: workers claim nothing while set */
    task_fn fn;              /* of the current region: read only after claiming one of its parts */
    void *ctx;
    unsigned region;         /* the caller's count of regions (the tag in claim) */
    int workers;             /* started worker threads */
    long spin_ns;            /* how long an idle worker spins before sleeping */
    int atfork;
    unsigned start_region[MAX_THREADS];  /* region when worker i was created: it waits for the next one */
    atomic_long stats[3];    /* regions, parts run by the caller, parts run by workers (tests) */
} pool = {.owner = PTHREAD_MUTEX_INITIALIZER, .m = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static inline long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static inline unsigned region_of(uint64_t claim) { return (unsigned)(claim >> 32); }
#define CLAIM_CLOSED 0x7fffffffu  /* a claim index no region reaches: the region is over */

/* One unclaimed part of region r, or -1 when r is over or all its parts are taken. */
static inline int claim_part(unsigned r) {
    uint64_t w = atomic_load_explicit(&pool.claim, memory_order_acquire);
    for (;;) {
        int parts = atomic_load_explicit(&pool.parts, memory_order_relaxed);
        if (region_of(w) != r || (int)(uint32_t)w >= parts) return -1;
        if (atomic_compare_exchange_weak_explicit(&pool.claim, &w, w + 1, memory_order_acq_rel,
                                                  memory_order_acquire))
            return (int)(uint32_t)w;
    }
}

static atomic_long contended_until;  /* now_ns() before which the machine counts as oversubscribed */

/* Which preemptions mark the machine oversubscribed (a build flag, for A/Bs: benchmarks/kernel_ab.py):
 * 1 any involuntary context switch of a pool thread; 0 none (the pool never steps aside);
 * k >= 2 at least k of one thread's switches within PREEMPT_WINDOW_NS; -1 (the default) the time a pool
 * thread waited, runnable, for a core: at a check (at most once per RUSAGE_EVERY_NS per thread), the growth of
 * run_delay in /proc/thread-self/schedstat (the kernel's own account, in ns) since the thread's window began is
 * at least 1 / DELAY_SHARE of the wall time since then, that time counted as at least DELAY_SPAN_MIN_NS; a
 * window begins anew at the first check more than PREEMPT_WINDOW_NS after it began (after a long sleep the
 * span is long and the share small: no false alarm, and the next window starts). On a quiet 2-core VM a pool thread still
 * waits now and then for one time slice of another process (2.6-3.4 ms at once, ~0.5% of its time): with
 * 10 ms as the least span that tripped the rule 6 times in 8 s of a 2-thread probe, with 20 ms never in
 * 15 s. Where that file cannot be read (no /proc, no CONFIG_SCHED_INFO, statistics switched off: "0 0 0"), rule 3.
 * Why -1: counting switches cannot tell a thread that lost a whole time slice to another process from one
 * that gave a core for 50 µs to this process's own Python thread. A single 1.8B-shaped int4 stream (an
 * engine step of ~50 ms) tripped rule 3 on a quiet 2-core Xeon (AVX2 build) in 7 of 23 steps, each then
 * run on the caller alone at ~96 ms instead of ~52 (README, Performance, 2026-12-02). Rule 3 was chosen on
 * a quiet and a busy 2-core Sapphire Rapids VM (rule 1 tripped on stray switches and ran 26-30% slower
 * than rule 0 when quiet; with two busy processes beside the engine, AVX2 build, rule 3 was within 7% of
 * rule 1 for one stream and 18% faster for 16, and rule 0 lost 38% for one stream: README, 2026-12-01
 * 04:10 UTC). */
#ifndef PUYU_PREEMPT_RULE
#define PUYU_PREEMPT_RULE -1
#endif
#ifndef PREEMPT_WINDOW_NS
#define PREEMPT_WINDOW_NS 50000000L
#endif
#ifndef DELAY_SHARE
#define DELAY_SHARE 4  /* rule -1: waited at least a quarter of the window's wall time ... */
#endif
#ifndef DELAY_SPAN_MIN_NS
#define DELAY_SPAN_MIN_NS 20000000L  /* ... counted as at least 20 ms (so at least 5 ms of waiting) */
#endif

/* One thread's view of its preemptions. */
typedef struct {
    long seen;          /* ru_nivcsw when last looked; -1: never */
    long window_start;  /* now_ns() when the current window began */
    long in_window;     /* switches counted in it */
    long delay0;        /* rule -1: run_delay when the window began; -1: not read yet; -2: unreadable */
    long last;          /* rule -1: now_ns() when last read (read at most once per RUSAGE_EVERY_NS) */
} Preempt;
#define PREEMPT_INIT {-1, 0, 0, -1, 0}

/* This thread's run_delay (ns runnable but not running, since it started); -1: not read this time (a transient
 * failure: out of descriptors, interrupted), -2: never readable here (no such file or no permission, another
 * format, or a kernel that keeps no scheduler statistics: it then shows "0 0 0", and a running thread with
 * statistics has been scheduled at least once). Opened and closed each time (~3 µs; callers look at most once
 * per RUSAGE_EVERY_NS), so no thread holds a descriptor. */
#ifndef PUYU_SCHEDSTAT
#define PUYU_SCHEDSTAT "/proc/thread-self/schedstat"  /* tests build with another file */
#endif
static long run_delay_ns(void) {
    int fd = open(PUYU_SCHEDSTAT, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT || errno == ENOTDIR || errno == EACCES || errno == EPERM ? -2 : -1;
    char buf[128];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    unsigned long long f[3];
    char *p = buf, *q;
    for (int i = 0; i < 3; i++, p = q) {  /* time on a CPU, time waiting for one, times scheduled */
        f[i] = strtoull(p, &q, 10);
        if (q == p) return -2;
    }
    return f[2] == 0 ? -2 : (long)f[1];
}

/* Whether this thread was preempted since it last looked (then the machine counts as oversubscribed
 * for CONTENDED_NS); updates *st. */
static void check_preempted(Preempt *st, long now) {
#if PUYU_PREEMPT_RULE == -1
    if (st->delay0 != -2) {  /* while schedstat is readable */
        if (st->delay0 >= 0 && now - st->last < RUSAGE_EVERY_NS) return;
        long d = run_delay_ns();
        st->last = now;
        if (d == -1) return;  /* a transient failure: try again at the next check */
        if (d >= 0) {
            long waited = d - st->delay0, span = now - st->window_start;
            if (st->delay0 >= 0 && waited * DELAY_SHARE >= (span > DELAY_SPAN_MIN_NS ? span : DELAY_SPAN_MIN_NS))
                atomic_store(&contended_until, now + CONTENDED_NS);
            if (st->delay0 < 0 || span > PREEMPT_WINDOW_NS) st->window_start = now, st->delay0 = d;
            return;
        }
        st->delay0 = -2;  /* never readable here: rule 3 from now on */
    }
#define RULE_SWITCHES 3
#else
#define RULE_SWITCHES PUYU_PREEMPT_RULE
#endif
    struct rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru) != 0) return;
    long d = st->seen >= 0 ? ru.ru_nivcsw - st->seen : 0;
    st->seen = ru.ru_nivcsw;
#if RULE_SWITCHES == 0
    (void)d, (void)now;
#elif RULE_SWITCHES == 1
    if (d) atomic_store(&contended_until, now + CONTENDED_NS);
#else
    if (now - st->window_start > PREEMPT_WINDOW_NS) st->window_start = now, st->in_window = 0;
    st->in_window += d;
    if (st->in_window >= RULE_SWITCHES) atomic_store(&contended_until, now + CONTENDED_NS);
#endif
}

static inline int contended(long now) { return now < atomic_load_explicit(&contended_until, memory_order_relaxed); }

static void *worker_main(void *arg) {
    int me = (int)(intptr_t)arg;
    unsigned seen = pool.start_region[me];  /* not the current one: a region may start before this runs */
    Preempt pre = PREEMPT_INIT;
    long checked = 0;
    for (;;) {
        long t0 = now_ns();
        if (t0 - checked > RUSAGE_EVERY_NS) {
            check_preempted(&pre, t0);
            checked = t0;
        }
        long spin = contended(t0) ? 0 : pool.spin_ns;
        unsigned r;
        int spins = 0;
        while ((r = region_of(atomic_load_explicit(&pool.claim, memory_order_acquire))) == seen) {
            if (spins++ & 63 ? 0 : now_ns() - t0 >= spin) {
                pthread_mutex_lock(&pool.m);
                atomic_fetch_add(&pool.sleepers, 1);
                while ((r = region_of(atomic_load(&pool.claim))) == seen) pthread_cond_wait(&pool.cv, &pool.m);
                atomic_fetch_sub(&pool.sleepers, 1);
                pthread_mutex_unlock(&pool.m);
                break;
            }
            cpu_relax();
        }
        seen = r;
        if (atomic_load_explicit(&pool.hold, memory_order_relaxed)) continue;
        int p;
        while ((p = claim_part(r)) >= 0) {
            pool.fn(pool.ctx, p, atomic_load_explicit(&pool.parts, memory_order_relaxed));
            atomic_fetch_add_explicit(&pool.stats[2], 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&pool.done, 1, memory_order_release);
        }
    }
    return NULL;
}

static void pool_after_fork(void) {
    /* The child has no worker threads: start afresh. */
    pthread_mutex_init(&pool.owner, NULL);
    pthread_mutex_init(&pool.m, NULL);
    pthread_cond_init(&pool.cv, NULL);
    atomic_store(&pool.sleepers, 0);
    atomic_store(&pool.claim, 0);
    pool.region = 0;
    pool.workers = 0;
}

/* Start workers so that `threads` parts can run (caller holds pool.owner). -> threads available. */
static int pool_grow(int threads) {
    if (!pool.atfork) {
        pthread_atfork(NULL, NULL, pool_after_fork);
        pool.atfork = 1;
    }
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    while (pool.workers + 1 < threads) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pool.start_region[pool.workers + 1] = pool.region;
        int rc = pthread_create(&th, &attr, worker_main, (void *)(intptr_t)(pool.workers + 1));
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        pool.workers++;
    }
    return pool.workers + 1 < threads ? pool.workers + 1 : threads;
}

/* Run fn(ctx, p, parts) for every p in [0, parts), on the caller and whichever workers come (the
 * caller holds pool.owner when parts > 1). */
static void run_parallel(task_fn fn, void *ctx, int parts) {
    if (parts <= 1 || pool.workers == 0) {
        for (int p = 0; p < parts || p == 0; p++) fn(ctx, p, parts < 1 ? 1 : parts);
        return;
    }
    pool.fn = fn;
    pool.ctx = ctx;
    atomic_store_explicit(&pool.parts, parts, memory_order_relaxed);
    atomic_store_explicit(&pool.done, 0, memory_order_relaxed);
    unsigned r = ++pool.region;
    atomic_store(&pool.claim, (uint64_t)r << 32);  /* publishes the region (sequentially consistent with */
    if (atomic_load(&pool.sleepers)) {               /* the sleepers count: a worker going to sleep sees it) */
        pthread_mutex_lock(&pool.m);
        pthread_cond_broadcast(&pool.cv);
        pthread_mutex_unlock(&pool.m);
    }
    int p, mine = 0;
    while ((p = claim_part(r)) >= 0) {
        fn(ctx, p, parts);
        mine++;
    }
    atomic_fetch_add_explicit(&pool.stats[0], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&pool.stats[1], mine, memory_order_relaxed);
    long t0 = 0;
    for (int spins = 0; atomic_load_explicit(&pool.done, memory_order_acquire) != parts - mine; spins++) {
        if ((spins & 63) == 63) {
            long t = now_ns();
            if (!t0) t0 = t;
            else if (t - t0 > WAIT_SPIN_NS) sched_yield();
        }
        cpu_relax();
    }
    /* Close the region before the next one stores its part count: a worker that read this region's
     * exhausted claim word could otherwise see the next region's larger count and claim a phantom part
     * (running a part twice and counting it in the next region's `done`, which then never matches). */
    atomic_store(&pool.claim, ((uint64_t)r << 32) | CLAIM_CLOSED);
}

/* [lo, hi) of part p when n items are split into `parts` runs aligned to `align`. */
static inline void split_range(int n, int p, int parts, int align, int *lo, int *hi) {
    int units = (n + align - 1) / align;
    int a = (int)((long)units * p / parts) * align, b = (int)((long)units * (p + 1) / parts) * align;
    *lo = a < n ? a : n;
    *hi = b < n ? b : n;
}

/* ---------------------------------------------------------------- matrix products ------------- */

#if PUYU_AVX512
/* r[i] = sum of the 16 lanes of v[i], for i in 0..15. */
static inline __m512 reduce16(const __m512 *v) {
    __m512 s[8], t[4], e, f;
    for (int i = 0; i < 8; i++) {
        __m512 a = v[2 * i], b = v[2 * i + 1];
        /* per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] */
        s[i] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    }
    for (int i = 0; i < 4; i++) {
        __m512 a = s[2 * i], b = s[2 * i + 1];
        /* per lane: [v0, v1, v2, v3] partial sums of this 4-vector group */
        t[i] = _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    e = _mm512_add_ps(_mm512_shuffle_f32x4(t[0], t[1], _MM_SHUFFLE(2, 0, 2, 0)),
                      _mm512_shuffle_f32x4(t[0], t[1], _MM_SHUFFLE(3, 1, 3, 1)));
    f = _mm512_add_ps(_mm512_shuffle_f32x4(t[2], t[3], _MM_SHUFFLE(2, 0, 2, 0)),
                      _mm512_shuffle_f32x4(t[2], t[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(e, f, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(e, f, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* 16 dot products: MR input rows x NR weight rows (MR * NR == 16), sums in row-major order. */
static inline __attribute__((always_inline)) __m512 tile16(const int MR, const int NR, int K, const float *x,
                                                           int ldx, const float *w, int ldw) {
    __m512 acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 wv[16], xv[16];
#pragma GCC unroll 16
        for (int j = 0; j < NR; j++) wv[j] = _mm512_loadu_ps(w + (long)j * ldw + k);
        /* 4-row tiles (blocks of 4+ input rows): the next tile's weight rows into L2 at this k, as bcast16
         * does on AVX2 (16 rows over a nano step's weights, one Zen 4 core at load 5: 48.8 -> 67.8 GFLOP/s) */
        if (MR == 4) {
#pragma GCC unroll 16
            for (int j = 0; j < NR; j++) _mm_prefetch((const char *)(w + (long)(NR + j) * ldw + k), _MM_HINT_T1);
        }
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) xv[i] = _mm512_loadu_ps(x + (long)i * ldx + k);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++)
#pragma GCC unroll 16
            for (int j = 0; j < NR; j++) acc[i * NR + j] = _mm512_fmadd_ps(xv[i], wv[j], acc[i * NR + j]);
    }
    if (k < K) {
        __mmask16 mk = (__mmask16)((1u << (K - k)) - 1);
        __m512 wv[16], xv[16];
#pragma GCC unroll 16
        for (int j = 0; j < NR; j++) wv[j] = _mm512_maskz_loadu_ps(mk, w + (long)j * ldw + k);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) xv[i] = _mm512_maskz_loadu_ps(mk, x + (long)i * ldx + k);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++)
#pragma GCC unroll 16
            for (int j = 0; j < NR; j++) acc[i * NR + j] = _mm512_fmadd_ps(xv[i], wv[j], acc[i * NR + j]);
    }
    return reduce16(acc);
}

/* One input row against 8 weight rows, two accumulators per row along K (k steps of 32): fewer
 * concurrent streams than tile16(1, 16), which reads DRAM-resident weights ~10% faster (measured on
 * 64 MB matrices, 2 threads: 67.6 vs 60.7 GB/s when a 2-thread sum read 72). Sums in out[0..7]. */
static inline void rows8(int K, const float *x, const float *w, int ldw, float *out) {
    __m512 acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
#pragma GCC unroll 8
        for (int r = 0; r < 8; r++) {
            acc[2 * r] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(w + (long)r * ldw + k), acc[2 * r]);
            acc[2 * r + 1] = _mm512_fmadd_ps(x1, _mm512_loadu_ps(w + (long)r * ldw + k + 16), acc[2 * r + 1]);
        }
    }
    for (; k < K; k += 16) {
        __mmask16 mk = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
        __m512 x0 = _mm512_maskz_loadu_ps(mk, x + k);
#pragma GCC unroll 8
        for (int r = 0; r < 8; r++)
            acc[2 * r] = _mm512_fmadd_ps(x0, _mm512_maskz_loadu_ps(mk, w + (long)r * ldw + k), acc[2 * r]);
    }
    float tmp[16];
    _mm512_storeu_ps(tmp, reduce16(acc));
    for (int r = 0; r < 8; r++) out[r] = tmp[2 * r] + tmp[2 * r + 1];
}

static inline float dot(const float *a, const float *b, int K) {
    __m512 acc = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k), acc);
    if (k < K) {
        __mmask16 mk = (__mmask16)((1u << (K - k)) - 1);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, a + k), _mm512_maskz_loadu_ps(mk, b + k), acc);
    }
    return _mm512_reduce_add_ps(acc);
}
#elif PUYU_AVX2
/* r[i] = sum of the 8 lanes of v[i], for i in 0..7 (the 8-wide form of reduce16). */
static inline __m256 reduce8(const __m256 *v) {
    __m256 s[4], t[2];
    for (int i = 0; i < 4; i++) {
        __m256 a = v[2 * i], b = v[2 * i + 1];
        s[i] = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    }
    for (int i = 0; i < 2; i++) {
        __m256 a = s[2 * i], b = s[2 * i + 1];
        t[i] = _mm256_add_ps(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    return _mm256_add_ps(_mm256_permute2f128_ps(t[0], t[1], 0x20), _mm256_permute2f128_ps(t[0], t[1], 0x31));
}

static inline __m256i tail_mask8(int n) {  /* lanes [0, n) set, n in 1..8 */
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* 8 dot products: MR input rows x NR weight rows (MR * NR == 8), sums in row-major order. With 16
 * ymm registers, 8 accumulators + MR + NR loaded rows is the largest tile that does not spill: each
 * weight vector loaded serves MR input rows, each input vector NR weight rows. */
static inline __attribute__((always_inline)) __m256 tile8(const int MR, const int NR, int K, const float *x,
                                                          int ldx, const float *w, int ldw) {
    __m256 acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 wv[8], xv[8];
#pragma GCC unroll 8
        for (int j = 0; j < NR; j++) wv[j] = _mm256_loadu_ps(w + (long)j * ldw + k);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) xv[i] = _mm256_loadu_ps(x + (long)i * ldx + k);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
            for (int j = 0; j < NR; j++) acc[i * NR + j] = _mm256_fmadd_ps(xv[i], wv[j], acc[i * NR + j]);
    }
    if (k < K) {
        __m256i mk = tail_mask8(K - k);
        __m256 wv[8], xv[8];
#pragma GCC unroll 8
        for (int j = 0; j < NR; j++) wv[j] = _mm256_maskload_ps(w + (long)j * ldw + k, mk);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) xv[i] = _mm256_maskload_ps(x + (long)i * ldx + k, mk);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
            for (int j = 0; j < NR; j++) acc[i * NR + j] = _mm256_fmadd_ps(xv[i], wv[j], acc[i * NR + j]);
    }
    return reduce8(acc);
}

static inline float dot(const float *a, const float *b, int K) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), acc1);
    }
    for (; k < K; k += 8) {
        __m256i mk = tail_mask8(K - k < 8 ? K - k : 8);
        acc0 = _mm256_fmadd_ps(_mm256_maskload_ps(a + k, mk), _mm256_maskload_ps(b + k, mk), acc0);
    }
    return hsum8(_mm256_add_ps(acc0, acc1));
}
#else
static inline float dot(const float *a, const float *b, int K) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int k = 0;
    for (; k + 8 <= K; k += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[k + j] * b[k + j];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; k < K; k++) s += a[k] * b[k];
    return s;
}
#endif

/* Store one finished output: y = (accumulate ? y : 0) + bias + sum. */
static inline void put(float *y, float sum, const float *bias, int n, int accumulate) {
    float v = sum + (bias ? bias[n] : 0.0f);
    *y = accumulate ? *y + v : v;
}

/* The outputs a tile leaves over: rows [m0, m0 + rows) x weight rows [n0, n1), one dot product each. */
static inline void dots(int m0, int rows, int n0, int n1, int K, const float *x, int ldx, const float *W,
                        const float *bias, float *y, int ldy, int accumulate) {
    for (int n = n0; n < n1; n++)
        for (int i = m0; i < m0 + rows; i++)
            put(y + (long)i * ldy + n, dot(x + (long)i * ldx, W + (long)n * K, K), bias, n, accumulate);
}

#if PUYU_AVX512
/* Input rows [m, m + MR) against weight rows [c0, c1) in MR x NR tiles, then the leftover weight rows.
 * A tile's sums come row-major in one vector; row i's NR sums are moved to the front and stored. */
static inline __attribute__((always_inline)) void tile_rows(const int MR, const int NR, int m, int c0, int c1, int K,
                                                            const float *x, int ldx, const float *W,
                                                            const float *bias, float *y, int ldy, int accumulate) {
    const __mmask16 mk = NR == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << NR) - 1);
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int n = c0;
    for (; n + NR <= c1; n += NR) {
        __m512 r = tile16(MR, NR, K, x + (long)m * ldx, ldx, W + (long)n * K, K);
        __m512 b = bias ? _mm512_maskz_loadu_ps(mk, bias + n) : _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) {
            __m512 v = i == 0 ? r : _mm512_permutexvar_ps(_mm512_add_epi32(iota, _mm512_set1_epi32(i * NR)), r);
            float *yi = y + (long)(m + i) * ldy + n;
            v = _mm512_add_ps(v, b);
            if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, yi));
            _mm512_mask_storeu_ps(yi, mk, v);
        }
    }
    dots(m, MR, n, c1, K, x, ldx, W, bias, y, ldy, accumulate);
}
#elif PUYU_AVX2
/* The AVX2 form of tile_rows: MR x NR tiles of 8 sums; row i's NR sums are lanes [i NR, (i + 1) NR). */
static inline __attribute__((always_inline)) void tile_rows(const int MR, const int NR, int m, int c0, int c1, int K,
                                                            const float *x, int ldx, const float *W,
                                                            const float *bias, float *y, int ldy, int accumulate) {
    int n = c0;
    for (; n + NR <= c1; n += NR) {
        __m256 r = tile8(MR, NR, K, x + (long)m * ldx, ldx, W + (long)n * K, K);
        if (NR == 8) {
            float *yi = y + (long)m * ldy + n;
            if (bias) r = _mm256_add_ps(r, _mm256_loadu_ps(bias + n));
            if (accumulate) r = _mm256_add_ps(r, _mm256_loadu_ps(yi));
            _mm256_storeu_ps(yi, r);
            continue;
        }
        float sums[8];
        _mm256_storeu_ps(sums, r);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
            for (int j = 0; j < NR; j++) put(y + (long)(m + i) * ldy + n + j, sums[i * NR + j], bias, n + j, accumulate);
    }
    dots(m, MR, n, c1, K, x, ldx, W, bias, y, ldy, accumulate);
}
#endif

#if PUYU_AVX2
/* The 8 x 8 transpose of r[0..7] (rows in, columns out), in place. */
static inline __attribute__((always_inline)) void transpose8(__m256 *r) {
    __m256 t[8], s[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int h = 0; h < 2; h++)  /* h = 0: rows 0-3, h = 1: rows 4-7 */
        for (int i = 0; i < 2; i++) {
            s[4 * h + 2 * i] = _mm256_shuffle_ps(t[4 * h + i], t[4 * h + i + 2], _MM_SHUFFLE(1, 0, 1, 0));
            s[4 * h + 2 * i + 1] = _mm256_shuffle_ps(t[4 * h + i], t[4 * h + i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        }
    for (int j = 0; j < 4; j++) {
        r[j] = _mm256_permute2f128_ps(s[j], s[4 + j], 0x20);
        r[4 + j] = _mm256_permute2f128_ps(s[j], s[4 + j], 0x31);
    }
}

/* xt[k * 8 + i] = x[i, k] for the 8 rows of x (row stride ldx), k < K. */
static void pack8(int K, const float *x, int ldx, float *xt) {
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(x + (long)i * ldx + k);
        transpose8(r);
        for (int j = 0; j < 8; j++) _mm256_store_ps(xt + 8L * (k + j), r[j]);
    }
    for (; k < K; k++)
        for (int i = 0; i < 8; i++) xt[8L * k + i] = x[(long)i * ldx + k];
}

/* 8 input rows (packed by pack8) x 8 weight rows, by broadcasting: for each k, the 8 rows' x[., k] in one
 * vector times each weight row's W[n, k] broadcast, into 8 accumulators (one per weight row, lanes over
 * the input rows). No horizontal sums (the dot-product tiles end each group of sums with reduce8): the
 * accumulators are transposed once and stored as 8 input rows' 8 outputs. y rows of stride ldy. */
static inline __attribute__((always_inline)) void bcast8x8(int K, const float *xt, const float *w, int ldw,
                                                           const float *bias, float *y, int ldy, int accumulate) {
    __m256 acc[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
    for (int k = 0; k < K; k++) {
        __m256 xv = _mm256_load_ps(xt + 8L * k);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) acc[j] = _mm256_fmadd_ps(xv, _mm256_broadcast_ss(w + (long)j * ldw + k), acc[j]);
    }
    transpose8(acc);
    __m256 b = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        __m256 v = _mm256_add_ps(acc[i], b);
        if (accumulate) v = _mm256_add_ps(v, _mm256_loadu_ps(y + (long)i * ldy));
        _mm256_storeu_ps(y + (long)i * ldy, v);
    }
}

/* xt[k * 16 + i] = x[i, k] for the 16 rows of x (row stride ldx), k < K. */
static void pack16(int K, const float *x, int ldx, float *xt) {
    int k = 0;
    for (; k + 8 <= K; k += 8)
        for (int h = 0; h < 2; h++) {
            __m256 r[8];
            for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(x + (long)(8 * h + i) * ldx + k);
            transpose8(r);
            for (int j = 0; j < 8; j++) _mm256_store_ps(xt + 16L * (k + j) + 8 * h, r[j]);
        }
    for (; k < K; k++)
        for (int i = 0; i < 16; i++) xt[16L * k + i] = x[(long)i * ldx + k];
}

/* 16 input rows (packed by pack16) x NR <= 6 weight rows, by broadcasting: each weight W[n, k] loaded
 * (broadcast) once serves all 16 rows in two FMAs, so a step's weights stream through the core once for
 * 16 rows at half the bytes per FMA of bcast8x8 (whose 16-row steps read each weight panel twice, once
 * from L3 and once from L2). 12 accumulators + 2 input vectors + 1 broadcast fill the 16 ymm registers.
 * The accumulators (weight row j: rows 0-7 in acc[2j], 8-15 in acc[2j + 1]) are transposed in 8 x 8
 * blocks and stored as each input row's NR outputs. */
static inline __attribute__((always_inline)) void bcast16(const int NR, int K, const float *xt, const float *w,
                                                          int ldw, const float *bias, float *y, int ldy,
                                                          int accumulate) {
    __m256 acc[12];
#pragma GCC unroll 12
    for (int j = 0; j < 12; j++) acc[j] = _mm256_setzero_ps();
    /* Not unrolled: with -funroll-loops gcc 12 unrolled this loop twice and kept one accumulator on the
     * stack, putting a store-to-load forward into its FMA chain. */
#pragma GCC unroll 1
    for (int k = 0; k < K; k++) {
        __m256 x0 = _mm256_load_ps(xt + 16L * k), x1 = _mm256_load_ps(xt + 16L * k + 8);
        /* the next panel (NR rows further on: contiguous when ldw == K, as bcast16_rows calls it) into L2,
         * NR floats per k, so it has arrived when this one ends: a panel's rows are only K floats long, too
         * short for the hardware prefetchers to pick up from L3. Over a nano step's 13.4 MB of weights, 16
         * rows, one Zen 4 core under load 3.7: 65.6 -> 84.5 GFLOP/s (in cache: 87-99). */
        _mm_prefetch((const char *)(w + (long)NR * ldw + NR * k), _MM_HINT_T1);
#pragma GCC unroll 6
        for (int j = 0; j < NR; j++) {
            __m256 b = _mm256_broadcast_ss(w + (long)j * ldw + k);
            acc[2 * j] = _mm256_fmadd_ps(x0, b, acc[2 * j]);
            acc[2 * j + 1] = _mm256_fmadd_ps(x1, b, acc[2 * j + 1]);
        }
    }
    const __m256i mk = tail_mask8(NR);
    __m256 bv = bias ? _mm256_maskload_ps(bias, mk) : _mm256_setzero_ps();
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        __m256 r[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) r[j] = j < NR ? acc[2 * j + h] : _mm256_setzero_ps();
        transpose8(r);
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            float *yi = y + (long)(8 * h + i) * ldy;
            __m256 v = _mm256_add_ps(r[i], bv);
            if (accumulate) v = _mm256_add_ps(v, _mm256_maskload_ps(yi, mk));
            _mm256_maskstore_ps(yi, mk, v);
        }
    }
}

/* Input rows [m, m + 16) (packed) against weight rows [c0, c1): panels of 6 weight rows, and where the
 * rows do not divide by 6, the last panels of 5 or 4 rather than a panel of 1-3. A panel of NR rows keeps
 * 2 NR independent accumulator chains; below 4 rows (8 chains) they cannot cover the FMA latency on two
 * pipes (4 cycles on Zen 4 and Sapphire Rapids), so a 32-row part runs as 6+6+6+6+4+4, not 6+6+6+6+6+2
 * (remainders: 7 = 4+3, 8 = 4+4, 9 = 5+4, 10 = 5+5, 11 = 6+5, 13 = 5+4+4). */
static void bcast16_rows(int K, const float *xt, int c0, int c1, const float *W, const float *bias, float *y,
                         int ldy, int accumulate) {
    for (int n = c0; n < c1;) {
        int left = c1 - n, nr = left <= 6 ? left : left == 13 ? 5 : left >= 12 ? 6 : (left + 1) / 2;
        const float *w = W + (long)n * K, *b = bias ? bias + n : NULL;
        switch (nr) {
        case 6: bcast16(6, K, xt, w, K, b, y + n, ldy, accumulate); break;
        case 5: bcast16(5, K, xt, w, K, b, y + n, ldy, accumulate); break;
        case 4: bcast16(4, K, xt, w, K, b, y + n, ldy, accumulate); break;
        case 3: bcast16(3, K, xt, w, K, b, y + n, ldy, accumulate); break;
        case 2: bcast16(2, K, xt, w, K, b, y + n, ldy, accumulate); break;
        default: bcast16(1, K, xt, w, K, b, y + n, ldy, accumulate); break;
        }
        n += nr;
    }
}

#define PACK_FLOATS 16384  /* 64 KB of packed input rows on the stack (gemm_nt) */
#endif

/* y[m, n] (+)= x[m, :] . W[n, :] (+ bias[n]) for m < M, n in [n0, n1). x [M, K] (row stride ldx),
 * W [N, K] contiguous, y [M, *] (row stride ldy). Weight rows are visited in chunks that stay in cache
 * while every input row passes over them. */
static void gemm_nt(int M, int K, const float *x, int ldx, const float *W, const float *bias, float *y, int ldy,
                    int n0, int n1, int accumulate) {
    int chunk = (int)((256L * 1024) / ((long)K * 4));
    chunk = chunk < 16 ? 16 : chunk / 16 * 16;
#if PUYU_AVX2
    /* Blocks of 16 input rows through bcast16 (K <= 1024), then one of 8 through bcast8x8 (or only blocks of
     * 8 for K <= 2048); the rest in tiles. The blocks are packed once when all of them fit the buffer (a
     * decode step's rows), else each block again for every weight chunk (a prefill's hundreds of rows: the
     * packing is ~1 / chunk of the block's FMAs). */
    int M16 = 16L * K <= PACK_FLOATS ? M / 16 * 16 : 0;
    int M8 = M16 ? M16 + (M - M16 >= 8 ? 8 : 0) : 8L * K <= PACK_FLOATS ? M / 8 * 8 : 0;
    int once = (long)M8 * K <= PACK_FLOATS;
    float xt[!M8 ? 8 : once ? M8 * K : (M16 ? 16 : 8) * K] __attribute__((aligned(32)));
    if (once) {
        for (int m = 0; m < M16; m += 16) pack16(K, x + (long)m * ldx, ldx, xt + (long)m * K);
        for (int m = M16; m < M8; m += 8) pack8(K, x + (long)m * ldx, ldx, xt + (long)m * K);
    }
#endif
    for (int c0 = n0; c0 < n1; c0 += chunk) {
        int c1 = c0 + chunk < n1 ? c0 + chunk : n1;
#if PUYU_AVX512
        int m = 0;
        for (; m + 4 <= M; m += 4) tile_rows(4, 4, m, c0, c1, K, x, ldx, W, bias, y, ldy, accumulate);
        for (; m + 2 <= M; m += 2) tile_rows(2, 8, m, c0, c1, K, x, ldx, W, bias, y, ldy, accumulate);
        if (M == 1 && K >= 1024) {  /* one row against large weights: memory-bound, see rows8 */
            float sums[8];
            int n = c0;
            for (; n + 8 <= c1; n += 8) {
                rows8(K, x, W + (long)n * K, K, sums);
                for (int j = 0; j < 8; j++) put(y + n + j, sums[j], bias, n + j, accumulate);
            }
            dots(0, 1, n, c1, K, x, ldx, W, bias, y, ldy, accumulate);
            m = 1;
        }
        for (; m < M; m++) tile_rows(1, 16, m, c0, c1, K, x, ldx, W, bias, y, ldy, accumulate);
#elif PUYU_AVX2
        int m = 0;
        for (; m < M16; m += 16) {
            if (!once) pack16(K, x + (long)m * ldx, ldx, xt);
            bcast16_rows(K, once ? xt + (long)m * K : xt, c0, c1, W, bias, y + (long)m * ldy, ldy, accumulate);
        }
        for (; m < M8; m += 8) {
            const float *xb = once ? xt + (long)m * K : xt;
            if (!once) pack8(K, x + (long)m * ldx, ldx, xt);
            int n = c0;
            for (; n + 8 <= c1; n += 8)
                bcast8x8(K, xb, W + (long)n * K, K, bias ? bias + n : NULL, y + (long)m * ldy + n, ldy, accumulate);
            if (n < c1) {
                tile_rows(4, 2, m, n, c1, K, x, ldx, W, bias, y, ldy, accumulate);
                tile_rows(4, 2, m + 4, n, c1, K, x, ldx, W, bias, y, ldy, accumulate);
            }
        }
        for (; m + 4 <= M; m += 4) tile_rows(4, 2, m, c0, c1, K, x, ldx, W, bias, y, ldy, accumulate);
        for (; m + 2 <= M; m += 2) tile_rows(2, 4, m, c0, c1, K, x, ldx, W, bias, y, ldy, accumulate);
        for (; m < M; m++) tile_rows(1, 8, m, c0, c1, K, x, ldx, W, bias, y, ldy, accumulate);
#else
        dots(0, M, c0, c1, K, x, ldx, W, bias, y, ldy, accumulate);
#endif
    }
}

/* ---------------------------------------------------------------- stored formats ------------- */
/* A weight matrix [N, K] in one of the stored formats (puyu/model/quant.py writes them):
 *   F32  float32, row n at data + 4 K n
 *   BF16 bfloat16 (the top half of a float32), row stride 2 K bytes
 *   INT8 int8 q, w = q * scales[n] (symmetric, one scale per output row), row stride K bytes
 *   INT4 4-bit q in [0, 15], w = (q - 8) * scales[n * ng + k / group], ng = ceil(K / group), group a power of two
 *        (32, 64 or 128: k / group is a shift); rows padded to
 *        Kp = ceil(K / 32) * 32 elements, stored in blocks of 32 elements = 16 bytes: byte i of a block
 *        holds element i in its low nibble and element i + 16 in its high one (row stride Kp / 2 bytes).
 * Products dequantize in registers (convert, subtract, scale) and accumulate in float32 as the float
 * kernel does, so a product equals the float32 product on the dequantized weights up to float rounding. */
enum { FMT_F32 = 0, FMT_BF16 = 1, FMT_INT8 = 2, FMT_INT4 = 3 };

typedef struct {
    int fmt, group;
    const void *data;
    const float *scales;
    int act;  /* INT8 / INT4: 1 = quantize the activations to int8 and multiply in integers (below) */
} QW;

static inline long q_row_bytes(int fmt, int K) {
    switch (fmt) {
    case FMT_BF16: return 2L * K;
    case FMT_INT8: return K;
    case FMT_INT4: return (K + 31) / 32 * 16L;
    default: return 4L * K;
    }
}

static inline int q_scales_per_row(const QW *q, int K) {
    return q->fmt == FMT_INT8 ? 1 : q->fmt == FMT_INT4 ? (K + q->group - 1) / q->group : 0;
}

/* Element k of a row (row: its first byte; srow: its scales). */
static inline float qval(const int fmt, const uint8_t *row, const float *srow, int G, int k) {
    switch (fmt) {
    case FMT_BF16: {
        uint32_t bits = (uint32_t)((const uint16_t *)row)[k] << 16;
        float f;
        memcpy(&f, &bits, 4);
        return f;
    }
    case FMT_INT8: return (float)((const int8_t *)row)[k] * srow[0];
    case FMT_INT4: {
        uint8_t byte = row[(k >> 5) * 16 + (k & 15)];
        int q = (k & 31) < 16 ? byte & 15 : byte >> 4;
        return (float)(q - 8) * srow[k >> __builtin_ctz(G)];
    }
    default: return ((const float *)row)[k];
    }
}

static inline float qdot_scalar(const int fmt, const float *x, const uint8_t *row, const float *srow, int G, int k0,
                                int K) {
    float s = 0.0f;
    for (int k = k0; k < K; k++) s += x[k] * qval(fmt, row, srow, G, k);
    return s;
}

#if defined(__AVX2__)

/* Software prefetch for the integer tiles (and the bf16 ones): NR weight rows are read as NR streams, S
 * bytes of each per step; each stream asks for the line PF_DIST bytes ahead of where it reads (past its
 * row's end: the same row of the next tile, NR rows on, which this thread reads next), into L1. The hardware prefetcher alone fell
 * behind on short rows (K = 2048: int4 rows are 1 KB, a 4 KB page holds 4 of them): measured on the
 * 1.8B shapes, one product over ~1 GB of weights, 2 threads, CPU time (Sapphire Rapids, load 6-8):
 * K = 2048 int8 21-25 -> 25-32 GB/s, int4 13-15 -> 17-21; K = 8192 (4-8 KB rows) unchanged within noise
 * (distances 256-2048 and the L2 hint tried: 512 into L1 was best). */
#ifdef PUYU_PF_L2
/* AMD Zen 4 (what fused_decode.py builds with on an AuthenticAMD CPU): 4096 bytes ahead into L2 ran the
 * 1.8B-shaped decode step in 89/98 ms per token where 512 into L1 took 152/127 (int8, AVX-512 build, two
 * runs, 1 thread, CPU time, load 1.0-1.1), int4 64/63 vs 128/114, and with the AVX2 build int8 105/91 vs
 * 181/172, int4 82/77 vs 125/125: Zen 4's L1 prefetch queue filled with 512-byte-ahead requests that
 * arrived too late. Intel keeps the setting above (README "Performance"). */
#ifndef PF_DIST  /* -DPF_DIST=N for tuning runs */
#define PF_DIST 4096
#endif
#define PF_HINT _MM_HINT_T1
#else
#ifndef PF_DIST
#define PF_DIST 512
#endif
#define PF_HINT _MM_HINT_T0
#endif
static inline __attribute__((always_inline)) void prefetch_rows(const int NR, const uint8_t *w, long rb, long off,
                                                                int S) {
    if ((off & 63) >= S) return;
    long ahead = off + PF_DIST;
    const uint8_t *p = w + ahead + (ahead >= rb ? (long)(NR - 1) * rb : 0);
#pragma GCC unroll 16
    for (int j = 0; j < NR; j++) _mm_prefetch((const char *)p + j * rb, PF_HINT);
}

/* The int4 weights' group scales (float32 [N, K / G], one more stream per weight row, a quarter of the
 * weights' bytes at G = 32) prefetched as well: at every 16th group (one cache line of scales) each row asks
 * for the same line of the row NR on, which the next tile reads. Without it the scales came from memory on
 * demand and stalled the loop: 1.8B-shaped int4 decode step, 1 thread (AMD EPYC Zen 5, 2026-12-03) 100 ->
 * 52 ms (AVX-512 build), 65 -> 37 ms (AVX2 build); README "Performance". */
static inline __attribute__((always_inline)) void prefetch_scales(const int NR, const float *sc, int ns, int g) {
    if (g & 15) return;
#pragma GCC unroll 16
    for (int j = 0; j < NR; j++) _mm_prefetch((const char *)(sc + (long)(j + NR) * ns + g), PF_HINT);
}
#endif

#if PUYU_AVX512
#define QVW 16
typedef __m512 qvec;
/* Elements [k, k + 16) of a row as floats; k is a multiple of 16 (so of the int4 half-blocks too). */
static inline __attribute__((always_inline)) __m512 qload(const int fmt, const uint8_t *row, const float *srow,
                                                          int G, int k) {
    switch (fmt) {
    case FMT_BF16:
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + 2L * k))), 16));
    case FMT_INT8:  /* unscaled: qtile multiplies each row's sum by its scale once */
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + k))));
    case FMT_INT4: {
        /* nibble -> (q - 8) by a 16-entry table lookup (one permute instead of convert + subtract) */
        const __m512 lut = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
        __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + (k >> 5) * 16)));
        if (k & 16) v = _mm512_srli_epi32(v, 4);
        return _mm512_mul_ps(_mm512_permutexvar_ps(v, lut), _mm512_set1_ps(srow[k >> __builtin_ctz(G)]));  /* uses the low 4 bits */
    }
    default: return _mm512_loadu_ps((const float *)row + k);
    }
}
#define QZERO() _mm512_setzero_ps()
#define QLOADX(p) _mm512_loadu_ps(p)
#define QFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define QREDUCE(acc) reduce16(acc)
#define QSTORE(p, v) _mm512_storeu_ps(p, v)
#elif PUYU_AVX2
#define QVW 8
typedef __m256 qvec;
/* Elements [k, k + 8) of a row as floats; k is a multiple of 8. */
static inline __attribute__((always_inline)) __m256 qload(const int fmt, const uint8_t *row, const float *srow,
                                                          int G, int k) {
    switch (fmt) {
    case FMT_BF16:
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(row + 2L * k))), 16));
    case FMT_INT8:  /* unscaled: qtile multiplies each row's sum by its scale once */
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(row + k))));
    case FMT_INT4: {
        __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + (k >> 5) * 16 + (k & 15))));
        if (k & 16) v = _mm256_srli_epi32(v, 4);
        v = _mm256_and_si256(v, _mm256_set1_epi32(15));
        return _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(8.0f)), _mm256_set1_ps(srow[k >> __builtin_ctz(G)]));
    }
    default: return _mm256_loadu_ps((const float *)row + k);
    }
}
#define QZERO() _mm256_setzero_ps()
#define QLOADX(p) _mm256_loadu_ps(p)
#define QFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define QREDUCE(acc) reduce8(acc)
#define QSTORE(p, v) _mm256_storeu_ps(p, v)
#endif

#ifdef QVW
/* MR input rows x NR stored weight rows (MR * NR <= QVW): sums[i * NR + j]. The whole-vector part of K
 * in registers, the tail (K % QVW) in scalar code. */
static inline __attribute__((always_inline)) void qtile(const int fmt, const int MR, const int NR, int K,
                                                        const float *x, int ldx, const uint8_t *w, long rb,
                                                        const float *sc, int ns, int G, float *sums) {
    qvec acc[QVW];
#pragma GCC unroll 16
    for (int i = 0; i < QVW; i++) acc[i] = QZERO();
    int k = 0;
    for (; k + QVW <= K; k += QVW) {
        qvec wv[QVW], xv[QVW];
        /* bf16 weights prefetched as the integer tiles' are: 1.8B-shaped bf16 single-stream decode 9.2 -> 10.8
         * tok/s (AVX-512 build), 9.6 -> 13.3 (AVX2) on an AMD EPYC Zen 5, 2026-12-03 (README "Performance");
         * not measured on Intel (the L1 setting) nor for the multi-row tiles of batches and prefill */
        if (fmt == FMT_BF16) prefetch_rows(NR, w, rb, 2L * k, 2 * QVW);
#pragma GCC unroll 16
        for (int j = 0; j < NR; j++) wv[j] = qload(fmt, w + j * rb, sc + (long)j * ns, G, k);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) xv[i] = QLOADX(x + (long)i * ldx + k);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++)
#pragma GCC unroll 16
            for (int j = 0; j < NR; j++) acc[i * NR + j] = QFMA(xv[i], wv[j], acc[i * NR + j]);
    }
    QSTORE(sums, QREDUCE(acc));
    if (fmt == FMT_INT8)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) sums[i * NR + j] *= sc[(long)j * ns];
    if (k < K)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++)
                sums[i * NR + j] += qdot_scalar(fmt, x + (long)i * ldx, w + j * rb, sc + (long)j * ns, G, k, K);
}

/* Input rows [m, m + MR) against stored rows [c0, c1) in MR x NR tiles, the leftover rows one by one. */
static inline __attribute__((always_inline)) void qtile_rows(const int fmt, const int MR, const int NR, int m, int c0,
                                                             int c1, int K, const float *x, int ldx, const QW *q,
                                                             const float *bias, float *y, int ldy, int accumulate) {
    long rb = q_row_bytes(fmt, K);
    int ns = q_scales_per_row(q, K);
    const uint8_t *W = (const uint8_t *)q->data;
    float sums[QVW];
    int n = c0;
    for (; n + NR <= c1; n += NR) {
        qtile(fmt, MR, NR, K, x + (long)m * ldx, ldx, W + n * rb, rb, q->scales + (long)n * ns, ns, q->group, sums);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++)
#pragma GCC unroll 16
            for (int j = 0; j < NR; j++) put(y + (long)(m + i) * ldy + n + j, sums[i * NR + j], bias, n + j, accumulate);
    }
    for (; n < c1; n++)
        for (int i = 0; i < MR; i++) {
            qtile(fmt, 1, 1, K, x + (long)(m + i) * ldx, ldx, W + n * rb, rb, q->scales + (long)n * ns, ns, q->group, sums);
            put(y + (long)(m + i) * ldy + n, sums[0], bias, n, accumulate);
        }
}

/* A single input row's bf16 products one weight row at a time (a sequential stream per thread, four
 * accumulator chains), instead of 16 (AVX-512) / 8 (AVX2) rows sharing each load of the activations: on by
 * default on AMD (PUYU_FROWS1=1 in fused_decode.py's AMD_FLAGS), as PUYU_IROWS1 for the integer products.
 * 1.8B-shaped bf16 single-stream decode on an AMD EPYC Zen 5, alternated in one process, medians of 4 rounds:
 * AVX-512 build 9.28 -> 12.48 tok/s, AVX2 build 10.11 -> 13.27 (2026-12-03, README "Performance"). One chain
 * (the tile code with one row) ran the AVX2 build slower than 8 rows. Not measured on Intel. */
#ifndef PUYU_FROWS1
#define PUYU_FROWS1 0
#endif
#if PUYU_AVX512
#define QHSUM(v) _mm512_reduce_add_ps(v)
#define QADD(a, b) _mm512_add_ps(a, b)
#else
#define QHSUM(v) hsum8(v)
#define QADD(a, b) _mm256_add_ps(a, b)
#endif
static inline __attribute__((always_inline)) float qdot1_bf16(int K, const float *x, const uint8_t *row) {
    qvec acc[4] = {QZERO(), QZERO(), QZERO(), QZERO()};
    int k = 0;
    for (; k + 4 * QVW <= K; k += 4 * QVW) {  /* 4 * QVW bf16 = 128 (AVX-512) / 64 (AVX2) bytes a step */
        for (int line = 0; line < 8 * QVW; line += 64) _mm_prefetch((const char *)row + 2L * k + line + PF_DIST, PF_HINT);
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++) acc[u] = QFMA(QLOADX(x + k + u * QVW), qload(FMT_BF16, row, NULL, 1, k + u * QVW), acc[u]);
    }
    for (; k + QVW <= K; k += QVW) acc[0] = QFMA(QLOADX(x + k), qload(FMT_BF16, row, NULL, 1, k), acc[0]);
    float s = QHSUM(QADD(QADD(acc[0], acc[1]), QADD(acc[2], acc[3])));
    return k < K ? s + qdot_scalar(FMT_BF16, x, row, NULL, 1, k, K) : s;
}

static inline __attribute__((always_inline)) void qgemm_fmt(const int fmt, int M, int K, const float *x, int ldx,
                                                            const QW *q, const float *bias, float *y, int ldy, int c0,
                                                            int c1, int accumulate) {
    int m = 0;
#if PUYU_FROWS1
    if (fmt == FMT_BF16 && M % 2 == 1) {  /* the single row left after the 4- and 2-row tiles */
        long rb = q_row_bytes(fmt, K);
        const uint8_t *W = (const uint8_t *)q->data;
        for (int n = c0; n < c1; n++)
            put(y + (long)(M - 1) * ldy + n, qdot1_bf16(K, x + (long)(M - 1) * ldx, W + n * rb), bias, n, accumulate);
        M -= 1;
    }
#endif
#if PUYU_AVX512
    for (; m + 4 <= M; m += 4) qtile_rows(fmt, 4, 4, m, c0, c1, K, x, ldx, q, bias, y, ldy, accumulate);
    for (; m + 2 <= M; m += 2) qtile_rows(fmt, 2, 8, m, c0, c1, K, x, ldx, q, bias, y, ldy, accumulate);
    for (; m < M; m++) qtile_rows(fmt, 1, 16, m, c0, c1, K, x, ldx, q, bias, y, ldy, accumulate);
#else
    for (; m + 4 <= M; m += 4) qtile_rows(fmt, 4, 2, m, c0, c1, K, x, ldx, q, bias, y, ldy, accumulate);
    for (; m + 2 <= M; m += 2) qtile_rows(fmt, 2, 4, m, c0, c1, K, x, ldx, q, bias, y, ldy, accumulate);
    for (; m < M; m++) qtile_rows(fmt, 1, 8, m, c0, c1, K, x, ldx, q, bias, y, ldy, accumulate);
#endif
}
#endif

/* y[m, n] (+)= x[m, :] . Wq[n, :] (+ bias[n]) for m < M, n in [n0, n1), Wq in a stored format (not F32).
 * Stored rows are visited in chunks of ~256 KB, as in gemm_nt. */
static void qgemm_nt(int M, int K, const float *x, int ldx, const QW *q, const float *bias, float *y, int ldy,
                     int n0, int n1, int accumulate) {
    long rb = q_row_bytes(q->fmt, K);
    int chunk = (int)((256L * 1024) / rb);
    chunk = chunk < 16 ? 16 : chunk / 16 * 16;
    for (int c0 = n0; c0 < n1; c0 += chunk) {
        int c1 = c0 + chunk < n1 ? c0 + chunk : n1;
#ifdef QVW
        switch (q->fmt) {
        case FMT_BF16: qgemm_fmt(FMT_BF16, M, K, x, ldx, q, bias, y, ldy, c0, c1, accumulate); break;
        case FMT_INT8: qgemm_fmt(FMT_INT8, M, K, x, ldx, q, bias, y, ldy, c0, c1, accumulate); break;
        default: qgemm_fmt(FMT_INT4, M, K, x, ldx, q, bias, y, ldy, c0, c1, accumulate); break;
        }
#else
        int ns = q_scales_per_row(q, K);
        const uint8_t *W = (const uint8_t *)q->data;
        for (int n = c0; n < c1; n++)
            for (int m = 0; m < M; m++)
                put(y + (long)m * ldy + n,
                    qdot_scalar(q->fmt, x + (long)m * ldx, W + n * rb, q->scales + (long)n * ns, q->group, 0, K),
                    bias, n, accumulate);
#endif
    }
}

/* Row n of a stored matrix as float32 (an embedding lookup). */
static void q_row(const QW *q, int K, long n, float *out) {
    long rb = q_row_bytes(q->fmt, K);
    int ns = q_scales_per_row(q, K);
    const uint8_t *row = (const uint8_t *)q->data + n * rb;
    for (int k = 0; k < K; k++) out[k] = qval(q->fmt, row, q->scales + n * ns, q->group, k);
}

/* ---------------------------------------------------------------- integer dot products -------- */
/* With QW.act set, an INT8 or INT4 product quantizes its input rows to int8 first and multiplies in
 * integers, as llama.cpp does (its Q8_0 activations against Q8_0 / Q4_0 weights):
 *   activations: per row, per block of QA_BLOCK = 32 consecutive elements (the last one zero-padded),
 *     s_b = max |x| / 127 over the block, q = round_half_even(x / s_b) in [-127, 127] (s_b = 0, q = 0 for
 *     an all-zero block): torch's `(x / s).round()` bit for bit. Every int4 group (32, 64 or 128) is a
 *     whole number of these blocks, so each block has one activation scale and one weight scale.
 *   y[n] = sum_b s_b * S_n,b * sum_{k in b} q_x[k] q_w[n, k] (int8: S_n,b = the row's scale; int4: its
 *     group's, q_w = nibble - 8); the block sums are exact in int32 and are scaled and summed in float32.
 * Error against the float32 product on the dequantized weights (what QW.act = 0 computes): rounding moves
 * each x[k] by at most s_b / 2, so |y_int[n] - y_float[n]| <= sum_b (s_b / 2) * sum_{k in b} |w_deq[n, k]|
 *   = sum_b max_{k in b} |x[k]| / 254 * ||w_deq[n, b]||_1 (plus float32 rounding of the sums),
 * a relative error of at most 1/254 of sum_k max_b|x| |w| per product (tests check this bound).
 *
 * Instructions: the unsigned x signed byte products of vpdpbusd (AVX-512 VNNI, or AVX-VNNI on 256 bits)
 * or vpmaddubsw + vpmaddwd (AVX2). The weight is the unsigned operand: an int4 nibble q in [0, 15] as it
 * is stored, an int8 weight as w + 128 (xor 0x80) on AVX-512; the sums then carry offset * sum_k q_x[k],
 * which a per-block correction (-offset * the block's sum of q_x, precomputed with the activations) takes
 * out in the accumulator's first value. vpmaddubsw saturates pairs at 32767, which (w + 128) * q_x can
 * exceed, so the AVX2 int8 product moves the weight's sign onto the activation instead (|w| x sign(x, w),
 * pairs <= 2 * 127 * 127; int4 pairs <= 2 * 15 * 127). Int4 reads a chunk of QA_INT4_CHUNK elements per
 * step (AVX-512: 64 stored bytes = 128 elements; AVX2: 32 bytes = 64): one and for the low nibbles, one
 * shift and one and for the high ones; the low nibbles hold elements 0-15 of each 32-block of the chunk and
 * the high ones 16-31, so the activations of a chunk are stored in that order (see qa_quantize); int32 lane
 * l then covers block l / 4, and one convert and one FMA per vector serve 4 (AVX-512) or 2 (AVX2) blocks. */
#define QA_BLOCK 32
#if PUYU_AVX512 && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define IDOT 512
#define IDOT_ISA 3
#elif defined(__AVX2__)
#define IDOT 256
#if defined(__AVXVNNI__)
#define IDOT_ISA 2
#else
#define IDOT_ISA 1
#endif
#else
#define IDOT 0
#define IDOT_ISA 0
#endif

/* Quantized activation rows for one product: q [M, ld] (blocks in the order the kernel reads), s [M, nb]
 * block scales, and per block LPB int32 lanes of correction c and float lanes of scale e [M, nb * 8]. */
typedef struct {
    int fmt, K, nb, ld;
    int8_t *q;
    float *s, *e;
    int32_t *c;
} QAct;

static inline int qa_lanes(int fmt) { return IDOT && fmt == FMT_INT4 ? 4 : 8; }
/* int4: elements per vector step (a chunk of the activations stored in nibble order, see qa_quantize). */
#define QA_INT4_CHUNK (IDOT == 512 ? 128 : 64)
/* Elements of a row the vector loop covers in whole steps (the rest, whole or partial blocks, in scalar
 * code): int4 rows are padded to whole blocks with zero weights, int8 rows are not padded. */
static inline int qa_vec_end(int fmt, int K) {
    int Kp = (K + QA_BLOCK - 1) / QA_BLOCK * QA_BLOCK, step = fmt == FMT_INT4 ? QA_INT4_CHUNK : IDOT == 512 ? 64 : 32;
    return IDOT ? (fmt == FMT_INT4 ? Kp : K) / step * step : 0;
}

static __thread uint8_t *qa_mem;  /* per thread: every product of a call quantizes into the same buffer */
static __thread long qa_cap;

static int qa_quantize(int fmt, int M, int K, const float *x, int ldx, QAct *a) {
    int nb = (K + QA_BLOCK - 1) / QA_BLOCK, ld = (nb * QA_BLOCK + 63) / 64 * 64, lanes = qa_lanes(fmt);
    long need = (long)M * ld + 4L * M * nb + 2 * 4L * M * nb * 8 + 64;
    if (need > qa_cap) {
        free(qa_mem);
        qa_cap = need + need / 2;
        qa_mem = (uint8_t *)aligned_alloc(64, (qa_cap + 63) / 64 * 64);
        if (!qa_mem) { qa_cap = 0; return -1; }
    }
    a->fmt = fmt, a->K = K, a->nb = nb, a->ld = ld;
    a->q = (int8_t *)qa_mem;
    a->e = (float *)(qa_mem + (long)M * ld);
    a->c = (int32_t *)(a->e + (long)M * nb * 8);
    a->s = (float *)(a->c + (long)M * nb * 8);
    int perm_end = IDOT && fmt == FMT_INT4 ? qa_vec_end(fmt, K) : 0;  /* chunks stored in nibble order */
    const int CH = QA_INT4_CHUNK, BPC = QA_INT4_CHUNK / QA_BLOCK;
    int offset = fmt == FMT_INT4 ? 8 : 128;
    for (int m = 0; m < M; m++) {
        const float *xr = x + (long)m * ldx;
        int8_t *qr = a->q + (long)m * ld;
        for (int b = 0; b < nb; b++) {
            int k0 = b * QA_BLOCK, k1 = k0 + QA_BLOCK < K ? k0 + QA_BLOCK : K;
            float amax = 0.0f;
            for (int k = k0; k < k1; k++) amax = fabsf(xr[k]) > amax ? fabsf(xr[k]) : amax;
            float s = amax / 127.0f;
            int8_t blk[QA_BLOCK];
            int sum = 0;
            for (int k = k0; k < k0 + QA_BLOCK; k++) {
                int v = 0;
                if (k < k1 && s > 0.0f) {
                    v = (int)nearbyintf(xr[k] / s);
                    v = v > 127 ? 127 : v < -127 ? -127 : v;
                }
                blk[k - k0] = (int8_t)v;
                sum += v;
            }
            if (k0 < perm_end) {  /* chunk k0 / CH, its block b % BPC: low nibbles first, then high */
                int8_t *chunk = qr + k0 / CH * CH;
                memcpy(chunk + (b % BPC) * 16, blk, 16);
                memcpy(chunk + CH / 2 + (b % BPC) * 16, blk + 16, 16);
            } else {
                memcpy(qr + k0, blk, QA_BLOCK);
            }
            a->s[(long)m * nb + b] = s;
            float *e = a->e + (long)m * nb * 8 + (long)b * lanes;
            int32_t *c = a->c + (long)m * nb * 8 + (long)b * lanes;
            for (int l = 0; l < lanes; l++) e[l] = s, c[l] = 0;
            c[0] = -offset * sum;
        }
    }
    return 0;
}

/* sum over blocks [b0, nb) in scalar code, activations in natural order: int8 unscaled by the row's scale
 * (the caller applies it once), int4 with each group's scale. */
static inline float idot_scalar(int fmt, const QAct *a, int m, const uint8_t *w, const float *srow, int G, int b0) {
    const int8_t *q = a->q + (long)m * a->ld;
    const float *s = a->s + (long)m * a->nb;
    float sum = 0.0f;
    for (int b = b0; b < a->nb; b++) {
        int k0 = b * QA_BLOCK, k1 = k0 + QA_BLOCK < a->K ? k0 + QA_BLOCK : a->K;
        int32_t t = 0;
        if (fmt == FMT_INT8) {
            for (int k = k0; k < k1; k++) t += (int32_t)q[k] * ((const int8_t *)w)[k];
            sum += s[b] * (float)t;
        } else {
            for (int k = k0; k < k1; k++) {
                uint8_t byte = w[(k >> 5) * 16 + (k & 15)];
                t += (int32_t)q[k] * (((k & 31) < 16 ? byte & 15 : byte >> 4) - 8);
            }
            sum += s[b] * srow[k0 >> __builtin_ctz(G)] * (float)t;
        }
    }
    return sum;
}

/* Blocks b0.. of every (row, channel) pair of a tile added to its sum (the vector loop's tail; all of the
   blocks in the portable build), then int8's per-channel scale (int4's per-group scales are already in). */
static inline void itile_finish(int fmt, int MR, int NR, const QAct *a, int m, const uint8_t *w, long rb,
                                const float *sc, int ns, int G, int b0, float *sums) {
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) {
            float t = sums[i * NR + j] + idot_scalar(fmt, a, m + i, w + j * rb, sc + (long)j * ns, G, b0);
            sums[i * NR + j] = fmt == FMT_INT8 ? t * sc[(long)j * ns] : t;
        }
}

#if IDOT == 512
/* MR activation rows x NR weight rows (MR * NR <= 16): sums[i * NR + j]. */
static inline __attribute__((always_inline)) void itile(const int fmt, const int MR, const int NR, const QAct *a, int m,
                                                        const uint8_t *w, long rb, const float *sc, int ns, int G,
                                                        float *sums) {
    __m512 acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
    const int end = qa_vec_end(fmt, a->K);
    const long ldq = a->ld, lde = (long)a->nb * 8;
    const int8_t *q = a->q + (long)m * ldq;
    const float *e = a->e + (long)m * lde;
    const int32_t *c = a->c + (long)m * lde;
    if (fmt == FMT_INT8) {
        const __m512i flip = _mm512_set1_epi8((char)0x80);
        for (int k = 0; k < end; k += 64) {
            __m512i wv[16], xv[4], cv[4];
            __m512 ev[4];
            prefetch_rows(NR, w, rb, k, 64);
#pragma GCC unroll 16
            for (int j = 0; j < NR; j++) wv[j] = _mm512_xor_si512(_mm512_loadu_si512(w + j * rb + k), flip);
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                xv[i] = _mm512_load_si512(q + i * ldq + k);
                ev[i] = _mm512_loadu_ps(e + i * lde + k / 4);
                cv[i] = _mm512_loadu_si512(c + i * lde + k / 4);
            }
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++)
#pragma GCC unroll 16
                for (int j = 0; j < NR; j++)
                    acc[i * NR + j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(cv[i], wv[j], xv[i])),
                                                      ev[i], acc[i * NR + j]);
        }
    } else {
        const __m512i low = _mm512_set1_epi8(15);
        const int gs = __builtin_ctz(G);
        /* lane l covers block l / 4, whose group is (l / 4) * 32 / G groups after the chunk's first */
        const __m512i gidx = _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                               gs - 3);
        const __mmask16 gmask = (__mmask16)((1u << (128 >> gs)) - 1);
        for (int k = 0; k < end; k += 128) {
            __m512i xl[4], xh[4], cv[4];
            __m512 ev[4];
            prefetch_rows(NR, w, rb, k / 2, 64);
            prefetch_scales(NR, sc, ns, k >> gs);
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                xl[i] = _mm512_load_si512(q + i * ldq + k);
                xh[i] = _mm512_load_si512(q + i * ldq + k + 64);
                ev[i] = _mm512_loadu_ps(e + i * lde + k / 8);
                cv[i] = _mm512_loadu_si512(c + i * lde + k / 8);
            }
#pragma GCC unroll 16
            for (int j = 0; j < NR; j++) {
                __m512i v = _mm512_loadu_si512(w + j * rb + k / 2);
                __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                const float *sg = sc + (long)j * ns + (k >> gs);
                __m512 ws = G == 128 ? _mm512_set1_ps(*sg)
                                     : _mm512_permutexvar_ps(gidx, _mm512_maskz_loadu_ps(gmask, sg));
#pragma GCC unroll 4
                for (int i = 0; i < MR; i++) {
                    __m512i t = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(cv[i], lo, xl[i]), hi, xh[i]);
                    acc[i * NR + j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(ev[i], ws), acc[i * NR + j]);
                }
            }
        }
    }
    _mm512_storeu_ps(sums, reduce16(acc));
    itile_finish(fmt, MR, NR, a, m, w, rb, sc, ns, G, end / QA_BLOCK, sums);
}
#define ITILE_MAX 16
#elif IDOT == 256
static inline __attribute__((always_inline)) __m256i idot32(__m256i u, __m256i s, __m256i acc) {
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

/* acc + the byte products of (u1, s1) and (u2, s2) summed per int32 lane, for int4 weights (u <= 15): without
 * VNNI the two vpmaddubsw results are added in int16 before one vpmaddwd (each pair sum <= 2 * 15 * 127 = 3,810,
 * two of them 7,620: exact, far from saturation), one instruction fewer per 64 weights. */
static inline __attribute__((always_inline)) __m256i idot32x2_u4(__m256i u1, __m256i s1, __m256i u2, __m256i s2,
                                                                  __m256i acc) {
#if defined(__AVXVNNI__)
    return idot32(u2, s2, idot32(u1, s1, acc));
#else
    __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(u1, s1), _mm256_maddubs_epi16(u2, s2));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
}

/* MR activation rows x NR weight rows (MR * NR <= 8): sums[i * NR + j]. One 32-block per step. */
static inline __attribute__((always_inline)) void itile(const int fmt, const int MR, const int NR, const QAct *a, int m,
                                                        const uint8_t *w, long rb, const float *sc, int ns, int G,
                                                        float *sums) {
    __m256 acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
    const int end = qa_vec_end(fmt, a->K);
    const long ldq = a->ld, lds = a->nb, lde = (long)a->nb * 8;
    const int8_t *q = a->q + (long)m * ldq;
    const float *s = a->s + (long)m * lds, *e = a->e + (long)m * lde;
    const int32_t *c = a->c + (long)m * lde;
    if (fmt == FMT_INT8) {
        for (int k = 0; k < end; k += 32) {
            __m256i wa[8], wv[8];
            prefetch_rows(NR, w, rb, k, 32);
#pragma GCC unroll 8
            for (int j = 0; j < NR; j++) {
                wv[j] = _mm256_loadu_si256((const __m256i *)(w + j * rb + k));
                wa[j] = _mm256_abs_epi8(wv[j]);
            }
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                __m256i xv = _mm256_load_si256((const __m256i *)(q + i * ldq + k));
                __m256 sv = _mm256_set1_ps(s[i * lds + k / 32]);
#pragma GCC unroll 8
                for (int j = 0; j < NR; j++) {
                    __m256i t = idot32(wa[j], _mm256_sign_epi8(xv, wv[j]), _mm256_setzero_si256());
                    acc[i * NR + j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), sv, acc[i * NR + j]);
                }
            }
        }
    } else {
        /* 64 elements = 32 stored bytes (blocks A, B) per step: the low nibbles hold A 0-15 and B 0-15, the
         * high ones A 16-31 and B 16-31, as the activations are stored; int32 lane l covers block l / 4. */
        const __m256i low = _mm256_set1_epi8(15);
        const int gs = __builtin_ctz(G);
        const __m256i pair = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
        for (int k = 0; k < end; k += 64) {
            prefetch_rows(NR, w, rb, k / 2, 32);
            prefetch_scales(NR, sc, ns, k >> gs);
#pragma GCC unroll 8
            for (int j = 0; j < NR; j++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(w + j * rb + k / 2));
                __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                const float *sg = sc + (long)j * ns + (k >> gs);
                __m256 ws = G == 32 ? _mm256_permutevar8x32_ps(_mm256_castps128_ps256(
                                          _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)sg))), pair)
                                    : _mm256_set1_ps(*sg);  /* G >= 64: both blocks in one group */
#pragma GCC unroll 4
                for (int i = 0; i < MR; i++) {
                    __m256i xl = _mm256_load_si256((const __m256i *)(q + i * ldq + k));
                    __m256i xh = _mm256_load_si256((const __m256i *)(q + i * ldq + k + 32));
                    __m256i cv = _mm256_loadu_si256((const __m256i *)(c + i * lde + k / 8));
                    __m256 ev = _mm256_loadu_ps(e + i * lde + k / 8);
                    __m256i t = idot32x2_u4(lo, xl, hi, xh, cv);
                    acc[i * NR + j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_mul_ps(ev, ws), acc[i * NR + j]);
                }
            }
        }
    }
    _mm256_storeu_ps(sums, reduce8(acc));
    itile_finish(fmt, MR, NR, a, m, w, rb, sc, ns, G, end / QA_BLOCK, sums);
}
#define ITILE_MAX 8
#else
static inline void itile(const int fmt, const int MR, const int NR, const QAct *a, int m, const uint8_t *w, long rb,
                         const float *sc, int ns, int G, float *sums) {
    for (int i = 0; i < MR * NR; i++) sums[i] = 0.0f;
    itile_finish(fmt, MR, NR, a, m, w, rb, sc, ns, G, 0, sums);
}
#define ITILE_MAX 1
#endif

static inline __attribute__((always_inline)) void itile_rows(const int fmt, const int MR, const int NR, int m, int c0,
                                                             int c1, const QAct *a, const QW *q, const float *bias,
                                                             float *y, int ldy, int accumulate) {
    long rb = q_row_bytes(fmt, a->K);
    int ns = q_scales_per_row(q, a->K);
    const uint8_t *W = (const uint8_t *)q->data;
    float sums[16];
    int n = c0;
    for (; n + NR <= c1; n += NR) {
        itile(fmt, MR, NR, a, m, W + n * rb, rb, q->scales + (long)n * ns, ns, q->group, sums);
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) put(y + (long)(m + i) * ldy + n + j, sums[i * NR + j], bias, n + j, accumulate);
    }
    for (; n < c1; n++)
        for (int i = 0; i < MR; i++) {
            itile(fmt, 1, 1, a, m + i, W + n * rb, rb, q->scales + (long)n * ns, ns, q->group, sums);
            put(y + (long)(m + i) * ldy + n, sums[0], bias, n, accumulate);
        }
}

/* Weight rows per tile when one input row is multiplied (a single stream's decode step): 8 rows share each
 * load of the activations, but on an AMD EPYC Zen 5 one row at a time (one sequential stream per thread, as
 * llama.cpp reads its weights) ran the 1.8B-shaped decode 1.11-1.41x faster (int8 and int4, AVX-512 and AVX2
 * builds, 2026-12-03, README "Performance"), so fused_decode.py builds with -DPUYU_IROWS1=1 on AMD CPUs, as
 * with PUYU_PF_L2; Intel keeps 8 (not measured there). */
#ifndef PUYU_IROWS1
#define PUYU_IROWS1 8
#endif

static inline __attribute__((always_inline)) void igemm_fmt(const int fmt, int M, const QAct *a, const QW *q,
                                                            const float *bias, float *y, int ldy, int c0, int c1,
                                                            int accumulate) {
    int m = 0;
#if ITILE_MAX == 16
    for (; m + 4 <= M; m += 4) itile_rows(fmt, 4, 4, m, c0, c1, a, q, bias, y, ldy, accumulate);
    for (; m + 2 <= M; m += 2) itile_rows(fmt, 2, 8, m, c0, c1, a, q, bias, y, ldy, accumulate);
    for (; m < M; m++) itile_rows(fmt, 1, PUYU_IROWS1, m, c0, c1, a, q, bias, y, ldy, accumulate);
#elif ITILE_MAX == 8
    for (; m + 4 <= M; m += 4) itile_rows(fmt, 4, 2, m, c0, c1, a, q, bias, y, ldy, accumulate);
    for (; m + 2 <= M; m += 2) itile_rows(fmt, 2, 4, m, c0, c1, a, q, bias, y, ldy, accumulate);
    for (; m < M; m++) itile_rows(fmt, 1, PUYU_IROWS1, m, c0, c1, a, q, bias, y, ldy, accumulate);
#else
    for (; m < M; m++) itile_rows(fmt, 1, 1, m, c0, c1, a, q, bias, y, ldy, accumulate);
#endif
}

/* y[m, n] (+)= the integer product of activation rows a (quantized by qa_quantize for q->fmt) and stored
 * rows n in [n0, n1) of q (INT8 or INT4), in chunks of ~256 KB of weights as qgemm_nt. */
static void igemm_nt(int M, const QAct *a, const QW *q, const float *bias, float *y, int ldy, int n0, int n1,
                     int accumulate) {
    long rb = q_row_bytes(q->fmt, a->K);
    int chunk = (int)((256L * 1024) / rb);
    chunk = chunk < 16 ? 16 : chunk / 16 * 16;
    for (int c0 = n0; c0 < n1; c0 += chunk) {
        int c1 = c0 + chunk < n1 ? c0 + chunk : n1;
        if (q->fmt == FMT_INT8) igemm_fmt(FMT_INT8, M, a, q, bias, y, ldy, c0, c1, accumulate);
        else igemm_fmt(FMT_INT4, M, a, q, bias, y, ldy, c0, c1, accumulate);
    }
}

/* Whether a product with this stored weight takes the integer path. */
static inline int q_int_dot(const QW *q) { return q && q->act && (q->fmt == FMT_INT8 || q->fmt == FMT_INT4); }

/* ---------------------------------------------------------------- elementwise ----------------- */

static void rms_norm(int M, int C, const float *x, const float *w, float eps, float *y) {
    for (int m = 0; m < M; m++) {
        const float *r = x + (long)m * C;
        float ss = dot(r, r, C);
        float inv = 1.0f / sqrtf(ss / (float)C + eps);
        float *o = y + (long)m * C;
        for (int c = 0; c < C; c++) o[c] = r[c] * inv * w[c];
    }
}

#if PUYU_AVX512
/* exp(x), x clamped to [-87, 88]: 2^n * p(r), r = x - n ln2, |r| <= ln2 / 2, degree-6 series (~1 ulp). */
static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}
#elif PUYU_AVX2
/* exp512's method 8 lanes wide; 2^n is built in the exponent bits (n in [-126, 127] after the clamp). */
static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187045e-06f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

/* s[i] = exp(s[i] - max) for i < n; returns the sum. */
static float softmax_exp(float *s, int n, float mx) {
    int i = 0;
    float sum = 0.0f;
#if PUYU_AVX512
    __m512 vs = _mm512_setzero_ps(), vm = _mm512_set1_ps(mx);
    for (; i + 16 <= n; i += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + i), vm));
        _mm512_storeu_ps(s + i, e);
        vs = _mm512_add_ps(vs, e);
    }
    if (i < n) {
        __mmask16 mk = (__mmask16)((1u << (n - i)) - 1);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, s + i), vm));
        _mm512_mask_storeu_ps(s + i, mk, e);
        vs = _mm512_add_ps(vs, _mm512_maskz_mov_ps(mk, e));
        i = n;
    }
    sum = _mm512_reduce_add_ps(vs);
#elif PUYU_AVX2
    __m256 vs = _mm256_setzero_ps(), vm = _mm256_set1_ps(mx);
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + i), vm));
        _mm256_storeu_ps(s + i, e);
        vs = _mm256_add_ps(vs, e);
    }
    if (i < n) {  /* a block's last 1-7 keys in the vector code too */
        __m256i mk = tail_mask8(n - i);
        __m256 e = _mm256_and_ps(exp256(_mm256_sub_ps(_mm256_maskload_ps(s + i, mk), vm)), _mm256_castsi256_ps(mk));
        _mm256_maskstore_ps(s + i, mk, e);
        vs = _mm256_add_ps(vs, e);
        i = n;
    }
    sum = hsum8(vs);
#endif
    for (; i < n; i++) {
        s[i] = expf(s[i] - mx);
        sum += s[i];
    }
    return sum;
}

/* g[i] = silu(g[i]) * u[i] for i < n. */
static void silu_mul(float *g, const float *u, int n) {
    int i = 0;
#if PUYU_AVX512
    __m512 one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(g + i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), v));
        _mm512_storeu_ps(g + i, _mm512_mul_ps(_mm512_div_ps(v, _mm512_add_ps(one, e)), _mm512_loadu_ps(u + i)));
    }
#elif PUYU_AVX2
    __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(g + i);
        __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), v));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(v, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
#endif
    for (; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* ---------------------------------------------------------------- the forward ----------------- */

typedef struct {
    int B, C, H, K, D, F, V, L, P, nblocks, threads;
    float eps, pos_div;
    const int64_t *tokens, *positions;
    const float *invf;      /* [B or 1, D/2] inverse frequencies */
    int invf_stride;        /* 0 when every row shares one base */
    const int64_t *const *tables;  /* per row: its block table */
    void *kc, *vc;          /* [L, nblocks, P, K, D] elements in kv_fmt (see "KV formats") */
    const float *const *w;  /* 3 + 9 * L pointers, see fused_decode.py */
    float *logits;          /* [B, V] */
    int min_parallel;       /* weight elements below which a product runs on one thread */
    int split_rows;         /* rows per thread from which threads split the batch's rows, not weights */
    const int64_t *out_rows; /* rows whose logits are wanted (a prefill's last tokens); NULL: every row */
    int n_out;
    const QW *q;            /* NULL, or per entry of w: its stored format (F32 entries read w) */
    int kv_fmt;             /* KV_F32, KV_BF16 or KV_INT8 */
    float *ks, *vs;         /* KV_INT8: scales [L, nblocks, P, K], one per token and kv head; else NULL */
} Args;

typedef struct {
    const Args *a;
    int layer;
    /* scratch */
    float *x, *h, *qkv, *att, *g1, *g3, *cs, *scores;
    long *slots;  /* [B, smax]: cache slot of each row's tokens */
    int smax;
    float *part;  /* attention chunks' partial results [items, H * (D + 2)] (attend_range) */
    int *items;   /* attention chunks: (row, first key, end) each (attn_plan) */
    int n_items;
    /* the current product */
    int M, Kd, N, accumulate;
    const float *in, *W, *bias, *W3;
    const QW *Wq, *W3q;     /* the stored formats of W and W3; NULL: float32 */
    float *out;
    const QAct *xa;         /* `in` quantized for Wq's integer products (q_int_dot), else NULL */
    QAct xa_rows;
} Ctx;

/* Parts of a product split by weight rows over `threads` cores: PARTS_PER_THREAD each (so a preempted
 * worker holds up a small share; see the thread pool), at most one per 16 rows. */
#define PARTS_PER_THREAD 4
static inline int product_parts(int threads, int N) {
    int units = (N + 15) / 16, parts = threads > 1 ? threads * PARTS_PER_THREAD : 1;
    return parts < units ? parts : units;
}

static void task_linear(void *p, int part, int parts) {
    Ctx *c = (Ctx *)p;
    int lo, hi;
    split_range(c->N, part, parts, 16, &lo, &hi);
    if (lo >= hi) return;
    if (c->xa) igemm_nt(c->M, c->xa, c->Wq, c->bias, c->out, c->N, lo, hi, c->accumulate);
    else if (c->Wq) qgemm_nt(c->M, c->Kd, c->in, c->Kd, c->Wq, c->bias, c->out, c->N, lo, hi, c->accumulate);
    else gemm_nt(c->M, c->Kd, c->in, c->Kd, c->W, c->bias, c->out, c->N, lo, hi, c->accumulate);
}

static void task_gate_up(void *p, int part, int parts) {
    Ctx *c = (Ctx *)p;
    int lo, hi, F = c->N;
    split_range(F, part, parts, 16, &lo, &hi);
    if (lo >= hi) return;
    if (c->xa) igemm_nt(c->M, c->xa, c->Wq, NULL, c->g1, F, lo, hi, 0);
    else if (c->Wq) qgemm_nt(c->M, c->Kd, c->in, c->Kd, c->Wq, NULL, c->g1, F, lo, hi, 0);
    else gemm_nt(c->M, c->Kd, c->in, c->Kd, c->W, NULL, c->g1, F, lo, hi, 0);
    if (c->xa && q_int_dot(c->W3q) && c->W3q->fmt == c->xa->fmt) igemm_nt(c->M, c->xa, c->W3q, NULL, c->g3, F, lo, hi, 0);
    else if (c->W3q) qgemm_nt(c->M, c->Kd, c->in, c->Kd, c->W3q, NULL, c->g3, F, lo, hi, 0);
    else gemm_nt(c->M, c->Kd, c->in, c->Kd, c->W3, NULL, c->g3, F, lo, hi, 0);
    for (int m = 0; m < c->M; m++) silu_mul(c->g1 + (long)m * F + lo, c->g3 + (long)m * F + lo, hi - lo);
}

/* The stored format of weight entry i, or NULL when it is float32 (read through w[i]). */
static inline const QW *qof(const Args *a, int i) {
    return a->q && a->q[i].fmt != FMT_F32 ? &a->q[i] : NULL;
}

/* Before a product with stored weight Wq: its input rows quantized once (on the calling thread) when Wq
 * takes the integer path; c->xa NULL otherwise, or when the buffer cannot be had (the float path runs). */
static void quantize_input(Ctx *c, const QW *Wq, int M, int Kd, const float *in) {
    c->xa = NULL;
    if (q_int_dot(Wq) && qa_quantize(Wq->fmt, M, Kd, in, Kd, &c->xa_rows) == 0) c->xa = &c->xa_rows;
}

/* out (+)= in . W^T (+ bias) for weight entry wi of the table (float32 or a stored format). */
static void linear(Ctx *c, int M, int Kd, const float *in, int wi, const float *bias, float *out, int N,
                   int accumulate) {
    c->M = M, c->Kd = Kd, c->in = in, c->W = c->a->w[wi], c->Wq = qof(c->a, wi), c->bias = bias, c->out = out;
    c->N = N, c->accumulate = accumulate;
    quantize_input(c, c->Wq, M, Kd, in);
    run_parallel(task_linear, c, (long)N * Kd < c->a->min_parallel ? 1 : product_parts(c->a->threads, N));
}

#if PUYU_AVX512
/* o[q] (+)= sum_t p[q * ps + t] * v_t (t < S) for the n_rep queries of a group, NV vectors per head: each
 * value row is loaded once for up to 16 / NV queries, whose outputs stay in registers; `accumulate` adds to
 * o (a block of a longer sum). */
static inline __attribute__((always_inline)) void weighted_values(const int NV, int n_rep, int S, const float *p,
                                                                  int ps, const float *vc, const long *slot,
                                                                  long kstride, float *o, int accumulate) {
    for (int q0 = 0; q0 < n_rep; q0 += 16 / NV) {
        int nq = n_rep - q0 < 16 / NV ? n_rep - q0 : 16 / NV;
        __m512 acc[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
        if (accumulate)
            for (int q = 0; q < nq; q++)
                for (int i = 0; i < NV; i++) acc[q * NV + i] = _mm512_loadu_ps(o + (long)(q0 + q) * NV * 16 + 16 * i);
        for (int t = 0; t < S; t++) {
            const float *vt = vc + slot[t] * kstride;
            __m512 v[8];
#pragma GCC unroll 8
            for (int i = 0; i < NV; i++) v[i] = _mm512_loadu_ps(vt + 16 * i);
#pragma GCC unroll 16
            for (int q = 0; q < 16 / NV; q++) {
                if (q < nq) {
                    __m512 pq = _mm512_set1_ps(p[(long)(q0 + q) * ps + t]);
#pragma GCC unroll 8
                    for (int i = 0; i < NV; i++) acc[q * NV + i] = _mm512_fmadd_ps(pq, v[i], acc[q * NV + i]);
                }
            }
        }
        for (int q = 0; q < nq; q++)
            for (int i = 0; i < NV; i++) _mm512_storeu_ps(o + (long)(q0 + q) * NV * 16 + 16 * i, acc[q * NV + i]);
    }
}
#elif PUYU_AVX2
/* The AVX2 form: NV (<= 8) vectors of 8 floats per value row (a slice of D at column d0), up to 8 / NV
 * queries per pass; outputs o[q * D + d0 ...]. */
static inline __attribute__((always_inline)) void weighted_values(const int NV, int n_rep, int S, const float *p,
                                                                  int ps, const float *vc, const long *slot,
                                                                  long kstride, float *o, int D, int d0,
                                                                  int accumulate) {
    for (int q0 = 0; q0 < n_rep; q0 += 8 / NV) {
        int nq = n_rep - q0 < 8 / NV ? n_rep - q0 : 8 / NV;
        __m256 acc[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
        if (accumulate)
            for (int q = 0; q < nq; q++)
                for (int i = 0; i < NV; i++) acc[q * NV + i] = _mm256_loadu_ps(o + (long)(q0 + q) * D + d0 + 8 * i);
        for (int t = 0; t < S; t++) {
            const float *vt = vc + slot[t] * kstride + d0;
            __m256 v[8];
#pragma GCC unroll 8
            for (int i = 0; i < NV; i++) v[i] = _mm256_loadu_ps(vt + 8 * i);
#pragma GCC unroll 8
            for (int q = 0; q < 8 / NV; q++) {
                if (q < nq) {
                    __m256 pq = _mm256_set1_ps(p[(long)(q0 + q) * ps + t]);
#pragma GCC unroll 8
                    for (int i = 0; i < NV; i++) acc[q * NV + i] = _mm256_fmadd_ps(pq, v[i], acc[q * NV + i]);
                }
            }
        }
        for (int q = 0; q < nq; q++)
            for (int i = 0; i < NV; i++) _mm256_storeu_ps(o + (long)(q0 + q) * D + d0 + 8 * i, acc[q * NV + i]);
    }
}
#endif

/* ---------------------------------------------------------------- KV formats ------------------ */
/* The cache's stored formats (puyu/model/quant.py, "the KV cache's formats"; puyu.engine.kv_cache):
 *   KV_F32   float32 elements
 *   KV_BF16  bfloat16 (the top half of a float32, rounded to nearest even as torch rounds)
 *   KV_INT8  int8 q with one float32 scale per token and kv head: x = q * s, s = max |x| / 127,
 *            q = round_half_even(x / s) (torch.round's rounding), s = 0 and q = 0 for an all-zero row
 * Written by rope_and_store (kv_put) as each token's key and value are computed; read by attend_range.
 *
 * Attention streams the cache in token order. A row's keys are cut into chunks (attn_plan: one chunk per
 * row on one thread; about 4 per thread in all otherwise, so a single long sequence is split across the
 * cores), and each chunk is read block by block of KVB tokens: for each block, every kv head's keys are
 * converted to float32 (bf16: a shift; int8: q * s, the same product torch's dequantization computes, so
 * the numbers are exactly those of float attention on the dequantized cache) into a small per-thread
 * buffer in L1, scored against the group's n_rep queries, folded into a running softmax (max m, sum l,
 * output o rescaled by exp(m_old - m_new) when the max grows), and the block's value rows are converted
 * the same way and accumulated. So each stored byte is read from memory once per step, in the order it
 * lies: a token's K heads sit side by side (K * D elements), so a block is one contiguous run of memory
 * per block of the page table, where reading one head over all tokens (the earlier order) touched 1 / K of
 * every row and left the hardware prefetchers and the TLB to cope with K-strided reads. The chunks'
 * partial results (m, l, o per query head) are merged after the parallel region (attn_merge).
 *
 * Not done yet: integer dot products (the query quantized per head to int8, scores by VNNI's vpdpbusd, or
 * vpmaddubsw + vpmaddwd on AVX2). Measured (benchmarks/kv_attention.py, README "attention over the KV
 * cache"), float32 keys now stream at ~0.9x of a plain read, but int8 and bf16 ones are bound by the
 * conversion and float products (~3.5 GB/s of int8 cache per thread against ~14 GB/s a thread reads), so
 * scoring int8 keys without converting them is the next step; its extra error (the query's rounding) would
 * add at most (s_q / 2) sum_d |k_d| / sqrt(D) to each score. */
enum { KV_F32 = 0, KV_BF16 = 1, KV_INT8 = 2 };
#define KVB 32           /* tokens per block (32 x head_dim floats: 16 KiB at D = 128, in L1) */
#define ATT_MIN_CHUNK 256 /* a sequence is split across cores in chunks of at least this many tokens */
/* Tokens of at most this many bytes per kv row (K heads x D elements) have the next block's keys and values
 * prefetched while a block is scored: a small model's token is a few cache lines in a page of P tokens,
 * runs too short for the hardware prefetchers, so each block's rows came from L3 one miss at a time (nano,
 * 16 rows x 97 keys: the value loads were the hottest instructions of the attention). Larger tokens are
 * long contiguous runs that the hardware prefetchers follow. */
#define KV_PREFETCH_BYTES 1024

static inline long kv_elem_bytes(int fmt) { return fmt == KV_F32 ? 4 : fmt == KV_BF16 ? 2 : 1; }

/* Floats of one part's attention work area: a block's scores for the group's queries, then the converted
 * rows of one block. */
static inline long attn_work(const Args *a) { return (long)(a->H / a->K) * KVB + (long)KVB * a->D; }

/* Chunks a forward over B rows on `threads` threads can make (attn_plan): one per row, plus up to 4 per
 * thread from splitting long rows. */
static inline long attn_max_items(int B, int threads) { return (long)B + 4L * threads; }

/* Store one head's D floats x at dst (and its scale at *scale for KV_INT8). */
static void kv_put(int fmt, void *dst, float *scale, const float *x, int D) {
    if (fmt == KV_F32) {
        memcpy(dst, x, sizeof(float) * D);
    } else if (fmt == KV_BF16) {
        uint16_t *h = (uint16_t *)dst;
        for (int d = 0; d < D; d++) {
            uint32_t u;
            memcpy(&u, x + d, 4);
            h[d] = (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)0x7fc0 : (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        }
    } else {
        int8_t *q = (int8_t *)dst;
        float amax = 0.0f;
        for (int d = 0; d < D; d++) amax = fabsf(x[d]) > amax ? fabsf(x[d]) : amax;
        float s = amax / 127.0f;
        for (int d = 0; d < D; d++) {
            float r = s > 0.0f ? nearbyintf(x[d] / s) : 0.0f;
            q[d] = (int8_t)(r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r);
        }
        *scale = s;
    }
}

/* One stored row of D elements (bf16 or int8 with scale s) as float32 into o. */
static inline void kv_row(int fmt, const uint8_t *row, float s, int D, float *o) {
    int d = 0;
    if (fmt == KV_BF16) {
        const uint16_t *h = (const uint16_t *)row;
#if PUYU_AVX512
        for (; d + 16 <= D; d += 16)
            _mm512_storeu_ps(o + d, _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(h + d))), 16)));
#elif PUYU_AVX2
        for (; d + 8 <= D; d += 8)
            _mm256_storeu_ps(o + d, _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(h + d))), 16)));
#endif
        for (; d < D; d++) {
            uint32_t u = (uint32_t)h[d] << 16;
            memcpy(o + d, &u, 4);
        }
    } else {
        const int8_t *q = (const int8_t *)row;
#if PUYU_AVX512
        __m512 vs = _mm512_set1_ps(s);
        for (; d + 16 <= D; d += 16)
            _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_cvtepi32_ps(
                _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + d)))), vs));
#elif PUYU_AVX2
        __m256 vs = _mm256_set1_ps(s);
        for (; d + 8 <= D; d += 8)
            _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_cvtepi32_ps(
                _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + d)))), vs));
#endif
        for (; d < D; d++) o[d] = (float)q[d] * s;
    }
}

/* Rows slot[0..n) of one kv head as float32 into out [n, D]: row j's elements at base + slot[j] * rstride
 * elements, its int8 scale at sc[slot[j] * sstride]. */
static void kv_rows(int fmt, const uint8_t *base, const float *sc, long sstride, const long *slot, int n,
                    long rstride, int D, float *out) {
    long eb = kv_elem_bytes(fmt);
    for (int j = 0; j < n; j++)
        kv_row(fmt, base + slot[j] * rstride * eb, fmt == KV_INT8 ? sc[slot[j] * sstride] : 0.0f, D, out + (long)j * D);
}

static const long kv_iota[KVB] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                  16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};

/* o[q] (+)= sum_t p[q * ps + t] * v_t over S value rows v_t = vc + slot[t] * kstride (float32), for the
 * n_rep queries of a group whose outputs o [n_rep, D] are contiguous. */
static void values_f32(int n_rep, int S, const float *p, int ps, const float *vc, const long *slot, long kstride,
                       float *o, int D, int accumulate) {
#if PUYU_AVX512
    if (D == 32) { weighted_values(2, n_rep, S, p, ps, vc, slot, kstride, o, accumulate); return; }
    if (D == 64) { weighted_values(4, n_rep, S, p, ps, vc, slot, kstride, o, accumulate); return; }
    if (D == 128) { weighted_values(8, n_rep, S, p, ps, vc, slot, kstride, o, accumulate); return; }
#elif PUYU_AVX2
    if (D % 16 == 0 && D <= 128) {
        for (int d0 = 0; d0 < D; d0 += 64)  /* slices of 64, then 32 and/or 16 */
            if (D - d0 >= 64) weighted_values(8, n_rep, S, p, ps, vc, slot, kstride, o, D, d0, accumulate);
            else if (D - d0 == 32) weighted_values(4, n_rep, S, p, ps, vc, slot, kstride, o, D, d0, accumulate);
            else if (D - d0 == 48) {
                weighted_values(4, n_rep, S, p, ps, vc, slot, kstride, o, D, d0, accumulate);
                weighted_values(2, n_rep, S, p, ps, vc, slot, kstride, o, D, d0 + 32, accumulate);
            } else weighted_values(2, n_rep, S, p, ps, vc, slot, kstride, o, D, d0, accumulate);
        return;
    }
#endif
    for (int r = 0; r < n_rep; r++) {
        float *orow = o + (long)r * D;
        if (!accumulate)
            for (int d = 0; d < D; d++) orow[d] = 0.0f;
        for (int t = 0; t < S; t++) {
            const float *vt = vc + slot[t] * kstride;
            float pt = p[(long)r * ps + t];
            for (int d = 0; d < D; d++) orow[d] += pt * vt[d];
        }
    }
}

#if PUYU_AVX512
/* out[j] = scale * q . kp[j] for 16 keys of ND * 16 floats, the query held in registers (each key element is
 * loaded once; 8 + 16 accumulators at ND = 8). */
static inline __attribute__((always_inline)) void score16(const int ND, const float *q, const float *const *kp,
                                                          float scale, float *out) {
    __m512 qv[8], acc[16];
#pragma GCC unroll 8
    for (int i = 0; i < ND; i++) qv[i] = _mm512_loadu_ps(q + 16 * i);
#pragma GCC unroll 16
    for (int j = 0; j < 16; j++) {
        __m512 v = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kp[j]));
#pragma GCC unroll 8
        for (int i = 1; i < ND; i++) v = _mm512_fmadd_ps(qv[i], _mm512_loadu_ps(kp[j] + 16 * i), v);
        acc[j] = v;
    }
    _mm512_storeu_ps(out, _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(scale)));
}
#elif PUYU_AVX2
/* out[j] = scale * q . kp[j] for 8 keys of ND * 8 floats (ND <= 4), the query held in registers: ND + 8
 * accumulators + 1 key vector fit the 16 ymm registers, and each key element is loaded once (the general
 * loop below loads the query again for every key: two loads per FMA). */
static inline __attribute__((always_inline)) void score8(const int ND, const float *q, const float *const *kp,
                                                         float scale, float *out) {
    __m256 qv[4], acc[8];
#pragma GCC unroll 4
    for (int i = 0; i < ND; i++) qv[i] = _mm256_loadu_ps(q + 8 * i);
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) {
        __m256 v = _mm256_mul_ps(qv[0], _mm256_loadu_ps(kp[j]));
#pragma GCC unroll 4
        for (int i = 1; i < ND; i++) v = _mm256_fmadd_ps(qv[i], _mm256_loadu_ps(kp[j] + 8 * i), v);
        acc[j] = v;
    }
    _mm256_storeu_ps(out, _mm256_mul_ps(reduce8(acc), _mm256_set1_ps(scale)));
}
#endif

/* s[r * KVB + j] = scale * q_r . k_j for the n_rep queries q [n_rep, D] and n <= KVB float32 keys kp[j].
 * Keys are taken 16 (AVX2: 8) at a time: each query's dot products are folded by reduce16 into one vector. */
static void score_block(int n_rep, const float *q, const float *const *kp, int n, int D, float scale, float *s) {
    for (int r = 0; r < n_rep; r++) {
        const float *qr = q + (long)r * D;
        float *sr = s + (long)r * KVB;
        int j0 = 0;
#if PUYU_AVX512
        if (D == 128 || D == 64 || D == 32)
            for (; j0 + 16 <= n; j0 += 16) {
                if (D == 128) score16(8, qr, kp + j0, scale, sr + j0);
                else if (D == 64) score16(4, qr, kp + j0, scale, sr + j0);
                else score16(2, qr, kp + j0, scale, sr + j0);
            }
        if (D % 16 == 0)
            for (; j0 + 16 <= n; j0 += 16) {
                __m512 acc[16];
                for (int j = 0; j < 16; j++) {
                    const float *kj = kp[j0 + j];
                    __m512 v = _mm512_mul_ps(_mm512_loadu_ps(qr), _mm512_loadu_ps(kj));
                    for (int d = 16; d < D; d += 16) v = _mm512_fmadd_ps(_mm512_loadu_ps(qr + d), _mm512_loadu_ps(kj + d), v);
                    acc[j] = v;
                }
                _mm512_storeu_ps(sr + j0, _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(scale)));
            }
#elif PUYU_AVX2
        if (D == 32 || D == 16)
            for (; j0 + 8 <= n; j0 += 8) {
                if (D == 32) score8(4, qr, kp + j0, scale, sr + j0);
                else score8(2, qr, kp + j0, scale, sr + j0);
            }
        if (D % 8 == 0)
            for (; j0 + 8 <= n; j0 += 8) {
                __m256 acc[8];
                for (int j = 0; j < 8; j++) {
                    const float *kj = kp[j0 + j];
                    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(qr), _mm256_loadu_ps(kj));
                    for (int d = 8; d < D; d += 8) v = _mm256_fmadd_ps(_mm256_loadu_ps(qr + d), _mm256_loadu_ps(kj + d), v);
                    acc[j] = v;
                }
                _mm256_storeu_ps(sr + j0, _mm256_mul_ps(reduce8(acc), _mm256_set1_ps(scale)));
            }
#endif
        for (int j = j0; j < n; j++) sr[j] = dot(qr, kp[j], D) * scale;
    }
}

/* One chunk of attention: row b's query heads over its keys [t0, t1), every kv group, block by block.
 * part: [H] running max, [H] sum, [H, D] output (not yet divided by the sum). work: attn_work floats. */
static void attend_range(const Ctx *c, int b, int t0, int t1, float *part, float *work) {
    const Args *a = c->a;
    int K = a->K, D = a->D, H = a->H, n_rep = H / K, fmt = a->kv_fmt;
    const long *slot = c->slots + (long)b * c->smax;
    long layer_off = (long)c->layer * a->nblocks * a->P * K * D, eb = kv_elem_bytes(fmt);
    const uint8_t *kc = (const uint8_t *)a->kc + layer_off * eb, *vc = (const uint8_t *)a->vc + layer_off * eb;
    long sc_off = (long)c->layer * a->nblocks * a->P * K;  /* scales [slot * K + g] from here */
    const float *ksc = a->ks ? a->ks + sc_off : NULL, *vsc = a->vs ? a->vs + sc_off : NULL;
    const float *qrow = c->qkv + (long)b * (H + 2 * K) * D;
    float scale = 1.0f / sqrtf((float)D);
    long kstride = (long)K * D;  /* elements between consecutive slots */
    float *m = part, *l = part + H, *o = part + 2 * H;
    float *s = work, *buf = work + (long)n_rep * KVB;
    for (int h = 0; h < H; h++) m[h] = -INFINITY, l[h] = 0.0f;
    memset(o, 0, sizeof(float) * H * D);
    long tok_bytes = kstride * eb;  /* one token's K heads, side by side */
    for (int tb = t0; tb < t1; tb += KVB) {
        int n = t1 - tb < KVB ? t1 - tb : KVB;
        const long *sl = slot + tb;
        if (tok_bytes <= KV_PREFETCH_BYTES)  /* the next block's keys and values into L2 (see KV_PREFETCH_BYTES) */
            for (int j = tb + KVB; j < t1 && j < tb + 2 * KVB; j++)
                for (long off = 0; off < tok_bytes; off += 64) {
                    __builtin_prefetch(kc + slot[j] * tok_bytes + off, 0, 2);
                    __builtin_prefetch(vc + slot[j] * tok_bytes + off, 0, 2);
                }
        for (int g = 0; g < K; g++) {
            const float *q = qrow + (long)g * (n_rep + 2) * D;  /* the group's n_rep query heads */
            const float *kp[KVB];
            if (fmt == KV_F32) {
                for (int j = 0; j < n; j++) kp[j] = (const float *)kc + sl[j] * kstride + (long)g * D;
            } else {
                kv_rows(fmt, kc + (long)g * D * eb, ksc ? ksc + g : NULL, K, sl, n, kstride, D, buf);
                for (int j = 0; j < n; j++) kp[j] = buf + (long)j * D;
            }
            score_block(n_rep, q, kp, n, D, scale, s);
            float *og = o + (long)g * n_rep * D;
            for (int r = 0; r < n_rep; r++) {
                int h = g * n_rep + r;
                float *sr = s + (long)r * KVB, mx = sr[0];
                for (int j = 1; j < n; j++) mx = sr[j] > mx ? sr[j] : mx;
                if (mx > m[h]) {  /* a new max: earlier terms shrink by exp(m_old - m_new) (0 at the start) */
                    float alpha = expf(m[h] - mx);
                    l[h] *= alpha;
                    for (int d = 0; d < D; d++) og[(long)r * D + d] *= alpha;
                    m[h] = mx;
                }
                l[h] += softmax_exp(sr, n, m[h]);
            }
            if (fmt == KV_F32) {
                values_f32(n_rep, n, s, KVB, (const float *)vc + (long)g * D, sl, kstride, og, D, 1);
            } else {
                kv_rows(fmt, vc + (long)g * D * eb, vsc ? vsc + g : NULL, K, sl, n, kstride, D, buf);
                values_f32(n_rep, n, s, KVB, buf, kv_iota, D, og, D, 1);
            }
        }
    }
}

/* The chunks of this forward's attention into c->items (row, first key, end) and c->n_items: one per row
 * on one thread; else rows longer than a share of all keys (~1/4 of a thread's) are cut, so one long
 * sequence keeps every core busy. */
static void attn_plan(Ctx *c) {
    const Args *a = c->a;
    long total = 0;
    for (int b = 0; b < a->B; b++) total += a->positions[b] + 1;
    long chunk = a->threads > 1 ? (total + 4L * a->threads - 1) / (4L * a->threads) : total;
    if (chunk < ATT_MIN_CHUNK) chunk = ATT_MIN_CHUNK;
    chunk = (chunk + KVB - 1) / KVB * KVB;
    int n = 0;
    for (int b = 0; b < a->B; b++) {
        int S = (int)a->positions[b] + 1;
        for (int t = 0; t < S; t += (int)chunk) {
            c->items[3 * n] = b, c->items[3 * n + 1] = t, c->items[3 * n + 2] = S - t < chunk ? S : t + (int)chunk;
            n++;
        }
    }
    c->n_items = n;
}

/* Parts of the attention's parallel region: up to 4 per thread; 1 on one thread (a row split's own forward
 * runs inside a parallel region and must not start another). */
static inline int attn_parts(const Ctx *c) {
    int t = c->a->threads;
    return t <= 1 ? 1 : c->n_items < 4 * t ? c->n_items : 4 * t;
}

static void task_attention(void *p, int part, int parts) {
    Ctx *c = (Ctx *)p;
    const Args *a = c->a;
    int lo, hi;
    split_range(c->n_items, part, parts, 1, &lo, &hi);
    float *work = c->scores + (long)part * attn_work(a);
    long psz = (long)a->H * (a->D + 2);
    for (int it = lo; it < hi; it++)
        attend_range(c, c->items[3 * it], c->items[3 * it + 1], c->items[3 * it + 2], c->part + it * psz, work);
}

/* The chunks' partial results into each row's attention output att [B, H * D]. */
static void attn_merge(Ctx *c) {
    const Args *a = c->a;
    int H = a->H, D = a->D;
    long psz = (long)H * (D + 2);
    for (int i0 = 0; i0 < c->n_items;) {
        int b = c->items[3 * i0], i1 = i0 + 1;
        while (i1 < c->n_items && c->items[3 * i1] == b) i1++;
        float *out = c->att + (long)b * H * D;
        for (int h = 0; h < H; h++) {
            float M = -INFINITY, L = 0.0f;
            for (int i = i0; i < i1; i++) M = c->part[i * psz + h] > M ? c->part[i * psz + h] : M;
            float *oh = out + (long)h * D;
            for (int d = 0; d < D; d++) oh[d] = 0.0f;
            for (int i = i0; i < i1; i++) {
                const float *pt = c->part + i * psz;
                float w = expf(pt[h] - M);
                L += w * pt[H + h];
                const float *po = pt + 2 * H + (long)h * D;
                for (int d = 0; d < D; d++) oh[d] += w * po[d];
            }
            float inv = 1.0f / L;
            for (int d = 0; d < D; d++) oh[d] *= inv;
        }
        i0 = i1;
    }
}

/* RoPE on the query and key slots of each group, then the key and value into the cache (in its format). */
static void rope_and_store(Ctx *c) {
    const Args *a = c->a;
    int K = a->K, D = a->D, H = a->H, n_rep = H / K, half = D / 2, P = a->P;
    long layer_off = (long)c->layer * a->nblocks * P * K * D, eb = kv_elem_bytes(a->kv_fmt);
    long sc_off = (long)c->layer * a->nblocks * P * K;
    for (int b = 0; b < a->B; b++) {
        const float *cs = c->cs + (long)b * D;  /* cos [half], sin [half] */
        float *row = c->qkv + (long)b * (H + 2 * K) * D;
        long slot = c->slots[(long)b * c->smax + a->positions[b]];
        for (int g = 0; g < K; g++) {
            float *grp = row + (long)g * (n_rep + 2) * D;
            for (int r = 0; r <= n_rep; r++) {  /* the n_rep queries, then the key */
                float *v = grp + (long)r * D;
                for (int i = 0; i < half; i++) {
                    float x1 = v[i], x2 = v[i + half], co = cs[i], si = cs[half + i];
                    v[i] = x1 * co - x2 * si;
                    v[i + half] = x2 * co + x1 * si;
                }
            }
            long at = layer_off + (slot * K + g) * D, sat = sc_off + slot * K + g;
            kv_put(a->kv_fmt, (uint8_t *)a->kc + at * eb, a->ks ? a->ks + sat : NULL, grp + (long)n_rep * D, D);
            kv_put(a->kv_fmt, (uint8_t *)a->vc + at * eb, a->vs ? a->vs + sat : NULL, grp + (long)(n_rep + 1) * D, D);
        }
    }
}

#ifdef PUYU_PROFILE
/* CPU time of the calling thread: on a shared machine, time spent preempted is not charged to a phase. */
static inline long prof_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}
double puyu_prof[8];
#define PROF(i) do { long _n = prof_ns(); puyu_prof[i] += (_n - _t) * 1e-9; _t = _n; } while (0)
#else
#define PROF(i) do { } while (0)
#endif

static void forward(const Args *a, Ctx *c) {
#ifdef PUYU_PROFILE
    long _t = prof_ns();
#endif
    int B = a->B, C = a->C, H = a->H, K = a->K, D = a->D, F = a->F;
    int QKV = (H + 2 * K) * D;
    const float *const *w = a->w;
    const QW *emb = qof(a, 0);
    for (int b = 0; b < B; b++)
        if (emb) q_row(emb, C, a->tokens[b], c->x + (long)b * C);
        else memcpy(c->x + (long)b * C, w[0] + a->tokens[b] * (long)C, sizeof(float) * C);
    for (int b = 0; b < B; b++)
        for (int t = 0; t <= (int)a->positions[b]; t++)
            c->slots[(long)b * c->smax + t] = a->tables[b][t / a->P] * a->P + t % a->P;
    attn_plan(c);
    int half = D / 2;
    for (int b = 0; b < B; b++) {
        const float *inv = a->invf + (long)b * a->invf_stride;
        float pos = (float)a->positions[b];
        if (a->pos_div != 1.0f) pos = pos / a->pos_div;
        for (int i = 0; i < half; i++) {
            float ang = pos * inv[i];
            c->cs[(long)b * D + i] = cosf(ang);
            c->cs[(long)b * D + half + i] = sinf(ang);
        }
    }
    for (int l = 0; l < a->L; l++) {
        const int wl = 3 + 9 * l;
        const float *const *lw = w + wl;  /* attn_norm, wqkv, bqkv, wo, bo, ffn_norm, w1, w3, w2 */
        c->layer = l;
        PROF(0);
        rms_norm(B, C, c->x, lw[0], a->eps, c->h);
        linear(c, B, C, c->h, wl + 1, lw[2], c->qkv, QKV, 0);
        PROF(1);
        rope_and_store(c);
        PROF(2);
        run_parallel(task_attention, c, attn_parts(c));
        attn_merge(c);
        PROF(3);
        linear(c, B, H * D, c->att, wl + 3, lw[4], c->x, C, 1);
        PROF(4);
        rms_norm(B, C, c->x, lw[5], a->eps, c->h);
        c->M = B, c->Kd = C, c->in = c->h, c->W = lw[6], c->W3 = lw[7], c->N = F;
        c->Wq = qof(a, wl + 6), c->W3q = qof(a, wl + 7);
        quantize_input(c, c->Wq, B, C, c->h);
        run_parallel(task_gate_up, c, (long)F * C < a->min_parallel ? 1 : product_parts(a->threads, F));
        PROF(5);
        linear(c, B, F, c->g1, wl + 8, NULL, c->x, C, 1);
        PROF(6);
    }
    if (a->out_rows) {  /* only the rows asked for: norm them into h's first rows, then the head */
        for (int i = 0; i < a->n_out; i++) rms_norm(1, C, c->x + a->out_rows[i] * (long)C, w[1], a->eps, c->h + (long)i * C);
        linear(c, a->n_out, C, c->h, 2, NULL, a->logits, a->V, 0);
    } else {
        rms_norm(B, C, c->x, w[1], a->eps, c->h);
        linear(c, B, C, c->h, 2, NULL, a->logits, a->V, 0);
    }
    PROF(7);
}

static int max_keys(const Args *a) {
    int smax = 1;
    for (int b = 0; b < a->B; b++)
        if ((int)a->positions[b] + 1 > smax) smax = (int)a->positions[b] + 1;
    return smax;
}

/* Part p of a row split: the whole forward for rows [r0, r1) of the batch on this thread alone, in
 * the rows' own slices of the scratch (so no data crosses cores inside the step). */
static void task_rows(void *p, int part, int parts) {
    const Ctx *c = (const Ctx *)p;
    const Args *a = c->a;
    int r0, r1;
    split_range(a->B, part, parts, 1, &r0, &r1);
    if (r0 >= r1) return;
    Args sub = *a;
    sub.B = r1 - r0, sub.threads = 1;
    sub.tokens += r0, sub.positions += r0, sub.tables += r0, sub.logits += (long)r0 * a->V;
    sub.invf += (long)r0 * a->invf_stride;
    Ctx s = *c;
    s.a = &sub;
    s.x += (long)r0 * a->C, s.h += (long)r0 * a->C, s.qkv += (long)r0 * (a->H + 2 * a->K) * a->D;
    s.att += (long)r0 * a->H * a->D, s.g1 += (long)r0 * a->F, s.g3 += (long)r0 * a->F, s.cs += (long)r0 * a->D;
    s.scores += (long)part * attn_work(a);
    s.part += (long)r0 * a->H * (a->D + 2), s.items += 3L * r0;
    s.slots += (long)r0 * c->smax;
    forward(&sub, &s);
}

/* Scratch layout for `threads` threads: floats (the attention chunks' table, 3 ints per chunk, at the end of
them), then the slot table (8-byte aligned). */
static long scratch_floats(const Args *a, int threads) {
    int B = a->B, C = a->C, H = a->H, K = a->K, D = a->D, F = a->F;
    long items = attn_max_items(B, threads);
    long n = 2L * B * C + (long)B * (H + 2 * K) * D + (long)B * H * D + 2L * B * F + (long)B * D
             + 4L * threads * attn_work(a) + items * H * (D + 2) + 3 * items;
    return n + (n & 1);
}

/* Bytes of scratch memory puyu_decode needs for these arguments. */
long puyu_decode_scratch_bytes(const Args *a) {
    int smax = max_keys(a), threads = a->threads < 1 ? 1 : a->threads;
    return sizeof(float) * scratch_floats(a, threads) + sizeof(long) * (long)a->B * smax;
}

/* The entry point; `scratch` holds puyu_decode_scratch_bytes(a) bytes (kept by the caller, so no
 * allocation happens per call). */
void puyu_decode(const Args *a, void *scratch, long spin_ns) {
    int B = a->B, C = a->C, H = a->H, K = a->K, D = a->D, F = a->F;
    int smax = max_keys(a);
    Args local = *a;
    int threads = a->threads < 1 ? 1 : a->threads;
    int own = 0;
    if (threads > 1 && pthread_mutex_trylock(&pool.owner) == 0) {
        own = 1;
        pool.spin_ns = spin_ns;
        threads = pool_grow(threads);
    } else {
        threads = 1;
    }
    local.threads = threads;
    long n_x = (long)B * C, n_qkv = (long)B * (H + 2 * K) * D, n_att = (long)B * H * D, n_f = (long)B * F;
    float *buf = (float *)scratch;
    Ctx c;
    memset(&c, 0, sizeof c);
    c.a = &local;
    c.x = buf, c.h = c.x + n_x, c.qkv = c.h + n_x, c.att = c.qkv + n_qkv, c.g1 = c.att + n_att, c.g3 = c.g1 + n_f;
    int sthreads = a->threads < 1 ? 1 : a->threads;  /* the threads the scratch was sized for */
    c.cs = c.g3 + n_f, c.scores = c.cs + (long)B * D, c.smax = smax;
    c.part = c.scores + 4L * sthreads * attn_work(a);
    c.items = (int *)(c.part + attn_max_items(B, sthreads) * H * (D + 2));
    c.slots = (long *)(buf + scratch_floats(a, sthreads));
    if (threads > 1) {  /* oversubscribed: the caller alone (see the thread pool) */
        static __thread Preempt seen = PREEMPT_INIT;
        long now = now_ns();
        check_preempted(&seen, now);
        if (contended(now)) local.threads = threads = 1;
    }
    if (threads > 1 && !a->out_rows && B >= a->split_rows * threads)
        run_parallel(task_rows, &c, threads);  /* each core runs the whole forward for its own rows */
    else
        forward(&local, &c);  /* one set of rows; every product's weight rows split across cores */
    if (own) pthread_mutex_unlock(&pool.owner);
}

/* Tests and benchmarks: the attention alone. Rows b < a->B with queries in qkv [B, (H + 2K) * D] (the wqkv
 * layout, RoPE applied; only the query slots are read) over layer 0 of the cache, keys 0..positions[b] through
 * tables[b] -> att [B, H * D], on a->threads threads as a decode step runs it. Scratch:
 * puyu_attention_scratch_bytes(a) bytes. */
static long attention_scratch_floats(const Args *a, int threads) {
    long n = 4L * threads * attn_work(a) + attn_max_items(a->B, threads) * (long)a->H * (a->D + 2)
             + 3 * attn_max_items(a->B, threads);
    return n + (n & 1);
}

long puyu_attention_scratch_bytes(const Args *a) {
    int threads = a->threads < 1 ? 1 : a->threads;
    return sizeof(float) * attention_scratch_floats(a, threads) + sizeof(long) * (long)a->B * max_keys(a);
}

void puyu_attention(const Args *a, const float *qkv, float *att, void *scratch, long spin_ns) {
    int sthreads = a->threads < 1 ? 1 : a->threads, threads = sthreads, own = 0;
    Args local = *a;
    if (threads > 1 && pthread_mutex_trylock(&pool.owner) == 0) {
        own = 1;
        pool.spin_ns = spin_ns;
        threads = pool_grow(threads);
    } else {
        threads = 1;
    }
    local.threads = threads;
    Ctx c;
    memset(&c, 0, sizeof c);
    c.a = &local, c.layer = 0, c.qkv = (float *)qkv, c.att = att, c.smax = max_keys(a);
    c.scores = (float *)scratch;
    c.part = c.scores + 4L * sthreads * attn_work(a);
    c.items = (int *)(c.part + attn_max_items(a->B, sthreads) * a->H * (a->D + 2));
    c.slots = (long *)((float *)scratch + attention_scratch_floats(a, sthreads));
    for (int b = 0; b < a->B; b++)
        for (int t = 0; t <= (int)a->positions[b]; t++)
            c.slots[(long)b * c.smax + t] = a->tables[b][t / a->P] * a->P + t % a->P;
    attn_plan(&c);
    run_parallel(task_attention, &c, attn_parts(&c));
    attn_merge(&c);
    if (own) pthread_mutex_unlock(&pool.owner);
}

/* Which kernel this build uses: 2 = AVX-512, 1 = AVX2 + FMA, 0 = portable C. */
int puyu_decode_isa(void) { return PUYU_ISA; }

/* A bare product for tests and benchmarks: y = x W^T (+ bias), y [M, N]. */
void puyu_linear(int M, int K, int N, const float *x, const float *W, const float *bias, float *y) {
    gemm_nt(M, K, x, K, W, bias, y, N, 0, N, 0);
}

/* The same with W in a stored format (q->fmt != F32). */
void puyu_qlinear(int M, int K, int N, const float *x, const QW *q, const float *bias, float *y) {
    QAct a;
    if (q_int_dot(q) && qa_quantize(q->fmt, M, K, x, K, &a) == 0) igemm_nt(M, &a, q, bias, y, N, 0, N, 0);
    else qgemm_nt(M, K, x, K, q, bias, y, N, 0, N, 0);
}

/* The integer products' instructions: 3 = AVX-512 VNNI, 2 = AVX-VNNI (256 bits), 1 = AVX2 vpmaddubsw,
 * 0 = portable C. */
int puyu_int_dot_isa(void) { return IDOT_ISA; }

/* n rows of D floats x into a KV store of format fmt (dst: n * D elements; scales: n floats for KV_INT8), as
 * rope_and_store writes keys and values (tests check the rounding against torch's). */
void puyu_kv_store(int fmt, int n, int D, const float *x, void *dst, float *scales) {
    for (int i = 0; i < n; i++)
        kv_put(fmt, (uint8_t *)dst + (long)i * D * kv_elem_bytes(fmt), scales ? scales + i : NULL, x + (long)i * D, D);
}

/* Row n of a stored matrix [*, K] as float32 (tests). */
void puyu_qrow(int K, long n, const QW *q, float *out) { q_row(q, K, n, out); }

/* ---------------------------------------------------------------- pool tests ----------------- */

/* Tests: while hold is set, workers wake for each region but claim nothing (a worker that never gets a
 * core); the caller must then run every part itself. */
void puyu_pool_hold(int hold) { atomic_store(&pool.hold, hold); }

/* Tests: count the machine as oversubscribed for the next ns nanoseconds (0: no longer). */
void puyu_pool_mark_contended(long ns) { atomic_store(&contended_until, ns > 0 ? now_ns() + ns : 0); }

/* Tests: ns left of the oversubscribed mode (0: not in it); this thread's run_delay (-1: unreadable). */
long puyu_pool_contended_ns(void) {
    long left = atomic_load(&contended_until) - now_ns();
    return left > 0 ? left : 0;
}
long puyu_run_delay_ns(void) { return run_delay_ns(); }  /* -1, -2: see run_delay_ns */
int puyu_preempt_rule(void) { return PUYU_PREEMPT_RULE; }

/* Tests: out[0..2] = regions run in parallel, parts the caller ran, parts workers ran (since load). */
void puyu_pool_stats(long *out) {
    for (int i = 0; i < 3; i++) out[i] = atomic_load(&pool.stats[i]);
}

typedef struct {
    atomic_int *counts;
    long work_ns;
} PoolProbe;

static void task_probe(void *p, int part, int parts) {
    PoolProbe *pr = (PoolProbe *)p;
    (void)parts;
    atomic_fetch_add(&pr->counts[part], 1);
    for (long t0 = now_ns(); now_ns() - t0 < pr->work_ns;) cpu_relax();
}

/* Tests: `regions` parallel regions of `parts` parts each on `threads` threads (workers idle-spin for
 * spin_ns), each part busy for work_ns; counts[p] += 1 each time part p runs. -> the threads used (1
 * when another caller holds the pool). */
int puyu_pool_test(int threads, int parts, int regions, long work_ns, long spin_ns, int *counts) {
    PoolProbe pr = {(atomic_int *)counts, work_ns};
    int own = threads > 1 && pthread_mutex_trylock(&pool.owner) == 0;
    if (own) {
        pool.spin_ns = spin_ns;
        threads = pool_grow(threads);
    } else {
        threads = 1;
    }
    /* parts < 0: regions alternate between 2 and -parts parts (the count changing between regions) */
    for (int i = 0; i < regions; i++) {
        int n = parts > 0 ? parts : (i & 1 ? -parts : 2);
        run_parallel(task_probe, &pr, threads > 1 ? n : 1);
    }
    if (own) pthread_mutex_unlock(&pool.owner);
    return threads;
}
