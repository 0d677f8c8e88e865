"""The pairwise pass's fused tile kernel: C compiled on first use, run on torch's own OpenMP threads.

Per tile and checkpoint the pass needs I = G_h o G_e, with G_h = H_i H_j^T (rank d + 1, a GEMM at the
machine's peak) and G_e = E_i E_j^T (rank k). Done with torch ops, G_e is a second GEMM whose b x c output
is written and read back, then the product, the running total and the clamped class sums are one memory
pass each. This kernel takes G_h from the GEMM and does the rest in one pass over it, in registers: the
k-term dot product e_i . e_j, the product, the running total over checkpoints, and the per-class sums of
the positive parts (of I_t, and of the total at the last checkpoint).

The C source is in this module, so that editing it changes the code fingerprint of the stages that use it.
It is compiled with the system's C compiler into a per-user cache, keyed by the source, the flags and the
CPU; without a compiler (or with ``INFLUENCE_SIGNALS_KERNEL=torch``) the engine runs the same pass with torch
ops, and the tests check both against the dense definition. It links the OpenMP runtime that torch has
loaded (``libgomp.so.1``), so its threads are torch's threads (``torch.set_num_threads``), not a second
pool competing for the cores.
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

#define W 8  /* floats per vector: AVX2 width */
#define U 4  /* vectors per step */
typedef float vf __attribute__((vector_size(4 * W)));
typedef int vi __attribute__((vector_size(4 * W)));

static inline vf load(const float* p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float* p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf positive(vf x) { vf z = {0}; return (vf)((vi)x & (x > z)); }
static inline float lanes(vf v) { float s = 0.f; for (int l = 0; l < W; l++) s += v[l]; return s; }
static inline float positive1(float x) { return x > 0.f ? x : 0.f; }

/* One vector of columns for both rows, given their error dot products a0, a1: the product with the feature
   Gram, the running total, and the positive parts added to acc (I of rows 0, 1; total of rows 0, 1). */
static inline void columns(vf a0, vf a1, const float* g0, const float* g1, float* t0, float* t1, int first,
                           int last, vf* acc)
{
    vf v0 = load(g0) * a0, v1 = load(g1) * a1;
    vf u0 = first ? v0 : load(t0) + v0, u1 = first ? v1 : load(t1) + v1;
    store(t0, u0);
    store(t1, u1);
    acc[0] += positive(v0);
    acc[1] += positive(v1);
    if (last) { acc[2] += positive(u0); acc[3] += positive(u1); }
}

/* Rows 0 and 1 of a pair over the columns [lo, hi) of one class: each column of ej is loaded once for both.
   s: the positive sums of I for both rows, then of the running total for both rows. */
static void pair_run(int lo, int hi, int c, int k, const float* g0, const float* g1, const float* e0,
                     const float* e1, const float* ej, float* t0, float* t1, int first, int last, float* s)
{
    vf acc[4] = {{0}, {0}, {0}, {0}};
    int j = lo;
    for (; j + U * W <= hi; j += U * W) {  /* U independent FMA chains per row: latency hidden */
        vf a0[U], a1[U];
        for (int u = 0; u < U; u++) { vf x = load(ej + j + u * W); a0[u] = e0[0] * x; a1[u] = e1[0] * x; }
        for (int a = 1; a < k; a++) {
            const float* row = ej + (size_t)a * c + j;
            for (int u = 0; u < U; u++) { vf x = load(row + u * W); a0[u] += e0[a] * x; a1[u] += e1[a] * x; }
        }
        for (int u = 0; u < U; u++) {
            int at = j + u * W;
            columns(a0[u], a1[u], g0 + at, g1 + at, t0 + at, t1 + at, first, last, acc);
        }
    }
    for (; j + W <= hi; j += W) {
        vf x = load(ej + j);
        vf a0 = e0[0] * x, a1 = e1[0] * x;
        for (int a = 1; a < k; a++) { x = load(ej + (size_t)a * c + j); a0 += e0[a] * x; a1 += e1[a] * x; }
        columns(a0, a1, g0 + j, g1 + j, t0 + j, t1 + j, first, last, acc);
    }
    for (int q = 0; q < 4; q++) s[q] = lanes(acc[q]);
    for (; j < hi; j++) {
        float a0 = 0.f, a1 = 0.f;
        for (int a = 0; a < k; a++) { float x = ej[(size_t)a * c + j]; a0 += e0[a] * x; a1 += e1[a] * x; }
        float v0 = g0[j] * a0, v1 = g1[j] * a1;
        float u0 = first ? v0 : t0[j] + v0, u1 = first ? v1 : t1[j] + v1;
        t0[j] = u0;
        t1[j] = u1;
        s[0] += positive1(v0); s[1] += positive1(v1); s[2] += positive1(u0); s[3] += positive1(u1);
    }
}

/* One tile (b train rows x c validation columns sorted by class) at one checkpoint.
   gh: b x c feature Gram (h_i . h_j + 1); ei: b x k train errors; ej: k x c validation errors;
   total: b x c running sum over checkpoints (written when first, added to otherwise);
   runs: the class and the column range of each class present in the tile;
   pos_t, pos: b x n_classes sums of the positive parts of I_t (always) and of the total (when last). */
void tile_pass(int b, int c, int k, const float* gh, const float* ei, const float* ej, float* total,
               int first, int last, int nruns, const int* run_class, const int* run_lo, const int* run_hi,
               int n_classes, float* pos_t, float* pos)
{
    int pairs = (b + 1) / 2;
    #pragma omp parallel for schedule(static)
    for (int p = 0; p < pairs; p++) {
        int i0 = 2 * p, i1 = i0 + 1 < b ? i0 + 1 : i0;  /* an odd last row is paired with itself */
        for (int r = 0; r < nruns; r++) {
            float s[4];
            pair_run(run_lo[r], run_hi[r], c, k, gh + (size_t)i0 * c, gh + (size_t)i1 * c, ei + (size_t)i0 * k,
                     ei + (size_t)i1 * k, ej, total + (size_t)i0 * c, total + (size_t)i1 * c, first, last, s);
            size_t cls = (size_t)run_class[r];
            pos_t[(size_t)i0 * n_classes + cls] += s[0];
            if (last) pos[(size_t)i0 * n_classes + cls] += s[2];
            if (i1 != i0) {
                pos_t[(size_t)i1 * n_classes + cls] += s[1];
                if (last) pos[(size_t)i1 * n_classes + cls] += s[3];
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


def _build(compiler: str) -> Path:
    """Compile the kernel once per source, flags and CPU; a finished library is renamed into place atomically."""
    key = hashlib.sha256("\n".join((SOURCE, *FLAGS, compiler, platform.machine(), _cpu())).encode()).hexdigest()[:16]
    target = _cache_dir() / f"tile_pass_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        source = Path(tmp) / "tile_pass.c"
        source.write_text(SOURCE)
        built = Path(tmp) / target.name
        subprocess.run([compiler, *FLAGS, str(source), "-o", str(built)], check=True, capture_output=True, text=True)
        os.replace(built, target)
    return target


@cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None (no compiler, a failed build, or ``INFLUENCE_SIGNALS_KERNEL=torch``)."""
    if os.environ.get("INFLUENCE_SIGNALS_KERNEL", "auto") == "torch":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.info("no C compiler: the pairwise pass runs with torch ops")
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or err
        log.warning("the fused tile kernel did not build (%s): the pairwise pass runs with torch ops", detail)
        return None
    lib.tile_pass.restype = None
    lib.tile_pass.argtypes = [_INT, _INT, _INT, _POINTER, _POINTER, _POINTER, _POINTER, _INT, _INT, _INT,
                              _POINTER, _POINTER, _POINTER, _INT, _POINTER, _POINTER]
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
            raise ValueError("the tile kernel takes contiguous float32 CPU tensors")


def tile_pass(lib: ctypes.CDLL, gram: torch.Tensor, train_errors: torch.Tensor, val_errors: torch.Tensor,
              total: torch.Tensor, first: bool, last: bool, runs: Runs, pos_t: torch.Tensor, pos: torch.Tensor) -> None:
    """Add the positive class sums of I = gram o (train_errors @ val_errors) to ``pos_t`` (and of the running
    ``total`` to ``pos`` when ``last``); ``total`` becomes I when ``first``, else total + I. In place."""
    rows, width = gram.shape
    _checked(gram, train_errors, val_errors, total, pos_t, pos)
    if train_errors.shape[0] != rows or val_errors.shape[1] != width or total.shape != gram.shape \
            or pos_t.shape != pos.shape or pos_t.shape[0] != rows:
        raise ValueError("tile kernel operands of mismatched shapes")
    lib.tile_pass(rows, width, train_errors.shape[1], gram.data_ptr(), train_errors.data_ptr(), val_errors.data_ptr(),
                  total.data_ptr(), int(first), int(last), runs.count, runs.classes, runs.lows, runs.highs,
                  pos_t.shape[1], pos_t.data_ptr(), pos.data_ptr())
