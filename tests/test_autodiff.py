"""The objective of eq. 3, its gradients, and the half-step QP of eqs. 6-9 against autodiff.

* ``jax.grad(Problem.objective)`` equals ``Problem.gradients`` for every weight layout
  (dense / diagonal / absent W_0R, W_0C; J-term W_2 pairs of every kind; matrix and
  scalar W_1), and the objective equals a dense NumPy evaluation of eq. 3.
* ``half_problem_L`` / ``half_problem_R`` reproduce eq. 3 as a function of one factor
  (value + constant, gradient), ``apply_G`` is linear and symmetric and equals the
  dense Kronecker form of eq. 8 and the Hessian from ``jax.hessian``.
* The step length of eq. 24 minimizes phi along the direction.
"""

# Exactness tests run in float64 (x64 is switched on in conftest.py).
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rnnmf_reference as ref  # (tests/ is on sys.path under pytest)

from jnmf.problem import Problem, penalty_value
from jnmf.quadratic import (
    half_problem_L,
    half_problem_R,
    max_feasible_step,
    objective_after_R_step,
    optimal_step_length,
    pick_direction,
)
from jnmf.weights import Weight

M, N, K = 6, 5, 3
RTOL = 1e-11


def sym_nonneg(n, rng, psd=True):
    B = rng.random((n, n))
    return B @ B.T / n if psd else (B + B.T) / 2


def weight(kind, n, rng):
    """A Weight of the given kind for an n x n slot."""
    if kind == "identity":
        return Weight.identity()
    if kind == "scalar":
        return Weight.scalar(rng.random() + 0.1)
    if kind == "diag":
        return Weight.from_user(jnp.asarray(rng.random(n) + 0.1))
    if kind == "full":
        return Weight.from_user(jnp.asarray(sym_nonneg(n, rng)))
    if kind == "offdiag":
        return Weight.offdiag(rng.random() * 0.5)
    raise ValueError(kind)


# (p-side, k-side) kinds of the L2 pairs; every kind appears on both sides
PAIRS = [
    ("full", "diag"),
    ("scalar", "offdiag"),
    ("diag", "full"),
    ("offdiag", "scalar"),
    ("identity", "full"),
]


def make_problem(seed, w0="full", w1="matrix", pairs=PAIRS):
    rng = np.random.default_rng(seed)
    Y = jnp.asarray(rng.random((M, N)))
    W_0R = {"none": None, "diag": rng.random(M) + 0.1, "full": sym_nonneg(M, rng) + np.eye(M)}[w0]
    W_0C = {"none": None, "diag": rng.random(N) + 0.1, "full": sym_nonneg(N, rng) + np.eye(N)}[w0]
    if w1 == "matrix":
        W_1L, W_1R = rng.random((M, K)), rng.random((K, N))
    else:
        W_1L, W_1R = rng.random(), rng.random()
    l2_L = tuple((weight(a, M, rng), weight(b, K, rng)) for a, b in pairs)
    l2_R = tuple((weight(a, K, rng), weight(b, N, rng)) for a, b in pairs)
    to = lambda w: None if w is None else jnp.asarray(w)
    problem = Problem.from_scalars(Y, to(W_0R), to(W_0C), W_1L=W_1L, W_1R=W_1R, W_2L=l2_L, W_2R=l2_R)
    L = jnp.asarray(rng.random((M, K)))
    R = jnp.asarray(rng.random((K, N)))
    return problem, L, R


def dense_pairs(pairs, p, k):
    return [(np.asarray(a.dense(p)), np.asarray(b.dense(k))) for a, b in pairs]


def close(a, b, rtol=RTOL):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(np.max(np.abs(b)), 1.0)
    assert np.max(np.abs(a - b)) <= rtol * scale, np.max(np.abs(a - b)) / scale


LAYOUTS = [(w0, w1) for w0 in ("full", "diag", "none") for w1 in ("matrix", "scalar")]


# ---------------------------------------------------------------- eq. 3
@pytest.mark.parametrize("w0,w1", LAYOUTS)
def test_gradients_equal_autodiff(w0, w1):
    problem, L, R = make_problem(1, w0, w1)
    gL, gR = jax.grad(problem.objective, argnums=(0, 1))(L, R)
    aL, aR = problem.gradients(L, R)
    close(aL, gL)
    close(aR, gR)


@pytest.mark.parametrize("pairs", [(), PAIRS[:1], PAIRS[1:3], PAIRS], ids=["J0", "J1", "J2", "J5"])
def test_gradients_equal_autodiff_any_J(pairs):
    problem, L, R = make_problem(2, "full", "matrix", pairs)
    gL, gR = jax.grad(problem.objective, argnums=(0, 1))(L, R)
    aL, aR = problem.gradients(L, R)
    close(aL, gL)
    close(aR, gR)


