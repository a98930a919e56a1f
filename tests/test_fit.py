"""jnmf.fit, jnmf.sweep, consensus and the CLI (the surfaces).

Exactness checks run in float64 (x64 is switched on in conftest.py).
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnmf
from jnmf import fitting
from jnmf.rules import MURNMF

# tiny fits: the time is compiling, cheaper unoptimized (conftest.py)
CHEAP_PROGRAMS = True

M, N, K = 24, 15, 3


@pytest.fixture(scope="module")
def Y():
    rng = np.random.default_rng(0)
    return rng.random((M, K)) @ rng.random((K, N)) + 0.05 * rng.random((M, N))


# fits capped at max_iterations on purpose warn ConvergenceWarning
capped = pytest.mark.filterwarnings("ignore::jnmf.ConvergenceWarning")


@pytest.mark.parametrize("method", sorted(fitting.METHODS))
def test_every_method_fits_and_reports_its_best_restart(Y, method):
    with pytest.warns(jnmf.ConvergenceWarning, match="max_iterations"):  # the cap is intended
        res = jnmf.fit(Y, K, method=method, restarts=3, max_iterations=60, tol=0.0, key=jax.random.key(1))
    assert res.L.shape == (M, K) and res.R.shape == (K, N)
    assert jnp.all(res.L >= 0) and jnp.all(res.R >= 0)
    assert res.objectives.shape == (3,) and jnp.all(jnp.isfinite(res.objectives))
    assert int(res.best) == int(jnp.argmin(res.objectives))
    assert res.objective == res.objectives[res.best]
    assert jnp.all(res.all_iterations == 60)  # tol=0 and min_xstep=0: no early stop
    assert res.status_name == "max_iterations" and not res.converged
    np.testing.assert_array_equal(res.all_status, jnmf.STATUS.index("max_iterations"))
    assert isinstance(res.best, int) and res.objectives.dtype == np.float64
    if method not in ("kl", "beta"):  # their objectives are divergences, not eq. 3
        np.testing.assert_allclose(res.objective, jnmf.objective(Y, res.L, res.R), rtol=1e-10)
    # fitting decreased the objective from every start
    L0, R0 = fitting.starting_points(jnp.asarray(Y), K, "random", 3, jax.random.key(1))
    rule = fitting.make_rule(method)
    P = jnmf.build_problem(jnp.asarray(Y), K)
    start = jax.vmap(lambda a, b: rule.objective(P, rule.init(P, a, b)))(L0, R0)
    assert jnp.all(res.objectives < start)


@pytest.mark.optimized_programs  # compares against XLA's default compilation, as users get it
def test_starts_program_draws_the_same_bits_as_default_compilation():
    """The starts program is compiled at LLVM optimization level 1 for compile speed
    (fitting.DRAW_COMPILER_OPTIONS); seeded starts must stay what XLA's default level
    draws (float32, the CLI's dtype: the normal draw's float conversion and erf_inv)."""
    Y32 = jnp.asarray(np.random.default_rng(0).random((6, 5)), jnp.float32)
    default = jax.jit(fitting.starting_points, static_argnums=(1, 2, 3))  # outer jit: default options
    fast = fitting.starting_points(Y32, 2, "random", 2, jax.random.key(3))
    for a, b in zip(fast, default(Y32, 2, "random", 2, jax.random.key(3))):
        assert a.dtype == jnp.float32
        np.testing.assert_array_equal(a, b)


@capped  # restarts that stop on tol and restarts that hit the cap, in one batch
@pytest.mark.parametrize("seed", [0, 1, 12345, 2**31 - 1, -1, 2**31, 2**40])
def test_seed_key_is_jax_random_key(seed):
    """fitting.seed_key builds the key on the host (no compiled program) for seeds in
    [0, 2^31), and is jax.random.key(seed) for every seed (x64 is on in the tests)."""
    key = fitting.seed_key(seed)
    assert key.dtype == jax.random.key(0).dtype
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(seed)))
    draw = jax.random.uniform(jax.random.key(seed), (3,))
    np.testing.assert_array_equal(jax.random.uniform(key, (3,)), draw)


def test_restarts_equal_single_fits(Y):
    key = jax.random.key(7)
    batched = jnmf.fit(Y, K, restarts=4, key=key, max_iterations=80, tol=1e-6, lambda_1L=0.01)
    L0, R0 = fitting.starting_points(jnp.asarray(Y), K, "random", 4, key)
    for i in range(4):
        single = jnmf.fit(Y, K, init=(L0[i], R0[i]), max_iterations=80, tol=1e-6, lambda_1L=0.01)
        np.testing.assert_allclose(batched.objectives[i], single.objective, rtol=1e-10)
        assert batched.all_iterations[i] == single.iterations


def test_tolerance_stops_early_and_history_is_monotone(Y):
    res = jnmf.fit(Y, K, method="hals", max_iterations=2000, tol=1e-5)
    assert res.converged and res.iterations < 2000
    assert res.history_stride == 2  # 2000 iterations into the default 1000 slots
    h = np.asarray(res.history)[: int(res.iterations) // 2]
    assert np.all(np.isfinite(h)) and np.all(np.isnan(np.asarray(res.history)[len(h) + 1 :]))
    assert np.all(np.diff(h) <= 1e-12 * h[0])


class CountingMU(MURNMF):
    """MURNMF that counts how often its step is traced (i.e. compiled)."""

    def step(self, problem, state):
        CountingMU.traces += 1
        return super().step(problem, state)


CountingMU.traces = 0


@capped
def test_changing_iterations_tolerance_or_penalty_does_not_recompile(Y):
    jnmf.fit(Y, K, method=CountingMU(), restarts=2, max_iterations=10, tol=1e-3, lambda_1L=0.1)
    first = CountingMU.traces
    jnmf.fit(Y, K, method=CountingMU(), restarts=2, max_iterations=25, tol=0.0, lambda_1L=0.5, gamma_2L=2.0)
    jnmf.fit(Y, K, method=CountingMU(1e-5), restarts=2, max_iterations=3, min_xstep=1e-3, lambda_2R=1.0)
    assert first >= 1 and CountingMU.traces == first


@capped
def test_sweep_matches_fits_at_each_grid_point(Y):
    grid = {"lambda_1L": [0.0, 0.5], "gamma_2L": [0.0, 1.0, 3.0]}
    sw = jnmf.sweep(Y, K, grid, restarts=2, max_iterations=50, tol=0.0, factors="all", key=jax.random.key(3))
    assert sw.objectives.shape == (6, 2) and sw.L.shape == (6, 2, M, K)
    np.testing.assert_array_equal(sw.settings["gamma_2L"], [0, 1, 3, 0, 1, 3])
    for g in (1, 5):
        kw = {name: float(v[g]) for name, v in sw.settings.items()}
        single = jnmf.fit(Y, K, restarts=2, max_iterations=50, tol=0.0, key=jax.random.key(3), **kw)
        np.testing.assert_allclose(sw.objectives[g], single.objectives, rtol=1e-9)
    best = jnmf.sweep(Y, K, {"lambda_1R": [0.0, 5.0]}, product=False, restarts=2, max_iterations=50)
    assert best.L.shape == (2, M, K)
    # a large L1 penalty makes R sparser
    assert best.sparsity_R[1].mean() > best.sparsity_R[0].mean()
    none = jnmf.sweep(Y, K, {"lambda_2L": [0.0, 1.0]}, factors="none", max_iterations=5)
    assert none.L is None and none.loss.shape == (2, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="nope"), "method"),
        (dict(rank=0), "rank"),
        (dict(rank=99), "rank"),
        (dict(restarts=0), "restarts"),
        (dict(init="bogus"), "init"),
        (dict(max_iterations=-1), "max_iterations"),
        (dict(tol=-1.0), "tol"),
        (dict(lambda_1L=-1.0), "lambda_1L"),
        (dict(method="anls", gamma_2R=1.0), "gamma_2R"),
        (dict(method="kl", W_0R=np.eye(M)), "W_0R"),
        (dict(bogus_penalty=1.0), "bogus_penalty"),
    ],
)
def test_fit_rejects_bad_input(Y, kwargs, match):
    kwargs = {"rank": K, **kwargs}
    rank = kwargs.pop("rank")
    with pytest.raises(ValueError, match=match):
        jnmf.fit(Y, rank, **kwargs)


def test_fit_rejects_bad_data():
    with pytest.raises(ValueError, match="Y"):
        jnmf.fit(-np.ones((5, 4)), 2)
    with pytest.raises(ValueError, match="Y"):
        jnmf.fit(np.zeros((0, 4)), 2)
    with pytest.raises(ValueError, match="Y"):
        jnmf.fit(np.array([["a", "b"], ["c", "d"]]), 1)
    with pytest.raises(ValueError, match="grid"):
        jnmf.sweep(np.ones((5, 4)), 2, {"W_2RL": [1.0]})  # not a sweepable leaf
    with pytest.raises(ValueError, match="lambda_1L"):  # a swept value replaces, so not both
        jnmf.sweep(np.ones((5, 4)), 2, {"lambda_1L": [0.0, 1.0]}, lambda_1L=0.5)


def test_fit_converts_integer_data():
    """Integer data are converted (as scikit-learn does), to float64 with x64 on."""
    Yi = np.random.default_rng(1).integers(0, 5, (M, N))
    a = jnmf.fit(Yi, K, max_iterations=2000, key=3)
    b = jnmf.fit(Yi.astype(np.float64), K, max_iterations=2000, key=3)
    assert a.L.dtype == jnp.float64
    np.testing.assert_array_equal(a.L, b.L)
    np.testing.assert_array_equal(a.R, b.R)
    assert a.objective == b.objective


@capped
def test_zero_data_rows_and_columns_give_finite_fits():
    rng = np.random.default_rng(2)
    Y = rng.random((M, N)).astype(np.float32)
    Y[3] = 0.0
    Y[:, 5] = 0.0
    for method in sorted(fitting.METHODS):
        res = jnmf.fit(Y, K, method=method, max_iterations=30, restarts=2)
        assert jnp.all(jnp.isfinite(res.L)) and jnp.all(jnp.isfinite(res.R)), method
        assert jnp.isfinite(res.objective), method


def test_consensus_recovers_planted_clusters():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(3), 6)
    L = rng.random((30, 3)) + 0.1
    R = np.where(np.arange(3)[:, None] == labels[None, :], 1.0, 0.02)
    Y = L @ R
    c = jnmf.consensus(Y, 3, restarts=6, max_iterations=200)
    assert c.cophenetic > 0.99
    found = np.asarray(c.labels)
    # same partition up to relabelling
    assert len({(a, b) for a, b in zip(found, labels)}) == 3


def test_stable_labels_counts_checks_as_r_nmf():
    """R's nmf.stop.connectivity (stopconv=40, check.interval=10): the first check
    (iteration 10) counts as a change, and a fit stops once its clustering was unchanged
    at more than 40 consecutive checks, so clusters that never change stop it at
    iteration 420, not after 40 iterations."""
    from jnmf.batch import run_restarts
    from jnmf.driver import CONVERGED, Stopping, iterate
    from jnmf.problem import build_problem
    from jnmf.rules.kl import KLMU

    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(3), 5)
    L = rng.random((12, 3)) + 0.5
    R = np.where(np.arange(3)[:, None] == labels[None, :], 1.0, 0.01)
    problem = build_problem(jnp.asarray(L @ R), 3)
    rule = KLMU()
    for stable, expected in ((40, 420), (3, 50), (0, 700)):
        stop = Stopping(max_iterations=700, tol=0.0, stable_labels=stable)
        res = iterate(rule, problem, rule.init(problem, jnp.asarray(L), jnp.asarray(R)), stopping=stop)
        assert int(res.iterations) == expected, stable
        assert (int(res.status) == CONVERGED) == (stable > 0)
    L0 = jnp.asarray(np.stack([L, L * 2.0]))
    R0 = jnp.asarray(np.stack([R, R / 2.0]))
    stop = Stopping(max_iterations=2000, tol=0.0, stable_labels=40)
    res = run_restarts(rule, problem, L0, R0, stopping=stop)
    np.testing.assert_array_equal(np.asarray(res.iterations), [420, 420])


def test_partition_labels_ignore_relabelling():
    """Clusterings are compared as partitions, as R compares connectivity matrices."""
    from jnmf.driver import partition_labels

    a = partition_labels(jnp.array([2, 2, 0, 1, 0]), 3)
    b = partition_labels(jnp.array([1, 1, 2, 0, 2]), 3)
    c = partition_labels(jnp.array([1, 1, 2, 2, 0]), 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, [0, 0, 2, 3, 2])
    assert np.any(np.asarray(a) != np.asarray(c))


def test_consensus_starts_as_r_nmf_by_default():
    """jnmf.consensus draws its restarts uniform on (0, max Y] (R NMF's seeding) unless
    init="random" asks for jnmf's half-normal starts."""
    from jnmf.fitting import padded_starting_points

    Y = jnp.asarray(np.random.default_rng(0).random((10, 8)) * 4.0)
    L0, R0 = padded_starting_points(Y, [2, 3], 5, jax.random.PRNGKey(0), "uniform")
    assert L0.shape == (10, 10, 3) and R0.shape == (10, 3, 8)
    assert not np.any(np.asarray(L0[:5, :, 2])) and not np.any(np.asarray(R0[:5, 2]))
    live = np.asarray(L0[5:])
    assert np.all(live > 0) and np.all(live <= float(jnp.max(Y)))
    a = jnmf.consensus(np.asarray(Y), 2, restarts=3, max_iterations=20, key=1)
    b = jnmf.consensus(np.asarray(Y), 2, restarts=3, max_iterations=20, key=1, init="random")
    assert not np.allclose(a.objectives, b.objectives)
    with pytest.raises(ValueError, match="init"):
        jnmf.consensus(np.asarray(Y), 2, restarts=3, init="nndsvd")


def test_golub_is_shipped():
    g = jnmf.load_golub()
    assert g.expression.shape == (5000, 38)
    assert sorted(set(g.cell_type)) == ["ALL-B", "ALL-T", "AML"]


@capped
def test_cli_fit_writes_factors(tmp_path, Y):
    from jnmf.cli import main

    path = tmp_path / "y.npy"
    np.save(path, Y.astype(np.float32))
    out = tmp_path / "out"  # the CLI writes its result files into an output directory
    assert (
        main(["fit", str(path), "--rank", "2", "--out", str(out), "--max-iterations", "20", "--quiet"]) == 0
    )
    got = np.load(out / "factors.npz")
    assert got["L"].shape == (M, 2) and got["R"].shape == (2, N)


def test_rank_survey_pads_ranks_into_one_program():
    """A survey over several ranks: padded components stay exactly zero, so every rank's
    restarts are fits at that rank; a second survey of the same shapes compiles nothing;
    per-rank statistics are well formed."""
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(3), 6)
    Y = (rng.random((30, 3)) + 0.1) @ np.where(np.arange(3)[:, None] == labels[None, :], 1.0, 0.02)
    sv = jnmf.consensus(Y, [2, 3, 4], restarts=4, max_iterations=300, key=1)
    assert list(sv.ranks) == [2, 3, 4]
    for e in sv:
        assert e.L.shape == (30, e.rank) and e.R.shape == (e.rank, 18)
        assert 0.0 <= e.dispersion <= 1.0 and -1.0 <= e.silhouette <= 1.0
        assert len(np.unique(e.labels)) <= e.rank
    assert sv[3].cophenetic > 0.99 and sv[3].dispersion > 0.95
    again = jnmf.consensus(Y, [2, 3, 4], restarts=4, max_iterations=300, key=2)
    assert again.compilations == 0


