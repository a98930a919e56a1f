"""Named penalties, replacement semantics, sweeps of any numeric leaf, derived terms
that cannot go stale, the dtype policy and keys (float64 unless a test says otherwise;
x64 is enabled in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnmf
from jnmf.problem import build_problem

M, N, K = 12, 9, 3

# Short fits on purpose: hitting the iteration cap is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::jnmf.ConvergenceWarning")


def _data(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((M, K)) @ rng.random((K, N)) + 0.05 * rng.random((M, N))).astype(dtype)


def _factors(seed=1):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.random((M, K))), jnp.asarray(rng.random((K, N)))


def test_penalties_are_named_leaves():
    p = build_problem(jnp.asarray(_data()), K, lambda_1L=0.1, lambda_2R=0.2, gamma_2L=0.3, W_1R=0.4)
    assert float(p.penalty_L.lambda_1) == pytest.approx(0.1)
    assert float(p.penalty_R.lambda_2) == pytest.approx(0.2)
    assert float(p.penalty_L.gamma_2) == pytest.approx(0.3)
    assert float(p.penalty_R.W_1) == pytest.approx(0.4)
    assert float(p.penalty_R.l1()) == pytest.approx(0.4)  # W_1R + lambda_1R


def test_replace_replaces_and_never_adds():
    """Every replaceable name replaces the base value: the objective after replace equals
    that of a problem built with the new value directly."""
    Y = jnp.asarray(_data())
    L, R = _factors()
    base = build_problem(Y, K, lambda_1L=0.7, lambda_2L=0.5, gamma_2R=0.2, W_1R=0.3)
    new = dict(lambda_1L=0.1, lambda_1R=0.2, lambda_2L=0.3, lambda_2R=0.4, gamma_2L=0.5, gamma_2R=0.6)
    direct = build_problem(Y, K, W_1R=0.3, **new)
    np.testing.assert_allclose(base.replace(**new).objective(L, R), direct.objective(L, R), rtol=1e-12)
    W1 = np.random.default_rng(3).random((M, K))
    np.testing.assert_allclose(
        base.replace(W_1L=W1).objective(L, R),
        build_problem(Y, K, lambda_1L=0.7, lambda_2L=0.5, gamma_2R=0.2, W_1R=0.3, W_1L=W1).objective(L, R),
        rtol=1e-12,
    )


def test_replace_rejects_unknown_and_misshaped():
    p = build_problem(jnp.asarray(_data()), K)
    with pytest.raises(ValueError, match="cannot replace"):
        p.replace(lambda_3L=1.0)
    with pytest.raises(ValueError, match="lambda_2L must be a scalar"):
        p.replace(lambda_2L=np.ones(3))
    with pytest.raises(ValueError, match="W_0R must have size"):
        p.replace(W_0R=np.ones(M + 1))


def test_derived_terms_follow_replaced_weights():
    """The products with W_0R Y W_0C and the constant of eq. 7 are derived from the current
    leaves, so a replaced loss weight changes them (they were stored, and could go stale,
    before); the cached constant is dropped by replace."""
    Y = jnp.asarray(_data())
    p = build_problem(Y, K)
    w = jnp.linspace(0.5, 2.0, M)
    q = p.replace(W_0R=w)
    R = jnp.asarray(np.random.default_rng(0).random((K, Y.shape[1])))
    np.testing.assert_allclose(q.data_product_L(R), R @ (w[:, None] * Y).T, rtol=1e-13)
    np.testing.assert_allclose(q.half_data_norm, 0.5 * jnp.sum(w[:, None] * Y * Y), rtol=1e-14)
    prepared = p.prepared()
    assert prepared.constant is not None and prepared.replace(W_0R=w).constant is None
    np.testing.assert_allclose(prepared.replace(W_0R=w).prepared().half_data_norm, q.half_data_norm)


def test_sweep_replaces_lambda_1():
    """The README's example: a swept lambda_1L is the L1 weight used, not added to a base."""
    Y = _data()
    kw = dict(max_iterations=30, tol=0.0, key=0, method="hals")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
        sw = jnmf.sweep(Y, K, {"lambda_1L": [0.0, 0.5]}, **kw)
        one = jnmf.fit(Y, K, lambda_1L=0.5, **kw)
    np.testing.assert_allclose(sw.objectives[1, 0], one.objective, rtol=1e-10)
    with pytest.raises(ValueError, match="both in grid"):
        jnmf.sweep(Y, K, {"lambda_1L": [0.0, 0.5]}, lambda_1L=0.1)