@pytest.mark.parametrize("w0,w1", LAYOUTS)
def test_objective_equals_dense_formula(w0, w1):
    problem, L, R = make_problem(3, w0, w1)
    f = ref.objective(
        problem.Y,
        L,
        R,
        W_0R=problem.W_0R.dense(M),
        W_0C=problem.W_0C.dense(N),
        W_1L=problem.penalty_L.l1(),
        W_1R=problem.penalty_R.l1(),
        l2_L=dense_pairs(problem.penalty_L.pairs(), M, K),
        l2_R=dense_pairs(problem.penalty_R.pairs(), K, N),
    )
    assert abs(float(problem.objective(L, R)) - f) <= 1e-12 * abs(f)


def test_from_scalars_is_eq_4():
    """lambda_2 -> 1/2 lambda_2 ||X||^2; gamma_2 -> 1/2 gamma_2 tr(X'X(11' - I))."""
    rng = np.random.default_rng(4)
    Y, L, R = rng.random((M, N)), rng.random((M, K)), rng.random((K, N))
    lam = dict(lambda_1L=0.1, lambda_1R=0.2, lambda_2L=0.3, lambda_2R=0.4, gamma_2L=0.5, gamma_2R=0.6)
    p = Problem.from_scalars(jnp.asarray(Y), **lam)
    E = Y - L @ R
    off = lambda X: np.sum(X * (X.sum(1, keepdims=True) - X))
    f = (
        0.5 * np.sum(E * E)
        + 0.1 * L.sum()
        + 0.2 * R.sum()
        + 0.15 * np.sum(L * L)
        + 0.2 * np.sum(R * R)
        + 0.25 * off(L)
        + 0.3 * off(R)
    )
    assert abs(float(p.objective(jnp.asarray(L), jnp.asarray(R))) - f) <= 1e-12 * f


# ---------------------------------------------------------------- eqs. 6-9
# Half problems are posed on the factor-major unknown Xt (k x p): Xt = L' for the L step,
# Xt = R for the R step; so eq. 3 is differentiated with respect to L' and R.
def objective_in_Lt(problem, R):
    return lambda Lt: problem.objective(Lt.T, R)


def objective_in_R(problem, L):
    return lambda R: problem.objective(L, R)


@pytest.mark.parametrize("w0,w1", LAYOUTS)
def test_half_problems_reproduce_the_objective(w0, w1):
    problem, L, R = make_problem(5, w0, w1)
    rng = np.random.default_rng(50)
    for side in ("L", "R"):
        if side == "L":
            hp, f = half_problem_L(problem, L.T, R), objective_in_Lt(problem, R)
            X0 = L.T
            const = problem.half_data_norm + penalty_value(
                problem.penalty_R.l1(), problem.penalty_R.pairs(), R
            )
        else:
            hp, f = half_problem_R(problem, L.T, R), objective_in_R(problem, L)
            X0 = R
            const = problem.half_data_norm + penalty_value(
                problem.penalty_L.l1(), problem.penalty_L.pairs(), L
            )
        for X in (X0, jnp.asarray(rng.random(X0.shape)), jnp.asarray(3 * rng.random(X0.shape))):
            fx = float(f(X))
            assert abs(float(hp.value(X)) + float(const) - fx) <= 1e-12 * abs(fx), side
            close(hp.gradient(X), jax.grad(f)(X))


def test_objective_after_R_step():
    problem, L, R = make_problem(6)
    hp = half_problem_R(problem, L.T, R)
    R2 = jnp.asarray(np.random.default_rng(60).random(R.shape))
    f = float(problem.objective(L, R2))
    assert abs(float(objective_after_R_step(problem, hp, L.T, R2)) - f) <= 1e-12 * f


@pytest.mark.parametrize("side", ["L", "R"])
@pytest.mark.parametrize("w0", ["full", "diag", "none"])
def test_apply_G_is_linear_and_symmetric(side, w0):
    problem, L, R = make_problem(7, w0)
    hp = half_problem_L(problem, L.T, R) if side == "L" else half_problem_R(problem, L.T, R)
    k, p = hp.linear.shape
    rng = np.random.default_rng(70)
    A, B = (jnp.asarray(rng.standard_normal((k, p))) for _ in range(2))
    a, b = 0.7, -1.3
    close(hp.apply_G(a * A + b * B), a * hp.apply_G(A) + b * hp.apply_G(B))
    lhs, rhs = float(jnp.sum(A * hp.apply_G(B))), float(jnp.sum(hp.apply_G(A) * B))
    assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), 1.0)


def vec(X):
    """Column-major vectorization, as in the paper."""
    return np.asarray(X).reshape(-1, order="F")


def vec_t(Xt):
    """vec(X) of the paper's X (p x k) from jnmf's factor-major Xt = X' (k x p)."""
    return vec(np.asarray(Xt).T)


