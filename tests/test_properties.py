"""Property tests (hypothesis) of the guarantees of Pav (2024), at one fixed shape.

* Theorem 2.3: the multiplicative half step (eq. 14, epsilon = 0) never increases phi
  when d <= 0.
* Lemma 3.1: the additive half step (PICK_DIRECTION + GIQPM_STEP with the step of
  eq. 24 capped by tau alpha_hat) never increases phi, for any tau in (0, 1).
* Both keep the iterates non-negative (MU for any L1 weights, thanks to eq. 19).
* A full MURNMF iteration (when the eq.-19 clipping is inactive) and a full AURNMF
  iteration never increase the eq.-3 objective.

Values vary, shapes do not (12 x 9, rank 3): every helper is jitted once at module level.
"""

# Exactness tests run in float64 (x64 is switched on in conftest.py).
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jnmf.problem import Problem
from jnmf.quadratic import giqpm_step, half_problem_L, half_problem_R, pick_direction
from jnmf.rules import AURNMF, MURNMF
from jnmf.rules.base import NMFState
from jnmf.rules.mu import murnmf_half_step

M, N, K = 12, 9, 3
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def unit(shape, lo=0.0):
    return hnp.arrays(np.float64, shape, elements=st.floats(lo, 1.0, allow_subnormal=False))


def weight_matrix(B, identity):
    """A symmetric PSD matrix with non-negative entries (W_0R / W_0C): B B'/n + 0.01 I."""
    n = B.shape[0]
    return np.eye(n) if identity else B @ B.T / n + 0.01 * np.eye(n)


@st.composite
def nmf_cases(draw, l1_max=0.5, gamma_max=0.5):
    return dict(
        Y=draw(unit((M, N))),
        L=draw(unit((M, K))),
        R=draw(unit((K, N))),
        W0R=weight_matrix(draw(unit((M, M))), draw(st.booleans())),
        W0C=weight_matrix(draw(unit((N, N))), draw(st.booleans())),
        pen=np.array(
            [draw(st.floats(0, l1_max)), draw(st.floats(0, l1_max))]  # lambda_1L, lambda_1R
            + [draw(st.floats(0, 1.0)), draw(st.floats(0, 1.0))]  # lambda_2L, lambda_2R
            + [draw(st.floats(0, gamma_max)), draw(st.floats(0, gamma_max))]  # gamma_2L, gamma_2R
        ),
    )


def problem_of(Y, W0R, W0C, pen) -> Problem:
    return Problem.from_scalars(
        Y, W0R, W0C, pen[0], pen[1], lambda_2L=pen[2], lambda_2R=pen[3], gamma_2L=pen[4], gamma_2R=pen[5]
    )


def half_problems(p, L, R):
    """The L step and the R step (with the same L), each with its factor-major unknown
    (Xt = L' for the L step, Xt = R for the R step)."""
    return (half_problem_L(p, L.T, R), L.T), (half_problem_R(p, L.T, R), R)


# ------------------------------------------------------------ jitted helpers
@jax.jit
def mu_half_steps(Y, L, R, W0R, W0C, pen, eps):
    """phi before/after the MU half step, the new X and max(d), for each side."""
    p = problem_of(Y, W0R, W0C, pen)
    out = []
    for hp, X in half_problems(p, L, R):
        X_new, _ = murnmf_half_step(hp, X, eps)
        out.append((hp.value(X), hp.value(X_new), X_new, jnp.max(hp.linear), jnp.sum(jnp.abs(hp.linear * X))))
    return out


@jax.jit
def au_half_steps(Y, L, R, W0R, W0C, pen, tau):
    """phi before/after the AU half step (Algorithm 3) and the new X, for each side."""
    p = problem_of(Y, W0R, W0C, pen)
    out = []
    for hp, X in half_problems(p, L, R):
        F = hp.apply_G(X)
        grad = F + hp.linear
        H = pick_direction(X, grad, F)
        X_new, _ = giqpm_step(X, grad, H, hp.apply_G(H), tau)
        out.append((hp.value(X), hp.value(X_new), X_new, jnp.sum(jnp.abs(hp.linear * X))))
    return out


@jax.jit
def mu_iteration(Y, L, R, W0R, W0C, pen):
    """eq. 3 before and after one MURNMF iteration (epsilon = 0), and whether the eq.-19
    clipping was inactive (d <= 0 on both half steps)."""
    p = problem_of(Y, W0R, W0C, pen)
    state, info = MURNMF(0.0).step(p, NMFState(L.T, R))
    d_L = half_problem_L(p, L.T, R).linear
    d_R = half_problem_R(p, state.Lt, R).linear
    inactive = (jnp.max(d_L) <= 0) & (jnp.max(d_R) <= 0)
    return p.objective(L, R), p.objective(state.L, state.R), info.objective, inactive, state.L, state.R


