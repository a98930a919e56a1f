"""``jnmf.fit`` and ``jnmf.sweep``: the entry points users reach for (layer 6).

``fit`` factors Y at a given rank with any rule, from any initialization, with
N restarts run as ONE jitted, vmapped program, and returns the best fit by
objective together with every restart's objective and iteration count.
``sweep`` does the same over a grid of eq.-4 penalty values x restarts.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array

from . import _validate as check
from .batch import SWEEPABLE, run_grid, run_restarts, with_scalar_penalties
from .init import INITIALIZERS, initialize
from .problem import Problem
from .rnnmf import build_problem
from .rules import ANLS, AURNMF, HALS, KLMU, MURNMF, ProjectedGradient, Rule
from .rules.anls import anls_supported
from .rules.kl import kl_objective, kl_supported

DEFAULT_METHOD = "ahals"

METHODS = {
    "hals": "HALS (Cichocki & Phan 2009), one column sweep per half step",
    "ahals": "accelerated HALS (Gillis & Glineur 2012): repeated sweeps while they pay",
    "mu": "multiplicative update (Lee & Seung; MURNMF, Pav 2024 Alg. 1)",
    "au": "additive update with optimal step (AURNMF/GAURNMF, Pav 2024 Alg. 3)",
    "anls": "alternating non-negative least squares, exact NNLS half steps",
    "kl": "KL-divergence multiplicative update (Lee & Seung)",
    "pg": "projected gradient driven by an optax optimizer (default adam(1e-2))",
}


def make_rule(method: str | Rule | optax.GradientTransformation) -> Rule:
    """A rule from a method name, a :class:`~jnmf.rules.Rule`, or an optax optimizer."""
    if isinstance(method, Rule):
        return method
    if isinstance(method, optax.GradientTransformation):
        return ProjectedGradient(method)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(
            f"method must be one of {sorted(METHODS)}, a jnmf Rule or an optax optimizer; got {method!r}"
        )
    return {
        "hals": lambda: HALS(inner_sweeps=1),
        "ahals": lambda: HALS(inner_sweeps=None),
        "mu": lambda: MURNMF(),
        "au": lambda: AURNMF(),
        "anls": lambda: ANLS(),
        "kl": lambda: KLMU(),
        "pg": lambda: ProjectedGradient(optax.adam(1e-2)),
    }[method]()


def check_support(rule: Rule, problem: Problem, penalties: Mapping) -> None:
    """Reject settings a rule cannot solve exactly (ValueError naming the setting)."""
    if isinstance(rule, KLMU) and not kl_supported(problem):
        raise ValueError("method='kl' needs identity, scalar or diagonal W_0R and W_0C")
    if isinstance(rule, ANLS):
        if not anls_supported(problem):
            raise ValueError(
                "method='anls' needs identity, scalar or diagonal W_0R, W_0C and L2 row weights "
                "(its NNLS half steps are solved row by row)"
            )
        if np.any(np.asarray(penalties.get("gamma_2R", 0.0)) != 0):
            raise ValueError("method='anls' does not support gamma_2R (it couples the columns of R)")


class FitResult(eqx.Module):
    """The best of ``restarts`` fits, plus every restart's summary.

    Attributes:
        L, R: the best factors.
        objective: the best restart's objective (eq. 3, or KL for ``method="kl"``),
            recomputed from the residual.
        iterations, converged, history, history_stride: of the best restart.
        objectives, all_iterations, all_converged: per restart.
        best: index of the best restart.
    """

    L: Array
    R: Array
    objective: Array
    iterations: Array
    converged: Array
    history: Array
    history_stride: Array
    objectives: Array
    all_iterations: Array
    all_converged: Array
    best: Array


def starting_points(Y, rank: int, init, restarts: int, key) -> tuple[Array, Array]:
    if isinstance(init, tuple | list):
        L0, R0 = init
        _, L0, R0 = check.factors(Y, L0, R0)
        if L0.shape[1] != rank:
            raise ValueError(f"init L has rank {L0.shape[1]}, expected rank={rank}")
        return jnp.broadcast_to(L0, (restarts, *L0.shape)), jnp.broadcast_to(R0, (restarts, *R0.shape))
    if init not in INITIALIZERS:
        raise ValueError(f"init must be one of {sorted(INITIALIZERS)} or (L, R); got {init!r}")
    keys = jax.random.split(key, restarts)
    return jax.vmap(lambda k: initialize(Y, rank, init, k))(keys)


def _common(Y, rank, method, init, restarts, key, max_iterations, tol, min_xstep, rel_tol):
    Y = check.matrix("Y", Y)
    rank = check.positive_int("rank", rank)
    if rank > min(Y.shape):
        raise ValueError(f"rank must be at most min(Y.shape) = {min(Y.shape)}, got {rank}")
    restarts = check.positive_int("restarts", restarts)
    check.positive_int("max_iterations", max_iterations, allow_zero=True)
    for name, v in (("tol", tol), ("min_xstep", min_xstep), ("rel_tol", rel_tol)):
        check.nonneg_scalar(name, v)
    Y = jnp.asarray(Y, check.float_dtype(Y))
    key = jax.random.key(0) if key is None else key
    return Y, rank, make_rule(method), restarts, key


def evaluate(rule, problem, L, R):
    """The objective a rule minimizes, recomputed exactly (KL for KLMU, else eq. 3)."""
    if isinstance(rule, KLMU):
        return kl_objective(problem, L, R)
    return problem.objective(L, R)


def _problem_and_starts(Y, rank, rule, init, restarts, key, W_0R, W_0C, penalties, swept):
    """The validated problem (swept penalties enter later, as traced values) and the
    restarts' starting points."""
    problem = build_problem(Y, rank, W_0R=W_0R, W_0C=W_0C, **penalties)
    check_support(rule, problem, {**penalties, **swept})
    return (problem, *starting_points(Y, rank, init, restarts, key))


