#!/usr/bin/env bash
# The whole suite as a user without numba, on a CPU without AVX-512, runs it:
# a fresh virtual environment with the test extra minus numba (the NumPy paths
# instead of the fused kernels), and NumPy, OpenBLAS, PyTorch and JAX each held
# to AVX2 code by their own switches (NumPy's dispatch to the listed features,
# OpenBLAS's Haswell kernels, ATen's AVX2 kernels, XLA's AVX2 code).
#
#     tools/test_portable.sh [VENV] [pytest arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-/tmp/handydl-portable-venv}
shift || true
python -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -e ".[test]"
"$venv/bin/pip" uninstall --quiet -y numba llvmlite
export NPY_ENABLE_CPU_FEATURES="SSE SSE2 SSE3 SSSE3 SSE41 POPCNT SSE42 AVX F16C FMA3 AVX2"
export OPENBLAS_CORETYPE=Haswell ATEN_CPU_CAPABILITY=avx2 XLA_FLAGS=--xla_cpu_max_isa=AVX2
"$venv/bin/handydl" info        # says: numba not installed, kernels off, BLAS kernels Haswell
"$venv/bin/python" -m pytest -q "$@"
