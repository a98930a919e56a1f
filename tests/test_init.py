"""Initializations: random, sparse random, NNDSVD / NNDSVDa / NNDSVDar, and the dispatcher."""

# Exactness tests (NNDSVD against scikit-learn) run in float64 (x64 is switched on in
# conftest.py); float32 inputs are built explicitly.
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jnmf.init import (
    INITIALIZERS,
    initialize,
    nndsvd,
    nndsvda,
    nndsvdar,
    random_init,
    sparse_random_init,
    uniform_init,
)

M, N, K = 12, 9, 4  # fixed shapes
KEY = jax.random.PRNGKey(0)
SETTINGS = settings(max_examples=12, deadline=None)

# jitted once each (rank is static)
jit_init = {name: jax.jit(f, static_argnums=1) for name, f in INITIALIZERS.items()}
jit_sparse = jax.jit(sparse_random_init, static_argnums=1)

data = hnp.arrays(np.float64, (M, N), elements=st.one_of(st.just(0.0), st.floats(1e-3, 10.0)))


def Y_example(seed=0, dtype=np.float64):
    return jnp.asarray(np.random.default_rng(seed).uniform(0, 5, (M, N)), dtype)


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
def test_shapes_dtype_nonnegative_and_jittable(name):
    for dtype in (np.float32, np.float64):
        Y = Y_example(1, dtype)
        L, R = initialize(Y, K, name, KEY)
        assert L.shape == (M, K) and R.shape == (K, N)
        assert L.dtype == dtype and R.dtype == dtype
        assert np.all(np.asarray(L) >= 0) and np.all(np.asarray(R) >= 0)
        assert np.all(np.isfinite(L)) and np.all(np.isfinite(R))
        Lj, Rj = jit_init[name](Y, K, KEY)
        np.testing.assert_allclose(Lj, L, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
        np.testing.assert_allclose(Rj, R, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_random_scale_and_positivity():
    Y = Y_example(2)
    L, R = random_init(Y, K, KEY)
    assert np.all(np.asarray(L) > 0) and np.all(np.asarray(R) > 0)
    big_L, big_R = random_init(jnp.zeros((400, 300)) + float(jnp.mean(Y)), K, KEY)
    # E[(LR)_ij] = (2 / pi) mean(Y) for half-normal factors scaled by sqrt(mean(Y) / k)
    np.testing.assert_allclose(np.mean(big_L @ big_R), 2 / np.pi * float(jnp.mean(Y)), rtol=0.05)
    L0, _ = random_init(jnp.zeros((M, N)), K, KEY)
    assert np.all(np.asarray(L0) > 0)  # all-zero data still gives a usable start


def test_uniform_is_r_nmf_random_seeding():
    """R's NMF seeds with runif(0, max(x)): entries uniform on (0, max(Y)]."""
    top = float(jnp.max(Y_example(2)))
    L, R = uniform_init(jnp.full((400, 300), top).at[0, 0].set(0.0), K, KEY)
    for X in (L, R):
        X = np.asarray(X)
        assert np.all(X > 0) and np.all(X <= top * (1 + 1e-12))
        np.testing.assert_allclose(np.mean(X), top / 2, rtol=0.05)
    L0, _ = uniform_init(jnp.zeros((M, N)), K, KEY)
    assert np.all(np.asarray(L0) > 0) and np.all(np.asarray(L0) <= 1.0)


@SETTINGS
@given(st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_sparse_has_exact_zero_fraction(fraction, seed):
    L, R = jit_sparse(Y_example(3), K, jax.random.PRNGKey(seed), fraction)
    assert int(np.sum(np.asarray(L) == 0)) == round(fraction * M * K)
    assert int(np.sum(np.asarray(R) == 0)) == round(fraction * K * N)
    assert np.all(np.asarray(L) >= 0) and np.all(np.asarray(R) >= 0)


def test_sparse_default_is_a_third():
    L, R = initialize(Y_example(4), K, "sparse", KEY)
    assert int(np.sum(np.asarray(L) == 0)) == round(M * K / 3)
    assert int(np.sum(np.asarray(R) == 0)) == round(K * N / 3)


@SETTINGS
@given(
    hnp.arrays(np.float64, M, elements=st.floats(0.0, 10.0, allow_subnormal=False)),
    hnp.arrays(np.float64, N, elements=st.floats(0.0, 10.0, allow_subnormal=False)),
)
def test_nndsvd_reproduces_rank_one(u, v):
    Y = jnp.asarray(np.outer(u, v))
    scale = 1.0 + float(jnp.max(Y))
    for rank in (1, K):
        L, R = jit_init["nndsvd"](Y, rank, None)
        np.testing.assert_allclose(L @ R, Y, atol=1e-12 * scale)


def compare_with_sklearn(Y) -> bool:
    skl = pytest.importorskip("sklearn.decomposition._nmf")
    # scikit-learn uses a randomized SVD: compare where the spectrum is well separated
    s = np.linalg.svd(Y, compute_uv=False)
    gaps = np.abs(np.diff(s[: K + 1])) / (1.0 + s[0])
    if np.min(gaps) < 1e-2 or s[K - 1] < 1e-3 * (1.0 + s[0]):
        return False
    W, H = skl._initialize_nmf(Y, K, init="nndsvd", random_state=0)
    L, R = jit_init["nndsvd"](jnp.asarray(Y), K, None)
    scale = 1.0 + np.max(np.abs(W))
    # scikit-learn also zeroes entries below 1e-6, hence the absolute tolerance
    np.testing.assert_allclose(L, W, atol=1e-5 * scale)
    np.testing.assert_allclose(R, H, atol=1e-5 * (1.0 + np.max(np.abs(H))))
    return True


def test_nndsvd_against_sklearn():
    rng = np.random.default_rng(11)
    compared = [compare_with_sklearn(rng.uniform(0, 5, (M, N)) ** p) for p in (1, 2, 3) * 3]
    assert sum(compared) >= 4


@SETTINGS
@given(data)
def test_nndsvd_against_sklearn_varied(Y):
    compare_with_sklearn(Y)


def test_nndsvd_variants_fill_zeros():
    Y = Y_example(5)
    L, R = nndsvd(Y, K)
    zL, zR = np.asarray(L) == 0, np.asarray(R) == 0
    assert zL.any() and zR.any()  # columns j >= 2 are sparse
    avg = float(jnp.mean(Y))
    La, Ra = nndsvda(Y, K)
    assert np.all(np.asarray(La) > 0) and np.all(np.asarray(Ra) > 0)
    np.testing.assert_array_equal(np.asarray(La)[zL], avg)
    np.testing.assert_array_equal(np.asarray(La)[~zL], np.asarray(L)[~zL])
    Lr, Rr = nndsvdar(Y, K, KEY)
    for X, Z, X0 in ((Lr, zL, L), (Rr, zR, R)):
        X = np.asarray(X)
        assert np.all(X > 0)
        assert np.all(X[Z] <= avg / 100) and len(np.unique(X[Z])) > 1
        np.testing.assert_array_equal(X[~Z], np.asarray(X0)[~Z])


@pytest.mark.parametrize("name", ["random", "sparse", "nndsvdar"])
def test_deterministic_by_key(name):
    Y = Y_example(6)
    a, b = initialize(Y, K, name, KEY), initialize(Y, K, name, KEY)
    c = initialize(Y, K, name, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_initialize_user_factors_and_errors():
    Y = Y_example(7)
    L0, R0 = np.ones((M, K)), np.ones((K, N))
    L, R = initialize(Y, K, (L0, R0))
    assert L.dtype == Y.dtype and L.shape == (M, K) and R.shape == (K, N)
    with pytest.raises(ValueError, match="shape"):
        initialize(Y, K, (np.ones((M, K + 1)), R0))
    with pytest.raises(ValueError, match="shape"):
        initialize(Y, K, (L0, np.ones((K, N + 1))))
    with pytest.raises(ValueError, match="non-negative"):
        initialize(Y, K, (-L0, R0))
    with pytest.raises(ValueError, match="finite"):
        initialize(Y, K, (L0 * np.nan, R0))
    with pytest.raises(ValueError, match="init must be one of"):
        initialize(Y, K, "svd", KEY)
    with pytest.raises(ValueError, match="key"):
        initialize(Y, K, "random")
    with pytest.raises(ValueError, match="rank"):
        initialize(Y, 0, "nndsvd")
    with pytest.raises(ValueError, match="min"):
        nndsvd(Y, N + 1)
    with pytest.raises(ValueError, match="2-d"):
        random_init(jnp.ones(3), 1, KEY)
    L, R = initialize(Y, K, "nndsvd")  # deterministic: no key needed
    assert L.shape == (M, K)


def _svd_input_shapes(jaxpr) -> list[tuple[int, ...]]:
    """The operand shapes of every SVD in ``jaxpr`` and its sub-jaxprs."""
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "svd":
            shapes.append(tuple(eqn.invars[0].aval.shape))
        for param in eqn.params.values():
            sub = getattr(param, "jaxpr", param)
            if hasattr(sub, "eqns"):
                shapes += _svd_input_shapes(sub)
    return shapes


@pytest.mark.parametrize("as_operator", [False, True])
def test_nndsvd_of_large_dense_data_uses_products_only(monkeypatch, as_operator):
    """Above the exact SVD's size (jnmf.init._exact_svd_pays) dense NNDSVD comes from the
    randomized range finder: no SVD of an m x n matrix in the program, and the same start
    as the exact SVD's to ~1e-6 on data of decaying spectrum (rank 3 plus 1% noise; x64)."""
    from jnmf import init as jinit
    from jnmf.data import dense_operator

    rng = np.random.default_rng(5)
    m, n, k = 400, 300, 3
    A = rng.random((m, k)) @ rng.random((k, n)) + 0.01 * rng.random((m, n))
    assert not jinit._exact_svd_pays((m, n), k)
    Y = dense_operator(A) if as_operator else jnp.asarray(A)
    shapes = _svd_input_shapes(jax.make_jaxpr(lambda Y: jinit.nndsvd(Y, k))(Y).jaxpr)
    assert shapes and all(max(s) <= m and min(s) <= k + jinit.OVERSAMPLING for s in shapes), shapes
    L, R = jinit.nndsvd(Y, k)
    monkeypatch.setattr(jinit, "EXACT_SVD_ENTRIES", m * n)  # the exact SVD, for reference
    Le, Re = jinit.nndsvd(Y, k)
    scale = float(np.max(np.asarray(Le @ Re)))
    np.testing.assert_allclose(np.asarray(L @ R), np.asarray(Le @ Re), atol=1e-6 * scale)