@eqx.filter_jit
def exact_objectives(rule, problem, L, R):
    """Each fit's objective (:func:`evaluate`), jitted and vmapped over the leading axis."""
    return jax.vmap(lambda a, b: evaluate(rule, problem, a, b))(L, R)


def fit(
    Y,
    rank: int,
    *,
    method: str | Rule | optax.GradientTransformation = DEFAULT_METHOD,
    init="random",
    restarts: int = 1,
    key=None,
    max_iterations: int = 500,
    tol: float = 1e-4,
    min_xstep: float = 0.0,
    rel_tol: float = 0.0,
    normalize=None,
    history_size: int = 1000,
    W_0R=None,
    W_0C=None,
    **penalties,
) -> FitResult:
    """Factor a non-negative ``Y ~ L R`` at ``rank``.

    Args:
        Y: ``m x n`` non-negative floating-point data.
        rank: the inner dimension k.
        method: a name in :data:`METHODS` (default ``"ahals"``, accelerated HALS,
            the fastest Frobenius solver measured, see experiments/bench_orl.py), a
            :class:`~jnmf.rules.Rule`,
            or an optax optimizer (projected gradient).
        init: ``"random"`` (scikit-learn's scaling), ``"sparse"``, ``"nndsvd"``,
            ``"nndsvda"``, ``"nndsvdar"`` or an ``(L0, R0)`` tuple.
        restarts: number of fits, run as one vmapped program; the best is returned.
        key: a ``jax.random`` key for the initializations (default ``key(0)``).
        max_iterations, tol, min_xstep, rel_tol: stopping rules (see
            :mod:`jnmf.driver`); ``tol=0`` disables the relative objective test.
        normalize: ``"max"``/``"sum"`` rescale L's columns each iteration (seed 001).
        W_0R, W_0C, **penalties: weights and penalties of eq. 3 / eq. 4, as for
            :func:`jnmf.objective`.
    """
    Y, rank, rule, restarts, key = _common(
        Y, rank, method, init, restarts, key, max_iterations, tol, min_xstep, rel_tol
    )
    problem, L0, R0 = _problem_and_starts(Y, rank, rule, init, restarts, key, W_0R, W_0C, penalties, {})
    res = run_restarts(
        rule,
        problem,
        L0,
        R0,
        max_iterations=max_iterations,
        min_xstep=min_xstep,
        tol=tol,
        rel_tol=rel_tol,
        history_size=history_size,
        normalize=normalize,
    )
    objectives = exact_objectives(rule, problem, res.L, res.R)
    best = jnp.argmin(jnp.where(jnp.isnan(objectives), jnp.inf, objectives))
    return FitResult(
        L=res.L[best],
        R=res.R[best],
        objective=objectives[best],
        iterations=res.iterations[best],
        converged=res.converged[best],
        history=res.history[best],
        history_stride=res.history_stride[best],
        objectives=objectives,
        all_iterations=res.iterations,
        all_converged=res.converged,
        best=best,
    )


