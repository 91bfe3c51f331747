"""The decode forward as one native call: `fused_decode.c`, compiled on first use and loaded with ctypes.

Why native code. A decode step of a small model is a few dozen tiny operations; through PyTorch each
costs its dispatch and launch (~2-5 µs), which is most of the step for the nano models this project
trains: the 220 aten ops of a nano step take ~0.6 ms while its arithmetic (6.7 MFLOP over 13 MB of
weights) needs ~0.1 ms. `fused_decode.c` runs the whole step — embedding, every layer (RMSNorm, packed
wqkv, RoPE, paged-cache store and attention, wo, SwiGLU, residuals), final norm and output head — in a
single call with no allocation per op, a vectorised matrix kernel (AVX-512, or AVX2 + FMA), and its own
small thread pool that splits every product's weight rows across cores. No library does this for PyTorch CPU tensors without a
compile step of its own (`torch.compile` needs a C++ toolchain too, recompiles as the cache grows, and
leaves one Python-level call per fused region), so the kernel is ~700 lines of C that the project owns
and tests against the model's forward (`tests/engine/test_engine_fused_decode.py`).

Threads: with few rows (a single stream) each matrix product's weight rows are split across the cores;
with at least `split_rows` rows per core each core runs the whole forward for its own rows of the batch,
so no data crosses cores inside the step. Short fresh prompts are prefilled by the same call (`prefill`):
every prompt token is a row at its own position, and each row attends to its sequence's keys up to
itself, which the call has just written to the cache.

When it runs: CPU, a KV cache stored as float32, bfloat16 or int8 (`puyu.engine.kv_cache`, "KV formats": the
kernel quantizes each new key and value as it stores them, with torch's rounding bit for bit, and streams the
cache in token order, converting each block of 32 tokens' keys and values once into a small buffer for the
float32 score and value loops and a running softmax; a long sequence is split across the threads in chunks
that are merged: `attention()` runs this part alone), puyu's own `InternLM2ForCausalLM` with float32 weights or packed ones
(`puyu.model.quant`: bf16, int8 per output row, int4 in groups; the kernel reads the packed bytes: bf16
is widened in registers; int8 and int4 products by default quantize their input rows to int8 per block of 32
and multiply in integers, within the bound stated in fused_decode.c ("integer dot products";
tests/engine/test_engine_int_dot.py); with act="f32" / PUYU_QUANT_ACT=f32 they dequantize in registers and
accumulate in float32, so the logits equal the model's forward on the dequantized weights up to float32
rounding: tests/engine/test_engine_quant_decode.py), no forward hooks on
the model (the engine then uses the model's forward, where hooks run), a C compiler present (`cc`, or `$CC`).
Otherwise the engine uses `puyu.engine.decode_step.DecodeStep` (PyTorch ops) and says so in `Engine.stats()`.
`PUYU_FUSED_DECODE=0` turns the kernel off.

Instruction sets: the widest this CPU runs, from /proc/cpuinfo: AVX-512 (16-wide tiles of 1x16, 2x8 or
4x4 rows), else AVX2 + FMA (8-wide tiles of 1x8, 2x4 or 4x2 rows: 8 accumulators plus the loaded rows fill
the 16 ymm registers, so each weight vector loaded serves up to 4 rows of the batch; blocks of 16 and of 8
rows by broadcasting each weight into 16 or 8 rows' accumulators, with no horizontal sums), else portable C.
`PUYU_KERNEL_ISA=avx512|avx2|portable` forces one (refused with a clear error where the CPU lacks it), so
the AVX2 path can be measured and tested on an AVX-512 machine. `FusedDecode.isa` and the engine's
`decode_path` (`fused-avx512`, `fused-avx2`, `fused-portable`) name the build that runs.

Build: `cc -O3 -march=native -shared` (AVX2: plus `-mno-avx512f`; portable: no -march; on AMD CPUs plus
`-DPUYU_PF_L2`, the integer tiles' weight prefetch 4 KB ahead into L2 instead of 512 bytes into L1, the int4
scales are prefetched one tile ahead with the same hint; `-DPUYU_IROWS1=1` and `-DPUYU_FROWS1=1`, one weight row
at a time in a single input row's integer and bf16 products instead of 8 or 16: `AMD_FLAGS`) into
`$PUYU_CACHE_DIR` (default `~/.cache/puyu/kernels`), named by a hash of the source, the flags, the
compiler's version and the CPU's feature flags, so a changed source, another instruction set or another
machine sharing the home directory builds its own. The build is atomic (rename), so parallel processes
never load a half-written library.

Weights are read from the model's modules at every call (never copied), so in-place updates between
calls (optimizer steps during RL rollouts) are decoded with the current weights; a parameter moved to
new storage is noticed by its data pointer and re-checked. Packed weights are the model's own buffers
(a packed model has no float copy): updating float weights means quantizing again (`quantize_model_`),
and the new buffers are picked up the same way.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from puyu.engine.decode_step import HookWatch
from puyu.errors import PuyuError
from puyu.model.quant import FORMAT_CODES, KV_CODES, QuantEmbedding, QuantLinear, model_format
from puyu.model.rope import inv_freq

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("fused_decode.c")
# -funroll-loops and Sapphire Rapids scheduling: the 16-row products ran 155-172 GFLOP/s per core with
# -O3 -march=native alone, 216-230 with both (gcc 12 on a Zen 5 core it cannot name; peak 272).
_TUNE = ("-mtune=sapphirerapids",) if platform.machine() in ("x86_64", "AMD64") else ()


def _cpuinfo_line(key: str) -> str | None:
    """The first line of /proc/cpuinfo that starts with `key` (None where there is none or no such file)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line
    except OSError:
        pass
    return None


