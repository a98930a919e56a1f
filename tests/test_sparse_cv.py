"""Cross-validated rank selection on sparse data, never densified (jnmf.cross_validation).

Speckled hold-out stores the held-out zeros with weight 0 (a ``1 + sparse`` elementwise
weight, jnmf.data.UnitPlusSparseMask); bi-cross-validation holds out rows and columns
through the diagonal loss weights.  Exactness tests run in float64 (x64 is enabled in
conftest.py).
"""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import jnmf
from jnmf import batch
from jnmf.data import SparseData, sparse_operator
from jnmf.problem import build_problem
from jnmf.rules import make_rule

RANKS = [2, 3, 4, 5, 6]


def _sparse_known_rank(r: int, seed: int = 0, m: int = 100, n: int = 80):
    """Rank-r data with exact zeros: sparse non-negative factors, 2% noise where stored."""
    rng = np.random.default_rng(seed)
    L = rng.random((m, r)) * (rng.random((m, r)) < 0.5)
    R = rng.random((r, n)) * (rng.random((r, n)) < 0.5)
    Y = L @ R
    noise = 1 + 0.02 * rng.standard_normal(Y.shape)
    return np.maximum(Y * noise, 0) * (Y > 0)


@pytest.mark.parametrize("method", ["mu", "au", "hals", "anls", "pg"])
def test_weighted_stored_entries_equal_a_dense_mask(method):
    """Unstored zeros weigh 1 and the stored entries carry weights (0 = held out; a
    held-out zero is stored with value 0): the iterates equal those of the dense fit with
    the same elementwise weight M, and the objective and gradients agree."""
    rng = np.random.default_rng(3)
    m, n, k = 30, 20, 3
    Y = sp.random(m, n, density=0.3, random_state=1, format="coo").toarray()
    M = np.ones((m, n))
    held = np.flatnonzero(rng.random(m * n) < 0.15)  # stored and unstored entries alike
    M.flat[held] = 0.0
    positions = np.zeros((m, n), bool)
    positions[Y > 0] = True
    positions.flat[held] = True
    rows, cols = np.nonzero(positions)  # row-major: sorted as the operator needs
    data = SparseData(
        jnp.asarray(rows, jnp.int32),
        jnp.asarray(cols, jnp.int32),
        jnp.asarray(Y[rows, cols]),
        (m, n),
        "zero",
        weights=jnp.asarray(M[rows, cols]),
    )
    dense, sparse = build_problem(jnp.asarray(Y), k, M=jnp.asarray(M)), build_problem(data, k)
    L0, R0 = jnp.asarray(rng.random((m, k)) + 0.1), jnp.asarray(rng.random((k, n)) + 0.1)
    np.testing.assert_allclose(sparse.objective(L0, R0), dense.objective(L0, R0), rtol=1e-12)
    for gs, gd in zip(sparse.gradients(L0, R0), dense.gradients(L0, R0), strict=True):
        np.testing.assert_allclose(gs, gd, rtol=1e-10, atol=1e-12)
    rule = make_rule(method)
    a = batch.run_restarts(rule, dense, L0[None], R0[None], max_iterations=30, tol=0.0)
    b = batch.run_restarts(rule, sparse, L0[None], R0[None], max_iterations=30, tol=0.0)
    np.testing.assert_allclose(b.L, a.L, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.R, a.R, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.objective, a.objective, rtol=1e-10)


def test_kl_refuses_weighted_stored_entries():
    data = sparse_operator("Y", sp.random(10, 8, density=0.5, random_state=0, format="csr"))
    weighted = data._new(weights=jnp.ones_like(data.values))
    with pytest.raises(ValueError, match="KL / beta"):
        weighted.entry_weights(jnp.ones(10), jnp.ones(8))


def test_sparse_bicv_equals_dense_bicv():
    """Bi-cross-validation of a sparse Y (rows and columns held out through the diagonal
    loss weights, the block scored by trace identities) gives the dense scheme's errors:
    the same blocks, the same fits (float64, a fixed iteration count)."""
    Y = _sparse_known_rank(3, seed=1)
    kw = dict(scheme="bicv", key=2, repeats=2, method="hals", max_iterations=40, tol=0.0)
    dense = jnmf.cross_validate_rank(Y, [2, 3, 4], **kw)
    sparse = jnmf.cross_validate_rank(sp.csr_matrix(Y), [2, 3, 4], **kw)
    np.testing.assert_allclose(sparse.test_error, dense.test_error, rtol=1e-8)
    np.testing.assert_allclose(sparse.train_error, dense.train_error, rtol=1e-8)
    assert sparse.selected_rank == dense.selected_rank


def test_sparse_speckled_cv_picks_the_true_rank():
    """Speckled hold-out of stored entries plus as many unstored zeros, scored by strata,
    picks r on sparse rank-r data (ranks 2..6 in one program), and the error of one rank
    too few is clearly worse."""
    r = 4
    Y = sp.csr_matrix(_sparse_known_rank(r, seed=r))
    cv = jnmf.cross_validate_rank(Y, RANKS, key=0, max_iterations=500)
    assert cv.selected_rank == r, cv.table()
    i = RANKS.index(r)
    assert cv.mean_test_error[i - 1] > 1.5 * cv.mean_test_error[i], cv.table()
    assert np.all(np.isfinite(cv.test_error)) and np.all(np.isfinite(cv.train_error))


def test_unstored_missing_cv_holds_out_stored_entries_only():
    """missing='unstored' (recommender data): only stored entries are fitted and held out.
    On rank-3 data observed at 40% of the entries it picks 3."""
    rng = np.random.default_rng(7)
    m, n = 100, 80
    Y = rng.random((m, 3)) @ rng.random((3, n))
    observed = rng.random((m, n)) < 0.4
    Ys = sp.csr_matrix(np.where(observed, Y * (1 + 0.02 * rng.standard_normal((m, n))), 0))
    cv = jnmf.cross_validate_rank(Ys, RANKS, missing="unstored", key=0, max_iterations=500)
    assert cv.selected_rank == 3, cv.table()
    # the train error is the mean over stored entries, so a good fit is near the noise
    assert cv.train_error[:, 1].mean() < 0.01 * np.mean(Ys.data**2)


def test_sparse_cv_refusals_name_the_setting():
    Y = sp.csr_matrix(_sparse_known_rank(3))
    with pytest.raises(ValueError, match="bicv"):
        jnmf.cross_validate_rank(Y, [2, 3], scheme="bicv", missing="unstored")
    with pytest.raises(ValueError, match="Frobenius"):
        jnmf.cross_validate_rank(Y, [2, 3], method="kl")


def test_sparse_cv_checkpointed_equals_one_program(tmp_path):
    """checkpoint=DIR runs one rank per chunk; on sparse data the errors equal the
    one-program run's, and a rerun resumes from the saved chunks."""
    Y = sp.csr_matrix(_sparse_known_rank(3, seed=5))
    kw = dict(key=1, repeats=2, method="hals", max_iterations=30, tol=0.0)
    whole = jnmf.cross_validate_rank(Y, [2, 3, 4], **kw)
    chunked = jnmf.cross_validate_rank(Y, [2, 3, 4], checkpoint=tmp_path, **kw)
    resumed = jnmf.cross_validate_rank(Y, [2, 3, 4], checkpoint=tmp_path, **kw)
    for other in (chunked, resumed):
        np.testing.assert_allclose(other.test_error, whole.test_error, rtol=1e-10)
        np.testing.assert_array_equal(other.iterations, whole.iterations)
