"""jnmf's rnnmf front doors against a NumPy model of rnnmf 0.3.0, iterate for iterate.

The oracle is tests/rnnmf_reference.py (a float64 transcription of rnnmf's
murnmf / aurnmf / gaurnmf / giqpm semantics).  Each case runs the reference to
convergence (or its iteration cap) recording every iterate, then checks jnmf two ways:

* one step: from each recorded reference iterate (and annealed tau_k), one jnmf
  iteration must give the next reference iterate and the same Lstep / Rstep
  (batched with ``vmap``, all iterations up to N_ONE_STEP, else a sample of them);
  this is the iterate-for-iterate test, free of error amplification;
* trajectory: the front door run from the start with ``max_iterations = 1, 2, ...``
  (traced, so no recompilation) gives the same iterates, iteration count,
  ``converged`` flag, Lstep/Rstep, objective history and final factors.

AURNMF amplifies rounding differences along some trajectories (each step length is set
by the smallest ratio -x_i / h_i, i.e. by the elements heading to zero); for a few
cases (CHAOTIC) the reference amplifies a 1e-16 perturbation of its own start to 1e-2
(test_reference_trajectories_are_chaotic).  Hence three tolerances: TOL_STEP for one
step, TOL_TRAJ for the first HORIZON iterations of every run, TOL_WHOLE for whole runs
of the non-chaotic cases (whose iteration counts and flags must also match exactly).

The largest relative differences observed are collected in ``ONE_STEP``,
``TRAJECTORY`` and ``WHOLE``; ``test_zz_summary`` prints them (run with ``-s``).
"""

# Exactness tests run in float64 (x64 is switched on in conftest.py).
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
import rnnmf_reference as ref  # (tests/ is on sys.path under pytest)

import jnmf
from jnmf.giqpm import GIQPM, GIQPMState
from jnmf.quadratic import VectorQP
from jnmf.rules import AURNMF, MURNMF, NMFState

# tiny fits: the time is compiling, cheaper unoptimized (conftest.py)
CHEAP_PROGRAMS = True

TOL_STEP = 1e-12  # one iteration from the same iterate (relative to the iterates' size)
TOL_TRAJ = 1e-9  # runs from the same start, over their first HORIZON iterations (relative)
HORIZON = 25
# Whole runs: AURNMF trajectories go through phases where rounding differences are amplified
# (e.g. to ~4e-8 around iteration 250 of the sparse-start case, decaying to ~5e-12 by 3000),
# so whole AU runs are held to 1e-6; chaotic cases (CHAOTIC) only to HORIZON iterations.
TOL_WHOLE = {"murnmf": 1e-9, "aurnmf": 1e-6, "gaurnmf": 1e-6, "giqpm": 1e-9}
M, N, K = 15, 10, 3  # one shape for every NMF case: the driver compiles once per weight layout
ONE_STEP: dict[str, float] = {}
TRAJECTORY: dict[str, float] = {}  # over the first HORIZON iterations
WHOLE: dict[str, float] = {}  # over whole runs (non-chaotic cases)


