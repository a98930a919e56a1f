"""Sparse data end to end (jnmf.data.SparseData): never densified, the same iterates as dense.

Exactness tests run in float64 (x64 is enabled in conftest.py): a sparse fit and the dense
fit of the same matrix from the same start agree to 1e-10 after 50 iterations, for every
method that works on the stored entries.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax.experimental import sparse as jsparse

import jnmf
from jnmf import batch
from jnmf.data import SparseData, sparse_operator
from jnmf.problem import build_problem
from jnmf.rules import make_rule

# tiny fits: the time is compiling, cheaper unoptimized (conftest.py)
CHEAP_PROGRAMS = True

# accelerated HALS picks its number of sweeps from the cost of a product with Y (m n
# entries dense, nnz sparse), so sparse and dense ahals fits take different sweeps by
# design; its arithmetic is compared at a fixed count of 4 sweeps per half step
AHALS_4 = jnmf.HALS(inner_sweeps=4)
# the default's extrapolation (Ang & Gillis 2019) at the same fixed count of sweeps
AHALS_4_EX = jnmf.HALS(inner_sweeps=4, extrapolate=True)
METHODS = ["mu", "au", "hals", AHALS_4, AHALS_4_EX, "anls", "pg", "kl"]
METHOD_IDS = {id(AHALS_4): "ahals-4-sweeps", id(AHALS_4_EX): "ahals-4-sweeps-extrapolated"}
MASKED_METHODS = ["mu", "au", "hals", "ahals", "anls", "pg", "kl", "beta"]


def _sparse_case(m=40, n=30, k=3, density=0.3, seed=0):
    rng = np.random.default_rng(seed)
    Y = rng.random((m, k)) @ rng.random((k, n))
    Y = Y * (rng.random((m, n)) < density)
    Y[3] = 0.0  # an empty row and column
    Y[:, 5] = 0.0
    start = (rng.random((m, k)) + 0.1, rng.random((k, n)) + 0.1)
    return Y, start


@pytest.fixture(scope="module")
def case():
    return _sparse_case()


def _fit(Y, method, start, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
        return jnmf.fit(Y, 3, method=method, init=start, max_iterations=50, tol=0, **kw)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m if isinstance(m, str) else METHOD_IDS[id(m)])
def test_sparse_fit_equals_dense_fit(case, method):
    """Unstored entries as zeros: the sparse fit is the dense fit (float64, 1e-10)."""
    Y, start = case
    dense = _fit(Y, method, start)
    sparse = _fit(sp.csr_matrix(Y), method, start)
    np.testing.assert_allclose(sparse.L, dense.L, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sparse.R, dense.R, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sparse.objective, dense.objective, rtol=1e-10)
    np.testing.assert_allclose(sparse.history, dense.history, rtol=1e-9, equal_nan=True)


@pytest.mark.parametrize("method", MASKED_METHODS)
def test_unstored_missing_equals_dense_mask(case, method):
    """missing='unstored' (RcppML's mask_zeros) is the dense fit with M = the pattern."""
    Y, start = case
    pattern = (Y != 0).astype(float)
    dense = _fit(Y, method, start, M=pattern)
    sparse = _fit(sp.csr_matrix(Y), method, start, missing="unstored")
    np.testing.assert_allclose(sparse.L @ sparse.R, dense.L @ dense.R, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sparse.objective, dense.objective, rtol=1e-10)


def test_every_sparse_format_gives_the_same_fit(case):
    """scipy.sparse matrices and arrays of every format, BCOO and BCSR: one operator, one fit."""
    Y, start = case
    ref = _fit(sp.csr_matrix(Y), "hals", start)
    inputs = [sp.csc_matrix(Y), sp.coo_matrix(Y), sp.lil_matrix(Y), sp.dok_matrix(Y), sp.bsr_matrix(Y)]
    inputs += [sp.csr_array(Y), sp.coo_array(Y), jsparse.BCOO.fromdense(Y), jsparse.BCSR.fromdense(Y)]
    for X in inputs:
        got = _fit(X, "hals", start)
        np.testing.assert_allclose(got.L, ref.L, rtol=1e-12, atol=1e-14, err_msg=type(X).__name__)


def test_duplicates_and_unsorted_coo_are_summed():
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 10, 60)
    cols = rng.integers(0, 8, 60)
    vals = rng.random(60)
    X = sp.coo_matrix((vals, (rows, cols)), shape=(10, 8))
    op = sparse_operator("Y", X)
    np.testing.assert_allclose(op.dense(), X.toarray(), rtol=1e-14)
    bcoo = jsparse.BCOO((jnp.asarray(vals), jnp.stack([rows, cols], 1)), shape=(10, 8))
    np.testing.assert_allclose(sparse_operator("Y", bcoo).dense(), X.toarray(), rtol=1e-14)