@pytest.mark.parametrize("w0", ["full", "diag", "none"])
def test_half_problems_equal_dense_kronecker_form(w0):
    """G = kron(F W F', W_row) + sum_j kron(W_2C_j, W_2R_j) and d = vec(W_1 - W_0R Y W_0C R')
    (eq. 8), for the L step and for the R step posed on X = R'; G is also the Hessian.

    jnmf's half problems act on the factor-major Xt = X' (L' or R), so vectors are
    compared through vec(Xt') = vec(X), the paper's ordering."""
    problem, L, R = make_problem(8, w0)
    W0R, W0C = np.asarray(problem.W_0R.dense(M)), np.asarray(problem.W_0C.dense(N))
    Y, Ln, Rn = np.asarray(problem.Y), np.asarray(L), np.asarray(R)
    G_L = np.kron(Rn @ W0C @ Rn.T, W0R) + sum(
        np.kron(c, r) for r, c in dense_pairs(problem.penalty_L.pairs(), M, K)
    )
    d_L = vec(np.asarray(problem.penalty_L.l1()) - W0R @ Y @ W0C @ Rn.T)
    # R step on X = R' (n x k): row weight W_0C, gram L'W_0R L, pairs swapped
    G_R = np.kron(Ln.T @ W0R @ Ln, W0C) + sum(
        np.kron(r, c) for r, c in dense_pairs(problem.penalty_R.pairs(), K, N)
    )
    d_R = vec((np.asarray(problem.penalty_R.l1()) - Ln.T @ W0R @ Y @ W0C).T)
    rng = np.random.default_rng(80)
    for hp, G, d, f, Xt0 in (
        (half_problem_L(problem, L.T, R), G_L, d_L, objective_in_Lt(problem, R), L.T),
        (half_problem_R(problem, L.T, R), G_R, d_R, objective_in_R(problem, L), R),
    ):
        k, p = Xt0.shape
        Xt = jnp.asarray(rng.random((k, p)))
        close(vec_t(hp.apply_G(Xt)), G @ vec_t(Xt))
        close(vec_t(hp.linear), d)
        x = vec_t(Xt)
        val = 0.5 * x @ G @ x + d @ x
        assert abs(float(hp.value(Xt)) - val) <= 1e-12 * max(abs(val), 1.0)
        close(vec_t(hp.diagonal()), np.diag(G))
        # Hessian in Xt: (k, p, k, p); row-major flattening of Xt (k x p) is vec(X)
        hess = np.asarray(jax.hessian(f)(Xt0))
        close(hess.reshape(k * p, k * p), G)


# ---------------------------------------------------------------- eq. 24
@pytest.mark.parametrize("side", ["L", "R"])
@pytest.mark.parametrize("direction", ["lee_seung", "random"])
def test_optimal_step_minimizes_phi_along_direction(side, direction):
    problem, L, R = make_problem(9, "full", "matrix", PAIRS[:1] + PAIRS[2:3])  # PSD penalties
    hp = half_problem_L(problem, L.T, R) if side == "L" else half_problem_R(problem, L.T, R)
    X = L.T if side == "L" else R  # factor-major unknown
    F = hp.apply_G(X)
    grad = F + hp.linear
    if direction == "lee_seung":
        H = pick_direction(X, grad, F)
    else:
        H = jnp.asarray(np.random.default_rng(90).standard_normal(X.shape))
        H = -jnp.sign(jnp.sum(grad * H)) * H  # a descent direction
    alpha = optimal_step_length(grad, H, hp.apply_G(H))
    assert float(alpha) > 0
    phi = lambda a: hp.value(X + a * H)
    slope0 = float(jax.grad(phi)(0.0))
    assert slope0 < 0
    assert abs(float(jax.grad(phi)(alpha))) <= 1e-10 * abs(slope0)
    for t in (0.5, 0.9, 1.1, 2.0):
        assert float(phi(alpha)) <= float(phi(t * alpha)) + 1e-14 * abs(float(phi(alpha)))


def test_optimal_step_degenerate_curvature():
    g = jnp.asarray([1.0, -2.0])
    H = jnp.asarray([0.0, 1.0])
    assert float(optimal_step_length(g, H, jnp.zeros(2))) == np.inf  # descent, no curvature
    assert float(optimal_step_length(-g, H, jnp.zeros(2))) == 0.0  # ascent, no curvature
    assert float(optimal_step_length(g, H, jnp.asarray([0.0, 4.0]))) == 0.5


def test_max_feasible_step():
    X = jnp.asarray([[1.0, 2.0], [0.5, 0.0]])
    H = jnp.asarray([[-1.0, -1.0], [1.0, 0.0]])
    a = float(max_feasible_step(X, H))
    assert a == 1.0 and float(jnp.min(X + a * H)) == 0.0
    assert float(max_feasible_step(X, jnp.abs(H))) == np.inf