def test_sweep_elementwise_l1_and_diagonal_weights():
    """sweep varies W_1L (elementwise L1 matrices) and W_0R (diagonal loss weights); each
    setting equals a single fit with that value."""
    Y = _data()
    rng = np.random.default_rng(4)
    W1s = [np.zeros((M, K)), rng.random((M, K))]
    w0s = [np.ones(M), np.linspace(0.2, 2.0, M)]
    kw = dict(max_iterations=25, tol=0.0, key=1, method="mu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
        sw = jnmf.sweep(Y, K, {"W_1L": W1s, "W_0R": w0s}, **kw)
        assert sw.objectives.shape == (4, 1)
        for g in range(4):
            single = jnmf.fit(Y, K, W_1L=sw.settings["W_1L"][g], W_0R=sw.settings["W_0R"][g], **kw)
            np.testing.assert_allclose(sw.objectives[g, 0], single.objective, rtol=1e-9)
    assert len({round(float(o), 6) for o in sw.objectives[:, 0]}) == 4  # the values mattered
    with pytest.raises(ValueError, match="W_1L"):
        jnmf.sweep(Y, K, {"W_1L": [np.zeros((M, K + 1))]})


def test_integer_input_is_converted():
    Yi = np.random.default_rng(0).integers(0, 5, size=(M, N))
    res = jnmf.fit(Yi, K, max_iterations=50, tol=1e-2)
    assert jnp.issubdtype(res.L.dtype, jnp.floating)
    assert np.isfinite(res.objective)


def test_half_precision_is_computed_in_float32():
    Y = _data(np.float32)
    for dt in (np.float16, jnp.bfloat16):
        res = jnmf.fit(np.asarray(Y).astype(dt), K, max_iterations=50, tol=1e-2)
        assert res.L.dtype == jnp.float32


def test_float64_without_x64_warns_once():
    """With x64 off (a fresh process), float64 input is computed in float32 with ONE
    warning that says how to get float64."""
    code = (
        "import warnings, numpy as np, jnmf\n"
        "Y = np.random.default_rng(0).random((8, 6))\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    a = jnmf.fit(Y, 2, max_iterations=5, tol=0.0)\n"
        "    b = jnmf.fit(Y, 2, max_iterations=5, tol=0.0)\n"
        "msgs = [str(x.message) for x in w if 'float64' in str(x.message)]\n"
        "print(a.L.dtype, len(msgs), 'jax_enable_x64' in msgs[0])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["float32", "1", "True"]


@pytest.mark.parametrize(
    "key", [7, np.int64(7), jax.random.key(7), np.random.default_rng(7), jax.random.PRNGKey(7)]
)
def test_keys_accept_seeds_keys_and_generators(key):
    res = jnmf.fit(_data(), K, key=key, max_iterations=20, tol=0.0, restarts=2)
    assert np.all(np.isfinite(res.objectives))


def test_int_seed_is_the_same_as_its_key():
    a = jnmf.fit(_data(), K, key=11, max_iterations=20, restarts=2)
    b = jnmf.fit(_data(), K, key=jax.random.key(11), max_iterations=20, restarts=2)
    np.testing.assert_array_equal(a.L, b.L)


def test_bad_key_is_rejected():
    with pytest.raises(ValueError, match="key"):
        jnmf.fit(_data(), K, key="seven")


def test_float32_front_doors_can_converge():
    """rnnmf's absolute min_xstep=1e-9 is below float32's rounding noise; the driver's
    threshold max(min_xstep, 4 eps max|X|) lets float32 runs converge (they never did),
    with steps at the noise floor, while float64 keeps rnnmf's exact test."""
    rng = np.random.default_rng(0)
    for _ in range(3):  # the third draw converges within the cap in both precisions
        Y = rng.random((30, 3)) @ rng.random((3, 20))
        L0, R0 = 1 - rng.random((30, 3)), 1 - rng.random((3, 20))
    f32 = [np.asarray(a, np.float32) for a in (Y, L0, R0)]
    for front_door in (jnmf.murnmf, jnmf.aurnmf):
        res = front_door(*f32, max_iterations=20000)
        assert res.status_name == "converged", front_door.__name__
        floor = 4 * np.finfo(np.float32).eps * max(float(jnp.max(res.L)), float(jnp.max(res.R)))
        assert float(jnp.max(res.steps)) < max(1e-9, floor)
        exact = front_door(Y, L0, R0, max_iterations=20000)  # float64: rnnmf's own test
        assert exact.status_name == "converged" and float(jnp.max(exact.steps)) < 1e-9
