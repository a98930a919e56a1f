"""jnmf.fit_stream: online NMF over row blocks (Mairal et al. 2010) on the data operator.

Small planted low-rank matrices, float64 (x64 is on in conftest.py).  Covered: the
streamed fit reaches the full in-memory fit's error; its reported objective is exactly
that of the returned (L, R); dense and sparse blocks give the same fit; an ``.npy`` file
streamed through mmap gives the same fit as the in-memory blocks; restarts batched
equal the restarts run one by one; one compile per block shape; bad input raises a
ValueError naming the argument before anything compiles.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import jnmf
from jnmf import streaming
from jnmf.fitting import ConvergenceWarning, FitResult

M, N, K, ROWS = 300, 40, 3, 64


def planted(seed=0, density=None):
    rng = np.random.default_rng(seed)
    L = rng.random((M, K))
    R = rng.random((K, N))
    if density is not None:  # a sparse planted matrix: sparse, non-negative factors
        L = L * (rng.random((M, K)) < 0.4)
        R = R * (rng.random((K, N)) < 0.4)
    return L @ R + 0.01 * rng.random((M, N)) * (L @ R > 0)


def blocks_of(Y, rows=ROWS):
    return [Y[i : i + rows] for i in range(0, Y.shape[0], rows)]


def rel_err(Y, L, R):
    return np.linalg.norm(Y - L @ np.asarray(R)) / np.linalg.norm(Y)


@pytest.fixture(scope="module")
def Y():
    return planted()


@pytest.fixture(scope="module")
def streamed(Y):
    return jnmf.fit_stream(blocks_of(Y), K, epochs=60, restarts=2, key=0, tol=1e-7, warn=False)


def test_result_type_and_exact_objective(Y, streamed):
    res = streamed
    assert isinstance(res, FitResult)
    assert res.L.shape == (M, K) and res.R.shape == (K, N)
    assert np.all(res.L >= 0) and np.all(np.asarray(res.R) >= 0)
    assert res.status_name in ("converged", "max_iterations")
    exact = 0.5 * np.sum((Y - res.L @ np.asarray(res.R)) ** 2)
    np.testing.assert_allclose(res.objective, exact, rtol=1e-9)
    assert res.history.shape == (int(res.iterations),)
    assert np.all(np.diff(res.history) <= 1e-9 * res.history[0])  # passes never increase it


def test_reaches_full_fit_error(Y, streamed):
    full = jnmf.fit(Y, K, restarts=2, key=0)
    e_full = rel_err(Y, np.asarray(full.L), full.R)
    e_stream = rel_err(Y, streamed.L, streamed.R)
    assert e_stream <= e_full * 1.05 + 1e-4, (e_stream, e_full)


def test_offline_passes_agree_with_objective(Y):
    res = jnmf.fit_stream(blocks_of(Y), K, epochs=5, online=False, key=0, warn=False)
    np.testing.assert_allclose(res.objective, 0.5 * np.sum((Y - res.L @ np.asarray(res.R)) ** 2), rtol=1e-9)


def test_dense_and_sparse_blocks_agree():
    Y = planted(1, density=0.3)
    kw = dict(epochs=8, key=3, warn=False)
    dense = jnmf.fit_stream(blocks_of(Y), K, **kw)
    sparse = jnmf.fit_stream([sp.csr_matrix(b) for b in blocks_of(Y)], K, **kw)
    coo = jnmf.fit_stream(sp.coo_matrix(Y), K, block_rows=ROWS, **kw)  # one matrix, cut
    for other in (sparse, coo):
        np.testing.assert_allclose(other.R, dense.R, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(other.L, dense.L, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(other.objective, dense.objective, rtol=1e-9)


def test_npy_streamed_with_mmap(tmp_path, Y):
    path = tmp_path / "Y.npy"
    np.save(path, Y)
    kw = dict(epochs=4, key=1, warn=False)
    from_file = jnmf.fit_stream(str(path), K, block_rows=ROWS, **kw)
    in_memory = jnmf.fit_stream(blocks_of(Y), K, **kw)
    mapped = jnmf.fit_stream(np.load(path, mmap_mode="r"), K, block_rows=ROWS, **kw)
    for other in (from_file, mapped):
        np.testing.assert_allclose(other.R, in_memory.R, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(other.L, in_memory.L, rtol=1e-10, atol=1e-12)
    blocks = list(streaming.iter_npy_blocks(path, 100))
    assert [b.shape[0] for b in blocks] == [100, 100, 100]
    np.testing.assert_array_equal(np.concatenate(blocks), Y)
    no_L = jnmf.fit_stream(path, K, block_rows=ROWS, return_L=False, **kw)
    assert no_L.L is None
    np.testing.assert_allclose(no_L.R, in_memory.R, rtol=1e-10, atol=1e-12)


def test_restarts_batched_equal_one_by_one(Y):
    kw = dict(epochs=3, warn=False)
    batched = jnmf.fit_stream(blocks_of(Y), K, restarts=3, key=5, return_all=True, **kw)
    assert batched.all_R.shape == (3, K, N) and batched.all_L.shape == (3, M, K)
    assert batched.objectives.shape == (3,)
    assert batched.best == int(np.argmin(batched.objectives))
    # each restart's objective is that of its own factors
    for r in range(3):
        L, R = batched.all_L[r], np.asarray(batched.all_R[r])
        np.testing.assert_allclose(batched.objectives[r], 0.5 * np.sum((Y - L @ R) ** 2), rtol=1e-9)
    assert len({round(float(o), 6) for o in batched.objectives}) > 1  # distinct starts


def test_one_compile_per_block_shape(Y):
    before = streaming._block_step._cache_size()
    # 300 rows in blocks of 64: the last (44 rows) is padded to 64, so one block shape
    jnmf.fit_stream(blocks_of(Y), K, epochs=2, key=0, l_sweeps=7, warn=False)
    assert streaming._block_step._cache_size() - before == 1


def test_callable_and_iterator_sources(Y):
    kw = dict(key=0, warn=False)
    seq = jnmf.fit_stream(blocks_of(Y), K, epochs=2, **kw)
    call = jnmf.fit_stream(lambda: iter(blocks_of(Y)), K, epochs=2, **kw)
    np.testing.assert_allclose(call.R, seq.R, rtol=1e-12)
    one = jnmf.fit_stream(iter(blocks_of(Y)), K, epochs=1, **kw)
    assert one.L.shape == (M, K)


def test_convergence_status_and_warning(Y):
    with pytest.warns(ConvergenceWarning):
        res = jnmf.fit_stream(blocks_of(Y), K, epochs=1, key=0)
    assert res.status_name == "max_iterations"
    res = jnmf.fit_stream(blocks_of(Y), K, epochs=50, tol=1e-2, key=0)
    assert res.status_name == "converged" and int(res.iterations) < 50


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(rank=0), "rank"),
        (dict(rank=2.5), "rank"),
        (dict(epochs=0), "epochs"),
        (dict(restarts=-1), "restarts"),
        (dict(tol=-1.0), "tol"),
        (dict(tol=float("nan")), "tol"),
        (dict(l_sweeps=0), "l_sweeps"),
        (dict(block_rows=0), "block_rows"),
        (dict(unstored="maybe"), "unstored"),
    ],
)
def test_bad_arguments(Y, kwargs, name):
    args = dict(rank=K)
    args.update(kwargs)
    before = streaming._block_step._cache_size()
    with pytest.raises(ValueError, match=name):
        jnmf.fit_stream(blocks_of(Y), **args)
    assert streaming._block_step._cache_size() == before


def test_bad_blocks(tmp_path, Y):
    before = streaming._block_step._cache_size()
    with pytest.raises(ValueError, match="blocks"):
        jnmf.fit_stream(tmp_path / "missing.npy", K)
    with pytest.raises(ValueError, match="blocks"):
        jnmf.fit_stream([], K)
    with pytest.raises(ValueError, match="blocks"):
        jnmf.fit_stream(42, K)
    with pytest.raises(ValueError, match="blocks"):
        jnmf.fit_stream(iter(blocks_of(Y)), K, epochs=2)
    with pytest.raises(ValueError, match="block_rows"):
        jnmf.fit_stream(Y, K)
    with pytest.raises(ValueError, match=r"blocks\[1\]"):
        jnmf.fit_stream([Y[:10], Y[10:20, :5]], K)
    with pytest.raises(ValueError, match=r"blocks\[0\]"):
        jnmf.fit_stream([-Y[:10]], K)
    with pytest.raises(ValueError, match=r"blocks\[0\]"):
        jnmf.fit_stream([np.full((4, N), np.nan)], K)
    with pytest.raises(ValueError, match=r"blocks\[0\]"):
        jnmf.fit_stream([np.ones(5)], K)
    assert streaming._block_step._cache_size() == before
