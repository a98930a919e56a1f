"""jnmf.MiniBatchNMF, the drop-in for scikit-learn's MiniBatchNMF.

scikit-learn's own MiniBatchNMF tests (sklearn/decomposition/tests/test_nmf.py, shipped
in the installed wheel) run against jnmf.MiniBatchNMF: each test that exercises
MiniBatchNMF is called with ``Estimator=jnmf.MiniBatchNMF`` where it takes one, and with
the module's ``MiniBatchNMF`` name patched to jnmf.MiniBatchNMF (its ``NMF`` stays
scikit-learn's, so the NMF halves of shared tests test scikit-learn, unchanged).

Every MiniBatchNMF test and MiniBatchNMF case of a shared test runs, except (EXCLUDED,
with its reason; the names are asserted to exist in the installed module):

* test_minibatch_nmf_partial_fit: it checks that fit (batches X[0:10], X[10:20], ...)
  and 20 partial_fit calls on X[j:j+10] give the same components_.  In scikit-learn that
  holds only because both estimators write H in place into the caller's ``H`` array
  (init="custom" keeps it uncopied), so the two ``components_`` are one array; given
  copies, scikit-learn's own fit and partial_fit differ by up to 30x.  jnmf does not
  write into its arguments, so the test cannot pass.  What it means to check runs here
  instead: jnmf's fit and its partial_fit each equal scikit-learn's to rounding
  (test_fit_and_partial_fit_match_sklearn), and test_sklearn_partial_fit_test_relies_on_aliasing
  keeps this reason true.
"""

from __future__ import annotations

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from numpy.testing import assert_allclose  # noqa: E402
from sklearn.decomposition import MiniBatchNMF as SKMB  # noqa: E402
from sklearn.decomposition.tests import test_nmf as sk  # noqa: E402
from sklearn.utils.fixes import CSC_CONTAINERS, CSR_CONTAINERS  # noqa: E402

import jnmf  # noqa: E402

# tiny fits: the time is compiling, cheaper unoptimized (conftest.py)
CHEAP_PROGRAMS = True

MB = jnmf.MiniBatchNMF
INITS = (None, "nndsvd", "nndsvda", "nndsvdar", "random")
ALPHAS_H = (0.0, 1.0, "same")

EXCLUDED = {
    "test_minibatch_nmf_partial_fit": "passes in scikit-learn only by aliasing H (see the docstring)",
}


@pytest.fixture
def jnmf_in_sklearn(monkeypatch):
    """scikit-learn's test module sees jnmf.MiniBatchNMF as MiniBatchNMF."""
    monkeypatch.setattr(sk, "MiniBatchNMF", MB)


def test_convergence_warning(jnmf_in_sklearn):
    sk.test_convergence_warning(MB, {})


def test_parameter_checking(jnmf_in_sklearn):
    sk.test_parameter_checking()


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("alpha_W", (0.0, 1.0))
@pytest.mark.parametrize("alpha_H", ALPHAS_H)
def test_nmf_fit_nn_output(jnmf_in_sklearn, init, alpha_W, alpha_H):
    sk.test_nmf_fit_nn_output(MB, {}, init, alpha_W, alpha_H)


def test_nmf_fit_close(jnmf_in_sklearn):
    sk.test_nmf_fit_close(MB, {})


def test_minibatch_nmf_transform(jnmf_in_sklearn):
    sk.test_minibatch_nmf_transform()


def test_nmf_transform_custom_init(jnmf_in_sklearn):
    sk.test_nmf_transform_custom_init(MB, {})


def test_mbnmf_inverse_transform(jnmf_in_sklearn):
    sk.test_mbnmf_inverse_transform()


def test_n_components_greater_n_features(jnmf_in_sklearn):
    sk.test_n_components_greater_n_features(MB)


@pytest.mark.parametrize("sparse_container", CSC_CONTAINERS + CSR_CONTAINERS)
@pytest.mark.parametrize("alpha_W", (0.0, 1.0))
@pytest.mark.parametrize("alpha_H", ALPHAS_H)
def test_nmf_sparse_input(jnmf_in_sklearn, sparse_container, alpha_W, alpha_H):
    sk.test_nmf_sparse_input(MB, {}, sparse_container, alpha_W, alpha_H)


@pytest.mark.parametrize("csc_container", CSC_CONTAINERS)
def test_nmf_sparse_transform(jnmf_in_sklearn, csc_container):
    sk.test_nmf_sparse_transform(MB, {}, csc_container)


@pytest.mark.parametrize("beta_loss", [-0.5, 0.0])
def test_minibatch_nmf_negative_beta_loss(jnmf_in_sklearn, beta_loss):
    sk.test_minibatch_nmf_negative_beta_loss(beta_loss)


def test_nmf_regularization(jnmf_in_sklearn):
    sk.test_nmf_regularization(MB, {})


