"""ANLS and the batched block-principal-pivoting NNQP solver (jnmf.nnls)."""

# Exactness tests run in float64 (x64 is switched on in conftest.py); the float32
# robustness test builds float32 arrays explicitly.
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

scipy_optimize = pytest.importorskip("scipy.optimize")

import jnmf  # noqa: E402
from jnmf import batch, nnls  # noqa: E402
from jnmf.driver import iterate  # noqa: E402
from jnmf.nnls import nnls_bpp, nnls_gram, qp_values  # noqa: E402
from jnmf.problem import Problem  # noqa: E402
from jnmf.quadratic import half_problem_L, half_problem_R, kkt_residual  # noqa: E402
from jnmf.rules.anls import ANLS, anls_half_step, anls_supported, half_problem_qp  # noqa: E402

M, N, K = 9, 7, 3  # NMF shapes (fixed: one compilation per problem layout)
A_ROWS, A_COLS, N_RHS = 10, 5, 6  # NNLS shapes
ITERS = 20
RULE = ANLS()
SETTINGS = settings(max_examples=15, deadline=None)

bpp = jax.jit(nnls_bpp)


def _bpp_compacting(Q, C, X0):
    """nnls_bpp with the tail compaction at any size (traced with ``_COMPACT_FROM = 0``;
    by default it starts at 2048 problems, more than the tests solve)."""
    saved, nnls._COMPACT_FROM = nnls._COMPACT_FROM, 0
    try:
        return nnls_bpp(Q, C, X0)
    finally:
        nnls._COMPACT_FROM = saved


bpp_compacting = jax.jit(_bpp_compacting)
half_step = jax.jit(anls_half_step)
values = st.floats(-5.0, 5.0, allow_subnormal=False)
data = hnp.arrays(np.float64, (M, N), elements=st.one_of(st.just(0.0), st.floats(1e-4, 10.0)))
penalty = st.floats(0.0, 1.0)
seeds = st.integers(0, 2**31 - 1)


def scipy_rows(A, B):
    return np.stack([scipy_optimize.nnls(A, B[:, j])[0] for j in range(B.shape[1])])


def start(seed: int, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.uniform(0.1, 1.0, (M, K)), dtype),
        jnp.asarray(rng.uniform(0.1, 1.0, (K, N)), dtype),
    )


def run(problem, L, R, iters=ITERS):
    """Exactly ``iters`` iterations (every stopping test off)."""
    return iterate(
        RULE,
        problem,
        RULE.init(problem, L, R),
        max_iterations=iters,
        min_xstep=0.0,
        tol=0.0,
        history_size=iters,
    )


# ------------------------------------------------------------------ the NNQP solver
@SETTINGS
@given(
    hnp.arrays(np.float64, (A_ROWS, A_COLS), elements=values),
    hnp.arrays(np.float64, (A_ROWS, N_RHS), elements=values),
)
def test_nnls_matches_scipy(A, B):
    Q, C = A.T @ A, -(A.T @ B).T
    res = bpp(jnp.asarray(Q), jnp.asarray(C))
    ref = scipy_rows(A, B)
    assert bool(jnp.all(res.converged))
    x = np.asarray(res.x)
    assert np.all(x >= 0)
    xm = 1.0 + max(np.max(np.abs(ref)), np.max(np.abs(x)))
    gscale = 1.0 + np.max(np.abs(Q)) * xm + np.max(np.abs(C))  # the size of a gradient entry
    for i in range(N_RHS):
        assert float(kkt_residual(x[i], Q @ x[i] + C[i])) <= 1e-8 * gscale
    if xm < 1e6:  # (nearly singular A can have huge minimizers)
        # the optimal value is unique even where the minimizer is not (rank-deficient A)
        np.testing.assert_allclose(qp_values(Q, C, x), qp_values(Q, C, ref), atol=1e-9 * gscale * xm)
    cond = np.linalg.cond(A)
    if cond < 1e6:
        # The solver adds a k*eps relative ridge to Q = A'A (rank-deficient Grams stay
        # solvable), which moves the minimizer by about cond(Q) * k * eps = cond(A)^2 * k * eps.
        scale = 1.0 + np.max(np.abs(ref))
        np.testing.assert_allclose(x, ref, atol=(1e-9 + cond**2 * A_COLS * 1e-15) * scale)