def test_padded_components_stay_zero_for_every_method():
    """The padding the survey relies on: a rank-2 start padded with zero components to
    rank 4 gives the rank-2 fit (float64), with the padding exactly zero."""
    from jnmf.batch import run_restarts
    from jnmf.problem import build_problem

    rng = np.random.default_rng(0)
    Y = jnp.asarray(rng.random((20, 12)))
    L0, R0 = jnp.asarray(rng.random((1, 20, 2)) + 0.1), jnp.asarray(rng.random((1, 2, 12)) + 0.1)
    Lp = jnp.concatenate([L0, jnp.zeros((1, 20, 2))], axis=2)
    Rp = jnp.concatenate([R0, jnp.zeros((1, 2, 12))], axis=1)
    for method in sorted(fitting.METHODS):
        rule = fitting.make_rule(method)
        a = run_restarts(rule, build_problem(Y, 2), L0, R0, max_iterations=30, tol=0.0)
        b = run_restarts(rule, build_problem(Y, 4), Lp, Rp, max_iterations=30, tol=0.0)
        assert not np.any(np.asarray(b.L[..., 2:])) and not np.any(np.asarray(b.R[:, 2:])), method
        np.testing.assert_allclose(b.L[..., :2], a.L, rtol=1e-7, atol=1e-9, err_msg=method)