def test_operator_products_losses_and_samples(case):
    """Every quantity of the operator against its dense definition (float64)."""
    Y, (L, R) = case
    op = sparse_operator("Y", sp.csr_matrix(Y)).scaled(2.0)
    Ys = Y / 2.0
    w, v = np.linspace(0.5, 2, Y.shape[0]), np.linspace(1, 3, Y.shape[1])
    from jnmf.weights import Weight

    W0R, W0C = Weight.from_user(jnp.asarray(w)), Weight.from_user(jnp.asarray(v))
    np.testing.assert_allclose(op.product_R(L.T), L.T @ Ys, rtol=1e-12)
    np.testing.assert_allclose(op.product_L(R), R @ Ys.T, rtol=1e-12)
    np.testing.assert_allclose(op.half_norm(W0R, W0C), 0.5 * np.sum(w[:, None] * Ys**2 * v), rtol=1e-12)
    E = Ys - L @ R
    np.testing.assert_allclose(op.loss(L, R, W0R, W0C), 0.5 * np.sum(w[:, None] * E**2 * v), rtol=1e-10)
    stored = Y != 0
    np.testing.assert_allclose(np.sort(op.sampled(L.T, R)), np.sort((L @ R)[stored]), rtol=1e-12)
    assert float(op.maximum()) == pytest.approx(Ys.max())
    assert float(op.mean()) == pytest.approx(Ys.mean())
    block = op.row_block(10, 25)
    np.testing.assert_allclose(block.dense(), Ys[10:25], rtol=1e-14)


def test_no_m_by_n_array_in_a_compiled_sparse_fit():
    """The compiled fit program of a sparse matrix (4000 x 3000 at 0.2%, 2 restarts batched)
    holds temporaries below 10% of what one m x n float array would take (its temporaries
    are O((m + n) k) per restart: factors, half problems, the loop's carries)."""
    m, n, k = 4000, 3000, 4
    X = sp.random(m, n, density=0.002, format="csr", random_state=0, dtype=np.float32)
    data = sparse_operator("Y", X)
    for method in ("ahals", "mu", "kl"):
        rule = make_rule(method)
        problem = build_problem(data, k)
        key = jax.random.key(0)
        L0 = jax.random.uniform(key, (2, m, k), jnp.float32)
        R0 = jax.random.uniform(key, (2, k, n), jnp.float32)
        states = jax.vmap(lambda L, R, rule=rule, problem=problem: rule.init(problem, L, R))(L0, R0)
        opts = jnmf.Stopping(max_iterations=5).traced(jnp.float32)
        for strategy in ("vmap", "map"):
            program = jax.jit(
                lambda p, s, rule=rule, strategy=strategy, o=opts: batch._run(
                    rule, p, s, o, 4, None, strategy
                )
            )
            temp = program.lower(problem, states).compile().memory_analysis().temp_size_in_bytes
            assert temp < 0.1 * m * n * 4, (method, strategy, temp)


def test_sparse_input_errors_name_the_argument(case):
    Y, start = case
    X = sp.csr_matrix(Y)
    with pytest.raises(ValueError, match="beta"):
        jnmf.fit(X, 3, method="beta")
    with pytest.raises(ValueError, match="M .*dense"):
        jnmf.fit(X, 3, M=np.ones(Y.shape))
    with pytest.raises(ValueError, match="missing='nan' needs dense"):
        jnmf.fit(X, 3, missing="nan")
    with pytest.raises(ValueError, match="missing='unstored' is for sparse"):
        jnmf.fit(Y, 3, missing="unstored")
    bad = X.copy()
    bad.data[0] = -1.0
    with pytest.raises(ValueError, match="Y must be non-negative"):
        jnmf.fit(bad, 3)
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match="Y must be finite"):
        jnmf.fit(bad, 3)
    with pytest.raises(ValueError, match="W_0R as a full matrix needs dense"):
        jnmf.fit(X, 3, W_0R=np.eye(Y.shape[0]))
    with pytest.raises(ValueError, match="grid\\['M'\\] needs dense"):
        jnmf.sweep(X, 3, {"M": [np.ones(Y.shape)]})


