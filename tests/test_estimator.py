"""jnmf.NMF, the scikit-learn drop-in estimator.

Three parts:

1. scikit-learn's own NMF tests (sklearn/decomposition/tests/test_nmf.py, shipped in the
   installed wheel) run against jnmf.NMF: each test that exercises the public estimator
   is called with ``Estimator=jnmf.NMF`` where it takes one, and with the module's ``NMF``
   name patched to jnmf.NMF.  Tests that go through ``non_negative_factorization`` run
   with ``sklearn.decomposition._nmf.NMF`` patched too: that public function builds an
   ``NMF`` and calls its ``_fit_transform(X, W, H, update_H)``, a contract jnmf.NMF keeps.
   EXCLUDED, with reasons (the MiniBatchNMF cases of shared tests are left out too):

   * test_initialize_nn_output, test_initialize_close, test_initialize_variants:
     scikit-learn's private initializer ``_initialize_nmf`` (jnmf's are in jnmf.init and
     tested in tests/test_init.py).
   * test_beta_divergence, test_special_sparse_dot, test_nmf_underflow: scikit-learn's
     private ``_beta_divergence`` / ``_special_sparse_dot`` (jnmf's divergence is checked
     against ``_beta_divergence`` below, test_beta_divergence_matches_sklearn).
   * test_parameter_checking: mixes MiniBatchNMF and the private ``_initialize_nmf`` with
     the NMF checks in one function; its NMF assertions are restated below
     (test_parameter_checking_nmf).
   * test_nmf_true_reconstruction: its second half is MiniBatchNMF; the NMF half is
     restated below (test_nmf_true_reconstruction_nmf).
   * test_nmf_multiplicative_update_sparse: it also asserts continuity in beta_loss (20
     iterations at beta and beta - 1e-5 agree to 1e-4) with a ridge penalty, which fails
     at beta_loss = 1 only (by 0.05): there jnmf's solver="mu" uses KLMU, whose ridge step
     is an exact majorize-minimize step (the root of a quadratic), while BetaMU at
     1 - 1e-5 puts the ridge in the denominator as scikit-learn does (a heuristic for
     beta < 2).  Both decrease the same objective.  The test is restated below without
     beta_loss = 1 in the continuity check (sparse = dense for every beta).
   * test_minibatch_nmf_transform, test_mbnmf_inverse_transform,
     test_minibatch_nmf_negative_beta_loss, test_nmf_minibatchnmf_equivalence,
     test_minibatch_nmf_partial_fit, test_minibatch_nmf_verbose: MiniBatchNMF's tests;
     they run against jnmf.MiniBatchNMF in tests/test_minibatch.py.

2. ``sklearn.utils.estimator_checks`` on jnmf.NMF() (every check passes; the array-API
   check skips itself without SCIPY_ARRAY_API).

3. jnmf-specific behavior: the exact penalty mapping, float64 without global x64,
   ``import jnmf`` without scikit-learn, the ``method`` / ``restarts`` extras, verbose.

Runtime: every new data shape compiles its solver (about 1-3 s on 2 cores: HALS is the
slowest to compile), so the data are small and shapes are shared where the tests allow;
the estimator checks (~48 fits of many shapes) are the slowest part.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

import sklearn.decomposition._nmf as sk_nmf_module  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.decomposition import NMF as SklearnNMF  # noqa: E402
from sklearn.decomposition.tests import test_nmf as sk  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402
from sklearn.utils.fixes import CSC_CONTAINERS, CSR_CONTAINERS  # noqa: E402

import jnmf  # noqa: E402
from jnmf.problem import build_problem  # noqa: E402
from jnmf.rules.beta import beta_divergence  # noqa: E402

# tiny fits: the time is compiling, cheaper unoptimized (conftest.py)
CHEAP_PROGRAMS = True

NMF = jnmf.NMF
SOLVERS = [{"solver": "cd"}, {"solver": "mu"}]
INITS = (None, "nndsvd", "nndsvda", "nndsvdar", "random")
ALPHAS_H = (0.0, 1.0, "same")
MU_ZEROS = r"ignore:The multiplicative update \('mu'\) solver cannot update zeros"


@pytest.fixture
def jnmf_in_sklearn(monkeypatch):
    """scikit-learn's test module and non_negative_factorization see jnmf.NMF as NMF."""
    monkeypatch.setattr(sk, "NMF", NMF)
    monkeypatch.setattr(sk_nmf_module, "NMF", NMF)