def cpu_vendor() -> str:
    """The CPU's vendor_id from /proc/cpuinfo ("GenuineIntel", "AuthenticAMD", ...), "" where unknown."""
    line = _cpuinfo_line("vendor_id")
    return line.split(":", 1)[1].strip() if line and ":" in line else ""


# On AMD, the integer tiles prefetch their weights 4 KB ahead into L2 instead of 512 bytes into L1
# (fused_decode.c, PUYU_PF_L2: 1.4-2x faster int8/int4 decode on Zen 4; Intel is best with the latter), and a
# single input row's integer products read one weight row at a time instead of 8 (PUYU_IROWS1=1: 1.11-1.41x on
# Zen 5), and so do its bf16 products (PUYU_FROWS1=1, four accumulator chains: 1.34x / 1.31x on Zen 5, AVX-512 /
# AVX2 build, medians of 4 alternated rounds); neither measured on Intel, which keeps the multi-row tiles.
AMD_FLAGS = ("-DPUYU_PF_L2", "-DPUYU_IROWS1=1", "-DPUYU_FROWS1=1")
if cpu_vendor() == "AuthenticAMD":
    _TUNE = (*_TUNE, *AMD_FLAGS)
_COMMON = ("-funroll-loops", "-fno-math-errno", "-fPIC", "-shared", "-pthread")
AVX512_FLAGS = ("-O3", "-march=native", *_TUNE, *_COMMON)
# -mno-avx512f turns every AVX-512 subset off, so this build runs the AVX2 + FMA code on any CPU
# (native keeps the machine's tuning); how an AVX2-only machine runs, measured on an AVX-512 one.
AVX2_FLAGS = ("-O3", "-march=native", "-mno-avx512f", *_TUNE, *_COMMON)
PORTABLE_FLAGS = ("-O3", *_COMMON)  # the compiler's baseline target: plain C loops
ISA_FLAGS = {"avx512": AVX512_FLAGS, "avx2": AVX2_FLAGS, "portable": PORTABLE_FLAGS}
# The AVX2 build without AVX-VNNI (the 256-bit vpdpbusd that Alder Lake / Sapphire Rapids add): how an AVX2
# machine without it runs the integer products (vpmaddubsw + vpmaddwd); tests and benchmarks only.
AVX2_NO_VNNI_FLAGS = (*AVX2_FLAGS, "-mno-avxvnni")
ISA_NAMES = {2: "avx512", 1: "avx2", 0: "portable"}  # puyu_decode_isa()


class FusedDecodeUnavailable(PuyuError):
    """The native decode kernel cannot be built or loaded here (the engine falls back to PyTorch ops)."""


class _Args(ctypes.Structure):
    """Mirrors `Args` in fused_decode.c (field order and types must match)."""

    _fields_ = [(n, ctypes.c_int) for n in
                ("B", "C", "H", "K", "D", "F", "V", "L", "P", "nblocks", "threads")] + [
        ("eps", ctypes.c_float), ("pos_div", ctypes.c_float),
        ("tokens", ctypes.c_void_p), ("positions", ctypes.c_void_p),
        ("invf", ctypes.c_void_p), ("invf_stride", ctypes.c_int),
        ("tables", ctypes.c_void_p), ("kc", ctypes.c_void_p), ("vc", ctypes.c_void_p),
        ("w", ctypes.c_void_p), ("logits", ctypes.c_void_p), ("min_parallel", ctypes.c_int),
        ("split_rows", ctypes.c_int), ("out_rows", ctypes.c_void_p), ("n_out", ctypes.c_int),
        ("q", ctypes.c_void_p), ("kv_fmt", ctypes.c_int), ("ks", ctypes.c_void_p), ("vs", ctypes.c_void_p)]


class _QW(ctypes.Structure):
    """Mirrors `QW` in fused_decode.c: one weight matrix in a stored format (puyu.model.quant)."""

    _fields_ = [("fmt", ctypes.c_int), ("group", ctypes.c_int), ("data", ctypes.c_void_p), ("scales", ctypes.c_void_p),
                ("act", ctypes.c_int)]


