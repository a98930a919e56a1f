"""KLMU: the KL-divergence multiplicative update (seed 001, algorithm II)."""

# Exactness tests run in float64 (x64 is switched on in conftest.py); the float32
# robustness tests build float32 arrays explicitly.
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jnmf.driver import iterate
from jnmf.problem import Problem
from jnmf.rules.base import rescale_rows
from jnmf.rules.kl import KLMU, kl_divergence, kl_objective, kl_supported
from jnmf.weights import Weight

M, N, K = 9, 7, 3  # fixed shapes: one compilation per problem layout
ITERS = 30
RULE = KLMU()
SETTINGS = settings(max_examples=12, deadline=None)

# exact zeros and positive values of realistic range (a ratio Y / LR below the smallest
# normal float would be flushed to zero on CPU, giving log 0 in the objective)
data = hnp.arrays(np.float64, (M, N), elements=st.one_of(st.just(0.0), st.floats(1e-4, 10.0)))
penalty = st.floats(0.0, 1.0)
seeds = st.integers(0, 2**31 - 1)


def start(seed: int, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.uniform(0.1, 1.0, (M, K)), dtype),
        jnp.asarray(rng.uniform(0.1, 1.0, (K, N)), dtype),
    )


def run(problem, L, R, iters=ITERS, normalize=None):
    return iterate(
        RULE,
        problem,
        RULE.init(problem, L, R),
        max_iterations=iters,
        min_xstep=0.0,
        tol=0.0,  # exactly iters iterations
        history_size=iters,
        normalize=normalize,
    )


def np_kl(Y, P):
    Y, P = np.asarray(Y), np.asarray(P)
    logs = np.where(Y > 0, Y * np.log(np.where(Y > 0, Y, 1.0) / P), 0.0)
    return float(np.sum(logs - Y + P))


def np_step(Y, L, R, l1L=0.0, l1R=0.0):
    """Lee-Seung KL update (seed 001, algorithm II) in NumPy, W = L first, then H = R."""
    Y, L, R = (np.asarray(a) for a in (Y, L, R))
    L = L * ((Y / (L @ R)) @ R.T) / (np.ones_like(Y) @ R.T + l1L)
    R = R * (L.T @ (Y / (L @ R))) / (L.T @ np.ones_like(Y) + l1R)
    return L, R


def test_one_step_matches_seed_formulas():
    rng = np.random.default_rng(0)
    Y = rng.uniform(0, 3, (M, N))
    L, R = start(1)
    for l1L, l1R in [(0.0, 0.0), (0.3, 0.7)]:
        problem = Problem.from_scalars(jnp.asarray(Y), lambda_1L=l1L, lambda_1R=l1R)
        state, info = RULE.step(problem, RULE.init(problem, L, R))
        L_ref, R_ref = np_step(Y, L, R, l1L, l1R)
        np.testing.assert_allclose(state.L, L_ref, rtol=1e-12)
        np.testing.assert_allclose(state.R, R_ref, rtol=1e-12)
        expected = np_kl(Y, L_ref @ R_ref) + l1L * L_ref.sum() + l1R * R_ref.sum()
        np.testing.assert_allclose(info.objective, expected, rtol=1e-12)
        assert state.aux is None  # outside the driver's loop a KL state holds the factors only


def test_matrix_l1_weights_enter_denominators():
    rng = np.random.default_rng(3)
    Y = rng.uniform(0, 3, (M, N))
    W1L, W1R = rng.uniform(0, 1, (M, K)), rng.uniform(0, 1, (K, N))
    L, R = start(4)
    problem = Problem.from_scalars(jnp.asarray(Y), W_1L=W1L, W_1R=W1R)
    state, _ = RULE.step(problem, RULE.init(problem, L, R))
    Ln = (
        np.asarray(L)
        * ((Y / (np.asarray(L) @ R)) @ np.asarray(R).T)
        / (np.ones_like(Y) @ np.asarray(R).T + W1L)
    )
    Rn = np.asarray(R) * (Ln.T @ (Y / (Ln @ R))) / (Ln.T @ np.ones_like(Y) + W1R)
    np.testing.assert_allclose(state.L, Ln, rtol=1e-12)
    np.testing.assert_allclose(state.R, Rn, rtol=1e-12)