def rel(a, b) -> float:
    """max |a - b| / max |b| (normwise relative difference; absolute when b == 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.max(np.abs(b)) if b.size else 0.0
    return float(np.max(np.abs(a - b)) / (scale if scale > 0 else 1.0))


def checkpoints(n: int, dense: int = 40) -> list[int]:
    """Every iteration up to ``dense``, then about 15 geometrically spaced ones, then n."""
    pts = set(range(1, min(n, dense) + 1))
    if n > dense:
        pts.update(int(round(v)) for v in np.geomspace(dense, n, 15))
    pts.add(n)
    return sorted(p for p in pts if 1 <= p <= n)


# ------------------------------------------------------------------ data
def make_data(seed: int, sparse: bool = False):
    rng = np.random.default_rng(seed)
    Y = rng.random((M, K)) @ rng.random((K, N)) + 0.05 * rng.random((M, N))
    L0 = rng.random((M, K)) + 0.1
    R0 = rng.random((K, N)) + 0.1
    if sparse:  # about a third of the starting elements are zero
        L0[rng.random(L0.shape) < 1 / 3] = 0.0
        R0[rng.random(R0.shape) < 1 / 3] = 0.0
    return Y, L0, R0


def psd_nonneg(n: int, seed: int, scale: float = 1.0) -> np.ndarray:
    """A symmetric, positive semidefinite matrix with non-negative entries."""
    B = np.random.default_rng(seed).random((n, n))
    W = B @ B.T / n + np.eye(n)
    return scale * W / np.max(W)


def nonortho(k: int, gamma: float) -> np.ndarray:
    return gamma * (np.ones((k, k)) - np.eye(k))


# --------------------------------------------------------------- comparison
N_ONE_STEP = 600  # fixed batch of restarts: one compile per rule and weight layout


@eqx.filter_jit
def batched_step(rule, problem, states):
    """rule.step from many states at once (one iteration of the algorithm each)."""
    return eqx.filter_vmap(lambda s: rule.step(problem, s))(states)


def sample_iterations(n: int) -> np.ndarray:
    """N_ONE_STEP iteration numbers in 1..n: all of them if they fit, padded by repetition."""
    idx = np.unique(np.linspace(1, n, min(n, N_ONE_STEP)).round().astype(int))
    return np.concatenate([idx, np.full(N_ONE_STEP - len(idx), idx[-1])])


def step_rel(new, target, prev) -> float:
    """|new - target| relative to the size of the iterates the step went between."""
    scale = max(np.max(np.abs(target)), np.max(np.abs(prev)))
    return float(np.max(np.abs(np.asarray(new) - target)) / (scale if scale > 0 else 1.0))


def one_step_nmf(name, rule, problem, r, L0, R0, tau0=None):
    """From each recorded reference iterate i-1 (and its tau_k), one jnmf step must give
    reference iterate i and the same (Lstep, Rstep)."""
    idx = sample_iterations(r.iterations)
    Ls, Rs = [L0] + r.L_hist, [R0] + r.R_hist
    # states keep L factor-major: a batch of L' (b x k x m)
    Ltp = jnp.asarray(np.stack([Ls[i - 1].T for i in idx]))
    Rp = jnp.asarray(np.stack([Rs[i - 1] for i in idx]))
    if tau0 is None:
        states = NMFState(Ltp, Rp)
    else:
        taus = [tau0] + r.tau_hist
        states = NMFState(Ltp, Rp, jnp.asarray([taus[i - 1] for i in idx]))  # AURNMF's aux: tau_k
    new, info = batched_step(rule, problem, states)
    new_L = np.swapaxes(np.asarray(new.Lt), 1, 2)  # (state.L would transpose the batch axis too)
    new_R, steps = np.asarray(new.R), np.asarray(info.steps)
    worst = 0.0
    for b, i in enumerate(idx):
        d = max(
            step_rel(new_L[b], r.L_hist[i - 1], Ls[i - 1]),
            step_rel(new_R[b], r.R_hist[i - 1], Rs[i - 1]),
            step_rel(
                steps[b],
                np.asarray(r.steps_hist[i - 1]),
                np.concatenate([Ls[i - 1].ravel(), Rs[i - 1].ravel()]),
            ),
        )
        assert d <= TOL_STEP, (name, i, d)
        worst = max(worst, d)
    ONE_STEP[name] = max(ONE_STEP.get(name, 0.0), worst)


def track(name, worst_early, worst_all, chaotic):
    """Assert and record trajectory differences (early: i <= HORIZON; all: whole run)."""
    assert worst_early <= TOL_TRAJ, (name, "first HORIZON iterations", worst_early)
    TRAJECTORY[name] = max(TRAJECTORY.get(name, 0.0), worst_early)
    if not chaotic:
        assert worst_all <= TOL_WHOLE[name], (name, "whole run", worst_all)
        WHOLE[name] = max(WHOLE.get(name, 0.0), worst_all)


def trajectory_nmf(name, jfun, r, Y, L0, R0, kwargs, max_iterations, min_xstep, chaotic):
    """jnmf from the start with max_iterations = 1, 2, ...: the same iterates, and at the end
    the same iteration count, converged flag and factors (only the first HORIZON
    iterations for a chaotic case).  Returns the full-length jnmf run and its checkpoints."""
    n = r.iterations
    pts = range(1, min(n, HORIZON) + 1) if chaotic else checkpoints(n)
    iterates, early, worst = {}, 0.0, 0.0
    for i in pts:
        res = jfun(Y, L0, R0, max_iterations=i, min_xstep=min_xstep, **kwargs)
        assert int(res.iterations) == i, (name, i)
        assert bool(res.converged) == (r.converged and i == n), (name, i)
        iterates[i] = (np.asarray(res.L), np.asarray(res.R))
        d = max(rel(res.L, r.L_hist[i - 1]), rel(res.R, r.R_hist[i - 1]))
        worst = max(worst, d)
        if i <= HORIZON:
            early = max(early, d)
    res = jfun(Y, L0, R0, max_iterations=max_iterations, min_xstep=min_xstep, **kwargs)
    if not chaotic:
        assert int(res.iterations) == n, (name, int(res.iterations), n)
        assert bool(res.converged) == r.converged
        assert np.allclose(np.asarray(res.steps), [r.Lstep, r.Rstep], rtol=1e-6, atol=1e-14)
        worst = max(worst, rel(res.L, r.L), rel(res.R, r.R))
    track(name, early, worst, chaotic)
    return res, iterates


RULE_KEYS = ("epsilon", "tau", "annealing_rate", "check_optimal_step", "zero_tolerance")


def check_nmf(name, Y, L0, R0, kwargs, max_iterations=3000, min_xstep=None, chaotic=False, ref_fun=None,
              ref_kwargs=None):  # fmt: skip
    """One-step and trajectory comparison of jnmf.<name>(**kwargs) with the reference
    (``ref.<name>(**kwargs)`` unless ``ref_fun`` / ``ref_kwargs`` say otherwise).

    min_xstep defaults to 1e-8 for MU and 1e-6 for AU: AU's steps can hover near 1e-8
    for hundreds of iterations, where the first one below the threshold is decided
    by the last digits.
    """
    if min_xstep is None:
        min_xstep = 1e-8 if name == "murnmf" else 1e-6
    ref_fun = ref_fun or getattr(ref, name)
    ref_kwargs = kwargs if ref_kwargs is None else ref_kwargs
    r = ref_fun(Y, L0, R0, max_iterations=max_iterations, min_xstep=min_xstep, **ref_kwargs)
    rule_kw = {key: v for key, v in kwargs.items() if key in RULE_KEYS}
    problem = jnmf.build_problem(jnp.asarray(Y), K, **{k: v for k, v in kwargs.items() if k not in RULE_KEYS})
    if name == "murnmf":
        one_step_nmf(name, MURNMF(**rule_kw), problem, r, L0, R0)
    else:
        one_step_nmf(name, AURNMF(**rule_kw), problem, r, L0, R0, tau0=rule_kw.get("tau", 0.1))
    res, iterates = trajectory_nmf(
        name, getattr(jnmf, name), r, Y, L0, R0, kwargs, max_iterations, min_xstep, chaotic
    )
    return r, res, iterates


def check_history(res, iterates, Y, **obj_kwargs):
    """The objective history of the full run (entry j: after iteration (j + 1) * stride) is
    eq. 3 at jnmf's own iterates; the final objective is eq. 3 at the final factors."""
    stride = int(res.history_stride)
    h = np.asarray(res.history)
    n_rec = int(res.iterations) // stride
    assert np.all(np.isfinite(h[:n_rec])) and np.all(np.isnan(h[n_rec:]))
    checked = 0
    for i, (L, R) in iterates.items():
        if i % stride == 0 and i <= int(res.iterations):
            f = ref.objective(Y, L, R, **obj_kwargs)
            assert abs(h[i // stride - 1] - f) <= 1e-9 * max(abs(f), 1.0), (i, h[i // stride - 1], f)
            checked += 1
    assert checked > 0
    f = ref.objective(Y, res.L, res.R, **obj_kwargs)
    assert abs(float(res.objective) - f) <= 1e-9 * max(abs(f), 1.0)


def scalar_obj_kwargs(W_0R=None, W_0C=None, lambda_1L=0.0, lambda_1R=0.0, lambda_2L=0.0, lambda_2R=0.0,
                      gamma_2L=0.0, gamma_2R=0.0, **_):  # fmt: skip
    return dict(
        W_0R=W_0R,
        W_0C=W_0C,
        W_1L=lambda_1L,
        W_1R=lambda_1R,
        l2_L=[(lambda_2L, 1.0), (1.0, nonortho(K, gamma_2L))],
        l2_R=[(lambda_2R, 1.0), (1.0, nonortho(N, gamma_2R))],
    )


# ======================================================================= MU
MU_CASES = {
    "plain": dict(),
    "penalties": dict(lambda_1L=0.05, lambda_1R=0.02, lambda_2L=0.3, lambda_2R=0.1),
    # eq. 19 active: at the end 30 of L's and 20 of R's numerators are clipped to -epsilon
    "clipped_numerator": dict(lambda_1L=0.5, lambda_1R=0.2, lambda_2L=0.1, lambda_2R=0.1, epsilon=1e-3),
    "gamma": dict(lambda_2L=0.1, lambda_2R=0.1, gamma_2L=0.2, gamma_2R=0.05),
    "full_weights": dict(W_0R=psd_nonneg(M, 11), W_0C=psd_nonneg(N, 12), lambda_1R=0.01),
    "diag_weights": dict(W_0R=np.diag(np.linspace(0.5, 2, M)), W_0C=np.diag(np.linspace(2, 0.2, N))),
}


@pytest.mark.parametrize("case", list(MU_CASES))
def test_murnmf_matches_reference(case):
    kw = MU_CASES[case]
    Y, L0, R0 = make_data(1)
    r, res, iterates = check_nmf("murnmf", Y, L0, R0, kw)
    obj_kw = {key: v for key, v in kw.items() if key != "epsilon"}
    check_history(res, iterates, Y, **scalar_obj_kwargs(**obj_kw))
    if case == "clipped_numerator":
        num = kw["lambda_1L"] - Y @ r.R.T
        assert np.sum(num > -kw["epsilon"]) > 0  # the clipping really is exercised


def test_murnmf_sparse_start_stays_at_zero():
    Y, L0, R0 = make_data(2, sparse=True)
    r, res, _ = check_nmf("murnmf", Y, L0, R0, dict(lambda_2R=0.1), max_iterations=500)
    L, R = np.asarray(res.L), np.asarray(res.R)
    assert np.all(L[L0 == 0] == 0) and np.all(R[R0 == 0] == 0)  # MU cannot leave zero
    assert np.all(L[L0 > 0] > 0)


def test_murnmf_stuck_when_no_denominator_is_positive():
    """R0 = 0 and a ridge on L: L moves, but no R denominator is positive -> stop, not converged."""
    Y, L0, _ = make_data(3)
    R0 = np.zeros((K, N))
    r, res, _ = check_nmf("murnmf", Y, L0, R0, dict(lambda_2L=0.5))
    assert r.iterations == 1 and not r.converged
    assert int(res.iterations) == 1 and not bool(res.converged)


def test_vector_weight_equals_diagonal_matrix():
    """A vector W_0R / W_0C / W_2 is the diagonal weight (rnnmf's recycling of a vector W_0C is not)."""
    Y, L0, R0 = make_data(4)
    wr, wc = np.linspace(0.5, 2, M), np.linspace(2, 0.2, N)
    for fun in (jnmf.murnmf, jnmf.aurnmf):
        a = fun(Y, L0, R0, W_0R=wr, W_0C=wc, max_iterations=30)
        b = fun(Y, L0, R0, W_0R=np.diag(wr), W_0C=np.diag(wc), max_iterations=30)
        assert rel(a.L, b.L) <= 1e-12 and rel(a.R, b.R) <= 1e-12
    a = jnmf.gaurnmf(Y, L0, R0, W_0C=wc, W_2RL=np.linspace(0, 1, M), W_2CL=1.0, max_iterations=30)
    b = jnmf.gaurnmf(Y, L0, R0, W_0C=np.diag(wc), W_2RL=np.diag(np.linspace(0, 1, M)), W_2CL=1.0,
                     max_iterations=30)  # fmt: skip
    assert rel(a.L, b.L) <= 1e-12 and rel(a.R, b.R) <= 1e-12


# ======================================================================= AU
AU_CASES = {
    "plain": dict(),
    "penalties": dict(lambda_1L=0.05, lambda_1R=0.02, lambda_2L=0.3, lambda_2R=0.1),
    "large_l1": dict(lambda_1L=1.0, lambda_1R=0.5),  # drives elements to exactly zero
    "full_weights": dict(W_0R=psd_nonneg(M, 21), W_0C=psd_nonneg(N, 22), lambda_2L=0.05),
    "diag_weights": dict(W_0R=np.diag(np.linspace(0.5, 2, M)), W_0C=np.diag(np.linspace(2, 0.2, N))),
    "no_optimal_step": dict(check_optimal_step=False, lambda_2R=0.1),
    "fast_annealing": dict(tau=0.5, annealing_rate=0.2, zero_tolerance=1e-6),
}
# Cases whose trajectories are chaotic: rounding-level differences grow ~1.3x per iteration
# in the reference itself (test_reference_trajectories_are_chaotic), so jnmf and the
# reference are compared one step at a time everywhere but as whole runs only for HORIZON
# iterations.  ("penalties" drifts to ~5e-8 around iteration 200, then contracts again.)
CHAOTIC = {("aurnmf", "penalties"), ("gaurnmf", "general_J2"), ("gaurnmf", "full_W0C"), ("gaurnmf", "sparse")}


@pytest.mark.parametrize("case", list(AU_CASES))
def test_aurnmf_matches_reference(case):
    kw = AU_CASES[case]
    Y, L0, R0 = make_data(5)
    r, res, iterates = check_nmf("aurnmf", Y, L0, R0, kw, chaotic=("aurnmf", case) in CHAOTIC)
    if case == "large_l1":
        assert np.any(np.asarray(res.L) == 0) and np.any(np.asarray(res.R) == 0)
    if case != "fast_annealing":  # (with zero_tolerance 1e-6 the pre-snap objective differs)
        obj_kw = {key: v for key, v in kw.items() if key.startswith(("W_0", "lambda", "gamma"))}
        check_history(res, iterates, Y, **scalar_obj_kwargs(**obj_kw))


def test_aurnmf_sparse_start_escapes_zero():
    Y, L0, R0 = make_data(6, sparse=True)
    r, res, _ = check_nmf("aurnmf", Y, L0, R0, dict(lambda_2R=0.1))
    L, R = np.asarray(res.L), np.asarray(res.R)
    assert np.any(L[L0 == 0] > 0) and np.any(R[R0 == 0] > 0)  # the AU direction leaves zero
    mu = jnmf.murnmf(Y, L0, R0, lambda_2R=0.1, max_iterations=int(res.iterations))
    f_au = jnmf.objective(Y, res.L, res.R, lambda_2R=0.1)
    f_mu = jnmf.objective(Y, mu.L, mu.R, lambda_2R=0.1)
    assert f_au < f_mu  # and so fits better than MU from the same sparse start


def gamma_as_general(k, n, lambda_2L=0.0, lambda_2R=0.0, gamma_2L=0.0, gamma_2R=0.0):
    """eq. 4's ridge and non-orthogonality terms as gaurnmf's W_2 pairs."""
    return dict(
        W_2RL=[lambda_2L, 1.0],
        W_2CL=[1.0, nonortho(k, gamma_2L)],
        W_2RR=[lambda_2R, 1.0],
        W_2CR=[1.0, nonortho(n, gamma_2R)],
    )


def test_aurnmf_gamma_uses_full_curvature():
    """With gamma > 0 jnmf's aurnmf is gaurnmf with the equivalent W_2 pairs (so it matches
    the gaurnmf reference), not rnnmf's aurnmf, whose optimal step omits gamma (documented)."""
    pen = dict(lambda_1L=0.01, lambda_2L=0.1, lambda_2R=0.05, gamma_2L=0.1, gamma_2R=0.05)
    general = gamma_as_general(K, N, **{k: v for k, v in pen.items() if k != "lambda_1L"})
    general["W_1L"] = pen["lambda_1L"]
    Y, L0, R0 = make_data(7)
    r, res, _ = check_nmf(
        "aurnmf", Y, L0, R0, pen, max_iterations=600, ref_fun=ref.gaurnmf, ref_kwargs=general
    )
    a = jnmf.aurnmf(Y, L0, R0, max_iterations=HORIZON, **pen)
    g = jnmf.gaurnmf(Y, L0, R0, max_iterations=HORIZON, **general)
    assert rel(g.L, a.L) <= 1e-12 and rel(g.R, a.R) <= 1e-12
    # rnnmf's aurnmf (K without gamma) takes other steps: the comparison can tell them apart
    rr = ref.aurnmf(Y, L0, R0, max_iterations=HORIZON, **pen)
    assert rel(rr.L, r.L_hist[HORIZON - 1]) > 1e-6


# ================================================================== GAURNMF
def gaurnmf_case(seed):
    rng = np.random.default_rng(seed)
    return dict(
        W_0R=psd_nonneg(M, seed + 1),
        W_1L=0.05 * rng.random((M, K)),
        W_1R=0.02 * rng.random((K, N)),
        W_2RL=[0.1, psd_nonneg(M, seed + 2, 0.5)],
        W_2CL=[psd_nonneg(K, seed + 3), 0.5],
        W_2RR=[psd_nonneg(K, seed + 4, 0.3), 0.2],
        W_2CR=[1.0, psd_nonneg(N, seed + 5)],
    )


GA_CASES = {
    "general_J2": gaurnmf_case(30),
    "scalar_W1_no_W2": dict(W_1L=0.1, W_1R=0.05),
    "no_optimal_step": gaurnmf_case(40) | dict(check_optimal_step=False),
    "full_W0C": gaurnmf_case(50) | dict(W_0C=psd_nonneg(N, 55), tau=0.3),
}


def general_obj_kwargs(kw):
    l2 = lambda rows, cols: list(zip(rows, cols, strict=True)) if isinstance(rows, list) else []
    return dict(
        W_0R=kw.get("W_0R"),
        W_0C=kw.get("W_0C"),
        W_1L=kw.get("W_1L", 0.0),
        W_1R=kw.get("W_1R", 0.0),
        l2_L=l2(kw.get("W_2RL"), kw.get("W_2CL")),
        l2_R=l2(kw.get("W_2RR"), kw.get("W_2CR")),
    )


@pytest.mark.parametrize("case", list(GA_CASES))
def test_gaurnmf_matches_reference(case):
    kw = GA_CASES[case]
    Y, L0, R0 = make_data(8)
    r, res, iterates = check_nmf("gaurnmf", Y, L0, R0, kw, chaotic=("gaurnmf", case) in CHAOTIC)
    check_history(res, iterates, Y, **general_obj_kwargs(kw))


def test_gaurnmf_sparse_start():
    Y, L0, R0 = make_data(9, sparse=True)
    r, res, _ = check_nmf("gaurnmf", Y, L0, R0, gaurnmf_case(60), chaotic=True)
    assert np.any(np.asarray(res.L)[L0 == 0] > 0)


def test_reference_trajectories_are_chaotic():
    """Why CHAOTIC cases are compared one step at a time: perturbing the *reference's* own
    start by ~1e-16 changes its iterate 100 by far more than 1e-9."""
    Y, L0, R0 = make_data(8)
    kw = GA_CASES["general_J2"]
    L1 = L0 * (1 + 1e-16 * np.random.default_rng(0).standard_normal(L0.shape))
    a = ref.gaurnmf(Y, L0, R0, max_iterations=100, min_xstep=0.0, **kw)
    b = ref.gaurnmf(Y, L1, R0, max_iterations=100, min_xstep=0.0, **kw)
    assert rel(a.L_hist[HORIZON - 1], b.L_hist[HORIZON - 1]) < 1e-11  # still close at HORIZON
    assert rel(a.L, b.L) > 1e-6


# =================================================================== GIQPM
def qp_case(seed, n=8):
    rng = np.random.default_rng(seed)
    A = rng.random((n + 4, n))
    G = A.T @ A + 0.1 * np.eye(n)
    d = rng.normal(size=n) * 3.0  # mixed signs: some constraints active at the optimum
    x0 = rng.random(n) + 0.05
    return G, d, x0


GIQPM_CASES = {
    "lee_seung": dict(),
    "steepest": dict(step="steepest"),
    "complementarity": dict(step="complementarity"),
    "lee_seung_no_optimal_step": dict(check_optimal_step=False),
    "complementarity_no_optimal_step": dict(step="complementarity", check_optimal_step=False, tau=0.2),
    "slow_annealing": dict(tau=0.1, annealing_rate=0.01, zero_tolerance=1e-12),
}


def one_step_giqpm(G, d, r, x0, kw):
    rule = GIQPM(**kw)
    qp = VectorQP(jnp.asarray(G), jnp.asarray(d))
    idx = sample_iterations(r.iterations)
    xs = [x0] + r.x_hist
    taus = [kw.get("tau", 0.5)] + r.tau_hist
    states = GIQPMState(
        jnp.asarray(np.stack([xs[i - 1] for i in idx])), jnp.asarray([taus[i - 1] for i in idx])
    )
    new, info = batched_step(rule, qp, states)
    worst = 0.0
    for b, i in enumerate(idx):
        t = r.x_hist[i - 1]
        d_ = max(
            step_rel(new.x[b], t, xs[i - 1]),
            step_rel(info.steps[b], np.asarray(r.steps_hist[i - 1]), xs[i - 1]),
        )
        assert d_ <= TOL_STEP, (i, d_)
        worst = max(worst, d_)
    ONE_STEP["giqpm"] = max(ONE_STEP.get("giqpm", 0.0), worst)


# no optimal step and tau_k -> 1: x bounces between bounds, rounding differences are amplified
GIQPM_CHAOTIC = {"complementarity_no_optimal_step"}


@pytest.mark.parametrize("case", list(GIQPM_CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_giqpm_matches_reference(case, seed):
    kw = GIQPM_CASES[case]
    chaotic = case in GIQPM_CHAOTIC
    G, d, x0 = qp_case(100 + seed)
    r = ref.giqpm(G, d, x0, max_iterations=2000, min_xstep=1e-9, **kw)
    one_step_giqpm(G, d, r, x0, kw)
    early = worst = 0.0
    pts = range(1, min(r.iterations, HORIZON) + 1) if chaotic else checkpoints(r.iterations)
    for i in pts:
        res = jnmf.giqpm(G, d, x0, max_iterations=i, min_xstep=1e-9, **kw)
        assert int(res.iterations) == i
        assert bool(res.converged) == (r.converged and i == r.iterations)
        worst = max(worst, rel(res.x, r.x_hist[i - 1]))
        early = worst if i <= HORIZON else early
    res = jnmf.giqpm(G, d, x0, max_iterations=2000, min_xstep=1e-9, **kw)
    if not chaotic:
        assert int(res.iterations) == r.iterations and bool(res.converged) == r.converged
        worst = max(worst, rel(res.x, r.x))
    track("giqpm", early, worst, chaotic)
    if case == "lee_seung":  # and it solves the QP (KKT conditions of eq. 10)
        x = np.asarray(res.x)
        g = G @ x + d
        assert np.all(x >= 0) and np.max(np.abs(np.where(x > 0, g, np.minimum(g, 0)))) < 1e-5


def test_giqpm_custom_direction_callable():
    """A callable direction f(grad, Gx, G, d, x) is used as is (here: the Lee-Seung one)."""
    G, d, x0 = qp_case(7)

    def ls(grad, Gx, G, d, x):
        return -grad * x / jnp.where(Gx > 0, Gx, 1.0)

    a = jnmf.giqpm(G, d, x0, step=ls, max_iterations=300)
    b = jnmf.giqpm(G, d, x0, max_iterations=300)
    assert rel(a.x, b.x) <= 1e-14 and int(a.iterations) == int(b.iterations)


def test_giqpm_zero_direction_iteration_count():
    """With x0 = 0 the Lee-Seung direction is 0: rnnmf stops, converged, after 0 iterations."""
    G, d, _ = qp_case(3)
    x0 = np.zeros(len(d))
    r = ref.giqpm(G, d, x0)
    assert r.iterations == 0 and r.converged
    res = jnmf.giqpm(G, d, x0)
    np.testing.assert_array_equal(np.asarray(res.x), x0)
    assert bool(res.converged)
    assert int(res.iterations) == r.iterations


def test_giqpm_zero_direction_stops_converged_with_min_xstep_zero():
    G, d, _ = qp_case(3)
    x0 = np.zeros(len(d))
    r = ref.giqpm(G, d, x0, min_xstep=0.0, max_iterations=50)
    assert r.iterations == 0 and r.converged
    res = jnmf.giqpm(G, d, x0, min_xstep=0.0, max_iterations=50)
    assert bool(res.converged) and int(res.iterations) == r.iterations


def test_zz_summary():
    """Print the largest relative differences to the reference per function (pytest -s)."""
    print("\nmax relative difference, jnmf vs rnnmf reference (float64):")
    early = f"first {HORIZON} its"
    print(f"  {'':8s} {'one step':>10s} {early:>13s} {'whole runs':>11s}")
    for key in ("murnmf", "aurnmf", "gaurnmf", "giqpm"):
        print(
            f"  {key:8s} {ONE_STEP.get(key, np.nan):10.2e} {TRAJECTORY.get(key, np.nan):13.2e}"
            f" {WHOLE.get(key, np.nan):11.2e}"
        )
    assert all(v <= TOL_STEP for v in ONE_STEP.values())