class SweepResult(eqx.Module):
    """Every (setting, restart) fit of a penalty sweep.

    Attributes:
        settings: dict name -> (G,) values, one entry per grid point.
        objectives, loss, iterations, converged: shape (G, restarts).
        sparsity_L, sparsity_R: fraction of exact zeros, shape (G, restarts).
        L, R: factors of shape (G, restarts, ...) if ``factors="all"``, (G, ...) for
            the best restart of each setting if ``"best"``, None if ``"none"``.
        best: index of the best restart per setting, shape (G,).
    """

    settings: dict
    objectives: Array
    loss: Array
    iterations: Array
    converged: Array
    sparsity_L: Array
    sparsity_R: Array
    best: Array
    L: Array | None
    R: Array | None


def sweep(
    Y,
    rank: int,
    grid: Mapping[str, Sequence[float]],
    *,
    product: bool = True,
    method: str | Rule | optax.GradientTransformation = DEFAULT_METHOD,
    init="random",
    restarts: int = 1,
    key=None,
    max_iterations: int = 500,
    tol: float = 1e-4,
    min_xstep: float = 0.0,
    rel_tol: float = 0.0,
    factors: str = "best",
    history_size: int = 1,
    W_0R=None,
    W_0C=None,
    **penalties,
) -> SweepResult:
    """Fit a grid of eq.-4 penalty values x restarts as one vmapped program.

    ``grid`` maps any of lambda_1L, lambda_1R, lambda_2L, lambda_2R, gamma_2L,
    gamma_2R to a list of values; with ``product=True`` the grid is their Cartesian
    product, otherwise the lists are zipped (equal lengths).  Every setting uses
    the same ``restarts`` starting points.  ``factors``: ``"all"``, ``"best"`` or
    ``"none"`` (summaries only, when factors would not fit in memory).
    """
    Y, rank, rule, restarts, key = _common(
        Y, rank, method, init, restarts, key, max_iterations, tol, min_xstep, rel_tol
    )
    if not grid:
        raise ValueError("grid must name at least one penalty to sweep")
    bad = set(grid) - set(SWEEPABLE)
    if bad:
        raise ValueError(f"grid: cannot sweep {sorted(bad)}; sweepable: {SWEEPABLE}")
    clash = set(grid) & set(penalties)
    if clash:
        raise ValueError(f"{sorted(clash)} given both in grid and as fixed penalties")
    if factors not in ("all", "best", "none"):
        raise ValueError(f"factors must be 'all', 'best' or 'none'; got {factors!r}")
    names = list(grid)
    columns = []
    for name in names:
        vals = np.atleast_1d(np.asarray(grid[name], dtype=float))
        if vals.ndim != 1 or vals.size == 0:
            raise ValueError(f"grid[{name!r}] must be a non-empty list of numbers")
        for v in vals:
            check.nonneg_scalar(f"grid[{name!r}]", v)
        columns.append(vals)
    if product:
        points = list(itertools.product(*columns))
        settings = {n: np.array([p[i] for p in points]) for i, n in enumerate(names)}
    else:
        if len({c.size for c in columns}) != 1:
            raise ValueError("with product=False every grid list must have the same length")
        settings = dict(zip(names, columns, strict=True))
    problem, L0, R0 = _problem_and_starts(Y, rank, rule, init, restarts, key, W_0R, W_0C, penalties, settings)
    res = run_grid(
        rule,
        problem,
        settings,
        L0,
        R0,
        max_iterations=max_iterations,
        min_xstep=min_xstep,
        tol=tol,
        rel_tol=rel_tol,
        history_size=history_size,
    )
    objectives, loss = _grid_summaries(rule, problem, settings, res.L, res.R)
    best = jnp.argmin(jnp.where(jnp.isnan(objectives), jnp.inf, objectives), axis=1)
    G = objectives.shape[0]
    if factors == "all":
        L, R = res.L, res.R
    elif factors == "best":
        L, R = res.L[jnp.arange(G), best], res.R[jnp.arange(G), best]
    else:
        L = R = None
    return SweepResult(
        settings={k: jnp.asarray(v) for k, v in settings.items()},
        objectives=objectives,
        loss=loss,
        iterations=res.iterations,
        converged=res.converged,
        sparsity_L=jnp.mean(res.L == 0, axis=(-2, -1)),
        sparsity_R=jnp.mean(res.R == 0, axis=(-2, -1)),
        best=best,
        L=L,
        R=R,
    )


@eqx.filter_jit
def _grid_summaries(rule, problem, settings, L, R):
    def per_setting(values, Ls, Rs):
        p = with_scalar_penalties(problem, **values)
        obj = jax.vmap(lambda a, b: evaluate(rule, p, a, b))(Ls, Rs)
        loss = jax.vmap(p.loss)(Ls, Rs)
        return obj, loss

    settings = {k: jnp.asarray(v, L.dtype) for k, v in settings.items()}
    return jax.vmap(per_setting)(settings, L, R)
