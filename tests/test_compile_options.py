"""Per-program XLA options (jnmf.compile_options): which program gets which options, and
that a fit's results do not depend on them beyond rounding (float64; x64 is on in
conftest.py)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnmf
from jnmf import _validate, batch, compile_options
from jnmf.compile_options import CHEAP_OPTIONS, SMALL_LOOP_ENTRIES, loop_options, small_loop
from jnmf.rules import HALS, KLMU, MURNMF, make_rule

on_cpu = pytest.mark.skipif(jax.default_backend() != "cpu", reason="per-program options are for XLA:CPU")


def test_small_loop_size_from_the_environment(monkeypatch):
    """JNMF_SMALL_LOOP_ENTRIES overrides the size: 0 compiles every loop optimized."""
    monkeypatch.setenv("JNMF_SMALL_LOOP_ENTRIES", "0")
    assert not small_loop(1000, 500, 10, 1)
    assert loop_options(make_rule("mu"), 1000, 500, 10, 1) is None
    monkeypatch.setenv("JNMF_SMALL_LOOP_ENTRIES", "60000")
    assert small_loop(1000, 500, 10, 4)


def test_small_loop_counts_every_fit_and_both_factors():
    assert small_loop(1000, 500, 10, 1)  # 15,000 factor entries
    assert not small_loop(1000, 500, 10, 2)
    assert not small_loop(1000, 500, 11, 1)
    side = SMALL_LOOP_ENTRIES // 2
    assert small_loop(side, side, 1, 1) and not small_loop(side, side + 1, 1, 1)


def test_loop_options_add_a_rules_small_options_only_when_small():
    assert loop_options(MURNMF(), 1000, 500, 10, 1) == CHEAP_OPTIONS
    assert loop_options(MURNMF(), 5000, 2000, 20, 1) is None  # XLA's defaults: as before
    assert loop_options(KLMU(), 100, 80, 5, 1) is None  # KL's iteration is elementwise over Y

    class Base:  # a rule with options of its own keeps them, and small ones go on top
        compiler_options = {"xla_cpu_use_fusion_emitters": False}
        small_compiler_options = {"xla_backend_optimization_level": 0}

    assert loop_options(Base(), 5000, 2000, 20, 1) == {"xla_cpu_use_fusion_emitters": False}
    both = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}
    assert loop_options(Base(), 100, 80, 5, 3) == both
    assert loop_options(object(), 10, 10, 2, 1) is None


@on_cpu
def test_for_rule_picks_by_shape_and_fits():
    rule = MURNMF()
    small = jnmf.build_problem(jnp.ones((60, 40)), 3)
    big = jnmf.build_problem(jnp.ones((600, 400)), 20)  # 20,000 entries: XLA's defaults
    states = batch.initial_states(rule, small, jnp.ones((2, 60, 3)), jnp.ones((2, 3, 40)))
    cheap = batch._restarts_programs(CHEAP_OPTIONS)
    assert batch._for_rule(batch._restarts_programs, rule, small, states) is cheap
    big_states = batch.initial_states(rule, big, jnp.ones((1, 600, 20)), jnp.ones((1, 20, 400)))
    assert batch._for_rule(batch._restarts_programs, rule, big, big_states) is batch._restarts
    # a grid multiplies the fits: 600 x 400 at rank 3 is small alone, not with 20 settings
    mid = jnmf.build_problem(jnp.ones((600, 400)), 3)
    mid_states = batch.initial_states(rule, mid, jnp.ones((1, 600, 3)), jnp.ones((1, 3, 400)))
    assert batch._for_rule(batch._restarts_programs, rule, mid, mid_states) is cheap
    grid = batch._for_rule(batch._grid_programs, rule, mid, mid_states, settings=20)
    assert grid is batch._grid_programs(None)


@on_cpu
@pytest.mark.optimized_programs  # against XLA's default compilation, as users get it
@pytest.mark.parametrize("method", ["ahals", "mu", "anls"])
def test_small_options_fit_as_xla_defaults(method):
    """A small problem's loop compiled cheaply fits as with XLA's defaults (float64, to
    rounding; same iterations)."""
    cls = type(jnmf.make_rule(method))
    Y = np.random.default_rng(4).uniform(0, 2, (40, 30))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
        cheap = jnmf.fit(Y, 4, method=method, key=2, restarts=2, max_iterations=40)
        original = cls.small_compiler_options
        try:
            cls.small_compiler_options = None
            default = jnmf.fit(Y, 4, method=method, key=2, restarts=2, max_iterations=40)
        finally:
            cls.small_compiler_options = original
    assert cls.small_compiler_options == CHEAP_OPTIONS
    np.testing.assert_array_equal(cheap.all_iterations, default.all_iterations)
    np.testing.assert_allclose(cheap.objectives, default.objectives, rtol=1e-10)
    np.testing.assert_allclose(cheap.L, default.L, rtol=1e-7, atol=1e-10)


def test_initial_states_program_matches_op_by_op():
    """The starting states come from one program (extrapolated HALS: its start objective too)."""
    rng = np.random.default_rng(5)
    problem = jnmf.build_problem(jnp.asarray(rng.random((20, 12))), 3, lambda_1L=0.2)
    L0, R0 = jnp.asarray(rng.random((2, 20, 3))), jnp.asarray(rng.random((2, 3, 12)))
    rule = HALS(extrapolate=True)
    compiled = batch.initial_states(rule, problem, L0, R0)
    with jax.disable_jit():
        eager = jax.vmap(lambda L, R: rule.init(problem, L, R))(L0, R0)
    for a, b in zip(jax.tree.leaves(compiled), jax.tree.leaves(eager)):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-12)


def _compiles(fun):
    seen = []
    listener = lambda event, seconds, **kw: seen.append(event)  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        out = fun()
    finally:
        jax._src.monitoring.unregister_event_duration_listener(listener)
    return out, sum(e == "/jax/core/compile/backend_compile_duration" for e in seen)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_times_on_host_is_exact_and_compiles_nothing(dtype):
    x = jnp.asarray(np.random.default_rng(6).random(7) * 3, dtype)
    c = _validate.on_device(0.37, dtype)
    expected = x * c
    got, compiled = _compiles(lambda: _validate.times(x, c))
    assert compiled == 0 and got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    # traced values take JAX's product
    traced = jax.jit(_validate.times)(x, c)
    np.testing.assert_array_equal(traced, expected)


# Option names that an XLA release is known to have dropped (jaxlib 0.11 no longer knows
# the fusion-emitter switch that jaxlib 0.10 needs); any other name XLA refuses is a typo.
RETIRED_OPTIONS = {"xla_cpu_use_fusion_emitters"}


def test_option_sets_are_valid_xla_options():
    """XLA rejects an unknown option name when compiling: every name in every set is
    known to this XLA or a known retired name, and every set compiles through
    programs_by_options (which drops what this XLA refuses)."""
    for options in (CHEAP_OPTIONS, compile_options.ONCE_OPTIONS, jnmf.fitting.DRAW_COMPILER_OPTIONS):
        for name, value in options.items():
            try:
                jax.jit(lambda x: x + 1, compiler_options={name: value})(jnp.float32(1.0))
            except Exception as error:  # noqa: BLE001 - the release's runtime error class
                assert compile_options.refused_option(error) == name and name in RETIRED_OPTIONS, error
        out = compile_options.programs_by_options(lambda x: x * 2 + 1)(options)(jnp.arange(3.0))
        np.testing.assert_array_equal(out, [1.0, 3.0, 5.0])


def test_an_option_this_xla_refuses_is_dropped_not_fatal(monkeypatch):
    """A renamed or removed XLA option (as jaxlib 0.11 removed one jaxlib 0.10 needs) costs
    compile time, never the fit: the program compiles without it, and later programs skip
    it (float64)."""
    bogus = "xla_cpu_jnmf_test_option_that_does_not_exist"
    program = compile_options.programs_by_options(lambda x: x * 2 + 1)
    asked = {bogus: True, "xla_backend_optimization_level": 0}
    np.testing.assert_array_equal(program(asked)(jnp.arange(3.0)), [1.0, 3.0, 5.0])
    assert bogus in compile_options._REFUSED
    assert compile_options.known_options(asked) == {"xla_backend_optimization_level": 0}
    # a whole fit whose loop asks for another unknown option gives the fit without it
    Y = jnp.asarray(np.random.default_rng(3).random((30, 20)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
        want = jnmf.fit(Y, 3, method="hals", max_iterations=20, key=1)
        monkeypatch.setattr(HALS, "small_compiler_options", {bogus + "_2": True, **CHEAP_OPTIONS})
        got = jnmf.fit(Y, 3, method="hals", max_iterations=20, key=1)
    assert bogus + "_2" in compile_options._REFUSED
    np.testing.assert_allclose(np.asarray(got.L), np.asarray(want.L), rtol=1e-10, atol=1e-12)
    assert int(got.iterations) == int(want.iterations)
    # any other compile error still reaches the caller
    assert compile_options.refused_option(ValueError("shapes do not match")) is None


@on_cpu
def test_iterate_and_the_estimator_wrappers_take_the_loop_options():
    from jnmf import driver
    from jnmf.estimator import ErrorTestRule, FixedRRule, ViolationRule

    rule = HALS()
    small = jnmf.build_problem(jnp.ones((60, 40)), 3)
    state = rule.init(small, jnp.ones((60, 3)), jnp.ones((3, 40)))
    assert driver._iterate_for(rule, small, state) is driver._iterate_programs(CHEAP_OPTIONS)
    big = jnmf.build_problem(jnp.ones((600, 400)), 20)
    big_state = rule.init(big, jnp.ones((600, 20)), jnp.ones((20, 400)))
    assert driver._iterate_for(rule, big, big_state) is driver._iterate
    assert ViolationRule(rule).small_compiler_options == CHEAP_OPTIONS
    assert ErrorTestRule(FixedRRule(rule)).small_compiler_options == CHEAP_OPTIONS
    assert ErrorTestRule(rule).method_name == "hals"  # the wrapped rule's batching strategy
    assert FixedRRule(KLMU()).small_compiler_options is None
    assert loop_options(ViolationRule(rule), 60, 40, 3, 1) == CHEAP_OPTIONS