@pytest.mark.optimized_programs  # 40 fits of 5000 x 38 to convergence: running, not compiling
def test_golub_rank_survey_recovers_cell_types():
    """Brunet et al. (2004) on Golub ALL/AML: rank 2 separates ALL from AML with at most
    2 samples off; rank 3 splits ALL-B / ALL-T / AML with at most 3 off."""
    data = jnmf.load_golub()
    Y = np.asarray(data.expression, np.float32)
    types = np.asarray(data.cell_type).astype(str)
    sv = jnmf.consensus(Y, [2, 3], restarts=20, key=123456)

    def misplaced(labels, classes):
        # each cluster takes its majority class; count the rest
        return sum(int(np.sum(labels == c)) - max(int(np.sum((labels == c) & (classes == t))) for t in
                   np.unique(classes)) for c in np.unique(labels))  # fmt: skip

    all_aml = np.where(types == "AML", "AML", "ALL")
    assert misplaced(sv[2].labels, all_aml) <= 2
    assert misplaced(sv[3].labels, types) <= 3


def test_a_stack_of_user_starts_gives_each_restart_its_own():
    """init=(L0, R0) with stacks (restarts, m, k) and (restarts, k, n): restart i starts from
    pair i (e.g. another tool's seeded replicates), equal to a single fit from that pair."""
    rng = np.random.default_rng(5)
    Y = rng.random((20, 3)) @ rng.random((3, 15))
    L0, R0 = rng.random((3, 20, 3)) + 0.1, rng.random((3, 3, 15)) + 0.1
    kw = dict(method="mu", max_iterations=20, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
        many = jnmf.fit(Y, 3, init=(L0, R0), restarts=3, return_all=True, **kw)
        for i in range(3):
            one = jnmf.fit(Y, 3, init=(L0[i], R0[i]), **kw)
            np.testing.assert_allclose(many.all_L[i], one.L, rtol=1e-12)
    with pytest.raises(ValueError, match="stack of starts must have shape"):
        jnmf.fit(Y, 3, init=(L0, R0), restarts=2)
