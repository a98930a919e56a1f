"""Consensus programs (cNMF, Kotliar et al. 2019): planted programs, the density filter,
one compiled fit program for every rank and replicate, saving and loading.

Small shapes; the module shares one compiled fit program (same shapes, same rule) across
its tests.
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

import jnmf
import jnmf.plot
from jnmf.programs import combine, kmeans, local_density, silhouette_score
from jnmf.rules import HALS

CELLS, GENES, TRUE_K = 60, 30, 3
RANKS = (2, 3, 4)
REPLICATES = 6


def planted(seed: int = 0):
    """Cells x genes = usages @ spectra, each program owning 10 genes, plus a small floor."""
    rng = np.random.default_rng(seed)
    H = np.full((TRUE_K, GENES), 0.05)
    for p in range(TRUE_K):
        H[p, 10 * p : 10 * (p + 1)] = rng.uniform(1.0, 3.0, 10)
    W = rng.dirichlet(np.full(TRUE_K, 0.3), size=CELLS) * rng.uniform(20, 60, (CELLS, 1))
    return W @ H, W, H


def _corr(A, B):
    A = A - A.mean(axis=1, keepdims=True)
    B = B - B.mean(axis=1, keepdims=True)
    return (A / np.linalg.norm(A, axis=1, keepdims=True)) @ (B / np.linalg.norm(B, axis=1, keepdims=True)).T


@contextlib.contextmanager
def count_compilations():
    events = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


TRACES = {"n": 0}


class CountingHALS(HALS):
    """Accelerated HALS that counts how often its step is traced (how often a fit loop compiles)."""

    def step(self, problem, state):
        TRACES["n"] += 1
        return super().step(problem, state)


RULE = CountingHALS(inner_sweeps=None)


@pytest.fixture(scope="module")
def survey():
    X, W, H = planted()
    before = TRACES["n"]
    res = jnmf.programs(X, RANKS, REPLICATES, method=RULE, key=1)
    return X, W, H, res, TRACES["n"] - before


def test_planted_programs_are_recovered(survey):
    X, W, H, res, _ = survey
    e = res[TRUE_K]
    C = _corr(e.consensus, H)
    rows, cols = linear_sum_assignment(-C)
    assert C[rows, cols].min() > 0.99
    U = _corr(e.usages.T[rows], (W / W.sum(1, keepdims=True)).T[cols])
    assert np.diag(U).min() > 0.98
    # the refit spectra (input units) are the same programs
    assert np.diag(_corr(e.spectra[rows], H[cols])).min() > 0.99
    # every replicate found the same programs: a crisp clustering, and the error drops at K=3
    assert e.stability > 0.9
    assert e.error < 0.05 * res[2].error


def test_result_shapes_and_invariants(survey):
    X, _, _, res, _ = survey
    assert list(res.ranks) == list(RANKS)
    assert res.stability.shape == res.error.shape == (len(RANKS),)
    for e in res:
        K = e.rank
        assert e.spectra.shape == e.consensus.shape == (K, GENES)
        assert e.usages.shape == (CELLS, K)
        assert np.all(e.usages >= 0) and np.all(e.spectra >= 0)
        np.testing.assert_allclose(e.usages.sum(axis=1), 1.0, atol=1e-9)
        np.testing.assert_allclose(e.consensus.sum(axis=1), 1.0, atol=1e-9)
        assert e.density.shape == e.kept.shape == e.labels.shape == (REPLICATES * K,)
        assert set(np.unique(e.labels[e.kept])) == set(range(K))
        assert np.all(e.labels[~e.kept] == -1)
        assert e.replicate_spectra.shape == (REPLICATES * K, GENES)
        assert e.iterations.shape == (REPLICATES,)
        assert all(np.isfinite([e.stability, e.error]))
    assert res.best_rank in RANKS
    assert "rank\tstability" in res.table()


def test_one_compiled_fit_program_serves_every_rank_and_replicate(survey):
    X, _, _, res, traces = survey
    # the fit loop (the rule's step) was traced once: one program for all 3 ranks x 6 replicates
    assert traces == 1
    before = TRACES["n"]
    with count_compilations() as compiles:
        # new ranks (same count and largest), tolerance, cap and consensus settings
        again = jnmf.programs(
            X,
            (4, 3, 2),
            REPLICATES,
            method=RULE,
            key=2,
            tol=1e-5,
            max_iterations=500,
            density_threshold=0.3,
            density_neighbors=0.5,
        )
    assert TRACES["n"] == before
    assert compiles == [] and again.compilations == 0
    assert list(again.ranks) == [4, 3, 2]


def test_density_filter_drops_planted_outliers():
    _, W, H = planted()
    X = W @ H
    rng = np.random.default_rng(3)
    replicates = 20
    spectra = H[None] * rng.uniform(0.5, 2.0, (replicates, TRUE_K, 1))  # any row scaling
    spectra = spectra + rng.normal(0, 0.01, spectra.shape).clip(0)
    for r in range(replicates):  # each replicate finds the programs in its own order
        spectra[r] = spectra[r][rng.permutation(TRUE_K)]
    outliers = [(2, 0), (7, 1), (15, 2)]
    for r, j in outliers:
        spectra[r, j] = rng.uniform(0, 1, GENES)
    e = combine(spectra, X, density_threshold=0.5, seed=0)
    flat = [r * TRUE_K + j for r, j in outliers]
    assert not e.kept[flat].any()
    assert e.kept.sum() == replicates * TRUE_K - len(outliers)
    assert np.all(e.density[flat] > e.density[e.kept].max())
    C = _corr(e.consensus, H)
    rows, cols = linear_sum_assignment(-C)
    assert C[rows, cols].min() > 0.999
    assert e.stability > 0.9
    # without the filter the outliers are clustered too
    everything = combine(spectra, X, density_threshold=np.inf, seed=0)
    assert everything.kept.all() and everything.stability < e.stability


def test_save_and_load_round_trip(survey, tmp_path):
    *_, res, _ = survey
    path = res.save(tmp_path / "programs")
    assert path.suffix == ".npz"
    with np.load(path, allow_pickle=False):
        pass  # no pickled objects
    back = jnmf.load(path)
    assert isinstance(back, jnmf.Programs)
    np.testing.assert_array_equal(back.ranks, res.ranks)
    np.testing.assert_array_equal(back.stability, res.stability)
    np.testing.assert_array_equal(back.error, res.error)
    assert back.settings == res.settings and back.compilations == res.compilations
    for a, b in zip(res, back):
        for name in ("spectra", "consensus", "usages", "density", "kept", "labels", "iterations", "status"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        np.testing.assert_array_equal(a.replicate_spectra, b.replicate_spectra)
    assert jnmf.Programs.load(tmp_path / "programs").best_rank == res.best_rank  # the name given to save


def test_kmeans_and_silhouette_match_definitions():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    truth = np.repeat(np.arange(3), 15)
    points = centers[truth] + rng.normal(0, 0.4, (45, 2))
    labels, found, inertia = kmeans(points, 3, seed=0)
    # the clusters are the planted ones, up to relabelling
    assert all(len(set(labels[truth == t])) == 1 for t in range(3))
    np.testing.assert_allclose(inertia, np.sum((points - found[labels]) ** 2))
    D = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    s = silhouette_score(D, labels)
    # Rousseeuw (1987), point by point
    widths = []
    for i in range(45):
        own = (labels == labels[i]) & (np.arange(45) != i)
        a = D[i, own].mean()
        b = min(D[i, labels == c].mean() for c in range(3) if c != labels[i])
        widths.append((b - a) / max(a, b))
    np.testing.assert_allclose(s, np.mean(widths), rtol=1e-12)
    assert silhouette_score(D, np.zeros(45)) == 0.0
    # local density: mean distance to the nearest neighbours, itself excluded
    dens = local_density(D, 2)
    np.testing.assert_allclose(dens[0], np.sort(D[0])[1:3].mean())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(ranks=[]), "ranks"),
        (dict(ranks=[2, 2]), "ranks must be distinct"),
        (dict(ranks=[0, 2]), "ranks"),
        (dict(ranks=[2, 100]), "rank"),
        (dict(replicates=1), "replicates"),
        (dict(density_neighbors=0.0), "density_neighbors"),
        (dict(density_threshold=-1.0), "density_threshold"),
        (dict(kmeans_restarts=0), "kmeans_restarts"),
        (dict(tol=-1.0), "tol"),
        (dict(refit_to=np.ones((5, 3))), "refit_to"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    X, _, _ = planted()
    args = dict(ranks=[2, 3], replicates=4) | kwargs
    with pytest.raises(ValueError, match=match):
        jnmf.programs(X, **args)


def test_negative_counts_are_refused():
    X, _, _ = planted()
    X[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        jnmf.programs(X, [2], 4)


def test_plots(survey):
    pytest.importorskip("matplotlib")
    *_, res, _ = survey
    fig = jnmf.plot.k_selection(res, picked=TRUE_K)
    assert len(fig.axes) == 2
    fig = jnmf.plot.clustergram(res[TRUE_K])
    assert len(fig.axes) >= 2


# ----------------------------------------------------------------- the command line
def test_cli_programs_writes_every_output(tmp_path, capsys):
    from jnmf.cli import main

    X, _, _ = planted()
    path = tmp_path / "counts.npz"
    np.savez(path, counts=np.round(X))
    out = tmp_path / "out"
    argv = [str(path), "--ranks", "2-3", "--replicates", "4", "--genes", "25", "--out", str(out)]
    assert main(["programs", *argv, "--no-cache", "--quiet"]) == 0
    summary = __import__("json").loads((out / "summary.json").read_text())
    assert summary["ranks"] == [2, 3] and summary["genes_selected"] == 25
    for k in (2, 3):
        spectra = np.loadtxt(out / f"spectra_k{k}.csv", delimiter=",", skiprows=1, usecols=range(1, k + 1))
        assert spectra.shape == (25, k)
        usages = np.loadtxt(out / f"usages_k{k}.csv", delimiter=",", skiprows=1, usecols=range(1, k + 1))
        np.testing.assert_allclose(usages.sum(axis=1), 1.0, atol=1e-6)
    assert (out / "k_selection.tsv").read_text().startswith("rank\tstability")
    assert isinstance(jnmf.load(out / "programs.npz"), jnmf.Programs)
    # an existing output is not overwritten without --force
    assert main(["programs", *argv, "--no-cache"]) == 1
    assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "extra", "status", "message"),
    [
        (None, [], 1, "no such file"),
        ("a,b\n1,x\n", [], 1, "not a number"),
        ("1,2\n3,-4\n", [], 1, "negative"),
        ("1,2\n3,4\n", ["--ranks", "1-3"], 2, "at least 2"),
        ("1,2,3\n3,4,5\n", ["--ranks", "2-9"], 2, "--ranks"),
    ],
)
def test_cli_programs_bad_input_is_one_line(tmp_path, capsys, content, extra, status, message):
    from jnmf.cli import main

    path = tmp_path / "counts.csv"
    if content is not None:
        path.write_text(content)
    assert main(["programs", str(path), "--out", str(tmp_path / "o"), "--no-cache", *extra]) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jnmf: error:") and message in err


def test_prepare_keeps_variable_genes_scaled_and_sparse_sparse():
    import scipy.sparse as sp

    from jnmf.programs import prepare

    rng = np.random.default_rng(0)
    counts = rng.poisson(5.0, (200, 40)).astype(float)  # Poisson: Fano factor ~1
    counts[:, :5] = rng.negative_binomial(2, 2 / 7, (200, 5))  # mean 5, Fano factor ~3.5
    counts[:, 6] = 0  # never expressed
    X, genes, std = prepare(counts, 5)
    assert sorted(genes) == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(X.std(axis=0), 1.0)
    np.testing.assert_allclose(X * std, counts[:, genes])  # scaled, not centred
    Xs, genes_s, _ = prepare(sp.csr_matrix(counts), 5)
    assert sp.issparse(Xs)
    np.testing.assert_array_equal(genes_s, genes)
    np.testing.assert_allclose(Xs.toarray(), X)
    assert 6 not in prepare(counts, 100)[1]
    with pytest.raises(ValueError, match="genes"):
        prepare(counts, 0)
    with pytest.raises(ValueError, match="counts"):
        prepare(-counts, 5)


def test_sparse_counts_and_matrix_market_input(survey, tmp_path):
    import scipy.io
    import scipy.sparse as sp

    from jnmf.cli import main

    X, *_ = survey[:1]
    counts = np.round(X)
    counts[counts < 20] = 0  # a sparse matrix
    res = jnmf.programs(sp.csr_matrix(counts), [3], 4, refit_to=sp.csr_matrix(counts[:, :7]))
    dense = jnmf.programs(counts, [3], 4, refit_to=counts[:, :7])
    np.testing.assert_allclose(res[3].spectra, dense[3].spectra)
    assert res[3].spectra.shape == (3, 7)
    path = tmp_path / "counts.mtx"
    scipy.io.mmwrite(str(path), sp.coo_matrix(counts))
    out = tmp_path / "out"
    argv = ["programs", str(path), "--ranks", "2-3", "--replicates", "4", "--genes", "25", "--out", str(out)]
    assert main([*argv, "--no-cache", "--quiet"]) == 0
    tpm = np.loadtxt(out / "spectra_tpm_k3.csv", delimiter=",", skiprows=1, usecols=(1, 2, 3))
    assert tpm.shape == (GENES, 3) and np.all(tpm >= 0)
