"""A plain-NumPy, float64, loop-based model of the R package rnnmf 0.3.0.

Written from a description of the semantics of rnnmf's ``murnmf``, ``aurnmf``,
``gaurnmf`` and ``giqpm`` (Pav 2024, Algorithms 1-3), not from its code, so jnmf's
exactness tests have an independent oracle (R is not installable here).  It is
deliberately naive: explicit dense matrices, one Python loop iteration per
algorithm iteration, and every iterate recorded so tests can compare
iterate-for-iterate.

Conventions (as in rnnmf):

* ``W_0R`` / ``W_0C``: ``None`` means the identity; otherwise a dense square matrix.
  (rnnmf recycles a *vector* ``W_0C`` elementwise, which is not a diagonal weight,
  so this model accepts matrices only.)
* ``gaurnmf``'s ``W_2*`` arguments are a matrix or a scalar (a scalar c acts as
  c I), or lists of those, paired by position.
* ``converged`` is the step test ``max(Lstep, Rstep) < min_xstep``; ``murnmf`` also
  finishes (without converging) when no denominator of the R step is positive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RefResult:
    """Final factors, counters and the full trajectory (after iterations 1, 2, ...)."""

    L: np.ndarray | None = None
    R: np.ndarray | None = None
    x: np.ndarray | None = None
    iterations: int = 0
    converged: bool = False
    Lstep: float = np.nan
    Rstep: float = np.nan
    xstep: float = np.nan
    L_hist: list = field(default_factory=list)
    R_hist: list = field(default_factory=list)
    x_hist: list = field(default_factory=list)
    steps_hist: list = field(default_factory=list)
    tau_hist: list = field(default_factory=list)  # tau_k used by iteration 1, 2, ... (AU, GIQPM)


def _f64(a) -> np.ndarray:
    return np.array(a, dtype=np.float64, copy=True)


def _weight(w, n: int) -> np.ndarray:
    if w is None:
        return np.eye(n)
    w = np.asarray(w, np.float64)
    if w.ndim != 2 or w.shape != (n, n):
        raise ValueError("the reference takes None or an n x n matrix for W_0R / W_0C")
    return w


def _nonortho(X: np.ndarray) -> np.ndarray:
    """X (11' - I): each element replaced by the sum of the *other* elements of its row."""
    return X.sum(axis=1, keepdims=True) - X


def _mul(W, X: np.ndarray, side: str) -> np.ndarray:
    """W X (side 'left') or X W (side 'right'); a scalar W acts as W I."""
    W = np.asarray(W, np.float64)
    if W.ndim == 0:
        return float(W) * X
    return W @ X if side == "left" else X @ W


def _as_list(x) -> list:
    return list(x) if isinstance(x, list | tuple) else [x]


def objective(Y, L, R, W_0R=None, W_0C=None, W_1L=0.0, W_1R=0.0, l2_L=(), l2_R=()) -> float:
    """eq. 3 with dense weights; ``l2_*`` are lists of (row, col) pairs (scalars or matrices)."""
    Y, L, R = _f64(Y), _f64(L), _f64(R)
    m, n = Y.shape
    W0R, W0C = _weight(W_0R, m), _weight(W_0C, n)
    E = Y - L @ R
    val = 0.5 * np.trace(E.T @ W0R @ E @ W0C)
    val += np.sum(np.asarray(W_1L) * L) + np.sum(np.asarray(W_1R) * R)
    for X, pairs in ((L, l2_L), (R, l2_R)):
        for a, b in pairs:
            val += 0.5 * np.sum(X * _mul(a, _mul(b, X, "right"), "left"))
    return float(val)


# --------------------------------------------------------------------- murnmf
def murnmf(
    Y,
    L,
    R,
    W_0R=None,
    W_0C=None,
    lambda_1L=0.0,
    lambda_1R=0.0,
    lambda_2L=0.0,
    lambda_2R=0.0,
    gamma_2L=0.0,
    gamma_2R=0.0,
    epsilon=1e-7,
    max_iterations=1000,
    min_xstep=1e-9,
) -> RefResult:
    """rnnmf::murnmf (Algorithm 1): multiplicative updates, numerators clipped to <= -epsilon."""
    Y, L, R = _f64(Y), _f64(L), _f64(R)
    m, n = Y.shape
    W0R, W0C = _weight(W_0R, m), _weight(W_0C, n)
    W0R_Y = W0R @ Y
    Y_W0C = Y @ W0C
    out = RefResult()
    k = 0
    while True:
        # ---- L half step, R fixed
        WRt = W0C @ R.T
        RWR = R @ WRt
        num = np.minimum(lambda_1L - W0R_Y @ WRt, -epsilon)
        F = (W0R @ L) @ RWR + lambda_2L * L
        if gamma_2L > 0:
            F = F + gamma_2L * _nonortho(L)
        ok = (F > 0) & ~np.isnan(F)
        L_prev = L.copy()
        L[ok] = -L[ok] * num[ok] / F[ok]
        Lstep = np.max(np.abs(L - L_prev))
        # ---- R half step, new L
        LtW = L.T @ W0R
        LWL = LtW @ L
        num = np.minimum(lambda_1R - LtW @ Y_W0C, -epsilon)
        F = LWL @ (R @ W0C) + lambda_2R * R
        if gamma_2R > 0:
            F = F + gamma_2R * _nonortho(R)
        ok = (F > 0) & ~np.isnan(F)
        R_prev = R.copy()
        R[ok] = -R[ok] * num[ok] / F[ok]
        Rstep = np.max(np.abs(R - R_prev))
        k += 1
        converged = max(Lstep, Rstep) < min_xstep
        out.L_hist.append(L.copy())
        out.R_hist.append(R.copy())
        out.steps_hist.append((Lstep, Rstep))
        if converged or k >= max_iterations or not ok.any():
            break
    out.L, out.R, out.iterations, out.converged = L, R, k, bool(converged)
    out.Lstep, out.Rstep = Lstep, Rstep
    return out


# ------------------------------------------------------------ shared AU parts
def pick_direction(X, grad, F) -> np.ndarray:
    """PICK_DIRECTION (Algorithm 3)."""
    F = F.copy()
    F[F <= 0] = 1.0
    H = -grad * X / F
    zero = X <= 0
    H[zero] = np.maximum(-grad[zero], 0.0)
    return H


def giqpm_step(X, grad, H, K, tau_k) -> tuple[np.ndarray, float]:
    """GIQPM_STEP (Algorithm 3); K None means alpha* = 1 (no optimal-step check)."""
    neg = H < 0
    if neg.any():
        alpha_hat = np.min(-X[neg] / H[neg])
    elif (H != 0).any():
        alpha_hat = np.inf
    else:
        return X.copy(), 0.0
    direx = np.sum(grad * H)
    alpha_star = -direx / np.sum(H * K) if K is not None else 1.0
    alpha = min(tau_k * alpha_hat, alpha_star)
    step = alpha * H
    return X + step, float(np.max(np.abs(step)))


def _additive(Y, L, R, W0R, W0C, W_1L, W_1R, penL, penL_K, penR, penR_K, opts) -> RefResult:
    """The AU loop shared by aurnmf and gaurnmf.

    ``penX(X)`` is the penalty part of F = G X, ``penX_K(H)`` the penalty part of K = G H
    (they differ in rnnmf's aurnmf, which drops the non-orthogonality term from K).
    """
    tau_k = opts["tau"]
    a = opts["annealing_rate"]
    check = opts["check_optimal_step"]
    zt = opts["zero_tolerance"]
    W0R_Y = W0R @ Y
    Y_W0C = Y @ W0C
    out = RefResult()
    k = 0
    while True:
        tau_k = (1 - a) * tau_k + a
        # ---- L half step
        WRt = W0C @ R.T
        RWR = R @ WRt
        D = W_1L - W0R_Y @ WRt
        F = (W0R @ L) @ RWR + penL(L)
        grad = D + F
        H = pick_direction(L, grad, F)
        K = (W0R @ H) @ RWR + penL_K(H) if check else None
        L, Lstep = giqpm_step(L, grad, H, K, tau_k)
        # ---- R half step (with the new, not yet snapped, L)
        LtW = L.T @ W0R
        LWL = LtW @ L
        D = W_1R - LtW @ Y_W0C
        F = LWL @ (R @ W0C) + penR(R)
        grad = D + F
        H = pick_direction(R, grad, F)
        K = LWL @ (H @ W0C) + penR_K(H) if check else None
        R, Rstep = giqpm_step(R, grad, H, K, tau_k)
        R[R <= zt] = 0.0
        L[L <= zt] = 0.0
        k += 1
        converged = max(Lstep, Rstep) < opts["min_xstep"]
        out.L_hist.append(L.copy())
        out.R_hist.append(R.copy())
        out.steps_hist.append((Lstep, Rstep))
        out.tau_hist.append(tau_k)
        if converged or k >= opts["max_iterations"]:
            break
    out.L, out.R, out.iterations, out.converged = L, R, k, bool(converged)
    out.Lstep, out.Rstep = Lstep, Rstep
    return out


def aurnmf(
    Y,
    L,
    R,
    W_0R=None,
    W_0C=None,
    lambda_1L=0.0,
    lambda_1R=0.0,
    lambda_2L=0.0,
    lambda_2R=0.0,
    gamma_2L=0.0,
    gamma_2R=0.0,
    tau=0.1,
    annealing_rate=0.01,
    check_optimal_step=True,
    zero_tolerance=1e-12,
    max_iterations=1000,
    min_xstep=1e-9,
) -> RefResult:
    """rnnmf::aurnmf (Algorithm 3) on the scalar form of eq. 4.

    As in rnnmf, K (the curvature term of eq. 24) has the ridge but not the
    non-orthogonality term.
    """
    Y, L, R = _f64(Y), _f64(L), _f64(R)
    m, n = Y.shape

    def pen(lam2, gam2):
        def f(X):
            out = lam2 * X
            return out + gam2 * _nonortho(X) if gam2 > 0 else out

        return f

    opts = dict(
        tau=tau,
        annealing_rate=annealing_rate,
        check_optimal_step=check_optimal_step,
        zero_tolerance=zero_tolerance,
        max_iterations=max_iterations,
        min_xstep=min_xstep,
    )
    return _additive(
        Y,
        L,
        R,
        _weight(W_0R, m),
        _weight(W_0C, n),
        lambda_1L,
        lambda_1R,
        pen(lambda_2L, gamma_2L),
        lambda H: lambda_2L * H,
        pen(lambda_2R, gamma_2R),
        lambda H: lambda_2R * H,
        opts,
    )


def gaurnmf(
    Y,
    L,
    R,
    W_0R=None,
    W_0C=None,
    W_1L=0.0,
    W_1R=0.0,
    W_2RL=0.0,
    W_2CL=0.0,
    W_2RR=0.0,
    W_2CR=0.0,
    tau=0.1,
    annealing_rate=0.01,
    check_optimal_step=True,
    zero_tolerance=1e-12,
    max_iterations=1000,
    min_xstep=1e-9,
) -> RefResult:
    """rnnmf::gaurnmf: Algorithm 3 on the general eq. 3 (F and K both use every W_2 pair)."""
    Y, L, R = _f64(Y), _f64(L), _f64(R)
    m, n = Y.shape

    def pen(rows, cols):
        rows, cols = _as_list(rows), _as_list(cols)
        assert len(rows) == len(cols)

        def f(X):
            out = np.zeros_like(X)
            for a, b in zip(rows, cols, strict=True):
                out = out + _mul(a, _mul(b, X, "right"), "left")
            return out

        return f

    penL, penR = pen(W_2RL, W_2CL), pen(W_2RR, W_2CR)
    opts = dict(
        tau=tau,
        annealing_rate=annealing_rate,
        check_optimal_step=check_optimal_step,
        zero_tolerance=zero_tolerance,
        max_iterations=max_iterations,
        min_xstep=min_xstep,
    )
    return _additive(
        Y,
        L,
        R,
        _weight(W_0R, m),
        _weight(W_0C, n),
        np.asarray(W_1L, np.float64),
        np.asarray(W_1R, np.float64),
        penL,
        penL,
        penR,
        penR,
        opts,
    )


# ---------------------------------------------------------------------- giqpm
def _lee_seung(grad, Gx, x):
    Gx = Gx.copy()
    Gx[(Gx <= 0) | np.isnan(Gx)] = 1.0
    return -grad * x / Gx


STEPS = {
    "lee_seung": _lee_seung,
    "steepest": lambda grad, Gx, x: -grad,
    "complementarity": lambda grad, Gx, x: -grad * x,
}


def giqpm(
    G,
    d,
    x0,
    tau=0.5,
    annealing_rate=0.25,
    check_optimal_step=True,
    step="lee_seung",
    zero_tolerance=1e-9,
    max_iterations=1000,
    min_xstep=1e-9,
) -> RefResult:
    """rnnmf::giqpm (Algorithm 2) on min_{x >= 0} 1/2 x'Gx + d'x."""
    G, d, x = _f64(G), _f64(d), _f64(x0)
    direction = STEPS[step]
    tau_k = tau
    out = RefResult()
    k = 0
    converged = False
    while True:
        Gx = G @ x
        grad = Gx + d
        h = direction(grad, Gx, x)
        neg = h < 0
        if neg.any():
            alpha_hat = np.min(-x[neg] / h[neg])
        elif (h != 0).any():
            alpha_hat = np.inf
        else:  # no direction at all: converged, and this does not count as an iteration
            converged = True
            break
        alpha_star = -np.sum(grad * h) / np.sum(h * (G @ h)) if check_optimal_step else 1.0
        tau_k = (1 - annealing_rate) * tau_k + annealing_rate
        alpha = min(tau_k * alpha_hat, alpha_star)
        x = x + alpha * h
        x[x <= zero_tolerance] = 0.0
        k += 1
        xstep = float(np.max(np.abs(alpha * h)))
        converged = xstep < min_xstep
        out.x_hist.append(x.copy())
        out.steps_hist.append((xstep,))
        out.tau_hist.append(tau_k)
        out.xstep = xstep
        if converged or k >= max_iterations:
            break
    out.x, out.iterations, out.converged = x, k, bool(converged)
    return out