@pytest.mark.parametrize(
    "dtype_in, dtype_out",
    [(np.float32, np.float32), (np.float64, np.float64), (np.int32, np.float64), (np.int64, np.float64)],
)
def test_nmf_dtype_match(jnmf_in_sklearn, dtype_in, dtype_out):
    sk.test_nmf_dtype_match(MB, {}, dtype_in, dtype_out)


def test_nmf_float32_float64_consistency(jnmf_in_sklearn):
    sk.test_nmf_float32_float64_consistency(MB, {})


def test_nmf_custom_init_dtype_error(jnmf_in_sklearn):
    sk.test_nmf_custom_init_dtype_error(MB)


def test_nmf_true_reconstruction(jnmf_in_sklearn):
    """Its MiniBatchNMF half (batch_size=3, beta_loss=1: a third of the batches are all
    zero rows) runs to an exact reconstruction; its NMF half tests scikit-learn's NMF."""
    sk.test_nmf_true_reconstruction()


@pytest.mark.parametrize("beta_loss", [-0.5, 0, 0.5, 1, 1.5, 2, 2.5])
def test_nmf_minibatchnmf_equivalence(jnmf_in_sklearn, beta_loss):
    sk.test_nmf_minibatchnmf_equivalence(beta_loss)


def test_partial_fit_steps_and_shapes():
    """What partial_fit guarantees here: one step per call, components of the right shape."""
    rng = np.random.RandomState(0)
    X = np.abs(rng.randn(40, 5))
    m = MB(n_components=3, random_state=0)
    for j in range(4):
        m.partial_fit(X[10 * j : 10 * j + 10])
    assert m.n_steps_ == 4 and m.components_.shape == (3, 5)
    assert np.all(m.components_ >= 0) and np.all(np.isfinite(m.components_))
    assert m.transform(X).shape == (40, 3)


def _factors(rng, n, f, k):
    return np.abs(rng.randn(n, f)), np.abs(rng.randn(n, k)), np.abs(rng.randn(k, f))


@pytest.mark.parametrize("beta_loss", [2, 1, 0.5])
def test_fit_and_partial_fit_match_sklearn(beta_loss):
    """From copies of one custom start, jnmf's fit and its partial_fit follow scikit-learn's
    iterates: a short last batch (95 = 9 x 10 + 5 rows, its H penalty scaled to 5 rows),
    L1 + L2 regularization, and partial_fit batches of uneven sizes with batch_size below
    the first one (forgetting set by the first batch)."""
    X, W, H = _factors(np.random.RandomState(42), 95, 5, 4)
    kw = dict(n_components=4, init="custom", beta_loss=beta_loss, alpha_W=0.01, l1_ratio=0.5)
    fit_kw = dict(kw, batch_size=10, max_iter=3, tol=0, max_no_improvement=None)
    ours = MB(**fit_kw).fit(X, W=W.copy(), H=H.copy())
    theirs = SKMB(**fit_kw).fit(X, W=W.copy(), H=H.copy())
    assert ours.n_steps_ == theirs.n_steps_ == 30
    assert_allclose(ours.components_, theirs.components_, rtol=1e-9)
    assert_allclose(ours.reconstruction_err_, theirs.reconstruction_err_, rtol=1e-9)

    ours, theirs = MB(**kw, batch_size=6), SKMB(**kw, batch_size=6)
    H0 = H.copy()
    for start, stop in [(0, 12), (12, 20), (20, 45), (45, 50), (50, 53)]:
        for m in (ours, theirs):
            m.partial_fit(X[start:stop], W=W[:12].copy(), H=H.copy())
        assert_allclose(ours.components_, theirs.components_, rtol=1e-9)
    assert ours.n_steps_ == 5
    assert np.array_equal(H, H0)  # jnmf does not write into the caller's H


@pytest.mark.parametrize(
    "beta_loss, batch_size, tol, max_no_improvement, reason",
    [
        (1, 3, 1e-2, None, "Converged (small H change) at step 28/"),
        (1, 3, 1e-4, 10, "Converged (lack of improvement in objective function) at step 76/"),
        (2, 10, 1e-9, 3, "Converged (lack of improvement in objective function) at step 18/"),
    ],
)
@pytest.mark.parametrize("verbose", [0, 1])
def test_stopping_matches_sklearn(capsys, beta_loss, batch_size, tol, max_no_improvement, reason, verbose):
    """Both stopping rules fire at scikit-learn's step (the first step not judged, the
    smoothed cost's weight from each batch's rows), float64: in the one compiled program
    (verbose=0; 40 rows in batches of 3 leave a last batch of 1) and in the host loop
    that prints (verbose=1)."""
    rng = np.random.RandomState(0)
    X, W, H = _factors(rng, 40, 6, 3)
    kw = dict(
        n_components=3, init="custom", beta_loss=beta_loss, batch_size=batch_size, tol=tol,
        max_no_improvement=max_no_improvement, max_iter=500,
    )  # fmt: skip
    theirs = SKMB(**kw).fit(X, W=W.copy(), H=H.copy())
    ours = MB(**kw, verbose=verbose).fit(X, W=W.copy(), H=H.copy())
    assert ours.n_steps_ == theirs.n_steps_
    assert (reason in capsys.readouterr().out) == bool(verbose)
    assert_allclose(ours.components_, theirs.components_, rtol=1e-9)