# --------------------------------------------------------------------------------------
# 1. scikit-learn's NMF tests, run on jnmf.NMF
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", SOLVERS)
def test_sklearn_convergence_warning(jnmf_in_sklearn, solver):
    sk.test_convergence_warning(NMF, solver)


@pytest.mark.filterwarnings(MU_ZEROS)
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("alpha_W", (0.0, 1.0))
@pytest.mark.parametrize("alpha_H", ALPHAS_H)
def test_sklearn_nmf_fit_nn_output(jnmf_in_sklearn, solver, init, alpha_W, alpha_H):
    sk.test_nmf_fit_nn_output(NMF, solver, init, alpha_W, alpha_H)


@pytest.mark.parametrize("solver", SOLVERS)
def test_sklearn_nmf_fit_close(jnmf_in_sklearn, solver):
    sk.test_nmf_fit_close(NMF, solver)


@pytest.mark.parametrize("solver", ["cd", "mu"])
def test_sklearn_nmf_transform(jnmf_in_sklearn, solver):
    sk.test_nmf_transform(solver)


@pytest.mark.parametrize("solver", SOLVERS)
def test_sklearn_nmf_transform_custom_init(jnmf_in_sklearn, solver):
    sk.test_nmf_transform_custom_init(NMF, solver)


@pytest.mark.parametrize("solver", ["cd", "mu"])
def test_sklearn_nmf_inverse_transform(jnmf_in_sklearn, solver):
    sk.test_nmf_inverse_transform(solver)


def test_sklearn_n_components_greater_n_features(jnmf_in_sklearn):
    sk.test_n_components_greater_n_features(NMF)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("sparse_container", CSC_CONTAINERS + CSR_CONTAINERS)
@pytest.mark.parametrize("alpha_W", (0.0, 1.0))
@pytest.mark.parametrize("alpha_H", ALPHAS_H)
def test_sklearn_nmf_sparse_input(jnmf_in_sklearn, solver, sparse_container, alpha_W, alpha_H):
    sk.test_nmf_sparse_input(NMF, solver, sparse_container, alpha_W, alpha_H)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("csc_container", CSC_CONTAINERS)
def test_sklearn_nmf_sparse_transform(jnmf_in_sklearn, solver, csc_container):
    sk.test_nmf_sparse_transform(NMF, solver, csc_container)


@pytest.mark.filterwarnings(MU_ZEROS)
@pytest.mark.parametrize("init", ["random", "nndsvd"])
@pytest.mark.parametrize("solver", ("cd", "mu"))
@pytest.mark.parametrize("alpha_W", (0.0, 1.0))
@pytest.mark.parametrize("alpha_H", ALPHAS_H)
def test_sklearn_non_negative_factorization_consistency(jnmf_in_sklearn, init, solver, alpha_W, alpha_H):
    sk.test_non_negative_factorization_consistency(init, solver, alpha_W, alpha_H)


def test_sklearn_non_negative_factorization_checking(jnmf_in_sklearn):
    sk.test_non_negative_factorization_checking()


def test_sklearn_nmf_negative_beta_loss(jnmf_in_sklearn):
    for container in CSR_CONTAINERS:
        sk.test_nmf_negative_beta_loss(container)


@pytest.mark.parametrize("solver", SOLVERS)
def test_sklearn_nmf_regularization(jnmf_in_sklearn, solver):
    sk.test_nmf_regularization(NMF, solver)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("solver", ("cd", "mu"))
def test_sklearn_nmf_decreasing(jnmf_in_sklearn, solver):
    sk.test_nmf_decreasing(solver)


@pytest.mark.parametrize(
    "dtype_in, dtype_out",
    [(np.float32, np.float32), (np.float64, np.float64), (np.int32, np.float64), (np.int64, np.float64)],
)
@pytest.mark.parametrize("solver", SOLVERS)
def test_sklearn_nmf_dtype_match(jnmf_in_sklearn, solver, dtype_in, dtype_out):
    sk.test_nmf_dtype_match(NMF, solver, dtype_in, dtype_out)


@pytest.mark.parametrize("solver", SOLVERS)
def test_sklearn_nmf_float32_float64_consistency(jnmf_in_sklearn, solver):
    sk.test_nmf_float32_float64_consistency(NMF, solver)