ACTIVATIONS = ("int8", "f32")  # how int8 / int4 products treat their input rows (see default_act)
INT_DOT_NAMES = {3: "avx512-vnni", 2: "avx-vnni", 1: "avx2-maddubs", 0: "portable"}  # puyu_int_dot_isa()


def default_act() -> str:
    """How products with int8 / int4 weights take their input: $PUYU_QUANT_ACT, default "int8".

    "int8": each input row is quantized to int8 per block of 32 (scale max|x| / 127, as llama.cpp's Q8_0) and
    multiplied in integers (vpdpbusd / vpmaddubsw); "f32": the weights are dequantized in registers and
    multiplied with the float32 input. int8 is the default because it is the faster one on the 1.8B shape
    (README, "Performance": the integer rows) and its error stays within the bound in fused_decode.c
    ("integer dot products") and the perplexity goals (README, the quality rows). Raises
    FusedDecodeUnavailable for another value."""
    want = os.environ.get("PUYU_QUANT_ACT", "int8").strip().lower() or "int8"
    if want not in ACTIVATIONS:
        raise FusedDecodeUnavailable(f"PUYU_QUANT_ACT={want!r}: expected one of {', '.join(ACTIVATIONS)}")
    return want


def _qw(packed, act: str = "f32") -> _QW:
    """The kernel's descriptor of a `puyu.model.quant.Packed` (its tensors must outlive the call); act "int8":
    int8 / int4 products quantize their input rows and multiply in integers."""
    return _QW(FORMAT_CODES[packed.fmt], packed.group, packed.data.data_ptr(),
               packed.scales.data_ptr() if packed.scales is not None else None, int(act == "int8"))


def _cpu_flags() -> str:
    return _cpuinfo_line("flags") or platform.processor()


def cpu_isas() -> set[str]:
    """The kernel builds this CPU can run: "portable" always, "avx2" with AVX2 and FMA, "avx512" with AVX-512F
    (from /proc/cpuinfo; an unknown CPU gets "portable" only)."""
    flags = set(_cpu_flags().split())
    out = {"portable"}
    if platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= flags:
        out.add("avx2")
        if "avx512f" in flags:
            out.add("avx512")
    return out


def default_isa() -> str:
    """The build to use: $PUYU_KERNEL_ISA (avx512 | avx2 | portable) when set, else the widest this CPU runs.
    Raises FusedDecodeUnavailable for an unknown name or an instruction set the CPU lacks."""
    want = os.environ.get("PUYU_KERNEL_ISA", "").strip().lower()
    have = cpu_isas()
    if not want:
        return "avx512" if "avx512" in have else "avx2" if "avx2" in have else "portable"
    if want not in ISA_FLAGS:
        raise FusedDecodeUnavailable(f"PUYU_KERNEL_ISA={want!r}: expected one of {', '.join(ISA_FLAGS)}")
    if want not in have:
        raise FusedDecodeUnavailable(f"PUYU_KERNEL_ISA={want}: this CPU cannot run it (it has {', '.join(sorted(have))})")
    return want


def default_flags() -> tuple[str, ...]:
    """The compiler flags of `default_isa()`."""
    return ISA_FLAGS[default_isa()]




def cache_dir() -> Path:
    """Where built kernels live: $PUYU_CACHE_DIR/kernels or ~/.cache/puyu/kernels; a per-user folder in the
    temporary directory when that cannot be created (a read-only home)."""
    preferred = Path(os.environ.get("PUYU_CACHE_DIR") or Path.home() / ".cache" / "puyu") / "kernels"
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"puyu-{os.getuid()}" / "kernels"
    fallback.mkdir(parents=True, exist_ok=True, mode=0o700)
    return fallback


_libs: dict[tuple[Path, tuple[str, ...]], ctypes.CDLL] = {}  # (source, flags): benchmarks build other sources
_build_lock = threading.Lock()