def test_sparse_sweep_and_restarts_match_dense(case):
    Y, _ = case
    kw = dict(max_iterations=30, tol=0, key=2, method="mu", restarts=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
        a = jnmf.sweep(Y, 3, {"lambda_1L": [0.0, 0.1]}, **kw)
        b = jnmf.sweep(sp.csr_matrix(Y), 3, {"lambda_1L": [0.0, 0.1]}, **kw)
    np.testing.assert_allclose(b.objectives, a.objectives, rtol=1e-10)
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-10)


def test_nndsvd_on_sparse_data_uses_products_only(case):
    """NNDSVD of a sparse Y from a randomized SVD (products with Y only, 4 power iterations)
    is close to the dense NNDSVD (the leading singular subspace to ~1e-3 on this matrix)."""
    from jnmf.init import nndsvd

    Y, _ = case
    Ld, Rd = nndsvd(jnp.asarray(Y), 3)
    Ls, Rs = nndsvd(sparse_operator("Y", sp.csr_matrix(Y)), 3)
    np.testing.assert_allclose(Ls @ Rs, Ld @ Rd, rtol=1e-2, atol=1e-3)


def test_sparse_operator_is_a_pytree_leaf_set():
    X = sp.random(30, 20, density=0.2, format="csr", random_state=1)
    op = sparse_operator("Y", X)
    assert isinstance(op, SparseData)
    leaves = jax.tree.leaves(op)
    assert all(leaf.ndim <= 1 for leaf in leaves)  # no m x n leaf


def test_dense_frobenius_fit_holds_no_m_by_n_temporary():
    """Memory at the floor for dense data: the compiled fit program of a Frobenius method,
    4 restarts batched, holds less than half an m x n array of temporaries beyond Y (no
    transposed or rescaled copy, no residual: the loss runs over row blocks)."""
    m, n, k = 3000, 2000, 4
    Y = np.random.default_rng(0).random((m, n), dtype=np.float32)
    problem = build_problem(jnmf.data.dense_operator(Y), k).scaled(2.0)
    opts = jnmf.Stopping(max_iterations=5).traced(jnp.float32)
    for method in ("ahals", "mu", "au"):
        rule = make_rule(method)
        L0 = jax.random.uniform(jax.random.key(0), (4, m, k), jnp.float32)
        R0 = jax.random.uniform(jax.random.key(1), (4, k, n), jnp.float32)
        states = jax.vmap(lambda L, R, rule=rule: rule.init(problem, L, R))(L0, R0)
        strategy = batch.batching_strategy(rule)
        program = jax.jit(lambda p, s, rule=rule, st=strategy: batch._run(rule, p, s, opts, 4, None, st))
        temp = program.lower(problem, states).compile().memory_analysis().temp_size_in_bytes
        assert temp < 0.5 * m * n * 4, (method, temp)


def test_sparse_consensus_and_differentiable_fit(case):
    """consensus and differentiable_fit take sparse Y (float64) and agree with dense."""
    Y, start = case
    kw = dict(restarts=3, key=0, max_iterations=40, stable_labels=0, tol=0, method="mu", init="random")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
        a = jnmf.consensus(Y, [2, 3], **kw)
        b = jnmf.consensus(sp.csr_matrix(Y), [2, 3], **kw)
    for ea, eb in zip(a.entries, b.entries, strict=True):
        np.testing.assert_allclose(eb.loss, ea.loss, rtol=1e-9)
        np.testing.assert_allclose(eb.consensus, ea.consensus)
    L0, R0 = (jnp.asarray(x) for x in start)
    f_dense = lambda lam: jnp.sum(
        jnmf.differentiable_fit(Y, L0, R0, lambda_2L=lam, max_iterations=30, method="hals")[0]
    )
    f_sparse = lambda lam: jnp.sum(
        jnmf.differentiable_fit(sp.csr_matrix(Y), L0, R0, lambda_2L=lam, max_iterations=30, method="hals")[0]
    )
    np.testing.assert_allclose(f_sparse(0.3), f_dense(0.3), rtol=1e-9)
    np.testing.assert_allclose(jax.grad(f_sparse)(0.3), jax.grad(f_dense)(0.3), rtol=1e-6)
