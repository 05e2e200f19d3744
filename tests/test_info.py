"""`handydl info`: what it reports is what the process really has."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from handydl import info


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "handydl", "info", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_json_reports_the_versions_blas_and_kernels_of_this_process():
    r = run("--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    import scipy
    assert report["numpy"] == np.__version__ and report["scipy"] == scipy.__version__
    assert report["cpus"] == os.cpu_count()
    assert set(report["simd"]) <= set(info.SIMD)
    assert report["sgemm_gflops"] > 0
    pytest.importorskip("threadpoolctl")
    # threadpoolctl's own report in a process like the command's (this one has loaded more BLAS
    # libraries: SciPy's, torch's)
    code = ("import json, numpy, threadpoolctl, handydl; numpy.dot(numpy.ones((2, 2)), numpy.ones((2, 2))); "
            "print(json.dumps([(b['internal_api'], b['num_threads'], b['filepath']) "
            "for b in threadpoolctl.threadpool_info() if b['user_api'] == 'blas']))")
    libs = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True).stdout)
    assert [[b["internal_api"], b["num_threads"], b["filepath"]] for b in report["blas"]] == libs


def test_the_fused_kernels_line_says_why_they_are_off():
    r = run("--no-measure", env={"HANDYDL_FUSED": "0"})
    assert r.returncode == 0, r.stderr
    expected = "off (HANDYDL_FUSED=0" if info._version("numba") else "off (numba is not installed"
    assert f"fused float32 kernels: {expected}" in r.stdout
    assert "sgemm" not in r.stdout                     # --no-measure skips the measurement


def test_sgemm_rate_is_the_flops_of_the_product_over_its_time(monkeypatch):
    """2 n^3 flops over the fastest product: with a clock that advances 0.25 s per call,
    each product takes 0.25 s, so a 64 x 64 product runs at 2 * 64^3 / 0.25 flop/s."""
    ticks = iter(np.arange(0, 1000, 0.25))
    monkeypatch.setattr(info.time, "perf_counter", lambda: float(next(ticks)))
    assert info.sgemm_rate(n=64, seconds=0.1) == pytest.approx(2 * 64 ** 3 / 0.25 / 1e9)
