"""Fit the polynomial that handydl's float32 normal CDF (and so GELU) uses.

With t = 1 / (1 + z/2), the complementary error function is

    erfc(z) = t Q(t) e^{-z^2},   Q(t) = erfcx(z) / t,   erfcx(z) = e^{z^2} erfc(z),

and Q is smooth on t in (0, 1].  Below t = 0.1 (z > 18) e^{-z^2} is 0 in
float32, so only [0.1, 1] matters.  This fits Q there by a degree-10
polynomial, minimizing the largest *relative* error (iteratively reweighted
least squares against SciPy's erfcx in float64), and prints the coefficients
(highest power first) and the error of the float32 evaluation.  Numerical
Recipes' erfc fit (6.2) has the same t but needs e^{poly(t) - z^2}: a second
exponential per element, which this polynomial saves.

    python tools/fit_erfcx.py
"""
from __future__ import annotations

import numpy as np
from scipy.special import erfcx

LOW, DEGREE = 0.1, 10


def q_exact(t):
    z = 2 * (1 - t) / t
    return erfcx(z) / t


def fit(degree=DEGREE, low=LOW, nodes=4000, rounds=30):
    k = np.arange(nodes)
    t = low + (1 - low) * (0.5 - 0.5 * np.cos(np.pi * (k + 0.5) / nodes))   # Chebyshev nodes
    q = q_exact(t)
    vander = np.vander(t, degree + 1) / q[:, None]       # rows scaled: relative error
    w = np.ones_like(q)
    for _ in range(rounds):                              # push the weight to the worst points
        c, *_ = np.linalg.lstsq(vander * w[:, None], w, rcond=None)
        err = np.abs(vander @ c - 1)
        w = w * (err / err.max()) ** 0.3 + 1e-3
        w /= w.max()
    return c


def float32_error(coeffs, low=LOW):
    """Largest relative error of Horner's rule in float32 on a fine grid of [low, 1]."""
    t = np.linspace(low, 1, 200001)
    p = np.zeros(t.shape, np.float32)
    for c in np.asarray(coeffs, np.float32):
        p = p * t.astype(np.float32) + c
    return float(np.max(np.abs(p / q_exact(t) - 1)))


if __name__ == "__main__":
    c = fit()
    print("coefficients, highest power first:")
    print("(" + ", ".join(f"{float(v):.9g}" for v in np.float32(c)) + ")")
    print(f"largest relative error, float32 evaluation on [{LOW}, 1]: {float32_error(c):.2e}")