def test_kl_divergence_value_and_zero_log_zero():
    Y = jnp.array([[0.0, 1.0], [2.0, 0.0]])
    P = jnp.array([[0.5, 2.0], [1.0, 3.0]])
    np.testing.assert_allclose(kl_divergence(Y, P), np_kl(Y, P), rtol=1e-14)
    assert kl_divergence(Y, Y + (Y == 0)) == 2.0  # only the zero entries of Y contribute (their P)
    assert np.isinf(kl_divergence(Y, jnp.zeros_like(Y)))  # LR = 0 < Y: infinite, exactly
    assert kl_divergence(jnp.zeros((2, 2)), jnp.zeros((2, 2))) == 0.0


def test_weighted_objective_uses_diagonal_weights():
    rng = np.random.default_rng(5)
    Y = rng.uniform(0, 3, (M, N))
    w, v = rng.uniform(0.5, 2, M), rng.uniform(0.5, 2, N)
    L, R = start(6)
    problem = Problem.from_scalars(jnp.asarray(Y), W_0R=jnp.asarray(w), W_0C=jnp.asarray(v))
    P = np.asarray(L @ R)
    term = np.where(Y > 0, Y * np.log(Y / P), 0.0) - Y + P
    np.testing.assert_allclose(
        kl_objective(problem, L, R), np.sum(w[:, None] * term * v[None, :]), rtol=1e-12
    )
    assert kl_supported(problem)
    full = Problem.from_scalars(jnp.asarray(Y), W_0R=jnp.eye(M))
    assert not kl_supported(full)
    # rule.check (called by iterate, the batch functions, fit and sweep) says the same
    RULE.check(problem)
    with pytest.raises(ValueError, match="W_0R"):
        RULE.check(full)
    with pytest.raises(ValueError, match="W_0R"):
        run(full, L, R)


@SETTINGS
@given(data, penalty, penalty, penalty, penalty, seeds)
def test_monotone_with_penalties(Y, l1, l2, gamma, w_scale, seed):
    """Every step is an exact majorize-minimize step: the KL objective never increases."""
    rng = np.random.default_rng(seed)
    w = 0.5 + w_scale * rng.uniform(size=M)
    problem = Problem.from_scalars(
        jnp.asarray(Y),
        W_0R=jnp.asarray(w),
        lambda_1L=l1,
        lambda_1R=l1 / 2,
        lambda_2L=l2,
        lambda_2R=l2,
        gamma_2L=gamma,
        gamma_2R=gamma,
    )
    L, R = start(seed)
    res = run(problem, L, R)
    h = np.concatenate([[float(RULE.objective(problem, RULE.init(problem, L, R)))], np.asarray(res.history)])
    assert np.all(np.isfinite(h))
    assert np.all(np.diff(h) <= 1e-10 * np.abs(h[:-1]) + 1e-12)
    assert np.all(np.asarray(res.L) >= 0) and np.all(np.asarray(res.R) >= 0)


def test_monotone_with_general_nonnegative_l2_pairs():
    """Lee-Seung's majorizer holds for any elementwise non-negative quadratic term."""
    rng = np.random.default_rng(7)
    for trial in range(3):
        A = rng.uniform(0, 0.3, (M, M))
        B = rng.uniform(0, 0.3, (K, K))
        C = rng.uniform(0, 0.3, (N, N))
        problem = Problem.from_scalars(
            jnp.asarray(rng.uniform(0, 5, (M, N))),
            W_1L=0.1,
            W_2L=((Weight.from_user(jnp.asarray(A + A.T)), Weight.from_user(jnp.asarray(B + B.T))),),
            W_2R=((Weight.identity(), Weight.from_user(jnp.asarray(C + C.T))),),
        )
        L, R = start(trial)
        res = run(problem, L, R)
        state0 = RULE.init(problem, L, R)
        h = np.concatenate([[float(RULE.objective(problem, state0))], np.asarray(res.history)])
        assert np.all(np.diff(h) <= 1e-10 * np.abs(h[:-1]))
        # the reported objective is the KL objective at the final iterate
        np.testing.assert_allclose(res.objective, kl_objective(problem, res.L, res.R), rtol=1e-10)


