"""ProjectedGradient: alternating optax steps projected onto the non-negative orthant."""

# Exactness tests run in float64 (x64 is switched on in conftest.py); the float32
# robustness test builds float32 arrays explicitly.
import subprocess
import sys

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given, settings
from hypothesis import strategies as st

from jnmf.driver import iterate
from jnmf.problem import Problem
from jnmf.rules.projected import ProjectedGradient
from jnmf.weights import Weight

M, N, K = 9, 7, 3  # fixed shapes: one compilation per problem layout and optimizer
ITERS = 40
LR_SGD = 1e-3  # below 1 / ||G|| of both half problems for data in [0, 10] at these shapes
SGD = ProjectedGradient(optax.sgd(LR_SGD))  # optimizers are static: build each once
ADAM = ProjectedGradient(optax.adam(1e-2))
SETTINGS = settings(max_examples=12, deadline=None)

data = hnp.arrays(np.float64, (M, N), elements=st.one_of(st.just(0.0), st.floats(1e-4, 10.0)))
penalty = st.floats(0.0, 1.0)
seeds = st.integers(0, 2**31 - 1)


def start(seed: int, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.uniform(0.1, 1.0, (M, K)), dtype),
        jnp.asarray(rng.uniform(0.1, 1.0, (K, N)), dtype),
    )


def run(rule, problem, L, R, iters=ITERS):
    """Exactly ``iters`` iterations (every stopping test off)."""
    return iterate(
        rule,
        problem,
        rule.init(problem, L, R),
        max_iterations=iters,
        min_xstep=0.0,
        tol=0.0,
        history_size=iters,
    )


