"""Implicit differentiation of fits (jnmf.implicit) against finite differences of refits.

Every derivative is compared with central differences ``(phi(theta + h) - phi(theta - h)) / 2h``
where ``phi(theta)`` refits, very tightly, from the converged factors (so each refit
finds the nearby local solution).  The problems are small (12 x 10, rank 3) and run
in float64; with L1 and ridge terms on both factors (and sparse factors) the
solution is isolated, and the fixture checks it is converged and strictly
complementary, with zeros in both factors (so the restriction to the support is
exercised).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnmf
from jnmf import differentiable_fit
from jnmf.implicit import kkt_conditions, solve
from jnmf.problem import Problem

M, N, K = 12, 10, 3
H = 1e-5  # finite-difference step
RTOL = 1e-4  # required agreement
PENALTIES = dict(lambda_1L=0.01, lambda_1R=0.02, lambda_2L=0.05, lambda_2R=0.05, gamma_2L=0.01, gamma_2R=0.01)
TIGHT = dict(rel_tol=1e-14, max_iterations=50_000)  # the refits of the finite differences


def data(seed=0):
    rng = np.random.default_rng(seed)
    L = rng.random((M, K)) * (rng.random((M, K)) > 0.3)
    R = rng.random((K, N)) * (rng.random((K, N)) > 0.3)
    Y = jnp.asarray(L @ R + 0.05 * rng.random((M, N)))
    return Y, jnp.asarray(rng.random((M, K))), jnp.asarray(rng.random((K, N))), rng


@pytest.fixture(scope="module")
def setup():
    Y, L0, R0, rng = data()
    L, R = differentiable_fit(Y, L0, R0, method="hals", **PENALTIES)
    W = jnp.asarray(rng.random((M, N)))
    return Y, L, R, W


def phi(W):
    """A function of the factors themselves (not gauge invariant)."""
    return lambda L, R: jnp.sum(W * (L @ R)) + jnp.sum(L**2) - jnp.sum(jnp.sqrt(R + 1.0))


def rel_error(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_fixture_is_converged_strictly_complementary(setup):
    Y, L, R, _ = setup
    kkt = kkt_conditions(Problem.from_scalars(Y, **PENALTIES), L, R)
    assert float(kkt.stationarity) < 1e-11
    assert float(kkt.margin) > 1e-4  # every zero has a clearly positive gradient
    nL, nR = (int(s) for s in kkt.support)
    assert 0 < nL < M * K and 0 < nR < K * N  # zeros in both factors


def test_grad_wrt_Y_matches_finite_differences(setup):
    Y, L, R, W = setup
    f = phi(W)
    grad = jax.grad(lambda Y: f(*differentiable_fit(Y, L, R, method="hals", **PENALTIES)))(Y)
    refit = jax.jit(lambda Y: f(*differentiable_fit(Y, L, R, method="hals", **TIGHT, **PENALTIES)))
    fd = np.zeros((M, N))
    for i in range(M):
        for j in range(N):
            E = jnp.zeros((M, N)).at[i, j].set(H)
            fd[i, j] = (refit(Y + E) - refit(Y - E)) / (2 * H)
    err = rel_error(grad, fd)
    print(f"grad wrt Y: max relative error {err:.2e}")
    assert err < RTOL


def test_grad_wrt_every_penalty_matches_finite_differences(setup):
    Y, L, R, W = setup
    f = phi(W)
    values = {k: jnp.asarray(v) for k, v in PENALTIES.items()}
    grads = jax.grad(lambda v: f(*differentiable_fit(Y, L, R, method="hals", **v)))(values)
    refit = jax.jit(lambda v: f(*differentiable_fit(Y, L, R, method="hals", **TIGHT, **v)))
    errors = {}
    for name in PENALTIES:
        up = dict(values, **{name: values[name] + H})
        down = dict(values, **{name: values[name] - H})
        fd = (refit(up) - refit(down)) / (2 * H)
        errors[name] = abs(float(grads[name]) - float(fd)) / abs(float(fd))
    print("grad wrt penalties: relative errors", {k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) < RTOL


def test_grad_wrt_loss_and_l1_weights(setup):
    """Directional derivatives along random directions of a diagonal W_0C, a diagonal W_0R and
    matrix L1 weights W_1L, W_1R."""
    Y, L, R, W = setup
    rng = np.random.default_rng(5)
    f = phi(W)
    base = dict(
        W_0R=jnp.asarray(0.5 + rng.random(M)),
        W_0C=jnp.asarray(0.5 + rng.random(N)),
        W_1L=jnp.asarray(0.01 * rng.random((M, K))),
        W_1R=jnp.asarray(0.01 * rng.random((K, N))),
    )
    fixed = dict(lambda_2L=0.05, lambda_2R=0.05)
    L1, R1 = differentiable_fit(Y, L, R, method="hals", **TIGHT, **fixed, **base)
    grads = jax.grad(lambda w: f(*differentiable_fit(Y, L1, R1, method="hals", **fixed, **w)))(base)
    refit = jax.jit(lambda w: f(*differentiable_fit(Y, L1, R1, method="hals", **TIGHT, **fixed, **w)))
    errors = {}
    for name, value in base.items():
        D = jnp.asarray(rng.standard_normal(value.shape))
        up, down = dict(base, **{name: value + H * D}), dict(base, **{name: value - H * D})
        fd = (refit(up) - refit(down)) / (2 * H)
        errors[name] = abs(float(jnp.sum(grads[name] * D)) - float(fd)) / abs(float(fd))
    print("grad wrt weights: relative errors", {k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) < RTOL


def test_vjp_of_solve(setup):
    """jax.vjp of the factors themselves: the Problem's cotangent (Y and a penalty) against a
    directional finite difference, and zero for the starting factors."""
    Y, L, R, _ = setup
    rng = np.random.default_rng(6)
    problem = Problem.from_scalars(Y, **PENALTIES)
    (L1, R1), pullback = jax.vjp(lambda p, a, b: solve(p, a, b, method="hals"), problem, L, R)
    CL, CR = jnp.asarray(rng.standard_normal((M, K))), jnp.asarray(rng.standard_normal((K, N)))
    p_bar, L0_bar, R0_bar = pullback((CL, CR))
    assert isinstance(p_bar, Problem)
    assert float(jnp.max(jnp.abs(L0_bar))) == 0.0 and float(jnp.max(jnp.abs(R0_bar))) == 0.0

    def pairing(p):
        L2, R2 = solve(p, L1, R1, method="hals", **TIGHT)
        return float(jnp.sum(CL * L2) + jnp.sum(CR * R2))

    D = jnp.asarray(rng.standard_normal((M, N)))
    with_Y = lambda Y: eqx.tree_at(lambda p: p.Y, problem, Y)
    fd = (pairing(with_Y(Y + H * D)) - pairing(with_Y(Y - H * D))) / (2 * H)
    err_Y = abs(float(jnp.sum(p_bar.Y * D)) - fd) / abs(fd)
    lam = PENALTIES["lambda_2R"]
    fd = (pairing(problem.replace(lambda_2R=lam + H)) - pairing(problem.replace(lambda_2R=lam - H))) / (2 * H)
    err_lam = abs(float(p_bar.penalty_R.lambda_2) - fd) / abs(fd)
    print(f"vjp: relative errors Y {err_Y:.1e}, lambda_2R {err_lam:.1e}")
    assert max(err_Y, err_lam) < RTOL


def test_jit_and_vmap_over_penalty_values(setup):
    """jit(grad) equals grad, and one vmap call gives the gradients (wrt Y and the penalty) of a
    whole sweep, equal to the per-value gradients."""
    Y, L, R, W = setup
    f = phi(W)

    def loss(Y, lam):
        return f(*differentiable_fit(Y, L, R, method="hals", lambda_2L=lam, lambda_2R=0.05, lambda_1R=0.02))

    grad = jax.grad(loss, argnums=(0, 1))
    lams = jnp.asarray([0.03, 0.05, 0.08])
    gY, glam = jax.jit(jax.vmap(grad, in_axes=(None, 0)))(Y, lams)
    for b, lam in enumerate(lams):
        eY, elam = grad(Y, lam)
        assert rel_error(gY[b], eY) < 1e-9
        assert abs(float(glam[b]) - float(elam)) <= 1e-9 * abs(float(elam))
    jY, jlam = jax.jit(grad)(Y, lams[1])
    assert rel_error(jY, gY[1]) < 1e-9
    assert abs(float(jlam) - float(glam[1])) <= 1e-9 * abs(float(glam[1]))


def test_damping_is_a_small_bias_on_an_isolated_solution(setup):
    """(H_SS + damping I) w = u: a tiny damping changes the exact gradient by about
    damping / (smallest curvature), and a large one shrinks it."""
    Y, L, R, W = setup
    f = phi(W)

    def grad(damping):
        fit = lambda Y: f(*differentiable_fit(Y, L, R, method="hals", damping=damping, **PENALTIES))
        return jax.grad(fit)(Y)

    exact = grad(0.0)
    assert rel_error(grad(1e-9), exact) < 1e-6
    assert float(jnp.linalg.norm(grad(1e3))) < 0.1 * float(jnp.linalg.norm(exact))


@pytest.mark.parametrize("method", ["hals", "anls"])
def test_gauge_invariant_function_without_penalties(method):
    """Plain NMF (H_SS singular: the scaling gauge): the derivative of a function of L @ R
    is still exact (CG from zero gives the minimum-norm solution of the consistent system)."""
    Y, L0, R0, rng = data(1)
    W = jnp.asarray(rng.random((M, N)))
    L, R = differentiable_fit(Y, L0, R0, method=method, **TIGHT)
    kkt = kkt_conditions(Problem.from_scalars(Y), L, R)
    assert float(kkt.stationarity) < 1e-11 and float(kkt.margin) > 1e-6
    f = lambda L, R: jnp.sum(W * (L @ R))
    grad = jax.grad(lambda Y: f(*differentiable_fit(Y, L, R, method=method)))(Y)
    refit = jax.jit(lambda Y: f(*differentiable_fit(Y, L, R, method=method, **TIGHT)))
    rows, cols = rng.integers(0, M, 12), rng.integers(0, N, 12)
    fd = [(refit(Y.at[i, j].add(H)) - refit(Y.at[i, j].add(-H))) / (2 * H) for i, j in zip(rows, cols)]
    err = rel_error(grad[rows, cols], np.asarray(fd))
    print(f"gauge-invariant, no penalty, {method}: max relative error {err:.2e}")
    assert err < RTOL


def test_rules_that_do_not_minimize_eq_3_are_rejected():
    Y, L0, R0, _ = data()
    with pytest.raises(ValueError, match="does not minimize eq. 3"):
        differentiable_fit(Y, L0, R0, method="kl")


def test_grad_wrt_elementwise_weights_and_masked_data():
    """With an elementwise weight M (a training mask with some entries down-weighted),
    the gradients with respect to M and to Y match finite differences of refits."""
    Y, L0, R0, rng = data(seed=5)
    Mw = jnp.asarray((rng.random((M, N)) > 0.2) * rng.uniform(0.5, 1.5, (M, N)))
    L, R = differentiable_fit(Y, L0, R0, method="hals", M=Mw, **PENALTIES)
    W = jnp.asarray(rng.random((M, N)))
    f = phi(W)
    grad_M = jax.grad(lambda Mw: f(*differentiable_fit(Y, L, R, method="hals", M=Mw, **PENALTIES)))(Mw)
    refit = jax.jit(lambda Mw: f(*differentiable_fit(Y, L, R, method="hals", M=Mw, **TIGHT, **PENALTIES)))
    for _ in range(4):
        D = jnp.asarray(rng.standard_normal((M, N))) * (Mw > 0)
        fd = (refit(Mw + H * D) - refit(Mw - H * D)) / (2 * H)
        ad = float(jnp.sum(grad_M * D))
        assert abs(ad - fd) <= RTOL * max(abs(fd), 1e-8), (ad, fd)


# The host-side surfaces cannot be traced: they say so and point at differentiable_fit
# (whose derivatives the tests above check) before doing any work.
TRACED_CALLS = {
    "fit: grad of a penalty": (
        "fit",
        "lambda_2L",
        lambda Y: jax.grad(lambda lam: jnmf.fit(Y, K, lambda_2L=lam).L.sum())(0.3),
    ),
    "fit: jit of Y": ("fit", "Y", lambda Y: jax.jit(lambda Y: jnmf.fit(Y, K).L)(Y)),
    "fit: vmap of a weight": (
        "fit",
        "W_0R",
        lambda Y: jax.vmap(lambda w: jnmf.fit(Y, K, W_0R=w).L)(jnp.ones((2, M))),
    ),
    "fit: grad of the starts": (
        "fit",
        "init",
        lambda Y: jax.grad(lambda L0: jnmf.fit(Y, K, init=(L0, jnp.ones((K, N)))).L.sum())(jnp.ones((M, K))),
    ),
    "sweep: traced grid": (
        "sweep",
        "grid",
        lambda Y: jax.grad(lambda lam: jnmf.sweep(Y, K, {"lambda_1L": [lam]}).loss.sum())(0.3),
    ),
    "consensus: jit of Y": ("consensus", "Y", lambda Y: jax.jit(lambda Y: jnmf.consensus(Y, K).rank)(Y)),
    "cross_validate_rank: jit of Y": (
        "cross_validate_rank",
        "Y",
        lambda Y: jax.jit(lambda Y: jnmf.cross_validate_rank(Y, [2, 3]).rank)(Y),
    ),
}


@pytest.mark.parametrize("case", sorted(TRACED_CALLS))
def test_host_surfaces_refuse_tracers_naming_differentiable_fit(case):
    caller, name, call = TRACED_CALLS[case]
    Y, *_ = data()
    with pytest.raises(ValueError, match=rf"^{caller}\(\) cannot run under a JAX transformation") as err:
        call(Y)
    assert f"{name} is a traced value" in str(err.value)
    assert "jnmf.differentiable_fit(Y, L0, R0" in str(err.value)