def test_nnls_warm_start_and_rank_deficient_gram():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(A_ROWS, A_COLS))
    A[:, 1] = 0.0  # a vanished column of the fixed factor
    A[:, 3] = A[:, 2]  # collinear columns
    B = rng.normal(size=(A_ROWS, N_RHS))
    Q, C = A.T @ A, -(A.T @ B).T
    ref = scipy_rows(A, B)
    for X0 in (None, jnp.asarray(np.abs(rng.normal(size=(N_RHS, A_COLS))))):
        res = nnls_bpp(jnp.asarray(Q), jnp.asarray(C), X0)
        assert bool(jnp.all(res.converged)) and np.all(np.isfinite(res.x))
        np.testing.assert_allclose(qp_values(Q, C, res.x), qp_values(Q, C, ref), rtol=1e-12, atol=1e-12)
    # warm starting at the solution: converged with no pivoting
    warm = nnls_bpp(jnp.asarray(Q), jnp.asarray(C), jnp.asarray(res.x))
    assert int(warm.iterations) == 0
    np.testing.assert_allclose(warm.x, res.x, atol=1e-12)
    np.testing.assert_array_equal(nnls_gram(jnp.asarray(Q), jnp.asarray(C), res.x), warm.x)


def test_nnls_per_row_gram_matches_scipy():
    """Q_i = w_i A'A + lambda I (a diagonal row weight and a ridge), one Q per row."""
    rng = np.random.default_rng(1)
    A = rng.normal(size=(A_ROWS, A_COLS))
    B = rng.normal(size=(A_ROWS, N_RHS))
    w = rng.uniform(0.0, 2.0, N_RHS)
    w[0] = 0.0  # a zero-weight row: only the ridge is left
    lam = 0.3
    Qs = w[:, None, None] * (A.T @ A)[None] + lam * np.eye(A_COLS)[None]
    C = -(w[:, None] * (A.T @ B).T)
    res = nnls_bpp(jnp.asarray(Qs), jnp.asarray(C))
    assert bool(jnp.all(res.converged))
    for i in range(N_RHS):
        # min 1/2 x'Q_i x + c_i'x = min 1/2 ||A_i x - b_i||^2 with A_i = chol(Q_i)', b_i = -A_i^-T c_i
        Li = np.linalg.cholesky(Qs[i])
        ref = scipy_optimize.nnls(Li.T, -np.linalg.solve(Li, C[i]))[0]
        np.testing.assert_allclose(res.x[i], ref, atol=1e-10)


def test_nnls_max_iter_falls_back_to_warm_start():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(A_ROWS, A_COLS))
    B = rng.normal(size=(A_ROWS, N_RHS))
    Q, C = jnp.asarray(A.T @ A), jnp.asarray(-(A.T @ B).T)
    X0 = jnp.asarray(scipy_rows(A, B)) + 0.01
    res = nnls_bpp(Q, C, X0, max_iter=0)
    better = qp_values(Q, C, res.x) <= qp_values(Q, C, X0) + 1e-14
    assert bool(jnp.all(better))


# ------------------------------------------------------------------ the ANLS rule
def test_one_step_matches_scipy_anls():
    """Plain NMF: each row of L, then each column of R, is scipy's NNLS solution."""
    rng = np.random.default_rng(3)
    Y = rng.uniform(0, 3, (M, N))
    L, R = start(4)
    problem = Problem.from_scalars(jnp.asarray(Y))
    state, info = RULE.step(problem, RULE.init(problem, L, R))
    L_ref = scipy_rows(np.asarray(R).T, Y.T)
    R_ref = scipy_rows(L_ref, Y).T
    np.testing.assert_allclose(state.L, L_ref, atol=1e-10)
    np.testing.assert_allclose(state.R, R_ref, atol=1e-10)
    np.testing.assert_allclose(info.objective, 0.5 * np.sum((Y - L_ref @ R_ref) ** 2), rtol=1e-10)