@jax.jit
def au_iteration(Y, L, R, W0R, W0C, pen, tau, rate):
    """eq. 3 before one AURNMF iteration, after it (the rule's report, before snapping
    values <= zero_tolerance to zero) and after snapping."""
    p = problem_of(Y, W0R, W0C, pen)
    rule = AURNMF(tau, rate)
    state, info = rule.step(p, NMFState(L.T, R, rule.tau))  # AURNMF's aux is tau_k
    return p.objective(L, R), info.objective, p.objective(state.L, state.R), state.L, state.R


def no_increase(before, after, scale):
    """after <= before up to rounding (scale: the size of the terms that cancel)."""
    return float(after) <= float(before) + 1e-11 * (abs(float(before)) + float(scale) + 1e-300)


# -------------------------------------------------------------------- tests
@SETTINGS
@given(case=nmf_cases(l1_max=0.01))
def test_mu_half_step_never_increases_phi_when_d_nonpositive(case):
    """Theorem 2.3 (epsilon = 0, so eq. 14 exactly): phi(x_{k+1}) <= phi(x_k) when d <= 0."""
    sides = mu_half_steps(case["Y"], case["L"], case["R"], case["W0R"], case["W0C"], case["pen"], 0.0)
    held = 0
    for before, after, X_new, max_d, scale in sides:
        if float(max_d) <= 0:
            held += 1
            assert no_increase(before, after, scale), (float(before), float(after))
            assert np.all(np.asarray(X_new) >= 0)
    assume(held > 0)


@SETTINGS
@given(case=nmf_cases(l1_max=3.0), eps=st.sampled_from([0.0, 1e-7, 1e-3]))
def test_mu_half_step_stays_nonnegative_for_any_l1(case, eps):
    """eq. 19: with the numerator clipped to <= -epsilon, iterates stay >= 0 whatever W_1."""
    sides = mu_half_steps(case["Y"], case["L"], case["R"], case["W0R"], case["W0C"], case["pen"], eps)
    for _, _, X_new, _, _ in sides:
        X_new = np.asarray(X_new)
        assert np.all(np.isfinite(X_new)) and np.all(X_new >= 0)


@SETTINGS
@given(case=nmf_cases(l1_max=3.0, gamma_max=1.0), tau=st.floats(0.01, 0.99))
def test_au_half_step_never_increases_phi(case, tau):
    """Lemma 3.1: x + alpha h with alpha = min(tau alpha_hat, alpha*) does not increase phi,
    for any tau in (0, 1), large L1 weights included; and it stays non-negative."""
    sides = au_half_steps(case["Y"], case["L"], case["R"], case["W0R"], case["W0C"], case["pen"], tau)
    for before, after, X_new, scale in sides:
        assert no_increase(before, after, scale), (float(before), float(after))
        X_new = np.asarray(X_new)
        assert np.all(np.isfinite(X_new)) and np.all(X_new >= 0)


@SETTINGS
@given(case=nmf_cases(l1_max=0.01))
def test_murnmf_iteration_never_increases_objective(case):
    f0, f1, f_info, inactive, L, R = mu_iteration(
        case["Y"], case["L"], case["R"], case["W0R"], case["W0C"], case["pen"]
    )
    assume(bool(inactive))
    assert no_increase(f0, f1, f0), (float(f0), float(f1))
    assert abs(float(f_info) - float(f1)) <= 1e-10 * max(abs(float(f1)), 1.0)  # reported objective
    assert np.all(np.asarray(L) >= 0) and np.all(np.asarray(R) >= 0)


@SETTINGS
@given(
    case=nmf_cases(l1_max=3.0, gamma_max=1.0),
    tau=st.floats(0.01, 0.99),
    rate=st.floats(0.0, 0.99),
)
def test_aurnmf_iteration_never_increases_objective(case, tau, rate):
    f0, f_step, f1, L, R = au_iteration(
        case["Y"], case["L"], case["R"], case["W0R"], case["W0C"], case["pen"], tau, rate
    )
    assert no_increase(f0, f_step, f0), (float(f0), float(f_step))
    # snapping values <= 1e-12 to zero moves the objective by at most ~1e-12 |gradient|
    assert float(f1) <= float(f0) + 1e-9 * max(abs(float(f0)), 1.0), (float(f0), float(f1))
    assert np.all(np.asarray(L) >= 0) and np.all(np.asarray(R) >= 0)
