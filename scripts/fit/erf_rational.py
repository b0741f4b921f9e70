"""Fits the rational erf of crates/core/src/kernels/activation.rs:
erf(x) = x * P(x^2) / Q(x^2) on [0, 3.925] (erf is 1 in f32 beyond), P and Q of
degree 5, Q(0) = 1. Linearised least squares (x P - f Q = 0, weighted by 1/|Q|),
reweighted towards the largest errors (Lawson's iteration); prints the coefficients
rounded to f32 and the largest error of the f32 evaluation (Horner, as the kernel).

Usage: python scripts/fit/erf_rational.py   (numpy and scipy)
"""
import numpy as np
from scipy.special import erf

CLAMP = 3.925
DEG_P, DEG_Q = 5, 5


def fit(iters=120):
    x = np.concatenate([
        np.cos(np.linspace(0, np.pi, 6000)) * CLAMP / 2 + CLAMP / 2,
        np.linspace(0, CLAMP, 6000),
    ])
    u, f = x * x, erf(x)
    w, den, best = np.ones_like(x), np.ones_like(x), None
    for _ in range(iters):
        cols = [x * u**i for i in range(DEG_P + 1)] + [-f * u**j for j in range(1, DEG_Q + 1)]
        a_mat = np.stack(cols, 1) * (w / den)[:, None]
        sol, *_ = np.linalg.lstsq(a_mat, f * w / den, rcond=None)
        p, q = sol[: DEG_P + 1], np.concatenate([[1.0], sol[DEG_P + 1:]])
        qv = sum(q[j] * u**j for j in range(DEG_Q + 1))
        err = x * sum(p[i] * u**i for i in range(DEG_P + 1)) / qv - f
        if best is None or np.abs(err).max() < best[0]:
            best = (np.abs(err).max(), p.copy(), q.copy())
        den = np.abs(qv)
        w = w * np.abs(err) ** 0.5
        w /= w.mean()
    return best


def f32_error(p, q):
    xs = np.linspace(0, 6, 600001).astype(np.float32)
    xc = np.minimum(xs, np.float32(CLAMP))
    u = xc * xc
    pv, qv = np.full_like(u, p[-1]), np.full_like(u, q[-1])
    for c in p[-2::-1]:
        pv = (pv * u + c).astype(np.float32)
    for c in q[-2::-1]:
        qv = (qv * u + c).astype(np.float32)
    r = np.minimum((xc * pv / qv).astype(np.float32), np.float32(1))
    return np.abs(r.astype(np.float64) - erf(xs.astype(np.float64))).max()


err, p, q = fit()
p32, q32 = p.astype(np.float32), q.astype(np.float32)
print("P", [repr(float(v)) for v in p32])
print("Q", [repr(float(v)) for v in q32])
print(f"largest error: {err:.3g} exact, {f32_error(p32, q32):.3g} in f32")