def _build(cc: str, flags: tuple[str, ...], out: Path) -> None:
    """Compile SOURCE into `out` atomically (a temporary file renamed into place)."""
    try:
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
    except OSError as e:
        raise FusedDecodeUnavailable(f"cannot write the built kernel to {out.parent}: {e}") from e
    try:
        r = subprocess.run([cc, *flags, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise FusedDecodeUnavailable(f"building {SOURCE.name} with {cc} failed:\n{r.stderr[-2000:]}")
        os.replace(tmp, out)
    except (OSError, subprocess.SubprocessError) as e:
        raise FusedDecodeUnavailable(f"building {SOURCE.name} with {cc} failed: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(flags: tuple[str, ...] | None = None) -> ctypes.CDLL:
    """Build (once per source/flags/compiler/CPU) and load the kernel library; flags None = `default_flags()`.
    Raises FusedDecodeUnavailable with the compiler's message when it cannot."""
    if flags is None:
        flags = default_flags()
    with _build_lock:
        if (SOURCE, flags) in _libs:
            return _libs[(SOURCE, flags)]
        cc = os.environ.get("CC", "cc")
        try:
            version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as e:
            raise FusedDecodeUnavailable(f"no C compiler ({cc}): {e}") from e
        key = hashlib.sha256(b"\0".join(x.encode() for x in (SOURCE.read_text(), " ".join(flags), version,
                                                              _cpu_flags()))).hexdigest()[:16]
        try:
            out = cache_dir() / f"fused_decode-{key}.so"
        except OSError as e:
            raise FusedDecodeUnavailable(f"no writable folder for the built kernel: {e}") from e
        if not out.exists():
            _build(cc, flags, out)
        try:
            lib = ctypes.CDLL(str(out))
        except OSError:  # a damaged file from elsewhere: build it again, once
            out.unlink(missing_ok=True)
            _build(cc, flags, out)
            try:
                lib = ctypes.CDLL(str(out))
            except OSError as e:
                raise FusedDecodeUnavailable(f"loading {out} failed: {e}") from e
        lib.puyu_decode.argtypes = [ctypes.POINTER(_Args), ctypes.c_void_p, ctypes.c_long]
        lib.puyu_decode.restype = None
        lib.puyu_decode_scratch_bytes.argtypes = [ctypes.POINTER(_Args)]
        lib.puyu_decode_scratch_bytes.restype = ctypes.c_long
        lib.puyu_decode_isa.restype = ctypes.c_int
        lib.puyu_linear.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 4
        lib.puyu_linear.restype = None
        lib.puyu_qlinear.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p, ctypes.POINTER(_QW)] + [ctypes.c_void_p] * 2
        lib.puyu_qlinear.restype = None
        lib.puyu_int_dot_isa.restype = ctypes.c_int
        lib.puyu_qrow.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.POINTER(_QW), ctypes.c_void_p]
        lib.puyu_qrow.restype = None
        lib.puyu_kv_store.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 3
        lib.puyu_kv_store.restype = None
        lib.puyu_attention.argtypes = [ctypes.POINTER(_Args)] + [ctypes.c_void_p] * 3 + [ctypes.c_long]
        lib.puyu_attention.restype = None
        lib.puyu_attention_scratch_bytes.argtypes = [ctypes.POINTER(_Args)]
        lib.puyu_attention_scratch_bytes.restype = ctypes.c_long
        lib.puyu_pool_hold.argtypes = [ctypes.c_int]
        lib.puyu_pool_hold.restype = None
        lib.puyu_pool_mark_contended.argtypes = [ctypes.c_long]
        lib.puyu_pool_mark_contended.restype = None
        lib.puyu_pool_stats.argtypes = [ctypes.c_void_p]
        lib.puyu_pool_stats.restype = None
        lib.puyu_pool_test.argtypes = [ctypes.c_int] * 3 + [ctypes.c_long] * 2 + [ctypes.c_void_p]
        lib.puyu_pool_test.restype = ctypes.c_int
        lib.puyu_pool_contended_ns.restype = ctypes.c_long
        lib.puyu_run_delay_ns.restype = ctypes.c_long
        lib.puyu_preempt_rule.restype = ctypes.c_int
        _libs[(SOURCE, flags)] = lib
        return lib


def available() -> bool:
    """True when the kernel is enabled and builds here (the reason is logged once when it does not)."""
    if os.environ.get("PUYU_FUSED_DECODE", "1") == "0":
        return False
    try:
        load()
        return True
    except FusedDecodeUnavailable as e:
        log.warning("native decode kernel unavailable, using PyTorch ops: %s", e)
        return False


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, flags=None) -> torch.Tensor:
    """x [M, K] @ w[N, K]^T (+ b) with the kernel's matrix product, one thread (tests, benchmarks)."""
    x, w = x.float().contiguous(), w.float().contiguous()
    y = torch.empty(x.shape[0], w.shape[0])
    bias = b.float().contiguous() if b is not None else None
    load(flags).puyu_linear(x.shape[0], x.shape[1], w.shape[0], x.data_ptr(), w.data_ptr(),
                            bias.data_ptr() if bias is not None else None, y.data_ptr())
    return y


def int_dot_isa(flags=None) -> str:
    """The instructions of the integer products in this build: avx512-vnni, avx-vnni, avx2-maddubs or portable."""
    return INT_DOT_NAMES[load(flags).puyu_int_dot_isa()]


