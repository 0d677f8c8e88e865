"""The pairwise pass's fused kernel: C compiled on first use, run on torch's own OpenMP threads.

Per checkpoint the pass needs I_t = G_h o G_e, with G_h = H_i H_j^T (rank d + 1) and G_e = E_i E_j^T
(rank k). Done with torch ops, both are GEMMs whose b x c outputs are written to memory and read back, then
the product, the running total over checkpoints and the clamped class sums are one memory pass each: on
2 cores the pass is bound by memory traffic, not arithmetic. This kernel never writes an influence value:
for a register block of R train rows x V validation columns it computes both products from the factors
(the GEMM micro-kernel shape, R x U vectors of accumulators), multiplies them, adds them over checkpoints
and sums the positive parts of I_t and of the total, all in registers; the validation factors of a
column tile stay in L2 for all its row blocks. Its arithmetic is the GEMM bound's plus one row of the
feature Gram (the bias as a feature of ones) and one of the error Gram.

Columns are grouped by class, each class padded with zero columns to a multiple of V (``block_columns``):
a zero error vector gives I = 0, so padding adds nothing to a positive sum, and no block straddles two
classes. The C source is in this module, so that editing it changes the code fingerprint of the stages that
use it. It is compiled with the system's C compiler into a per-user cache, keyed by the source, the flags
and the CPU (512-bit vectors where the CPU has AVX-512, else 256-bit). The cache folder is private (0700,
this user's); the library's hash is recorded at build and checked before every load, and a library that
fails the check (or lacks the kernel's symbols) is not used: the pass falls back to torch ops, as without
a compiler (or with
``INFLUENCE_SIGNALS_KERNEL=torch``) the engine runs the same pass with torch ops, and the tests check both
against the dense definition. It links the OpenMP runtime that torch has loaded (``libgomp.so.1``), so its
threads are torch's threads (``torch.set_num_threads``), not a second pool competing for the cores.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = r"""
#include <stddef.h>
#include <string.h>

#ifdef __AVX512F__
#define W 16  /* floats per vector */
#else
#define W 8
#endif
#define R 6  /* train rows per register block: with U, 12 accumulators (fits AVX2's 16 registers) */
#define U 2  /* vectors of validation columns per register block */
#define V (U * W)

typedef float vf __attribute__((vector_size(4 * W)));
typedef int vi __attribute__((vector_size(4 * W)));