def test_dense_fit_is_one_program_not_recompiled_for_new_values(monkeypatch):
    """A dense, quiet fit runs no per-step program (the host loop's step is made to fail)
    and compiles its loop once: new max_iter, tol, max_no_improvement, forget_factor or
    penalties reuse it, and the fits still follow scikit-learn's (float64)."""
    from jnmf import minibatch

    def no_host_step(*args, **kwargs):
        raise AssertionError("the host loop ran")

    monkeypatch.setattr(minibatch, "_minibatch_step", no_host_step)
    X, W, H = _factors(np.random.RandomState(1), 37, 6, 3)
    base = dict(n_components=3, init="custom", batch_size=8, beta_loss=1)
    settings = [
        dict(max_iter=4, tol=1e-4, max_no_improvement=10),
        dict(max_iter=9, tol=0.0, max_no_improvement=None, forget_factor=0.3),
        dict(max_iter=7, tol=1e-3, max_no_improvement=2, alpha_W=0.2, alpha_H=0.1, l1_ratio=0.4),
    ]
    sizes = []
    for kw in settings:
        ours = MB(**base, **kw).fit(X, W=W.copy(), H=H.copy())
        theirs = SKMB(**base, **kw).fit(X, W=W.copy(), H=H.copy())
        assert ours.n_steps_ == theirs.n_steps_
        assert_allclose(ours.components_, theirs.components_, rtol=1e-9)
        sizes.append(minibatch._fit_steps._cache_size())
    assert sizes[0] >= 1 and sizes[-1] == sizes[0]


def test_zero_batches_do_not_stop_kl_fit():
    """beta = 1 with whole batches of zero rows: such a batch shrinks H (a component
    unused by the batch counts 1 in H's denominator), so the H change does not vanish
    and the fit goes on to an exact reconstruction (test_nmf_true_reconstruction's data)."""
    X = np.zeros((15, 10))
    for j in range(10):
        X[j % 5, j] = 1.0 + j % 5
    m = MB(n_components=5, beta_loss=1, batch_size=3, random_state=0, max_iter=1000)
    W = m.fit_transform(X)
    assert m.n_steps_ > 10
    assert m.reconstruction_err_ < 0.02 * np.linalg.norm(X)
    H = m.components_.copy()
    m.partial_fit(np.zeros((3, 10)))
    assert np.any(H > 0) and np.all(m.components_[H > 0] < H[H > 0])
    assert_allclose(W @ H, X, atol=0.01)


def test_sklearn_partial_fit_test_relies_on_aliasing():
    """Why test_minibatch_nmf_partial_fit is excluded: in its setting scikit-learn's fit and
    partial_fit return the caller's H array itself, and on copies their components differ."""
    rng = np.random.RandomState(42)
    X = np.abs(rng.randn(100, 5))
    W, H = np.abs(rng.randn(100, 5)), np.abs(rng.randn(5, 5))
    fit_kw = dict(n_components=5, init="custom", random_state=0, max_iter=2, batch_size=10)
    fit_kw.update(tol=0, max_no_improvement=None)

    def both(H1, H2):
        a = SKMB(**fit_kw).fit(X, W=W.copy(), H=H1)
        b = SKMB(n_components=5, init="custom", random_state=0)
        for _ in range(2):
            for j in range(10):
                b.partial_fit(X[j : j + 10], W=W[:10], H=H2)
        return a.components_, b.components_

    shared = H.copy()
    a, b = both(shared, shared)
    assert a is shared and b is shared
    a, b = both(H.copy(), H.copy())
    assert not np.allclose(a, b, rtol=1e-2)


def test_minibatch_nmf_verbose(jnmf_in_sklearn):
    sk.test_minibatch_nmf_verbose()


def test_nmf_n_components_auto(jnmf_in_sklearn):
    sk.test_nmf_n_components_auto(MB)


def test_exclusions_name_real_tests():
    for name in EXCLUDED:
        assert hasattr(sk, name), name


def test_lazy_export():
    from jnmf.minibatch import MiniBatchNMF

    assert jnmf.MiniBatchNMF is MiniBatchNMF
    assert sorted(MB().get_params()) == sorted(sklearn.decomposition.MiniBatchNMF().get_params())
    assert MB().get_params() == sklearn.decomposition.MiniBatchNMF().get_params()