def test_zero_rows_and_columns_float32_no_nan():
    rng = np.random.default_rng(8)
    Y = rng.uniform(0, 3, (M, N)).astype(np.float32)
    Y[2, :] = 0.0
    Y[:, 4] = 0.0
    L, R = start(9, np.float32)
    L = L.at[:, 1].set(0.0)  # a vanished column of L (and so a row of R with no signal)
    problem = Problem.from_scalars(jnp.asarray(Y), lambda_1L=0.1, lambda_2R=0.1, gamma_2R=0.1)
    res = run(problem, L, R, iters=100)
    assert res.L.dtype == jnp.float32
    for X in (res.L, res.R, res.history, res.objective):
        assert np.all(np.isfinite(np.asarray(X)))
    np.testing.assert_array_equal(np.asarray(res.L)[2], 0.0)  # a zero row of Y zeroes its row of L
    np.testing.assert_array_equal(np.asarray(res.R)[:, 4], 0.0)


def test_batched_equals_unbatched():
    rng = np.random.default_rng(10)
    problem = Problem.from_scalars(jnp.asarray(rng.uniform(0, 2, (M, N))), lambda_1R=0.05)
    starts = [start(s) for s in (11, 12, 13)]
    Ls, Rs = jnp.stack([s[0] for s in starts]), jnp.stack([s[1] for s in starts])
    batched = jax.vmap(lambda L, R: run(problem, L, R).factors)(Ls, Rs)
    for i, (L, R) in enumerate(starts):
        L1, R1 = run(problem, L, R).factors
        np.testing.assert_allclose(batched[0][i], L1, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(batched[1][i], R1, rtol=1e-12, atol=1e-14)


def test_sum_normalization_keeps_objective():
    """The lecture's unit 1-norm columns of L (driver normalize="sum") leave D(Y || LR) unchanged."""
    rng = np.random.default_rng(14)
    problem = Problem.from_scalars(jnp.asarray(rng.uniform(0, 2, (M, N))))
    L, R = start(15)
    plain = run(problem, L, R)
    normed = run(problem, L, R, normalize="sum")
    np.testing.assert_allclose(np.sum(normed.L, axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(normed.history, plain.history, rtol=1e-10)
    np.testing.assert_allclose(normed.L @ normed.R, plain.L @ plain.R, rtol=1e-9)


@pytest.mark.parametrize("normalize", [None, "sum"])
def test_carried_product_gives_the_iterates_of_plain_steps(normalize):
    """Float64, exact: the driver's loop carries L R (KLMU.in_loop) and shares it between
    the objective and the next L half step; the iterates and the objective history are
    bit for bit those of plain steps, each half step forming L R itself (aux None), with
    the columns rescaled after each step when asked; the result holds no L R."""
    rng = np.random.default_rng(16)
    problem = Problem.from_scalars(jnp.asarray(rng.uniform(0, 2, (M, N))), lambda_1L=0.1)
    L, R = start(17)
    res = run(problem, L, R, iters=12, normalize=normalize)
    state = RULE.init(problem, L, R)
    step = jax.jit(lambda p, s: RULE.step(p, s))
    objective = jax.jit(lambda p, s: RULE.objective(p, s))
    history = []
    for _ in range(12):
        state = step(problem, state)[0]
        if normalize is not None:
            state = state.__class__(*rescale_rows(state.Lt, state.R, normalize), state.aux)
        history.append(float(objective(problem, state)))
    assert state.aux is None and res.state.aux is None
    np.testing.assert_array_equal(res.L, state.L)
    np.testing.assert_array_equal(res.R, state.R)
    np.testing.assert_array_equal(res.history, history)