def qlinear(x: torch.Tensor, packed, b: torch.Tensor | None = None, flags=None, act: str = "f32") -> torch.Tensor:
    """x [M, K] @ W^T (+ b) with W a `puyu.model.quant.Packed` [N, K] in a stored format, read by the kernel
    directly (one thread; tests, benchmarks). act "int8": int8 / int4 weights multiply x quantized to int8
    per block of 32 in integers (`default_act`); "f32": x as it is."""
    x = x.float().contiguous()
    N, K = packed.shape
    if x.shape[1] != K:
        raise FusedDecodeUnavailable(f"x has {x.shape[1]} columns, the weight {K}")
    y = torch.empty(x.shape[0], N)
    bias = b.float().contiguous() if b is not None else None
    if act not in ACTIVATIONS:
        raise FusedDecodeUnavailable(f"act={act!r}: expected one of {', '.join(ACTIVATIONS)}")
    load(flags).puyu_qlinear(x.shape[0], K, N, x.data_ptr(), ctypes.byref(_qw(packed, act)),
                             bias.data_ptr() if bias is not None else None, y.data_ptr())
    return y


def qrow(packed, n: int, flags=None) -> torch.Tensor:
    """Row n of a packed matrix as the kernel reads it (an embedding lookup) -> float32 [K]."""
    out = torch.empty(packed.shape[1])
    load(flags).puyu_qrow(packed.shape[1], n, ctypes.byref(_qw(packed)), out.data_ptr())
    return out


def kv_store(x: torch.Tensor, kv: str, flags=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows x [n, D] stored in KV format `kv` by the kernel's own store code -> (elements [n, D], int8 scales [n]
    or None) (tests: the kernel rounds as `PagedKVCache.encode` does)."""
    x = x.float().contiguous()
    n, D = x.shape
    out = torch.empty(n, D, dtype={"f32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}[kv])
    scales = torch.empty(n) if kv == "int8" else None
    load(flags).puyu_kv_store(KV_CODES[kv], n, D, x.data_ptr(), out.data_ptr(),
                              scales.data_ptr() if scales is not None else None)
    return out, scales


def attention(cache, seqs, positions: list[int], q: torch.Tensor, threads: int = 1, flags=None) -> torch.Tensor:
    """The kernel's attention alone (tests, benchmarks): queries q [B, H, D] (RoPE applied) of B sequences over
    layer 0 of `cache` (a `PagedKVCache` in any KV format), keys 0..positions[b] of seqs[b] -> [B, H, D] float32,
    on `threads` threads as a decode step splits it."""
    cfg = cache.cfg
    B, H, D = q.shape
    K = cfg.num_key_value_heads
    if H != cfg.num_attention_heads or D != cfg.head_dim or B != len(seqs) or B != len(positions):
        raise FusedDecodeUnavailable(f"q {tuple(q.shape)} does not match the cache's model (H {cfg.num_attention_heads}, "
                                     f"D {cfg.head_dim}) and {len(seqs)} sequences")
    if cache.format not in KV_CODES or cache.k.device.type != "cpu":
        raise FusedDecodeUnavailable(f"the kernel reads a CPU cache stored as {', '.join(KV_CODES)}")
    for s, p in zip(seqs, positions):
        s.ensure(p + 1)
    n_rep = H // K
    qkv = torch.zeros(B, K, n_rep + 2, D)
    qkv[:, :, :n_rep] = q.float().view(B, K, n_rep, D)
    tables = [s.table for s in seqs]
    tab = (ctypes.c_void_p * B)(*[t.data_ptr() for t in tables])
    pos = (ctypes.c_int64 * B)(*positions)
    a = _Args()
    a.B, a.H, a.K, a.D, a.L = B, H, K, D, 1
    a.P, a.nblocks, a.threads = cache.block_size, cache.num_blocks, max(1, int(threads))
    a.positions, a.tables = ctypes.addressof(pos), ctypes.addressof(tab)
    a.kc, a.vc = cache.k.data_ptr(), cache.v.data_ptr()
    a.kv_fmt = KV_CODES[cache.format]
    a.ks, a.vs = (None, None) if cache.k_scale is None else (cache.k_scale.data_ptr(), cache.v_scale.data_ptr())
    lib = load(flags)
    scratch = torch.empty(lib.puyu_attention_scratch_bytes(ctypes.byref(a)), dtype=torch.uint8)
    out = torch.empty(B, H, D)
    lib.puyu_attention(ctypes.byref(a), qkv.data_ptr(), out.data_ptr(), scratch.data_ptr(), 200_000)
    return out


def pool_stats(flags=None) -> tuple[int, int, int]:
    """The worker pool's counters since the library was loaded: (regions run in parallel, parts the caller
    ran, parts the workers ran)."""
    out = (ctypes.c_long * 3)()
    load(flags).puyu_pool_stats(out)
    return tuple(out)


def pool_hold(hold: bool, flags=None) -> None:
    """Tests: while held, the pool's workers wake for every parallel region but take none of its parts,
    as a worker that never gets a core would; the caller then runs them all."""
    load(flags).puyu_pool_hold(int(hold))


def pool_mark_contended(seconds: float, flags=None) -> None:
    """Tests: count the machine as oversubscribed for `seconds` (0: no longer), as a preempted pool thread
    does: idle workers sleep at once, and decode calls run their per-product regions on the caller."""
    load(flags).puyu_pool_mark_contended(int(seconds * 1e9))


def pool_contended_s(flags=None) -> float:
    """Tests: seconds left of the oversubscribed mode (0.0: not in it)."""
    return load(flags).puyu_pool_contended_ns() / 1e9


def run_delay_s(flags=None) -> float | None:
    """The calling thread's run delay (seconds it was runnable but waited for a core, since it started), as
    the pool's oversubscription rule reads it from /proc/thread-self/schedstat; None where unreadable."""
    ns = load(flags).puyu_run_delay_ns()
    return None if ns < 0 else ns / 1e9