@SETTINGS
@given(data, penalty, penalty, penalty, seeds)
def test_half_steps_satisfy_kkt(Y, l1, l2, gamma, seed):
    """After each half step the KKT residual of that half problem vanishes (eq. 10),
    with L1, ridge, non-orthogonality on L and diagonal W_0R / W_0C (per-row Q)."""
    rng = np.random.default_rng(seed)
    problem = Problem.from_scalars(
        jnp.asarray(Y),
        W_0R=jnp.asarray(rng.uniform(0.2, 2.0, M)),
        W_0C=jnp.asarray(rng.uniform(0.2, 2.0, N)),
        lambda_1L=l1,
        lambda_1R=l1,
        lambda_2L=l2,
        lambda_2R=l2,
        gamma_2L=gamma / 10,
    )
    L, R = start(seed)
    max_iter, ridge = jnp.asarray(100), jnp.asarray(0.0)
    # half steps work on the factor-major unknown: Xt = L' for L, Xt = R for R
    hp_L = half_problem_L(problem, L.T, R)
    Lt1 = half_step(hp_L, L.T, max_iter, ridge)
    hp_R = half_problem_R(problem, Lt1, R)
    R1 = half_step(hp_R, R, max_iter, ridge)
    for hp, X, X0 in ((hp_L, Lt1, L.T), (hp_R, R1, R)):
        assert np.all(np.asarray(X) >= 0)
        # never worse than the starting point, whatever Q
        assert float(hp.value(X)) <= float(hp.value(X0)) + 1e-10 * (1 + abs(float(hp.value(X0))))
        Q, _ = half_problem_qp(hp)
        if np.min(np.linalg.eigvalsh(np.asarray(Q))) < 0:
            continue  # gram + gamma (11' - I) indefinite (small row weight): non-convex, no KKT claim
        g = hp.gradient(X)
        scale = 1.0 + float(jnp.max(jnp.abs(hp.linear))) + float(jnp.max(jnp.abs(hp.apply_G(X))))
        assert float(kkt_residual(X, g)) <= 1e-8 * scale


@SETTINGS
@given(data, penalty, penalty, seeds)
def test_monotone(Y, l1, l2, seed):
    problem = Problem.from_scalars(jnp.asarray(Y), lambda_1L=l1, lambda_1R=l1, lambda_2L=l2, lambda_2R=l2)
    L, R = start(seed)
    res = run(problem, L, R)
    h = np.concatenate([[float(problem.objective(L, R))], np.asarray(res.history)])
    assert np.all(np.isfinite(h))
    assert np.all(np.diff(h) <= 1e-9 * (1.0 + np.abs(h[:-1])))
    np.testing.assert_allclose(res.objective, problem.objective(res.L, res.R), rtol=1e-8, atol=1e-10)


def test_zero_rows_and_columns_float32_no_nan():
    rng = np.random.default_rng(8)
    Y = rng.uniform(0, 3, (M, N)).astype(np.float32)
    Y[2, :] = 0.0
    Y[:, 4] = 0.0
    L, R = start(9, np.float32)
    L = L.at[:, 1].set(0.0)  # a vanished column of L: its row of R has a zero Gram row
    problem = Problem.from_scalars(jnp.asarray(Y), lambda_1L=0.1, lambda_2R=0.1)
    res = run(problem, L, R, iters=50)
    assert res.L.dtype == jnp.float32
    for X in (res.L, res.R, res.history, res.objective):
        assert np.all(np.isfinite(np.asarray(X)))
    np.testing.assert_array_equal(np.asarray(res.L)[2], 0.0)
    np.testing.assert_array_equal(np.asarray(res.R)[:, 4], 0.0)
    assert float(res.objective) < float(problem.objective(L, R))