def test_sklearn_nmf_custom_init_dtype_error(jnmf_in_sklearn):
    sk.test_nmf_custom_init_dtype_error(NMF)


def test_sklearn_feature_names_out(jnmf_in_sklearn):
    sk.test_feature_names_out()


def test_sklearn_nmf_n_components_auto(jnmf_in_sklearn):
    sk.test_nmf_n_components_auto(NMF)


def test_sklearn_nmf_non_negative_factorization_n_components_auto(jnmf_in_sklearn):
    sk.test_nmf_non_negative_factorization_n_components_auto()


def test_sklearn_nmf_n_components_auto_no_h_update(jnmf_in_sklearn):
    sk.test_nmf_n_components_auto_no_h_update()


def test_sklearn_nmf_w_h_not_used_warning(jnmf_in_sklearn):
    sk.test_nmf_w_h_not_used_warning()


def test_sklearn_nmf_custom_init_shape_error(jnmf_in_sklearn):
    sk.test_nmf_custom_init_shape_error()


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("shape", ((30, 10), (10, 30)), ids=("tall", "wide"))
@pytest.mark.parametrize("solver", ("cd", "mu"))
def test_sklearn_nmf_smoke(jnmf_in_sklearn, init, shape, solver):
    sk.test_nmf_smoke(init, shape, solver)


# Restated NMF halves of excluded scikit-learn tests (see the module docstring).
@pytest.mark.filterwarnings(MU_ZEROS)
def test_parameter_checking_nmf():
    A = np.ones((2, 2))
    with pytest.raises(
        ValueError, match="Invalid beta_loss parameter: solver 'cd' does not handle beta_loss = 1.0"
    ):
        NMF(solver="cd", beta_loss=1.0).fit(A)
    with pytest.raises(ValueError, match="Negative values in data passed to"):
        NMF().fit(-A)
    clf = NMF(2, tol=0.1).fit(A)
    with pytest.raises(ValueError, match="Negative values in data passed to"):
        clf.transform(-A)
    for init in ["nndsvd", "nndsvda", "nndsvdar"]:
        msg = f"init = '{init}' can only be used when n_components <= min(n_samples, n_features)"
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            NMF(3, init=init).fit(A)


def test_nmf_true_reconstruction_nmf():
    n_samples, n_features, n_components = 15, 10, 5
    rng = np.random.mtrand.RandomState(42)
    W_true = np.zeros([n_samples, n_components])
    W_array = np.abs(rng.randn(n_samples))
    for j in range(n_components):
        W_true[j % n_samples, j] = W_array[j % n_samples]
    H_true = np.zeros([n_components, n_features])
    H_array = np.abs(rng.randn(n_components))
    for j in range(n_features):
        H_true[j % n_components, j] = H_array[j % n_components]
    X = W_true @ H_true
    model = NMF(n_components=n_components, solver="mu", beta_loss=1, max_iter=1000, random_state=0)
    transf = model.fit_transform(X)
    assert model.reconstruction_err_ < 0.1
    np.testing.assert_allclose(X, transf @ model.components_, rtol=1e-7, atol=1e-6)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("beta_loss", (-1.2, 0, 0.2, 1.0, 2.0, 2.5))
def test_multiplicative_update_sparse_equals_dense(beta_loss):
    """scikit-learn's test_nmf_multiplicative_update_sparse, continuity at beta = 1 left out."""
    rng = np.random.mtrand.RandomState(1337)
    X = np.abs(rng.randn(20, 10))
    W0, H0 = sk_nmf_module._initialize_nmf(X, 5, init="random", random_state=42)

    def fit(X, beta):
        kw = dict(n_components=5, init="custom", solver="mu", beta_loss=beta, max_iter=20)
        model = NMF(**kw, alpha_W=0.1, l1_ratio=0.5, random_state=42)
        return model.fit_transform(X, W=W0.copy(), H=H0.copy()), model.components_

    W1, H1 = fit(X, beta_loss)
    W2, H2 = fit(CSR_CONTAINERS[0](X), beta_loss)
    np.testing.assert_allclose(W1, W2, atol=1e-7)
    np.testing.assert_allclose(H1, H2, atol=1e-7)
    if beta_loss != 1.0:
        W3, H3 = fit(X, beta_loss - 1e-5)
        np.testing.assert_allclose(W1, W3, atol=1e-4)
        np.testing.assert_allclose(H1, H3, atol=1e-4)


