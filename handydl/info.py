"""``handydl info``: what this machine gives handydl, in a few seconds.

The first thing to run when handydl is slow somewhere: the versions of NumPy,
SciPy and numba, the BLAS that NumPy calls and the kernel set it picked for this
CPU (from ``threadpoolctl``, the maintained way to ask a process which BLAS it
loaded and how many threads it uses), whether the fused float32 kernels are on,
the CPU's SIMD features as NumPy detected them, and a measured sgemm rate.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
import time

import numpy as np

# the SIMD features that decide which kernels NumPy, OpenBLAS and numba use
SIMD = ("SSE42", "AVX", "FMA3", "AVX2", "AVX512F", "AVX512_SKX", "AVX512_ICL", "AVX512_SPR",
        "ASIMD", "SVE", "VSX")


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def blas():
    """NumPy's BLAS libraries as threadpoolctl reports them (name, version, kernel set,
    threads), or a note when threadpoolctl is not installed."""
    try:
        import threadpoolctl
    except ImportError:
        return [{"note": "pip install threadpoolctl to see the BLAS and its threads"}]
    np.dot(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))      # load it
    keep = ("internal_api", "version", "architecture", "threading_layer", "num_threads", "filepath")
    return [{k: lib.get(k) for k in keep} for lib in threadpoolctl.threadpool_info() if lib.get("user_api") == "blas"]


def simd():
    """The SIMD features NumPy found on this CPU (the ones in SIMD that it knows)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:                                    # NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_features__ as features
    return [name for name in SIMD if features.get(name)]


def fused_kernels():
    """Whether the fused float32 kernels run: numba installed, and not switched off."""
    from ._fast import fused
    have = importlib.util.find_spec("numba") is not None
    if not have:
        return {"on": False, "why": "numba is not installed (pip install \"handydl[fast]\")"}
    if not fused._enabled:
        return {"on": False, "why": "HANDYDL_FUSED=0 in the environment"}
    return {"on": True, "why": "numba is installed"}


def sgemm_rate(n=1024, seconds=1.0):
    """The best float32 matrix-product rate (GFLOP/s) of NumPy on this machine: the
    fastest of repeated n x n products within about ``seconds``."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    np.matmul(a, b, out=out)                                 # warm up: threads started, pages touched
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds or best == float("inf"):
        t = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def collect(measure=True):
    """Everything ``handydl info`` prints, as a dict (``--json`` prints it as is)."""
    return {
        "handydl": _version("handydl"), "python": platform.python_version(),
        "numpy": np.__version__, "scipy": _version("scipy"), "numba": _version("numba"),
        "platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "simd": simd(), "blas": blas(), "fused_kernels": fused_kernels(),
        "sgemm_gflops": round(sgemm_rate(), 1) if measure else None,
    }


def render(info):
    """The dict of collect() as aligned lines for the terminal."""
    lines = [f"handydl {info['handydl']}  (Python {info['python']}, {info['platform']})",
             f"numpy {info['numpy']}   scipy {info['scipy']}   numba {info['numba'] or 'not installed'}",
             f"CPU: {info['machine']}, {info['cpus']} logical cores; SIMD: {' '.join(info['simd']) or 'none found'}"]
    for lib in info["blas"]:
        if "note" in lib:
            lines.append(f"BLAS: {lib['note']}")
        else:
            lines.append(f"BLAS: {lib['internal_api']} {lib['version']}, kernels {lib['architecture']}, "
                         f"{lib['num_threads']} threads ({lib['threading_layer']})")
    fk = info["fused_kernels"]
    lines.append(f"fused float32 kernels: {'on' if fk['on'] else 'off'} ({fk['why']})")
    if info["sgemm_gflops"] is not None:
        lines.append(f"sgemm: {info['sgemm_gflops']:.1f} GFLOP/s (NumPy, float32 1024 x 1024, best of 1 s)")
    return "\n".join(lines)


if __name__ == "__main__":                                  # pragma: no cover
    print(render(collect()), file=sys.stdout)
