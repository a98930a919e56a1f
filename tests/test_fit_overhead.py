"""A fit's fixed cost (issue 15, one ORL fit): what was made cheaper keeps its meaning.

* the driver's start objective is the rule's cheap form (one product with Y,
  ``AlternatingRule.start_objective``) where the rule's objective is eq. 3, the rule's own
  objective otherwise, and equals eq. 3 from the residual (float64, to 1e-12);
* host scalars put on the device once (``_validate.on_device``) keep their bits, weak
  types and dtypes, and a deleted (donated) one is put again;
* ``make_rule`` returns one rule per name, per x64 mode;
* a Fortran-ordered Y goes to the device as its transpose (``data.TransposedDense``, no
  host transpose), and every operator method and every rule's fit equal those of the
  C-ordered Y (float64, to 1e-12);
* the host value checks' maximum serves as the data scale only for the array they just
  checked, once.

x64 is on (conftest.py): the float64 comparisons are exactness tests.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnmf
from jnmf import _validate as check
from jnmf.data import DenseData, TransposedDense, dense_operator
from jnmf.problem import build_problem
from jnmf.rules import HALS, KLMU, MURNMF, make_rule
from jnmf.weights import Weight

CHEAP_PROGRAMS = True

rng = np.random.default_rng(3)
M, N, K = 30, 20, 4
Y = rng.random((M, N))
L0 = rng.random((M, K))
R0 = rng.random((K, N))


@pytest.mark.parametrize(
    "rule, penalties",
    [
        (MURNMF(), {}),
        (HALS(inner_sweeps=None, extrapolate=True), {"lambda_1L": 0.3, "lambda_2R": 0.2}),
        (HALS(), {"W_0R": np.linspace(0.5, 2.0, M), "gamma_2L": 0.1}),
    ],
)
def test_start_objective_is_eq3_in_float64(rule, penalties):
    problem = build_problem(jnp.asarray(Y), K, **penalties).prepared()
    state = rule.init(problem, jnp.asarray(L0), jnp.asarray(R0))
    cheap = float(rule.start_objective(problem, state))
    exact = float(rule.objective(problem, state))
    assert cheap == pytest.approx(exact, rel=1e-12)


def test_start_objective_of_a_rule_with_its_own_objective():
    # KL's objective is not eq. 3: the driver's start objective is the rule's own
    problem = build_problem(jnp.asarray(Y), K).prepared()
    rule = KLMU()
    state = rule.in_loop(problem, rule.init(problem, jnp.asarray(L0), jnp.asarray(R0)))
    assert float(rule.start_objective(problem, state)) == float(rule.objective(problem, state))
    eq3 = float(problem.objective(jnp.asarray(L0), jnp.asarray(R0)))
    assert float(rule.start_objective(problem, state)) != pytest.approx(eq3, rel=1e-3)


def test_masked_start_objective_is_the_exact_one():
    mask = (rng.random((M, N)) > 0.3).astype(float)
    problem = build_problem(jnp.asarray(Y), K, M=jnp.asarray(mask)).prepared()
    rule = HALS()
    state = rule.init(problem, jnp.asarray(L0), jnp.asarray(R0))
    assert float(rule.start_objective(problem, state)) == float(rule.objective(problem, state))


def test_device_scalars_keep_bits_types_and_dtypes():
    zero, negative_zero = check.on_device(0.0), check.on_device(-0.0)
    assert not np.signbit(np.asarray(zero)) and np.signbit(np.asarray(negative_zero))
    assert np.isnan(np.asarray(check.on_device(float("nan"))))
    weak, typed = check.on_device(0.5), check.on_device(0.5, jnp.float32)
    assert weak.weak_type and not typed.weak_type
    assert typed.dtype == jnp.float32 and check.on_device(0.5, jnp.float64).dtype == jnp.float64
    assert check.on_device(True).dtype == jnp.bool_ and check.on_device(1).dtype == jnp.int64
    # the same scalar twice: one device array
    assert check.on_device(0.25, jnp.float32) is check.on_device(np.float32(0.25))


def test_a_deleted_device_scalar_is_put_again():
    x = check.on_device(0.125, jnp.float32)
    x.delete()
    y = check.on_device(0.125, jnp.float32)
    assert y is not x and float(y) == 0.125


def test_device_scalars_follow_the_x64_mode():
    assert check.on_device(0.1).dtype == jnp.float64
    with jax.enable_x64(False):
        assert check.on_device(0.1).dtype == jnp.float32
        rule32 = make_rule("ahals")
        assert rule32.delta.dtype == jnp.float32
    rule64 = make_rule("ahals")
    assert rule64.delta.dtype == jnp.float64 and float(rule64.delta) == 0.1
    assert make_rule("ahals") is rule64 and make_rule("hals") is not rule64


def test_fortran_ordered_data_goes_to_the_device_transposed():
    Yf = np.asfortranarray(Y)
    op = dense_operator(Yf)
    assert isinstance(op, TransposedDense) and op.shape == (M, N)
    assert op.Yt.shape == (N, M)
    np.testing.assert_array_equal(np.asarray(op.Y), Y)
    np.testing.assert_array_equal(np.asarray(op.dense()), Y)
    assert isinstance(dense_operator(np.ascontiguousarray(Y)), DenseData)
    assert isinstance(dense_operator(Y[:, :1].copy(order="F")), DenseData)  # C- and F-ordered alike


def _weights():
    w, v = np.linspace(0.5, 2.0, M), np.linspace(1.5, 0.2, N)
    A = rng.random((M, M))
    B = rng.random((N, N))
    return [
        (Weight.identity(), Weight.identity()),
        (Weight.scalar(2.0), Weight.offdiag(0.3)),
        (Weight.from_user(jnp.asarray(w)), Weight.from_user(jnp.asarray(v))),
        (Weight.from_user(jnp.asarray(A @ A.T)), Weight.from_user(jnp.asarray(B @ B.T))),
    ]


def test_transposed_operator_equals_the_dense_one_in_float64():
    dense = DenseData(jnp.asarray(Y)).scaled(3.0)
    flipped = TransposedDense(jnp.asarray(np.ascontiguousarray(Y.T))).scaled(3.0)
    L, R = jnp.asarray(L0), jnp.asarray(R0)
    close = dict(rtol=1e-12, atol=0)
    np.testing.assert_allclose(flipped.product_R(L.T), dense.product_R(L.T), **close)
    np.testing.assert_allclose(flipped.product_L(R), dense.product_L(R), **close)
    for W_0R, W_0C in _weights():
        np.testing.assert_allclose(flipped.half_norm(W_0R, W_0C), dense.half_norm(W_0R, W_0C), **close)
        np.testing.assert_allclose(flipped.loss(L, R, W_0R, W_0C), dense.loss(L, R, W_0R, W_0C), **close)
    np.testing.assert_allclose(flipped.maximum(), dense.maximum(), **close)
    np.testing.assert_allclose(flipped.mean(), dense.mean(), **close)
    # the stored entries are in Yt's order, consistently across the four methods
    w, v = jnp.linspace(0.5, 2.0, M), jnp.linspace(1.5, 0.2, N)
    np.testing.assert_array_equal(flipped.stored().T, dense.stored())
    np.testing.assert_allclose(flipped.sampled(L.T, R).T, dense.sampled(L.T, R), **close)
    np.testing.assert_array_equal(flipped.entry_weights(w, v).T, dense.entry_weights(w, v))
    twice, twice_dense = flipped.with_stored(flipped.stored() * 2.0), dense.with_stored(dense.stored() * 2.0)
    np.testing.assert_allclose(twice.product_L(R), twice_dense.product_L(R), **close)
    block = flipped.row_block(5, 17)
    assert block.shape == (12, N)
    np.testing.assert_allclose(block.product_L(R), dense.row_block(5, 17).product_L(R), **close)


@pytest.mark.filterwarnings("ignore::jnmf.ConvergenceWarning")  # capped on purpose
@pytest.mark.parametrize("method", ["ahals", "hals", "mu", "au", "kl", "beta", "anls"])
def test_a_fit_of_fortran_ordered_data_equals_the_c_ordered_one(method):
    kw = dict(method=method, init=(L0, R0), max_iterations=6, tol=0.0, history_size=1, lambda_1R=0.1)
    a = jnmf.fit(np.ascontiguousarray(Y), K, **kw)
    b = jnmf.fit(np.asfortranarray(Y), K, **kw)
    assert int(a.iterations) == int(b.iterations) == 6
    np.testing.assert_allclose(b.objective, a.objective, rtol=1e-12)
    np.testing.assert_allclose(b.L, a.L, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.R, a.R, rtol=1e-9, atol=1e-12)


def test_the_data_scale_is_the_value_checks_maximum():
    # the host checks' max serves fit's data scale once, for the array they just checked
    Yc = np.array(Y)
    checked = check.data("Y", Yc)
    assert check.checked_maximum(checked) == float(Y.max())
    assert check.checked_maximum(checked) is None  # forgotten once asked for
    check.data("Y", Yc)
    assert check.checked_maximum(np.array(Y)) is None  # another array: not trusted
    Yc[0, 0] = 7.5  # changed after its check: the scale is max(Y) again
    assert jnmf.fitting.data_scale(Yc) == 7.5
    check.data("Y", Yc)
    assert jnmf.fitting.data_scale(Yc) == 7.5
    assert jnmf.fitting.data_scale(np.zeros((2, 2))) == 1.0