# --------------------------------------------------------------------------------------
# 2. scikit-learn's estimator checks
# --------------------------------------------------------------------------------------
# max_iter=500, as scikit-learn's own suite runs these checks on its NMF
# (sklearn/utils/_test_common/instance_generator.py, INIT_PARAMS): jnmf.NMF starts where
# scikit-learn's does and follows its iterates, so at the default 200 iterations it fails
# check_transformer_data_not_an_array exactly as scikit-learn's NMF() does (fit_transform
# and transform 0.054 apart, not converged)
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks([NMF(max_iter=500)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# --------------------------------------------------------------------------------------
# 3. jnmf specifics
# --------------------------------------------------------------------------------------
def _data(shape=(12, 8), seed=0):
    return np.abs(np.random.RandomState(seed).randn(*shape))


def _sklearn_objective(X, W, H, beta, alpha_W, alpha_H, l1_ratio):
    """scikit-learn's NMF objective, as documented in its docstring."""
    n_samples, n_features = X.shape
    return (
        sk_nmf_module._beta_divergence(X, W, H, beta)
        + alpha_W * l1_ratio * n_features * W.sum()
        + 0.5 * alpha_W * (1 - l1_ratio) * n_features * (W**2).sum()
        + alpha_H * l1_ratio * n_samples * H.sum()
        + 0.5 * alpha_H * (1 - l1_ratio) * n_samples * (H**2).sum()
    )


def test_penalty_mapping_is_sklearns_objective():
    """The jnmf problem the estimator builds has exactly scikit-learn's objective."""
    X = _data()
    rng = np.random.RandomState(1)
    W, H = rng.rand(12, 3), rng.rand(3, 8)
    est = NMF(3, alpha_W=0.3, alpha_H=0.7, l1_ratio=0.25)
    problem = build_problem(jnp.asarray(X), 3, **est._penalties(*X.shape))
    ours = float(problem.objective(jnp.asarray(W), jnp.asarray(H)))
    assert ours == pytest.approx(_sklearn_objective(X, W, H, 2, 0.3, 0.7, 0.25), rel=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
def test_beta_divergence_matches_sklearn(beta):
    X = _data() + 0.5  # no entries near 0, which scikit-learn leaves out
    rng = np.random.RandomState(2)
    W, H = rng.rand(12, 3), rng.rand(3, 8)
    ours = float(beta_divergence(jnp.asarray(X), jnp.asarray(W @ H), beta))
    assert ours == pytest.approx(sk_nmf_module._beta_divergence(X, W, H, beta), rel=1e-10)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("beta_loss", [-0.5, 1.5, 2.5])
def test_beta_mu_iterates_equal_sklearns(beta_loss):
    """For beta not 1 or 2, solver="mu" runs scikit-learn's update (BetaMU), penalties
    included: the same iterates from the same start (jnmf works on X / max X)."""
    X = _data((10, 6)) + 0.1
    W0, H0 = sk_nmf_module._initialize_nmf(X, 3, init="random", random_state=0)
    kw = dict(n_components=3, init="custom", solver="mu", beta_loss=beta_loss, max_iter=15, tol=0)
    kw.update(alpha_W=0.05, l1_ratio=0.3)
    ours = NMF(**kw)
    W = ours.fit_transform(X, W=W0.copy(), H=H0.copy())
    ref = SklearnNMF(**kw)
    W_ref = ref.fit_transform(X, W=W0.copy(), H=H0.copy())
    np.testing.assert_allclose(W @ ours.components_, W_ref @ ref.components_, rtol=1e-8)


def test_import_without_sklearn_and_float64_without_global_x64():
    """In a fresh interpreter: ``import jnmf`` works without scikit-learn and ``jnmf.NMF``
    then says what is missing; with scikit-learn back, float64 input is computed in
    float64 with JAX's x64 mode off (switched on for the call only, off again after it)."""
    code = (
        "import sys\n"
        "for name in ('sklearn', 'sklearn.base'):\n"
        "    sys.modules[name] = None\n"
        "import jnmf\n"
        "try:\n"
        "    jnmf.NMF\n"
        "except ImportError as e:\n"
        "    assert 'scikit-learn' in str(e)\n"
        "else:\n"
        "    raise AssertionError('jnmf.NMF without scikit-learn')\n"
        "for name in ('sklearn', 'sklearn.base'):\n"
        "    del sys.modules[name]\n"
        "import numpy as np, jax\n"
        "rng = np.random.RandomState(0)\n"
        "X = rng.rand(12, 3) @ rng.rand(3, 8)\n"
        "m = jnmf.NMF(3, init='random', random_state=0, tol=0, max_iter=3000)\n"
        "W = m.fit_transform(X)\n"
        "assert W.dtype == np.float64 and m.components_.dtype == np.float64\n"
        "assert not jax.config.jax_enable_x64\n"
        "print(m.reconstruction_err_ / np.linalg.norm(X))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-9  # float32 stalls near 1e-7


def test_method_and_restarts_extras():
    X = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        one = NMF(3, init="random", random_state=0, solver="mu", beta_loss=1.5)
        many = clone(one).set_params(restarts=3)
        beta = clone(one).set_params(method="beta", solver="cd")
        for est in (one, many, beta):
            est.fit(X)
    # restart 0 of `many` is `one`'s start, so the best of three is no worse
    assert many.reconstruction_err_ <= one.reconstruction_err_ * (1 + 1e-9)
    np.testing.assert_allclose(beta.components_, one.components_)
    with pytest.raises(ValueError, match="method 'hals' minimizes beta_loss = 2.0"):
        NMF(3, method="hals", beta_loss=1.0).fit(X)
    with pytest.raises(ValueError, match="'method' parameter"):
        NMF(3, method="nope").fit(X)
    with pytest.raises(ValueError, match="'restarts' parameter"):
        NMF(3, restarts=0).fit(X)


def test_bad_parameters_raise_before_fitting():
    X = _data()
    for kw, name in [
        (dict(n_components=0), "n_components"),
        (dict(init="svd"), "init"),
        (dict(solver="lbfgs"), "solver"),
        (dict(beta_loss="hellinger"), "beta_loss"),
        (dict(tol=-1.0), "tol"),
        (dict(max_iter=0), "max_iter"),
        (dict(alpha_W=-1.0), "alpha_W"),
        (dict(alpha_H="other"), "alpha_H"),
        (dict(l1_ratio=1.5), "l1_ratio"),
    ]:
        with pytest.raises(ValueError, match=f"'{name}' parameter"):
            NMF(**kw).fit(X)


def test_pipeline_clone_and_verbose(capsys):
    X = _data()
    pipe = make_pipeline(NMF(3, random_state=0, verbose=1, max_iter=500))
    W = pipe.fit_transform(X)
    assert W.shape == (12, 3)
    assert "epoch" in capsys.readouterr().out.lower()
    est = clone(pipe.steps[0][1])
    assert est.get_params()["n_components"] == 3 and not hasattr(est, "components_")


# ----------------------------------------------------------------------- missing values


def _with_nans(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((24, 3)) @ rng.random((3, 16)) + 0.05
    hidden = rng.random(X.shape) < 0.15
    return X, np.where(hidden, np.nan, X), hidden


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_missing_nan_fits_and_transforms_around_the_gaps():
    X, Xn, hidden = _with_nans()
    with pytest.raises(ValueError, match="Input X contains NaN"):  # the default, as scikit-learn
        jnmf.NMF(3).fit(Xn)
    with pytest.raises(ValueError, match="'missing' parameter of NMF must be one of"):
        jnmf.NMF(3, missing="zero").fit(X)
    model = jnmf.NMF(3, missing="nan", max_iter=400, tol=1e-6, random_state=0)
    W = model.fit_transform(Xn)
    assert np.all(np.isfinite(W)) and np.all(np.isfinite(model.components_))
    fitted = W @ model.components_
    # the hidden entries are predicted from the rank-3 structure of the rest
    assert np.sqrt(np.mean((fitted - X)[hidden] ** 2)) < 0.02 * np.sqrt(np.mean(X**2))
    # reconstruction_err_ counts the observed entries only
    assert model.reconstruction_err_ == pytest.approx(np.linalg.norm((X - fitted)[~hidden]), rel=1e-6)
    # transform of the same rows with other gaps: W from their observed entries
    other = np.random.default_rng(1).random(X.shape) < 0.15
    W_other = model.transform(np.where(other, np.nan, X))
    assert np.all(np.isfinite(W_other))
    assert np.sqrt(np.mean((W_other @ model.components_ - X) ** 2)) < 0.02 * np.sqrt(np.mean(X**2))
    assert model.__sklearn_tags__().input_tags.allow_nan
    assert not jnmf.NMF().__sklearn_tags__().input_tags.allow_nan


# ----------------------------------------------------------------------- cd stopping test


def _stopping_data():
    """40 x 30 data of rank 5 plus noise and a fixed start ``(X, W0, H0)``, float64."""
    rng = np.random.default_rng(0)
    X = rng.random((40, 5)) @ rng.random((5, 30)) + 0.05 * rng.random((40, 30))
    return X, rng.random((40, 5)), rng.random((5, 30))


def _fit_both(solver: str, tol: float, **extra):
    """jnmf.NMF and scikit-learn's NMF fitted from the same custom start of
    :func:`_stopping_data` (600 iterations at most): ``(ours, W, theirs, W_sk)``."""
    from sklearn.decomposition import NMF as SkNMF

    X, W0, H0 = _stopping_data()
    settings = dict(n_components=5, solver=solver, init="custom", tol=tol, max_iter=600, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = jnmf.NMF(**settings)
        W = ours.fit_transform(X, W=W0.copy(), H=H0.copy())
        theirs = SkNMF(**settings)
        W_sk = theirs.fit_transform(X, W=W0.copy(), H=H0.copy())
    return ours, W, theirs, W_sk


@pytest.mark.parametrize(
    ("tol", "penalties"), [(1e-2, {}), (1e-3, {}), (1e-3, {"alpha_W": 0.01, "l1_ratio": 0.5})]
)
def test_cd_stops_on_scikit_learns_violation_test(tol, penalties):
    """solver="cd" stops when the projected-gradient violation of an iteration falls to
    tol times the first iteration's, as scikit-learn's coordinate descent: from the same
    start the iteration counts are equal and the errors agree; transform (W only) stops on
    the same test, not at max_iter."""
    ours, W, theirs, W_sk = _fit_both("cd", tol, **penalties)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # transform stops on the test too
        ours.transform(_stopping_data()[0][:20])
    assert theirs.n_iter_ < 600  # scikit-learn stopped on its test, not the cap
    assert abs(ours.n_iter_ - theirs.n_iter_) <= max(1, theirs.n_iter_ // 50)
    assert ours.reconstruction_err_ == pytest.approx(theirs.reconstruction_err_, rel=1e-4)
    np.testing.assert_allclose(W, W_sk, rtol=1e-3, atol=1e-6)


def _watched_fits(monkeypatch, solver: str):
    """The stopping-test loop tests' common part: 40 x 30 data of rank 5 plus noise, the
    estimator's loop entry points (``iterate``, ``continue_restarts``) counted, a fit at
    tol 1e-2 (it compiles), then one at tol 1e-3 watched for compiles.

    Returns:
        ``(X, fit, calls, model, W, compiled)``: ``fit(tol, verbose=0, **kw)`` fits from the
        fixed custom start; ``calls`` the entry points the watched fit called (the list
        collects later calls too); ``compiled`` whether it compiled anything.
    """
    import jnmf.estimator as est

    X, W0, H0 = _stopping_data()
    calls = []

    def counted(name):
        real = getattr(est, name)
        return lambda *a, **kw: calls.append(name) or real(*a, **kw)

    for name in ("iterate", "continue_restarts"):
        monkeypatch.setattr(est, name, counted(name))

    def fit(tol, verbose=0, **kw):
        model = jnmf.NMF(5, solver=solver, init="custom", tol=tol, max_iter=600, verbose=verbose, **kw)
        return model, model.fit_transform(X, W=W0.copy(), H=H0.copy())

    fit(1e-2)  # compiles
    seen = []
    listener = lambda event, *a, **kw: seen.append(event)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        calls.clear()
        model, W = fit(1e-3)
    finally:
        jax._src.monitoring.unregister_event_duration_listener(listener)
    return X, fit, calls, model, W, "/jax/core/compile/backend_compile_duration" in seen


def test_cd_test_runs_inside_one_compiled_loop(monkeypatch, capsys):
    """solver="cd" applies scikit-learn's violation test inside the compiled loop: a fit
    of ~100 iterations enters the loop program once, not once per iteration; a new tol
    compiles nothing; verbose, which prints every iteration from the host, stops at the
    same iteration with the same factors (float64)."""
    _, fit, calls, model, W, compiled = _watched_fits(monkeypatch, "cd")
    assert model.n_iter_ > 20
    assert calls == ["iterate"]
    assert not compiled
    loud, W_loud = fit(1e-3, verbose=1)
    assert loud.n_iter_ == model.n_iter_
    np.testing.assert_array_equal(W_loud, W)
    assert f"Epoch {model.n_iter_:02d}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("tol", "extra"),
    [
        (1e-2, {}),
        (1e-4, {}),
        (1e-3, {"alpha_W": 0.01, "l1_ratio": 0.5}),
        (1e-3, {"beta_loss": "kullback-leibler"}),
        (1e-3, {"beta_loss": 0.5}),
    ],
)
def test_mu_stops_on_scikit_learns_error_test(tol, extra):
    """solver="mu" stops as scikit-learn's multiplicative updates: every 10 iterations,
    when (previous error - error) / initial error < tol, the error being the loss without
    the penalties.  From the same start (float64) the iteration counts are equal, and so
    are the factors and errors up to rounding; transform (W only, H fixed) too."""
    ours, W, theirs, W_sk = _fit_both("mu", tol, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        rows = _stopping_data()[0][:20]
        V, V_sk = ours.transform(rows), theirs.transform(rows)
    assert 20 <= theirs.n_iter_ < 600  # scikit-learn stopped on its test, not the cap
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.reconstruction_err_ == pytest.approx(theirs.reconstruction_err_, rel=1e-9)
    np.testing.assert_allclose(W, W_sk, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(V, V_sk, rtol=1e-8, atol=1e-12)


def test_frobenius_mu_is_beta_mu_at_two_from_products():
    """FrobeniusMU (solver="mu", Frobenius loss) takes BetaMU(2)'s steps, its half problem
    formed from products with the factors instead of the m x n model: the same iterates
    and objective up to rounding, with penalties (float64); with an elementwise weight
    (missing values) it is BetaMU exactly."""
    from jnmf.driver import iterate
    from jnmf.estimator import FrobeniusMU
    from jnmf.rules import BetaMU

    X, W0, H0 = _stopping_data()
    M = (np.random.default_rng(2).random(X.shape) > 0.1).astype(float)
    with jax.enable_x64(True):
        for weight in (None, M):
            problem = jnmf.build_problem(jnp.asarray(X), 5, M=weight, lambda_1L=0.3, lambda_2R=0.2)
            runs = []
            for rule in (FrobeniusMU(), BetaMU(2.0)):
                state = rule.init(problem, jnp.asarray(W0), jnp.asarray(H0))
                runs.append(iterate(rule, problem, state, max_iterations=30, tol=0.0, min_xstep=0.0))
            ours, theirs = runs
            assert ours.iterations == theirs.iterations == 30
            exact = weight is not None
            np.testing.assert_allclose(ours.L, theirs.L, rtol=0 if exact else 1e-10)
            np.testing.assert_allclose(ours.R, theirs.R, rtol=0 if exact else 1e-10)
            assert float(ours.objective) == pytest.approx(float(theirs.objective), rel=1e-12)
    assert isinstance(jnmf.NMF(solver="mu")._rule(2.0), FrobeniusMU)


def test_computed_where_stays_a_cond_in_a_batch():
    """computed_where (the mu test's costly objective, every 10 iterations): f's value
    where pred holds; vmapped over fits with their own predicates it is still ONE
    lax.cond (on any fit's predicate), not a select that evaluates f for every fit, and
    the zeros come back when no fit needs f."""
    from jnmf.estimator import computed_where

    f = lambda A, x: jnp.sum(A @ x) * x
    A, xs = jnp.arange(9.0).reshape(3, 3), jnp.arange(12.0).reshape(4, 3)
    batched = jax.vmap(lambda p, x: computed_where(p, f, A, x))
    preds = jnp.array([True, False, True, False])
    out = batched(preds, xs)
    expected = jax.vmap(lambda x: f(A, x))(xs)
    np.testing.assert_allclose(out[preds], expected[preds])
    np.testing.assert_array_equal(batched(jnp.zeros(4, bool), xs), 0.0)
    assert "cond[" in str(jax.make_jaxpr(batched)(preds, xs))
    plain = jax.vmap(lambda p, x: jax.lax.cond(p, lambda: f(A, x), lambda: jnp.zeros(3)))
    assert "cond[" not in str(jax.make_jaxpr(plain)(preds, xs))  # what it avoids
    assert float(computed_where(jnp.array(True), f, A, xs[1])[0]) == float(f(A, xs[1])[0])


def test_mu_test_runs_inside_one_compiled_loop(monkeypatch, capsys):
    """solver="mu" (and every solver but cd) applies scikit-learn's every-10-iterations
    test inside the compiled loop: a fit enters the loop program once (one fit: the
    unbatched loop; restarts: the batched one), not once per test; a new tol compiles
    nothing; verbose, which prints each test's error from a host loop of 10-iteration
    chunks, stops at the same iteration with the same factors.  Missing values (a costly
    masked objective, evaluated at the tests only) stop the same way.  Float64."""
    X, fit, calls, model, W, compiled = _watched_fits(monkeypatch, "mu")
    assert 20 <= model.n_iter_ < 600 and model.n_iter_ % 10 == 0
    assert calls == ["iterate"]
    assert not compiled
    calls.clear()
    loud, W_loud = fit(1e-3, verbose=1)
    assert len(calls) == model.n_iter_ // 10  # one chunk per test, to print it
    assert loud.n_iter_ == model.n_iter_
    np.testing.assert_array_equal(W_loud, W)
    out = capsys.readouterr().out
    assert f"Epoch {model.n_iter_:02d}" in out and f"Converged at iteration {model.n_iter_}" in out
    # the error printed at the last test is the data's (scikit-learn's), not the scaled problem's
    printed = float(out.split(f"Epoch {model.n_iter_:02d}")[1].split("error: ")[1].split()[0])
    assert printed == pytest.approx(np.linalg.norm(X - W @ model.components_), rel=1e-5)
    calls.clear()
    batch, _ = fit(1e-3, restarts=2)
    assert calls == ["continue_restarts"]
    assert batch.n_iter_ == model.n_iter_  # both restarts start from the custom start
    Xn = X.copy()
    Xn[np.random.default_rng(1).random(X.shape) < 0.1] = np.nan
    gaps = dict(n_components=5, solver="cd", tol=1e-3, max_iter=600, missing="nan", random_state=0)
    quiet = jnmf.NMF(**gaps)
    W_gaps = quiet.fit_transform(Xn)
    assert 20 <= quiet.n_iter_ < 600 and quiet.n_iter_ % 10 == 0
    noisy = jnmf.NMF(**gaps, verbose=1)
    np.testing.assert_array_equal(noisy.fit_transform(Xn), W_gaps)
    assert noisy.n_iter_ == quiet.n_iter_


# ----------------------------------------------------------------------- seeded starts


@pytest.mark.parametrize("init", ["random", "nndsvd", "nndsvda", "nndsvdar"])
def test_seeded_start_is_scikit_learns(init):
    """The first restart starts exactly where scikit-learn's NMF does for the same init and
    random_state (dense float64 and float32, sparse), so a seeded fit is scikit-learn's
    fit: with solver="cd" the same iteration count and error (float64, X's own precision).
    A user reproducing scikit-learn's seeded run needs no init="custom"."""
    import scipy.sparse as sp
    from sklearn.decomposition import NMF as SkNMF
    from sklearn.decomposition._nmf import _initialize_nmf  # the reference, in the test only

    from jnmf.estimator import scikit_learn_start

    rng = np.random.default_rng(4)
    X = rng.random((60, 6)) @ rng.random((6, 40)) + 0.2 * rng.random((60, 40))
    for data in (X, X.astype(np.float32), sp.csr_matrix(X)):
        W_sk, H_sk = _initialize_nmf(data, 6, init=init, random_state=3)
        W, H = scikit_learn_start(data, 6, init, 3)
        assert W.dtype == W_sk.dtype and H.dtype == H_sk.dtype
        np.testing.assert_array_equal(W, W_sk)
        np.testing.assert_array_equal(H, H_sk)
    settings = dict(n_components=6, solver="cd", init=init, tol=1e-3, max_iter=600, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours, theirs = jnmf.NMF(**settings).fit(X), SkNMF(**settings).fit(X)
    if init != "nndsvdar":  # from nndsvdar's tiny fills scikit-learn runs to the cap here
        assert theirs.n_iter_ < 600
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.reconstruction_err_ == pytest.approx(theirs.reconstruction_err_, rel=1e-9)