def test_batched_equals_unbatched():
    rng = np.random.default_rng(10)
    problem = Problem.from_scalars(jnp.asarray(rng.uniform(0, 2, (M, N))), lambda_1R=0.05)
    starts = [start(s) for s in (11, 12, 13)]
    Ls, Rs = jnp.stack([s[0] for s in starts]), jnp.stack([s[1] for s in starts])
    batched = jax.vmap(lambda L, R: run(problem, L, R).factors)(Ls, Rs)
    for i, (L, R) in enumerate(starts):
        L1, R1 = run(problem, L, R).factors
        np.testing.assert_allclose(batched[0][i], L1, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(batched[1][i], R1, rtol=1e-10, atol=1e-12)


def test_supported_and_shared_gram():
    Y = jnp.ones((M, N))
    scalar_form = Problem.from_scalars(Y, lambda_2L=0.1, gamma_2L=0.2, gamma_2R=0.0)
    assert anls_supported(scalar_form)
    assert anls_supported(Problem.from_scalars(Y, W_0R=jnp.ones(M)))
    assert not anls_supported(Problem.from_scalars(Y, W_0R=jnp.eye(M)))
    # rule.check (called by iterate, the batch functions, fit and sweep) says the same,
    # and rejects a non-zero gamma_2R (its n x n weight couples the columns of R)
    RULE.check(scalar_form)
    with pytest.raises(ValueError, match="W_0R"):
        RULE.check(Problem.from_scalars(Y, W_0R=jnp.eye(M)))
    with pytest.raises(ValueError, match="gamma_2R"):
        RULE.check(Problem.from_scalars(Y, gamma_2R=0.1))
    L0, R0 = start(0)
    bad = Problem.from_scalars(Y, gamma_2R=0.1)
    with pytest.raises(ValueError, match="gamma_2R"):
        iterate(RULE, bad, RULE.init(bad, L0, R0))
    L, R = start(0)
    Q, C = half_problem_qp(half_problem_L(scalar_form, L.T, R))
    assert Q.shape == (K, K)  # identity / scalar p-side weights: one Gram for all rows
    G = np.asarray(R @ R.T) + 0.1 * np.eye(K) + 0.2 * (np.ones((K, K)) - np.eye(K))
    np.testing.assert_allclose(Q, G, rtol=1e-14)
    Q, _ = half_problem_qp(half_problem_R(scalar_form, L.T, R))
    assert Q.shape == (K, K)  # gamma_2R's offdiag p-side weight is dropped, not per-row
    Q, _ = half_problem_qp(half_problem_L(Problem.from_scalars(Y, W_0R=jnp.ones(M)), L.T, R))
    assert Q.shape == (M, K, K)


# ------------------------------------------------------------------ KKT of the solver
# Float64 (x64 is enabled at the top of this file): these check exactness, which float32
# rounding would blur.
@SETTINGS
@given(seeds, st.integers(1, 3), st.booleans())
def test_nnls_kkt_random_and_singular(seed, rank_drop, warm):
    """x >= 0, y = Q x + c >= -tol, x * y ~ 0 on random problems, including singular Q
    (a vanished column and a collinear pair), with full passes only and with the tail
    compaction (more problems than its buffer), which give the same solutions."""
    rng = np.random.default_rng(seed)
    k, p = 6, 300  # p > the tail-compaction buffer (64), so both of its loops run
    A = rng.normal(size=(12, k))
    A[:, 0] = 0.0
    if rank_drop > 1:
        A[:, 2] = A[:, 1]
    if rank_drop > 2:
        A = A[:, :3] @ rng.normal(size=(3, k))
    Q = A.T @ A
    C = -(A.T @ rng.normal(size=(12, p))).T + rng.normal(scale=0.1, size=(p, k))
    X0 = jnp.asarray(np.abs(rng.normal(size=(p, k)))) if warm else None
    res = bpp(jnp.asarray(Q), jnp.asarray(C), X0)
    tail = bpp_compacting(jnp.asarray(Q), jnp.asarray(C), X0)
    x = np.asarray(res.x)
    assert bool(jnp.all(res.converged)) and bool(jnp.all(tail.converged))
    np.testing.assert_allclose(tail.x, x, rtol=1e-10, atol=1e-12)
    y = x @ Q.T + C
    tol = 1e-9 * (1.0 + np.max(np.abs(C)) + np.max(np.abs(Q)) * (1.0 + np.max(x)))
    assert np.all(x >= 0)
    assert np.all(y >= -tol)
    assert np.all(np.abs(x * y) <= tol * (1.0 + np.max(x)))


def test_nnls_vmapped_equals_unbatched():
    rng = np.random.default_rng(21)
    k, p, B = 5, 200, 3
    As = rng.normal(size=(B, 10, k))
    Qs = jnp.asarray(np.einsum("bij,bik->bjk", As, As))
    Cs = jnp.asarray(rng.normal(size=(B, p, k)))
    X0s = jnp.asarray(np.abs(rng.normal(size=(B, p, k))))
    batched = jax.jit(jax.vmap(lambda Q, C, X0: nnls_bpp(Q, C, X0).x))(Qs, Cs, X0s)
    for i in range(B):
        np.testing.assert_allclose(batched[i], bpp(Qs[i], Cs[i], X0s[i]).x, rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore::jnmf.ConvergenceWarning")
def test_compiler_options_keep_the_fit():
    """ANLS's loop program is compiled with the rule's XLA options on CPU (fusion
    emitters off: a faster compile) and fits exactly as with XLA's defaults (float64)."""

    class DefaultOptionsANLS(ANLS):
        compiler_options = None

    Y = np.random.default_rng(8).uniform(0, 3, (M, N))
    problem = Problem.from_scalars(jnp.asarray(Y))
    on_cpu = jax.default_backend() == "cpu"
    assert (batch._for_rule(batch._restarts_programs, RULE, problem) is batch._restarts) != on_cpu
    assert batch._for_rule(batch._restarts_programs, DefaultOptionsANLS(), problem) is batch._restarts
    fits = [
        jnmf.fit(Y, K, method=rule, key=5, restarts=2, max_iterations=30, tol=0.0, min_xstep=0.0)
        for rule in (RULE, DefaultOptionsANLS())
    ]
    assert fits[0].L.dtype == np.float64
    for name in ("L", "R", "objective"):
        np.testing.assert_array_equal(getattr(fits[0], name), getattr(fits[1], name))