def pool_probe(threads: int, parts: int, regions: int, work_us: float = 0.0, spin_us: float = 200.0,
               flags=None) -> tuple[list[int], int]:
    """Tests: `regions` parallel regions of `parts` parts each on the kernel's pool, each part busy for
    `work_us` -> (how often each part ran, threads used). `parts` < 0: the regions alternate between 2 and
    -parts parts."""
    counts = (ctypes.c_int * abs(parts))()
    used = load(flags).puyu_pool_test(threads, parts, regions, int(work_us * 1000), int(spin_us * 1000), counts)
    return list(counts), used


class FusedDecode:
    """`step.run(cache, seqs, tokens, positions, bases) -> logits [B, V]` for an `InternLM2ForCausalLM`
    in float32 on the CPU, through the native kernel (module docstring).

    threads: cores to split each matrix product over (the caller is one of them); spin_us: how long idle
    worker threads spin before sleeping (a decode loop calls again within tens of µs); min_parallel:
    weight elements below which a product runs on the calling thread alone (the hand-off costs ~1 µs);
    split_rows: rows per core from which the cores split the batch instead of the weights. Default 16: a
    16-stream step on 2 cores splits the weights, so each core reads half of them for all 16 rows instead
    of all of them for 8 (on the Sapphire Rapids VM the nano weights stream from L3 at ~5 GB/s per core:
    one thread's 16-row product over the 13.4 MB of a nano step ran 40-41 GFLOP/s, an 8-row one 22-25,
    thread CPU time, AVX2 and AVX-512 builds, 2026-12-01 at load 7-9; benchmarks/decode_step.py times the
    two splits). It was 4, from medians of a nano step on 2 cores of a machine with faster caches, weights
    vs rows split: 148 vs 209 µs at 2 rows, 178 vs 224 at 4, 273 vs 261 at 8, 486 vs 427 at 16, 897 vs 797
    at 32."""

    def __init__(self, model, threads: int = 1, spin_us: float = 200.0, min_parallel: int = 16384,
                 split_rows: int = 16, flags: tuple[str, ...] | None = None, act: str | None = None):
        if not self.supports(model):
            raise FusedDecodeUnavailable("the fused decode needs puyu's InternLM2ForCausalLM in float32 on the CPU")
        self.lib = load(flags)
        self.isa = ISA_NAMES[self.lib.puyu_decode_isa()]
        self.weights_format = model_format(model)  # of the linear layers; "f32" when none is packed
        self.act = default_act() if act is None else act
        if self.act not in ACTIVATIONS:
            raise FusedDecodeUnavailable(f"act={self.act!r}: expected one of {', '.join(ACTIVATIONS)}")
        # what Engine.stats()["decode_path"] shows: the build, the stored format when not float32, and "-a8"
        # when int8 / int4 products quantize their input to int8 (integer dot products)
        self.path = f"fused-{self.isa}" + ("" if self.weights_format == "f32" else f"-{self.weights_format}")
        if self.act == "int8" and self.weights_format in ("int8", "int4"):
            self.path += "-a8"
        self.model, self.cfg = model, model.config
        self.threads, self.spin_ns, self.min_parallel = max(1, int(threads)), int(spin_us * 1000), min_parallel
        self.split_rows = split_rows
        m = model.model
        mods = [m.tok_embeddings, m.norm, model.output]
        for layer in m.layers:
            att, ff = layer.attention, layer.feed_forward
            mods += [layer.attention_norm, att.wqkv, att.wqkv, att.wo, att.wo, layer.ffn_norm, ff.w1, ff.w3, ff.w2]
        # Per layer: attn_norm, wqkv, wqkv bias, wo, wo bias, ffn_norm, w1, w3, w2 (the order in the C file).
        c = self.cfg
        C, V, F, QKV, HD = (c.hidden_size, c.vocab_size, c.intermediate_size,
                            (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim,
                            c.num_attention_heads * c.head_dim)
        self._slots = [(mods[0], "weight", (V, C)), (mods[1], "weight", (C,)), (mods[2], "weight", (V, C))]
        names = ["weight", "weight", "bias", "weight", "bias", "weight", "weight", "weight", "weight"]
        shapes = [(C,), (QKV, C), (QKV,), (C, HD), (C,), (C,), (F, C), (F, C), (C, F)]
        for i in range(len(m.layers)):
            self._slots += [(mods[3 + 9 * i + j], names[j], shapes[j]) for j in range(9)]
        self.hooked = HookWatch(model.modules())  # hooked() -> True while forward hooks are registered
        # What each step reads to notice moved storage: per slot, the dict holding its tensor and the key
        # (a packed weight: its data and its scales).
        self._reads = []
        for mod, name, _ in self._slots:
            if isinstance(mod, (QuantLinear, QuantEmbedding)) and name == "weight":
                self._reads += [(mod._buffers, "qweight"), (mod._buffers, "scales")]
            else:
                self._reads.append((mod._parameters, name))
        self._ptrs: tuple[int, ...] | None = None
        self._wtable = self._qtable = None
        self._invf: dict[float, torch.Tensor] = {}
        self._args = _Args()  # the model's sizes are set once; the rest at every call
        a = self._args
        a.C, a.H, a.K, a.D = C, c.num_attention_heads, c.num_key_value_heads, c.head_dim
        a.F, a.V, a.L, a.eps = F, V, c.num_hidden_layers, c.rms_norm_eps
        a.pos_div = c.rope_factor if c.rope_type == "linear" else 1.0
        self._cache_of_args = None  # the cache whose layout _args holds
        self._scratch = torch.empty(0, dtype=torch.uint8)  # grown on demand, reused by every call
        self._scratch_fits = (0, 0, 0)  # (rows, keys, threads) the scratch was last sized for

    @staticmethod
    def supports(model) -> bool:
        from puyu.model.transformer import InternLM2ForCausalLM

        if not isinstance(model, InternLM2ForCausalLM) or model.config.head_dim % 2:
            return False
        for layer in model.model.layers:  # a wrapped projection (a LoRA adapter) keeps no weight of its own
            for mod in (layer.attention.wqkv, layer.attention.wo, layer.feed_forward.w1, layer.feed_forward.w2,
                        layer.feed_forward.w3):
                if mod._parameters.get("weight") is None and not isinstance(mod, QuantLinear):
                    return False
        return (all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
                and all(b.device.type == "cpu" for b in model.buffers()))

    def _weights(self):
        """The C pointer table of the current weights (rebuilt and re-checked when any storage moved), and
        the table of stored formats (None when every weight is float32)."""
        # only pointers on every step: no Packed objects, no checks (nn.Module keeps its tensors in these dicts)
        ptrs = tuple([0 if t is None else t.data_ptr() for t in [d.get(k) for d, k in self._reads]])
        if ptrs != self._ptrs:
            tensors = [mod.packed if isinstance(mod, (QuantLinear, QuantEmbedding)) and name == "weight"
                       else mod._parameters.get(name) for mod, name, _ in self._slots]
            qtable, packed_any = (_QW * len(tensors))(), False
            for i, ((mod, name, shape), t) in enumerate(zip(self._slots, tensors)):
                if t is None:
                    if name == "weight":  # a null pointer would crash the kernel: refuse instead
                        raise FusedDecodeUnavailable(f"{type(mod).__name__} has no weight of its own (a wrapper?)")
                    continue
                if not isinstance(t, torch.Tensor):  # a Packed weight
                    if t.shape != shape:
                        raise FusedDecodeUnavailable(f"{type(mod).__name__} has shape {t.shape}, the config says {shape}")
                    qtable[i] = _qw(t, self.act)
                    packed_any = True
                    continue
                if t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous():
                    raise FusedDecodeUnavailable(f"{type(mod).__name__}.{name} is not a contiguous float32 CPU "
                                                 f"tensor ({t.dtype}, {t.device}); the fused decode cannot read it")
                if tuple(t.shape) != shape:  # the kernel reads by the config's sizes: never past a tensor
                    raise FusedDecodeUnavailable(f"{type(mod).__name__}.{name} has shape {tuple(t.shape)}, "
                                                 f"the config says {shape}")
            self._wtable = (ctypes.c_void_p * len(tensors))(*[
                0 if t is None else t.data_ptr() if isinstance(t, torch.Tensor) else t.data.data_ptr() for t in tensors])
            self._qtable = qtable if packed_any else None
            self._packed = [t for t in tensors if t is not None and not isinstance(t, torch.Tensor)]  # kept alive
            self._ptrs = ptrs
        return self._wtable

    def _inv_freq(self, base: float | None) -> torch.Tensor:
        key = self.cfg.rope_theta if base is None else float(base)
        t = self._invf.get(key)
        if t is None:
            t = self._invf[key] = inv_freq(key, self.cfg.head_dim).float().contiguous()  # [D/2]
        return t

    @torch.inference_mode()
    def run(self, cache, seqs, tokens: list[int], positions: list[int], bases: list[float | None]) -> torch.Tensor:
        """One token per sequence: tokens[b] at positions[b] (keys 0..positions[b]) -> logits [B, V]."""
        for s, p in zip(seqs, positions):
            s.ensure(p + 1)
        return self._call(cache, [s.table for s in seqs], tokens, positions, bases, None)

    # Prompts go through the kernel while rows x longest prompt stays under this (the kernel keeps a slot
    # table of that size, and its attention is written for decode; long prompts use PyTorch's).
    PREFILL_ROWS_X_KEYS = 1 << 18

    def can_prefill(self, prompts: list[list[int]], starts: list[int] | None = None) -> bool:
        starts = starts or [0] * len(prompts)
        rows = sum(len(p) - s for p, s in zip(prompts, starts))
        return rows * max(map(len, prompts)) <= self.PREFILL_ROWS_X_KEYS

    @torch.inference_mode()
    def prefill(self, cache, seqs, prompts: list[list[int]], bases: list[float | None],
                starts: list[int] | None = None, all_rows: bool = False) -> torch.Tensor:
        """Prompt tokens from `starts[i]` on (the earlier ones are cached; default: none), every token a row
        of one call: each row attends to its own sequence's keys up to itself -> logits [n, V] of each
        prompt's last token (all_rows: [rows, V] of every row, the prompts' tokens in order; perplexity
        through the kernel, benchmarks/quant.py)."""
        tokens, positions, tables, last, row_bases = [], [], [], [], []
        for s, p, b, st in zip(seqs, prompts, bases, starts or [0] * len(prompts)):
            s.ensure(len(p))
            tokens += p[st:]
            positions += range(st, len(p))
            tables += [s.table] * (len(p) - st)
            row_bases += [b] * (len(p) - st)
            last.append(len(tokens) - 1)
        return self._call(cache, tables, tokens, positions, row_bases, list(range(len(tokens))) if all_rows else last)

    def _call(self, cache, tables, tokens, positions, bases, out_rows) -> torch.Tensor:
        cfg, B = self.cfg, len(tokens)
        if cache.format not in KV_CODES or cache.dtype != torch.float32 or cache.k.device.type != "cpu":
            raise FusedDecodeUnavailable(f"the fused decode needs a CPU KV cache computed in float32 and stored as "
                                         f"{', '.join(KV_CODES)} (got {cache.format}, {cache.dtype}, {cache.k.device})")
        if all(b == bases[0] for b in bases):
            invf, stride = self._inv_freq(bases[0]), 0
        else:
            invf, stride = torch.stack([self._inv_freq(b) for b in bases]), cfg.head_dim // 2  # [B, D/2]
        tok = (ctypes.c_int64 * B)(*tokens)
        pos = (ctypes.c_int64 * B)(*positions)
        tab = (ctypes.c_void_p * B)(*[t.data_ptr() for t in tables])
        n_out = B if out_rows is None else len(out_rows)
        out = None if out_rows is None else (ctypes.c_int64 * n_out)(*out_rows)
        logits = torch.empty(n_out, cfg.vocab_size)
        a = self._args
        if cache is not self._cache_of_args:
            a.P, a.nblocks = cache.block_size, cache.num_blocks
            self._cache_of_args = cache
        a.B = B
        a.threads, a.min_parallel, a.split_rows = self.threads, self.min_parallel, self.split_rows
        a.tokens, a.positions = ctypes.addressof(tok), ctypes.addressof(pos)
        a.invf, a.invf_stride = invf.data_ptr(), stride
        a.tables = ctypes.addressof(tab)
        a.kc, a.vc = cache.k.data_ptr(), cache.v.data_ptr()
        a.kv_fmt = KV_CODES[cache.format]
        a.ks, a.vs = (None, None) if cache.k_scale is None else (cache.k_scale.data_ptr(), cache.v_scale.data_ptr())
        a.w = ctypes.addressof(self._weights())
        a.q = None if self._qtable is None else ctypes.addressof(self._qtable)
        a.logits = logits.data_ptr()
        a.out_rows, a.n_out = (None, 0) if out is None else (ctypes.addressof(out), n_out)
        # the scratch grows with rows, keys and threads: sized again only when one of them outgrows it
        keys, fits = max(positions) + 1, self._scratch_fits
        if B > fits[0] or keys > fits[1] or self.threads != fits[2]:
            need = self.lib.puyu_decode_scratch_bytes(ctypes.byref(a))
            if self._scratch.numel() < need:
                self._scratch = torch.empty(need + need // 2, dtype=torch.uint8)
            self._scratch_fits = (B, keys, self.threads)
        self.lib.puyu_decode(ctypes.byref(a), self._scratch.data_ptr(), self.spin_ns)
        return logits

    def close(self) -> None:
        pass
