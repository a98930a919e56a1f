"""Differentiable fits by implicit differentiation at the fixed point (layer 4.5).

:func:`solve` runs a rule of :mod:`jnmf.rules` to convergence with the driver
(:func:`jnmf.driver.iterate`'s loop, one ``lax.while_loop``) and defines the
derivative of its answer ``(L*, R*)`` with respect to every inexact array leaf of the
:class:`~jnmf.problem.Problem` -- the data ``Y``, the loss weights ``W_0R`` / ``W_0C``,
the penalty scalars ``lambda_1L`` ... ``gamma_2R``, the L1 weights ``W_1L`` / ``W_1R``,
the values of general L2 pairs, and any leaf later added to eq. 3 -- WITHOUT unrolling
the loop (reverse mode through ``lax.while_loop`` is not defined in JAX, and would cost
memory proportional to the iteration count).  :func:`differentiable_fit` is the same
from ``Y`` and penalty keywords.

The mathematics (the implicit function theorem at a KKT point; the approach of
Blondel et al. 2022, "Efficient and modular implicit differentiation", NeurIPS).
Write ``x = (L, R)`` and ``f(x, theta)`` for the objective of eq. 3 (Pav 2024) with
parameters ``theta`` (the problem's leaves).  A local solution satisfies the KKT
conditions ``x >= 0``, ``g = grad_x f(x, theta) >= 0``, ``x * g = 0``.  On the support
``S = {x > 0}`` this says ``g_S(x, theta) = 0``; off it, ``x = 0``.  When the support
does not change under a small change of ``theta`` (see *validity*), the solution map
is smooth there and differentiating ``g_S(x*(theta), theta) = 0`` gives

    H_SS dx_S = - d_theta g_S,        dx_{not S} = 0,

with ``H_SS`` the Hessian of f in ``x`` restricted to the support.  Reverse mode
needs only products with its transpose: for a cotangent ``u`` of ``x*``, solve

    H_SS w = u_S                                                  (1)

(H is symmetric) and return ``theta_bar = - (d_theta g_S)' w = - grad_theta <g(x*, theta), w>``
(``w`` padded with zeros off S).  Both products come from autodiff of
``Problem.objective``: ``H v`` is a forward-mode derivative of ``jax.grad`` (matrix-free,
one ``jax.linearize`` reused by every product), and ``theta_bar`` is one ``jax.vjp`` of
the gradient with respect to the problem, so every term of eq. 3, present or future,
is covered with no hand-written derivative.  Equation (1) is solved by conjugate
gradients (``jax.scipy.sparse.linalg.cg``) from zero.  Everything is pure JAX: ``jit``,
``vmap`` (one call differentiates a whole sweep) and ``grad`` compose.

**The gauge symmetry.**  Without penalties (or with L1 terms only on one factor)
eq. 3 is invariant under ``(L D, D^-1 R)`` for positive diagonal D, so the solutions
form a continuum and ``H_SS`` is singular (its null space holds the directions
``(L E, -E R)``, E diagonal).  The factors themselves then have no derivative, but a
gauge-invariant function of them (of ``L R``, of the loss) does: its cotangent ``u``
and ``d_theta g`` are orthogonal to the null space, (1) is consistent, and CG
started from zero stays in the range of ``H_SS`` and converges to its minimum-norm
solution, which gives the exact derivative.

A ridge on BOTH factors (``lambda_2L, lambda_2R > 0``) fixes the scaling, but with
the ridge alone eq. 3 is still invariant under rotations ``(L Q, Q' R)``, Q
orthogonal: ``L R``, ``||L||`` and ``||R||`` do not change.  A rotation mixing two
components stays on the support when their zero patterns allow it, which dense
factors always do; then the solution is again not isolated.  L1 terms
(``lambda_1L``, ``lambda_1R``), the non-orthogonality penalties ``gamma_2`` or sparse
factors break the rotations.  For functions that are not invariant under the
remaining symmetry the system (1) is inconsistent and CG returns garbage (huge
values); the ``damping`` option solves ``(H_SS + damping I) w = u_S`` instead, a
Tikhonov-regularized, biased but bounded answer.

**Validity.**  The derivative is that of the LOCAL solution the fit found (NMF
solutions are not unique; another start may reach another one with other
derivatives).  It is exact when

* the fit has converged: the KKT conditions hold to high accuracy (the defaults of
  :func:`implicit_stopping` are tight; check with :func:`kkt_conditions`);
* strict complementarity holds: no entry has both ``x = 0`` and ``g = 0`` (there the
  support may change under any perturbation and the map is not differentiable);
  :func:`kkt_conditions` reports the smallest gradient off the support;
* ``H_SS`` is positive definite (an isolated local minimum) or the function is
  invariant under the symmetries that make it singular (above).  Near a
  bifurcation -- a component about to vanish as a penalty grows -- ``H_SS`` is
  nearly singular and the derivative is genuinely large;
* the rule produces exact zeros (HALS, ANLS, AU, projected gradient do; the
  multiplicative update only approaches zero, so with it pass ``support_tol`` > 0);
* the rule minimizes eq. 3: the KL and beta-divergence rules are rejected.

The cotangent of the starting factors ``L0, R0`` is zero (a local solution does not
depend on where the iteration started, as long as it reaches the same one).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.sparse.linalg import cg
from jaxtyping import Array, Float

from . import _validate as check
from .compile_cache import guard_map_limit
from .data import is_sparse_input, sparse_operator
from .driver import Stopping, iterate_impl
from .problem import Problem, build_problem, check_penalty_keywords
from .rules import DEFAULT_METHOD, AlternatingRule, make_rule

__all__ = ["KKT", "differentiable_fit", "implicit_stopping", "kkt_conditions", "solve"]


def implicit_stopping(dtype=jnp.float64) -> Stopping:
    """The default stopping rule of differentiable fits: tight, since the derivative is
    that of the exact fixed point.

    Stops when the relative change of the factors, ``sum_i ||X_i^k - X_i^(k-1)|| / ||X_i^(k-1)||``,
    falls below ``1e-12`` in float64 (``1e-6`` in float32), or after 10000 iterations.
    The relative objective test is off: near a fixed point the objective's change is
    of second order in the factors' change, so it stops too early.

    Args:
        dtype: the fit's floating-point dtype.

    Returns:
        The :class:`~jnmf.driver.Stopping` settings.
    """
    wide = jnp.finfo(dtype).eps < 1e-10
    return Stopping(max_iterations=10_000, tol=0.0, rel_tol=1e-12 if wide else 1e-6)


def _solver_rule(method) -> AlternatingRule:
    rule = make_rule(method)
    if type(rule).objective is not AlternatingRule.objective:
        raise ValueError(
            f"method {rule.method_name!r} ({type(rule).__name__}) does not minimize eq. 3; "
            "implicit differentiation uses eq. 3's KKT conditions (use hals, ahals, anls, au, mu or pg)"
        )
    return rule


def _objective_gradient(problem: Problem, L: Array, R: Array) -> tuple[Array, Array]:
    """grad_(L, R) of eq. 3 by autodiff of ``Problem.objective`` (every term, present or future)."""
    return jax.grad(problem.objective, argnums=(0, 1))(L, R)


class KKT(eqx.Module):
    """How well factors satisfy the KKT conditions of eq. 3 (see :func:`kkt_conditions`).

    Attributes:
        stationarity: ``max |grad f|`` over the support (0 at an exact solution), relative
            to the largest entry of the gradient's data part, ``W_0R Y W_0C R'`` and
            ``L' W_0R Y W_0C``.
        margin: ``min grad f`` over the entries at zero, relative to the same scale
            (``inf`` when there are none).  Strict complementarity holds when it is
            clearly positive, far above ``stationarity``.  A vanished component (a
            zero column of L with the matching zero row of R) has zero gradient and
            gives margin 0; when it is a strict local minimum in those directions
            (e.g. the ridge exceeds the residual's top singular value) it stays at
            zero and the derivative is still exact.
        support: the number of positive entries of L and of R.
    """

    stationarity: Array
    margin: Array
    support: Array


def kkt_conditions(problem: Problem, L: Array, R: Array, support_tol=0.0) -> KKT:
    """Check the KKT conditions of eq. 3 at ``(L, R)``: stationarity on the support,
    and the strict complementarity margin off it.

    Args:
        problem: the problem.
        L, R: the factors (``m x k``, ``k x n``).
        support_tol: entries at most this are counted as zero.

    Returns:
        A :class:`KKT`.  Jittable and vmappable (gradient-free: the inputs are wrapped
        in ``stop_gradient``).
    """
    problem, L, R = jax.lax.stop_gradient((problem.replace(), L, R))
    gL, gR = _objective_gradient(problem, L, R)
    scale = jnp.maximum(
        jnp.max(jnp.abs(problem.data_product_L(R))), jnp.max(jnp.abs(problem.data_product_R(L.T)))
    )
    scale = jnp.where(scale > 0, scale, 1.0)
    on_L, on_R = L > support_tol, R > support_tol
    stat = jnp.maximum(jnp.max(jnp.where(on_L, jnp.abs(gL), 0.0)), jnp.max(jnp.where(on_R, jnp.abs(gR), 0.0)))
    margin = jnp.minimum(jnp.min(jnp.where(on_L, jnp.inf, gL)), jnp.min(jnp.where(on_R, jnp.inf, gR)))
    support = jnp.stack([jnp.sum(on_L), jnp.sum(on_R)])
    return KKT(stat / scale, margin / scale, support)


def solve(
    problem: Problem,
    L0: Float[Array, "m k"],
    R0: Float[Array, "k n"],
    *,
    method=DEFAULT_METHOD,
    stopping: Stopping | None = None,
    max_iterations: int | None = None,
    tol: float | None = None,
    rel_tol: float | None = None,
    min_xstep: float | None = None,
    damping=0.0,
    cg_tol: float | None = None,
    cg_max_iterations: int | None = None,
    support_tol=0.0,
) -> tuple[Array, Array]:
    """Fit eq. 3 from ``(L0, R0)`` to convergence, differentiably (implicit differentiation).

    The forward pass is the driver's loop; the reverse pass solves the linear system
    of the implicit function theorem on the support (module docstring), so ``jax.grad``
    / ``jax.vjp`` of any function of the returned factors with respect to the
    problem's leaves are exact at the local solution found.  Jittable and
    vmappable.  Reverse mode only (a ``jax.custom_vjp``): ``jax.jvp`` / ``jax.jacfwd``
    of the result are not defined.

    Args:
        problem: the :class:`~jnmf.problem.Problem`; cotangents are returned for every
            inexact array leaf (its cached data terms, if any, are dropped first).
        L0, R0: the starting factors (their cotangent is zero).
        method: a rule minimizing eq. 3: a name of :data:`jnmf.rules.METHODS` other than
            ``kl`` / ``beta``, a rule, or an optax optimizer.
        stopping: the stopping rule (default :func:`implicit_stopping`, tight); the
            keywords ``max_iterations``, ``tol``, ``rel_tol``, ``min_xstep`` override it.
        damping: Tikhonov term of the reverse linear system, ``(H_SS + damping I) w = u``
            (0, the default, is exact; > 0 biases the derivative but makes it defined
            for functions that are not gauge invariant when there is no ridge).
        cg_tol: relative residual at which conjugate gradients stop (default 1e-10 in
            float64, 1e-5 in float32).
        cg_max_iterations: cap on CG iterations (default ten times the number of
            unknowns ``(m + n) k``).
        support_tol: entries at most this count as zero (0: exactly zero; use a small
            positive value with the multiplicative update).

    Returns:
        ``(L, R)``, the fitted factors.

    Raises:
        ValueError: a bad setting or a rule that cannot solve the problem.
    """
    rule = _solver_rule(method)
    L0, R0 = jnp.asarray(L0), jnp.asarray(R0)
    dtype = jnp.result_type(L0, R0, problem.dtype)
    L0, R0 = L0.astype(dtype), R0.astype(dtype)
    stop = (stopping or implicit_stopping(dtype)).replace(
        max_iterations=max_iterations, tol=tol, rel_tol=rel_tol, min_xstep=min_xstep
    )
    if not any(check.is_traced(x) for x in jax.tree.leaves(dataclasses.astuple(stop))):
        stop.validate()
    rule.check(problem)
    wide = jnp.finfo(dtype).eps < 1e-10
    size = (L0.shape[0] + R0.shape[1]) * L0.shape[1]
    solver = (
        jnp.asarray(damping, dtype),
        jnp.asarray((1e-10 if wide else 1e-5) if cg_tol is None else cg_tol, dtype),
        jnp.asarray(10 * size if cg_max_iterations is None else cg_max_iterations, jnp.int32),
        jnp.asarray(support_tol, dtype),
    )
    # the cached data terms are derived from Y: drop them so Y alone carries its derivative
    guard_map_limit(problem, L0, R0)
    return _solve(problem.replace(), L0, R0, rule, stop.traced(dtype), solver)


@eqx.filter_jit
def _solve(problem: Problem, L0: Array, R0: Array, rule: AlternatingRule, stop_arrays: tuple, solver: tuple):
    """:func:`solve` after validation, compiled once per rule type and shapes."""
    rule_arrays, rule_static = eqx.partition(rule, eqx.is_array)

    @jax.custom_vjp
    def fixed_point(problem, L0, R0, rule_arrays, stop_arrays, solver):
        rule = eqx.combine(rule_arrays, rule_static)
        state = rule.init(problem, L0, R0)
        result = iterate_impl(rule, problem, state, *stop_arrays, 1, None)
        L, R = result.factors
        return L, R

    def forward(problem, L0, R0, rule_arrays, stop_arrays, solver):
        L, R = fixed_point(problem, L0, R0, rule_arrays, stop_arrays, solver)
        return (L, R), (problem, L, R, solver)

    def backward(residuals, cotangent):
        problem, L, R, solver = residuals
        w = _adjoint(problem, L, R, cotangent, *solver)
        _, pullback = jax.vjp(lambda p: _objective_gradient(p, L, R), problem)
        (problem_bar,) = pullback(w)
        # integer leaves (a sparse operator's indices) have float0 cotangents: left as they are
        problem_bar = jax.tree.map(lambda x: x if x.dtype == jax.dtypes.float0 else -x, problem_bar)
        # no cotangent for the start, the rule's settings, the stopping and CG settings
        return problem_bar, None, None, None, None, None

    fixed_point.defvjp(forward, backward)
    return fixed_point(problem, L0, R0, rule_arrays, stop_arrays, solver)


def _adjoint(problem, L, R, cotangent, damping, cg_tol, cg_max_iterations, support_tol):
    """w solving (H_SS + damping I) w = u_S, zero off the support (module docstring, eq. 1)."""
    masks = (L > support_tol, R > support_tol)
    u = tuple(jnp.where(s, c, 0.0) for s, c in zip(masks, cotangent, strict=True))
    _, hvp = jax.linearize(lambda L, R: _objective_gradient(problem, L, R), L, R)

    def operator(v):
        hv = hvp(*v)
        # H_SS on the support, the identity off it (where the right-hand side is zero)
        return tuple(jnp.where(s, h + damping * x, x) for s, h, x in zip(masks, hv, v, strict=True))

    w, _ = cg(operator, u, tol=cg_tol, atol=0.0, maxiter=cg_max_iterations)
    return tuple(jnp.where(s, x, 0.0) for s, x in zip(masks, w, strict=True))


def differentiable_fit(
    Y: Float[Array, "m n"],
    L0: Float[Array, "m k"],
    R0: Float[Array, "k n"],
    *,
    method=DEFAULT_METHOD,
    W_0R=None,
    W_0C=None,
    M=None,
    stopping: Stopping | None = None,
    max_iterations: int | None = None,
    tol: float | None = None,
    rel_tol: float | None = None,
    damping=0.0,
    cg_tol: float | None = None,
    cg_max_iterations: int | None = None,
    support_tol=0.0,
    **penalties,
) -> tuple[Array, Array]:
    """Fit eq. 3 (Pav 2024) from ``(L0, R0)``, differentiable in ``Y``, the loss weights
    and the penalties by implicit differentiation (Blondel et al. 2022).

    ``jax.grad`` of any scalar function of the returned factors with respect to ``Y``,
    ``W_0R`` / ``W_0C`` (given as arrays) and any penalty keyword (given as an array or
    a float) is the derivative of the local solution found; see :mod:`jnmf.implicit`
    for the mathematics and when it is valid (converged fit, strict complementarity, an
    isolated solution -- e.g. ``lambda_2L, lambda_2R > 0`` -- or a gauge-invariant
    function such as one of ``L @ R``).  Jittable and vmappable; it does not rescale
    the data as :func:`jnmf.fit` does, so keep ``Y`` of moderate magnitude.

    Args:
        Y: ``m x n`` non-negative data.
        L0, R0: starting factors (``m x k``, ``k x n``): a previous fit's answer is a good
            start (the fit then finds the nearby local solution, quickly).
        method: the rule (default accelerated HALS); see :func:`solve`.
        W_0R, W_0C: loss weights, as for :func:`jnmf.build_problem`.
        M: an optional elementwise loss weight (``m x n``, 0 = missing), differentiable
            too: e.g. a training mask, whose held-out complement scores a penalty.
        stopping, max_iterations, tol, rel_tol: the stopping rule (default
            :func:`implicit_stopping`).
        damping, cg_tol, cg_max_iterations, support_tol: the reverse pass (see :func:`solve`).
        **penalties: the keywords of :func:`jnmf.build_problem` (``lambda_1L`` ... ``gamma_2R``,
            ``W_1L``, ``W_1R``, ``W_2RL`` ...).

    Returns:
        ``(L, R)``, the fitted factors.

    Raises:
        ValueError: a bad argument (concrete values are validated on the host).
    """
    check_penalty_keywords("differentiable_fit", penalties, differentiable_fit)
    L0, R0 = jnp.asarray(L0), jnp.asarray(R0)
    if is_sparse_input(Y):
        # sparse data stay sparse: the fit and the adjoint's products use the stored entries
        data = sparse_operator("Y", Y)
        if L0.ndim != 2 or R0.ndim != 2 or L0.shape[0] != data.shape[0] or R0.shape[1] != data.shape[1]:
            raise ValueError(f"L0 {L0.shape} and R0 {R0.shape} do not factor Y {data.shape}")
        dtype = data.dtype
        problem = build_problem(data, L0.shape[1], W_0R=W_0R, W_0C=W_0C, M=M, **penalties)
    else:
        Y = jnp.asarray(Y)
        if Y.ndim != 2 or L0.ndim != 2 or R0.ndim != 2:
            raise ValueError(f"Y, L0 and R0 must be matrices, got shapes {Y.shape}, {L0.shape}, {R0.shape}")
        if L0.shape[0] != Y.shape[0] or R0.shape[1] != Y.shape[1] or L0.shape[1] != R0.shape[0]:
            raise ValueError(f"L0 {L0.shape} and R0 {R0.shape} do not factor Y {Y.shape}")
        dtype = jnp.result_type(Y, L0, R0)
        if not jnp.issubdtype(dtype, jnp.floating):
            dtype = jnp.result_type(float)
        problem = build_problem(Y.astype(dtype), L0.shape[1], W_0R=W_0R, W_0C=W_0C, M=M, **penalties)
        if not check.is_traced(Y):
            check.matrix("Y", Y)
    return solve(
        problem,
        L0.astype(dtype),
        R0.astype(dtype),
        method=method,
        stopping=stopping,
        max_iterations=max_iterations,
        tol=tol,
        rel_tol=rel_tol,
        damping=damping,
        cg_tol=cg_tol,
        cg_max_iterations=cg_max_iterations,
        support_tol=support_tol,
    )