static inline vf load(const float* p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline vf positive(vf x) { vf z = {0}; return (vf)((vi)x & (x > z)); }
static inline float lanes(vf v) { float s = 0.f; for (int l = 0; l < W; l++) s += v[l]; return s; }

int block_columns(void) { return V; }

/* out[r][u] = sum_p rows[r][p] cols[p * ld + u * W ...]: an R x V block of a rank-depth product, in registers */
static inline __attribute__((always_inline)) void product(int depth, const float* const rows[R], const float* cols,
                                                         size_t ld, vf out[R][U])
{
    for (int r = 0; r < R; r++)
        for (int u = 0; u < U; u++) out[r][u] = (vf){0};
    for (int p = 0; p < depth; p++) {
        vf x[U];
        for (int u = 0; u < U; u++) x[u] = load(cols + (size_t)p * ld + u * W);
        for (int r = 0; r < R; r++) {
            float s = rows[r][p];
            for (int u = 0; u < U; u++) out[r][u] += s * x[u];
        }
    }
}

/* Positive class masses of b train rows against one column tile of c validation columns, over n_t checkpoints.
   hi: n_t x b x d1 train features (with the bias 1); ei: n_t x b x k weighted train errors;
   hj: n_t x d1 x c and ej: n_t x k x c validation features and errors, columns grouped by class and padded;
   runs: the class and the column range [lo, hi) (multiples of V) of each class in the tile;
   pos_t (row stride n_classes, checkpoint stride t_stride) += the positive sums of I_t per class;
   pos += those of the total over checkpoints. */
void fused_pass(int b, int c, int n_t, int d1, int k, const float* hi, const float* ei, const float* hj,
                const float* ej, int nruns, const int* run_class, const int* run_lo, const int* run_hi,
                int n_classes, float* pos_t, long t_stride, float* pos)
{
    int blocks = (b + R - 1) / R;
    #pragma omp parallel for schedule(static)
    for (int blk = 0; blk < blocks; blk++) {
        int rows[R];  /* the last block repeats its last row; only real rows are written */
        for (int r = 0; r < R; r++) rows[r] = blk * R + r < b ? blk * R + r : b - 1;
        vf per_t[n_t][R];
        for (int q = 0; q < nruns; q++) {
            vf summed[R];
            for (int r = 0; r < R; r++) summed[r] = (vf){0};
            for (int t = 0; t < n_t; t++)
                for (int r = 0; r < R; r++) per_t[t][r] = (vf){0};
            for (int j = run_lo[q]; j < run_hi[q]; j += V) {
                vf total[R][U];
                for (int t = 0; t < n_t; t++) {
                    const float *h_rows[R], *e_rows[R];
                    for (int r = 0; r < R; r++) {
                        h_rows[r] = hi + ((size_t)t * b + rows[r]) * d1;
                        e_rows[r] = ei + ((size_t)t * b + rows[r]) * k;
                    }
                    vf e_gram[R][U], h_gram[R][U];
                    product(k, e_rows, ej + (size_t)t * k * c + j, c, e_gram);
                    product(d1, h_rows, hj + (size_t)t * d1 * c + j, c, h_gram);
                    for (int r = 0; r < R; r++)
                        for (int u = 0; u < U; u++) {
                            vf influence = h_gram[r][u] * e_gram[r][u];
                            total[r][u] = t ? total[r][u] + influence : influence;
                            per_t[t][r] += positive(influence);
                        }
                }
                for (int r = 0; r < R; r++)
                    for (int u = 0; u < U; u++) summed[r] += positive(total[r][u]);
            }
            size_t cls = (size_t)run_class[q];
            for (int r = 0; r < R && blk * R + r < b; r++) {
                size_t at = (size_t)rows[r] * n_classes + cls;
                for (int t = 0; t < n_t; t++) pos_t[t * t_stride + at] += lanes(per_t[t][r]);
                pos[at] += lanes(summed[r]);
            }
        }
    }
}
"""

FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC")
_INT, _POINTER = ctypes.c_int, ctypes.c_void_p


def _cpu() -> str:
    """What ``-march=native`` compiles for: the CPU's model and flags (a shared cache may serve other nodes)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        return next((line for line in info.splitlines() if line.startswith("flags")), "") + platform.processor()
    except OSError:
        return platform.processor()


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "influence_signals"


class UntrustedKernel(OSError):
    """The cached library is not one this user built: the pass runs with torch ops instead."""


def _private(folder: Path) -> Path:
    """``folder``, created 0700 if missing; refused unless this user owns it and nobody else can write to it."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid():
        raise UntrustedKernel(f"{folder} belongs to uid {info.st_uid}, not this user")
    if info.st_mode & 0o077:
        os.chmod(folder, 0o700)  # ours: make it private (a library in it could have been replaced by others)
    return folder


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build(compiler: str) -> Path:
    """Compile the kernel once per source, flags and CPU into a private cache; a finished library is renamed
    into place atomically, its hash written beside it (``.sha256``) and checked before every load."""
    key = hashlib.sha256("\n".join((SOURCE, *FLAGS, compiler, platform.machine(), _cpu())).encode()).hexdigest()[:16]
    folder = _private(_cache_dir())
    target = folder / f"fused_pass_{key}.so"
    digest = target.with_suffix(".sha256")
    if target.exists() and digest.exists():
        if target.stat().st_uid != os.getuid() or target.stat().st_mode & 0o022 or _sha256(target) != digest.read_text().strip():
            raise UntrustedKernel(f"{target} differs from the library built here (replaced or edited)")
        return target
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        source = Path(tmp) / "fused_pass.c"
        source.write_text(SOURCE)
        built = Path(tmp) / target.name
        subprocess.run([compiler, *FLAGS, str(source), "-o", str(built)], check=True, capture_output=True, text=True)
        os.chmod(built, 0o700)
        (Path(tmp) / "digest").write_text(_sha256(built))
        os.replace(Path(tmp) / "digest", digest)
        os.replace(built, target)
    return target


@cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None (no compiler, a failed build, a cached library that fails its check, or
    ``INFLUENCE_SIGNALS_KERNEL=torch``): the pass then runs with torch ops."""
    if os.environ.get("INFLUENCE_SIGNALS_KERNEL", "auto") == "torch":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.info("no C compiler: the pairwise pass runs with torch ops")
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
        lib.fused_pass.restype, lib.block_columns.restype = None, _INT
    except (OSError, AttributeError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or err
        log.warning("the fused kernel is not used (%s): the pairwise pass runs with torch ops", detail)
        return None
    lib.fused_pass.argtypes = [_INT, _INT, _INT, _INT, _INT, _POINTER, _POINTER, _POINTER, _POINTER, _INT,
                               _POINTER, _POINTER, _POINTER, _INT, _POINTER, ctypes.c_long, _POINTER]
    return lib


class Runs:
    """The classes present in a tile and their column ranges, as the C arrays the kernel reads."""

    def __init__(self, runs: list[tuple[int, int, int]]) -> None:
        array = ctypes.c_int * max(1, len(runs))
        self.count = len(runs)
        self.classes, self.lows, self.highs = (array(*[run[i] for run in runs]) for i in range(3))


def _checked(*tensors: torch.Tensor) -> None:
    for tensor in tensors:
        if tensor.dtype != torch.float32 or tensor.device.type != "cpu" or not tensor.is_contiguous():
            raise ValueError("the fused kernel takes contiguous float32 CPU tensors")


def block_columns(lib: ctypes.CDLL | None) -> int:
    """The kernel's column block V: each class's columns are padded to a multiple of it (1 without the kernel)."""
    return 1 if lib is None else int(lib.block_columns())


CACHE_BYTES = 256 * 1024  # the validation factors of one column tile, kept in (a share of) L2


def column_tile(lib: ctypes.CDLL, n_checkpoints: int, floats_per_column: int) -> int:
    """The kernel's column tile: as wide as fits ``CACHE_BYTES`` for all checkpoints, in whole blocks."""
    align = block_columns(lib)
    return max(align, CACHE_BYTES // (4 * n_checkpoints * floats_per_column) // align * align)


def fused_pass(lib: ctypes.CDLL, features: torch.Tensor, errors: torch.Tensor, val_features: torch.Tensor,
               val_errors: torch.Tensor, runs: Runs, pos_t: torch.Tensor, pos: torch.Tensor) -> None:
    """Add the positive class sums of I_t = (features val_features) o (errors val_errors) to ``pos_t`` (T, b, C)
    and those of their sum over checkpoints to ``pos`` (b, C), in place. Factors: (T, b, d + 1), (T, b, k),
    (T, d + 1, c), (T, k, c), columns grouped by class with each class's run a multiple of ``block_columns``."""
    (n_t, rows, depth), k, width = features.shape, errors.shape[-1], val_features.shape[-1]
    _checked(features, errors, val_features, val_errors, pos)
    if errors.shape != (n_t, rows, k) or val_features.shape != (n_t, depth, width) \
            or val_errors.shape != (n_t, k, width) or pos.shape != (rows, pos_t.shape[-1]) \
            or pos_t.shape[:2] != (n_t, rows) or pos_t.stride()[1:] != (pos_t.shape[-1], 1):
        raise ValueError("fused kernel operands of mismatched shapes")
    lib.fused_pass(rows, width, n_t, depth, k, features.data_ptr(), errors.data_ptr(), val_features.data_ptr(),
                   val_errors.data_ptr(), runs.count, runs.classes, runs.lows, runs.highs, pos.shape[1],
                   pos_t.data_ptr(), pos_t.stride(0), pos.data_ptr())
