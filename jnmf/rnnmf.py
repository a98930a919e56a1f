"""rnnmf-compatible front doors (layer 6): murnmf, aurnmf, gaurnmf, giqpm, objective.

Argument names, defaults and semantics follow the R package rnnmf 0.3.0 (Pav
2024), including its stopping rule (``min_xstep=1e-9`` on the largest absolute step;
in float32 the threshold is at least a few ulps of the factors, see
:mod:`jnmf.driver`; float64 is exactly rnnmf's).  Each validates its input on the
host (``ValueError`` naming the argument), builds a :class:`~jnmf.problem.Problem`,
and runs one rule in the one driver.  Extra keywords beyond rnnmf's: ``tol`` (relative objective change,
0 = off) and ``history_size`` (length of the objective history buffer).

Differences from rnnmf, on purpose:

* ``aurnmf`` with ``gamma_2L/gamma_2R > 0`` uses the full curvature in the optimal
  step length (rnnmf omits the non-orthogonality term there; see
  :mod:`jnmf.rules.au`).
* A vector ``W_0R``/``W_0C`` means a diagonal weight (rnnmf recycles it
  elementwise, which is only a diagonal weight for ``W_0R``).
* ``giqpm`` draws its default ``x0`` from ``key`` (rnnmf uses R's ``runif``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate as check
from .driver import RNNMF_STOPPING, Result, iterate
from .giqpm import GIQPM
from .problem import build_problem, check_penalty_keywords
from .quadratic import VectorQP
from .rules import AURNMF, MURNMF


def _run_options(max_iterations, min_xstep, tol, history_size):
    """rnnmf's stopping settings (:data:`jnmf.driver.RNNMF_STOPPING`) with the caller's values."""
    stopping = RNNMF_STOPPING.replace(max_iterations=max_iterations, min_xstep=min_xstep, tol=tol).validate()
    check.positive_int("history_size", history_size)
    return dict(stopping=stopping, history_size=history_size)


def _annealing(tau, annealing_rate):
    check.in_interval("tau", tau, 0.0, 1.0, lo_open=True, hi_open=True)
    check.in_interval("annealing_rate", annealing_rate, 0.0, 1.0, lo_open=False, hi_open=True)


def murnmf(
    Y, L, R, *, W_0R=None, W_0C=None,
    lambda_1L=0.0, lambda_1R=0.0, lambda_2L=0.0, lambda_2R=0.0, gamma_2L=0.0, gamma_2R=0.0,
    epsilon=1e-7, max_iterations=1000, min_xstep=1e-9, tol=0.0, history_size=1000,
) -> Result:  # fmt: skip
    """Multiplicative update regularized NMF, Pav (2024) Algorithm 1 (rnnmf::murnmf).

    Minimizes eq. 3 in the scalar form of eq. 4 from the starting matrices L, R.
    Numerators are clipped to ``<= -epsilon`` (eq. 19); elements with a
    non-positive denominator are left unchanged.  Stops when both factors' largest
    absolute step is below ``min_xstep`` or after ``max_iterations``.

    Args:
        Y: ``m x n`` non-negative data.
        L, R: starting factors, ``m x k`` and ``k x n``, non-negative.
        W_0R, W_0C: loss weights (None = identity, scalar, vector = diagonal, or matrix).
        lambda_1L, lambda_1R, lambda_2L, lambda_2R, gamma_2L, gamma_2R: the scalars of eq. 4.
        epsilon: the numerator clipping of eq. 19.
        max_iterations, min_xstep: rnnmf's stopping rule; tol: relative objective change
            (0 = off, a jnmf extra); history_size: length of the objective history.

    Returns:
        A :class:`~jnmf.driver.Result` with ``L``, ``R``, ``iterations``, ``converged``,
        ``status``, ``history``, ``objective``, ``Lstep``, ``Rstep``.
    """
    Y, L, R = check.factors(Y, L, R)
    check.nonneg_scalar("epsilon", epsilon)
    opts = _run_options(max_iterations, min_xstep, tol, history_size)
    problem = build_problem(
        Y, L.shape[1], W_0R=W_0R, W_0C=W_0C, lambda_1L=lambda_1L, lambda_1R=lambda_1R,
        lambda_2L=lambda_2L, lambda_2R=lambda_2R, gamma_2L=gamma_2L, gamma_2R=gamma_2R,
    )  # fmt: skip
    rule = MURNMF(epsilon)
    return iterate(rule, problem, rule.init(problem, L, R), **opts)


def aurnmf(
    Y, L, R, *, W_0R=None, W_0C=None,
    lambda_1L=0.0, lambda_1R=0.0, lambda_2L=0.0, lambda_2R=0.0, gamma_2L=0.0, gamma_2R=0.0,
    tau=0.1, annealing_rate=0.01, check_optimal_step=True, zero_tolerance=1e-12,
    max_iterations=1000, min_xstep=1e-9, tol=0.0, history_size=1000,
) -> Result:  # fmt: skip
    """Additive update regularized NMF, Pav (2024) Algorithm 3 (rnnmf::aurnmf).

    The Lee-Seung direction (PICK_DIRECTION), the longest feasible step scaled by
    ``tau_k`` (annealed towards 1 at ``annealing_rate``) or the optimal step of
    eq. 24 if shorter (``check_optimal_step``), values ``<= zero_tolerance`` snapped
    to zero after each iteration.  Unlike rnnmf, the optimal step includes the
    non-orthogonality curvature when ``gamma_2L/gamma_2R > 0``.

    Args:
        Y, L, R, W_0R, W_0C, lambda_1L ... gamma_2R, max_iterations, min_xstep, tol,
            history_size: as for :func:`murnmf`.
        tau: the starting fraction tau_0 of the longest feasible step, in (0, 1).
        annealing_rate: tau_k = (1 - rate) tau_{k-1} + rate, in [0, 1).
        check_optimal_step: cap the step at the exact minimizer along it (eq. 24).
        zero_tolerance: values at or below it become zero after each iteration.

    Returns:
        A :class:`~jnmf.driver.Result`, as :func:`murnmf`.
    """
    Y, L, R = check.factors(Y, L, R)
    _annealing(tau, annealing_rate)
    check.nonneg_scalar("zero_tolerance", zero_tolerance)
    opts = _run_options(max_iterations, min_xstep, tol, history_size)
    problem = build_problem(
        Y, L.shape[1], W_0R=W_0R, W_0C=W_0C, lambda_1L=lambda_1L, lambda_1R=lambda_1R,
        lambda_2L=lambda_2L, lambda_2R=lambda_2R, gamma_2L=gamma_2L, gamma_2R=gamma_2R,
    )  # fmt: skip
    rule = AURNMF(tau, annealing_rate, check_optimal_step, zero_tolerance)
    return iterate(rule, problem, rule.init(problem, L, R), **opts)


def gaurnmf(
    Y, L, R, *, W_0R=None, W_0C=None, W_1L=0.0, W_1R=0.0,
    W_2RL: object | Sequence = 0.0, W_2CL: object | Sequence = 0.0,
    W_2RR: object | Sequence = 0.0, W_2CR: object | Sequence = 0.0,
    tau=0.1, annealing_rate=0.01, check_optimal_step=True, zero_tolerance=1e-12,
    max_iterations=1000, min_xstep=1e-9, tol=0.0, history_size=1000,
) -> Result:  # fmt: skip
    """Additive update NMF on the general problem of eq. 3 (rnnmf::gaurnmf).

    ``W_1L``/``W_1R``: scalar (times all-ones) or a matrix of the factor's shape.
    Each W_2 argument: scalar (times I), vector (diagonal), matrix, or a list of
    those paired by position with its partner (``W_2RL[j]`` with ``W_2CL[j]``).
    As in rnnmf the defaults (0, 0) mean no L2 term: a scalar ridge needs both,
    e.g. ``W_2RL=lam, W_2CL=1``.

    Args:
        Y, L, R, W_0R, W_0C, tau, annealing_rate, check_optimal_step, zero_tolerance,
            max_iterations, min_xstep, tol, history_size: as for :func:`aurnmf`.
        W_1L, W_1R: the L1 weights of eq. 3.
        W_2RL, W_2CL, W_2RR, W_2CR: the L2 pairs of eq. 3 (see above).

    Returns:
        A :class:`~jnmf.driver.Result`, as :func:`murnmf`.
    """
    Y, L, R = check.factors(Y, L, R)
    _annealing(tau, annealing_rate)
    check.nonneg_scalar("zero_tolerance", zero_tolerance)
    opts = _run_options(max_iterations, min_xstep, tol, history_size)
    problem = build_problem(
        Y, L.shape[1], W_0R=W_0R, W_0C=W_0C, W_1L=W_1L, W_1R=W_1R,
        W_2RL=W_2RL, W_2CL=W_2CL, W_2RR=W_2RR, W_2CR=W_2CR,
    )  # fmt: skip
    rule = AURNMF(tau, annealing_rate, check_optimal_step, zero_tolerance)
    return iterate(rule, problem, rule.init(problem, L, R), **opts)


def giqpm(
    G, d, x0=None, *, tau=0.5, annealing_rate=0.25, check_optimal_step=True,
    step="lee_seung", zero_tolerance=1e-9, max_iterations=1000, min_xstep=1e-9,
    key=None, tol=0.0, history_size=1000,
) -> Result:  # fmt: skip
    """Minimize 1/2 x'Gx + d'x over x >= 0 (eq. 10) by Pav (2024) Algorithm 2 (rnnmf::giqpm).

    ``step``: ``"lee_seung"`` (default), ``"steepest"``, ``"complementarity"`` or a
    callable ``f(grad, Gx, G, d, x) -> direction``.  ``x0`` defaults to uniform
    random in [0, 1) drawn from ``key`` (``jax.random.key(0)`` if None).

    Args:
        G: ``n x n`` symmetric matrix; d: length-n vector; x0: non-negative start.
        tau, annealing_rate, check_optimal_step, zero_tolerance: as for :func:`aurnmf`
            (defaults rnnmf's giqpm's).
        step: the direction rule (see above).
        max_iterations, min_xstep, tol, history_size: as for :func:`murnmf`.
        key: the JAX key for the default ``x0``.

    Returns:
        A :class:`~jnmf.driver.Result` with ``x``, ``iterations``, ``converged``, ``status``.
    """
    G = check.matrix("G", G, nonneg=False)
    if G.shape[0] != G.shape[1]:
        raise ValueError(f"G must be square, got shape {tuple(G.shape)}")
    n = G.shape[0]
    d_h = check._host(d)
    if d_h.ndim != 1 or d_h.shape[0] != n:
        raise ValueError(f"d must be a vector of length {n}, got shape {tuple(np.shape(d_h))}")
    check._check_dtype("d", d_h)
    check._check_values("d", d_h, nonneg=False)
    if not check.is_traced(G) and not np.allclose(G, np.asarray(G).T, rtol=1e-6, atol=1e-12):
        raise ValueError("G must be symmetric")
    dt = check.float_dtype(G, d_h)
    if x0 is None:
        key = jax.random.key(0) if key is None else key
        x0 = jax.random.uniform(key, (n,), dt)
    else:
        x0_h = check._host(x0)
        if x0_h.ndim != 1 or x0_h.shape[0] != n:
            raise ValueError(f"x0 must be a vector of length {n}, got shape {tuple(np.shape(x0_h))}")
        check._check_dtype("x0", x0_h)
        check._check_values("x0", x0_h)
    if isinstance(step, str) and step not in ("lee_seung", "steepest", "complementarity"):
        raise ValueError(
            f"step must be 'lee_seung', 'steepest', 'complementarity' or a callable, got {step!r}"
        )
    _annealing(tau, annealing_rate)
    check.nonneg_scalar("zero_tolerance", zero_tolerance)
    opts = _run_options(max_iterations, min_xstep, tol, history_size)
    qp = VectorQP(jnp.asarray(G, dt), jnp.asarray(d, dt))
    rule = GIQPM(tau, annealing_rate, check_optimal_step, step, zero_tolerance)
    return iterate(rule, qp, rule.init(qp, jnp.asarray(x0, dt)), **opts)


def objective(Y, L, R, *, W_0R=None, W_0C=None, **penalties):
    """The objective of eq. 3 at (L, R) (rnnmf's objective function).

    Args:
        Y, L, R: data and factors.
        W_0R, W_0C: loss weights.
        **penalties: ``gaurnmf``'s weight keywords (``W_1L`` ... ``W_2CR``) and/or the
            scalars of eq. 4 (``lambda_1L`` ... ``gamma_2R``).

    Returns:
        The scalar objective.
    """
    check_penalty_keywords("objective", penalties, objective)
    Y, L, R = check.factors(Y, L, R)
    problem = build_problem(Y, L.shape[1], W_0R=W_0R, W_0C=W_0C, **penalties)
    return problem.objective(L, R)
