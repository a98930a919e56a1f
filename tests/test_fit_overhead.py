"""A fit's fixed cost (issue 15, one ORL fit): what was made cheaper keeps its meaning.

* the driver's start objective is the rule's cheap form (one product with Y,
  ``AlternatingRule.start_objective``) where the rule's objective is eq. 3, the rule's own
  objective otherwise, and equals eq. 3 from the residual (float64, to 1e-12);
* host scalars put on the device once (``_validate.on_device``) keep their bits, weak
  types and dtypes, and a deleted (donated) one is put again;
* ``make_rule`` returns one rule per name, per x64 mode.

x64 is on (conftest.py): the float64 comparisons are exactness tests.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnmf import _validate as check
from jnmf.problem import build_problem
from jnmf.rules import HALS, KLMU, MURNMF, make_rule

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