def test_sgd_step_is_alternating_projected_gradient():
    """One step: L <- max(L - a dL(L, R), 0), then R <- max(R - a dR(L_new, R), 0), every penalty."""
    rng = np.random.default_rng(0)
    Y = jnp.asarray(rng.uniform(0, 3, (M, N)))
    A = rng.uniform(0, 0.2, (M, M))
    problem = Problem.from_scalars(
        Y, W_0R=jnp.asarray(A + A.T + np.eye(M)), lambda_1L=0.1, lambda_2R=0.2, gamma_2L=0.1, gamma_2R=0.05
    )
    L, R = start(1)
    state, info = SGD.step(problem, SGD.init(problem, L, R))
    gL, _ = problem.gradients(L, R)
    L_ref = np.maximum(L - LR_SGD * gL, 0.0)
    _, gR = problem.gradients(L_ref, R)
    R_ref = np.maximum(R - LR_SGD * gR, 0.0)
    np.testing.assert_allclose(state.L, L_ref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(state.R, R_ref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(info.objective, problem.objective(L_ref, R_ref), rtol=1e-11)
    np.testing.assert_allclose(info.steps, [np.max(np.abs(L_ref - L)), np.max(np.abs(R_ref - R))], rtol=1e-12)


@SETTINGS
@given(data, penalty, penalty, penalty, seeds)
def test_sgd_small_step_is_monotone(Y, l1, l2, gamma, seed):
    problem = Problem.from_scalars(
        jnp.asarray(Y), lambda_1L=l1, lambda_1R=l1, lambda_2L=l2, lambda_2R=l2, gamma_2L=gamma, gamma_2R=gamma
    )
    L, R = start(seed)
    res = run(SGD, problem, L, R)
    h = np.concatenate([[float(problem.objective(L, R))], np.asarray(res.history)])
    assert np.all(np.isfinite(h))
    assert np.all(np.diff(h) <= 1e-10 * (1.0 + np.abs(h[:-1])))
    assert np.all(np.asarray(res.L) >= 0) and np.all(np.asarray(res.R) >= 0)


@SETTINGS
@given(data, penalty, seeds)
def test_adam_decreases_overall(Y, l1, seed):
    problem = Problem.from_scalars(jnp.asarray(Y), lambda_1L=l1, lambda_2R=l1)
    L, R = start(seed)
    res = run(ADAM, problem, L, R, iters=200)
    f0 = float(problem.objective(L, R))
    h = np.asarray(res.history)
    assert np.all(np.isfinite(h))
    assert h[-1] <= f0 and np.mean(h[-20:]) <= np.mean(h[:20]) + 1e-12
    np.testing.assert_allclose(res.objective, problem.objective(res.L, res.R), rtol=1e-8, atol=1e-10)
    assert np.all(np.asarray(res.L) >= 0) and np.all(np.asarray(res.R) >= 0)


def test_general_weights_objective_is_exact():
    rng = np.random.default_rng(2)
    B = rng.uniform(0, 0.3, (K, K))
    problem = Problem.from_scalars(
        jnp.asarray(rng.uniform(0, 3, (M, N))),
        W_0C=jnp.asarray(rng.uniform(0.5, 1.5, N)),
        W_1R=jnp.asarray(rng.uniform(0, 0.2, (K, N))),
        W_2L=((Weight.scalar(0.1), Weight.from_user(jnp.asarray(B + B.T + np.eye(K)))),),
    )
    L, R = start(3)
    state = SGD.init(problem, L, R)
    for _ in range(3):
        state, info = SGD.step(problem, state)
        np.testing.assert_allclose(info.objective, problem.objective(state.L, state.R), rtol=1e-11)


def test_zero_rows_and_columns_float32_no_nan():
    rng = np.random.default_rng(8)
    Y = rng.uniform(0, 3, (M, N)).astype(np.float32)
    Y[2, :] = 0.0
    Y[:, 4] = 0.0
    L, R = start(9, np.float32)
    L = L.at[:, 1].set(0.0)
    problem = Problem.from_scalars(jnp.asarray(Y), lambda_1L=0.1, lambda_2R=0.1)
    res = run(ADAM, problem, L, R, iters=100)
    assert res.L.dtype == jnp.float32
    for X in (res.L, res.R, res.history, res.objective):
        assert np.all(np.isfinite(np.asarray(X)))
    assert float(problem.objective(res.L, res.R)) < float(problem.objective(L, R))


def test_batched_equals_unbatched():
    rng = np.random.default_rng(10)
    problem = Problem.from_scalars(jnp.asarray(rng.uniform(0, 2, (M, N))), lambda_1R=0.05)
    starts = [start(s) for s in (11, 12, 13)]
    Ls, Rs = jnp.stack([s[0] for s in starts]), jnp.stack([s[1] for s in starts])
    batched = jax.vmap(lambda L, R: run(ADAM, problem, L, R).factors)(Ls, Rs)
    for i, (L, R) in enumerate(starts):
        L1, R1 = run(ADAM, problem, L, R).factors
        np.testing.assert_allclose(batched[0][i], L1, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(batched[1][i], R1, rtol=1e-12, atol=1e-14)


def test_learning_rate_swept_through_state():
    """optax.inject_hyperparams puts the learning rate in the (traced) optimizer state,
    so one rule (one compilation) serves every learning rate."""
    rule = ProjectedGradient(optax.inject_hyperparams(optax.sgd)(learning_rate=LR_SGD))
    rng = np.random.default_rng(4)
    problem = Problem.from_scalars(jnp.asarray(rng.uniform(0, 2, (M, N))))
    L, R = start(5)
    out = []
    for lr in (1e-3, 5e-4):
        state = rule.init(problem, L, R)
        state = jax.tree_util.tree_map(lambda x: x, state)
        opt_L, opt_R = state.aux  # the optimizer states of L and R
        opt_L.hyperparams["learning_rate"] = jnp.asarray(lr)
        opt_R.hyperparams["learning_rate"] = jnp.asarray(lr)
        out.append(iterate(rule, problem, state, max_iterations=5, min_xstep=0.0, tol=0.0, history_size=5))
    assert float(out[0].objective) != float(out[1].objective)
    ref = run(SGD, problem, L, R, iters=5)
    np.testing.assert_allclose(out[0].L, ref.L, rtol=1e-12)


def test_optax_is_imported_on_use():
    """In a fresh interpreter: importing jnmf (and its CLI) pulls in neither optax nor
    scipy nor matplotlib (a plain fit needs none of them); method "pg" imports optax
    when asked for, and is one shared rule (its optimizer is static: a fresh one per
    call would recompile every fit)."""
    code = (
        "import sys\n"
        "import jnmf, jnmf.cli\n"
        "loaded = [m for m in ('optax', 'scipy', 'matplotlib') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "rule = jnmf.make_rule('pg')\n"
        "assert 'optax' in sys.modules and rule is jnmf.make_rule('pg')\n"
        "import optax\n"
        "assert type(jnmf.make_rule(optax.sgd(0.1))).__name__ == 'ProjectedGradient'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
