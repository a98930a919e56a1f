"""Consensus gene-expression programs (cNMF; Kotliar et al. 2019), every fit in one program.

``programs(counts, ranks, replicates)`` runs the consensus NMF recipe of Kotliar et al.
(eLife 2019) on a cells x genes matrix (the AnnData orientation):

1. **Replicates.**  ``replicates`` random-start NMF fits per rank ``K`` of
   ``counts ~ W H`` (usages ``W``: cells x K, spectra ``H``: K x genes).  All
   replicates of all ranks run in ONE compiled program, as :func:`jnmf.consensus`
   does it: the factors are padded to the largest rank with zero components (every
   rule keeps a zero component zero, so a padded fit is the fit at its own rank) and
   each fit stops on its own.
2. **Density filter.**  The ``replicates * K`` spectra of a rank are L2-normalised;
   the local density of a spectrum is its mean Euclidean distance to its
   ``round(density_neighbors * replicates)`` nearest other spectra.  Spectra whose
   density exceeds ``density_threshold`` are outliers and dropped (cNMF's defaults
   0.30 and 0.5).
3. **Clustering.**  k-means with K clusters (Lloyd's algorithm from k-means++ starts,
   Arthur & Vassilvitskii 2007; the best of ``kmeans_restarts`` by inertia) on the kept
   spectra.  The consensus program of a cluster is its elementwise median, scaled to
   sum 1.  Spectra are matched across replicates and ranks only by this clustering,
   never by their index.
4. **Refits.**  With the consensus spectra fixed, the usages are refit by
   non-negative least squares (:mod:`jnmf.rules.fixed`), scaled per cell to sum 1;
   the spectra are then refit by NNLS against the input (or ``refit_to``, e.g. TPM)
   with those usages fixed, so they are in the input's units (expression per unit of
   usage).
5. **Diagnostics per K** (cNMF's K-selection plot): ``stability``, the mean silhouette
   (Rousseeuw 1987) of the k-means clustering of the kept spectra (Euclidean
   distance), and ``error``, the Frobenius error ``||X - W H||_F`` of the consensus fit
   (usages from step 4, before their per-cell scaling, with the consensus spectra).

**Stopping: what ``tol`` and ``rel_tol`` mean here.**  cNMF fits its replicates with
scikit-learn's coordinate descent at ``tol=1e-4``, a test on the size of an iteration's
updates relative to the first iteration's; there 1e-4 is a tight test (its fits ran
300-1000 iterations on simulated counts, issue 14).  jnmf's ``tol`` is another test, the
relative change of the objective between iterations, ``|f_{k-1} - f_k| <= tol f_{k-1}``:
at 1e-4 it stops HALS after ~30 iterations, far from converged, and at 1e-6 or 1e-7 (in
float32 near the objective's rounding) the replicate spectra were still 2-15x more
scattered than cNMF's.  ``programs`` therefore stops on the size of the updates too:
``rel_tol``, the relative change of the factors,
``||W_k - W_{k-1}||_F / ||W_{k-1}||_F + ||H_k - H_{k-1}||_F / ||H_{k-1}||_F < rel_tol``,
default 1e-4, with the objective test off (``tol=0``) and ``max_iterations=1000`` as
cNMF.  Measured on 3000 simulated cells x 1500 genes at K = 9 (experiments/bench_cnmf.py,
accelerated HALS, float32, 20 replicates): the replicates ran 116-182 iterations, reached
cNMF's median replicate error to 1e-7 relative, and their spectra were 6x less scattered
(mean local density 0.00028 against cNMF's 0.0016); ``rel_tol=1e-5`` gives 2e-5 at
~180 iterations.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import _validate as check
from .batch import batching_strategy, run_restarts
from .consensus import _cache_size
from .driver import Stopping, status_names
from .fitting import _setup, as_key, pipeline
from .names import PROGRAMS_MAX_ITERATIONS, PROGRAMS_METHOD, PROGRAMS_REL_TOL, PROGRAMS_TOL
from .problem import check_penalty_keywords
from .rules.fixed import nnls_fixed

__all__ = [
    "DEFAULT_METHOD",
    "DEFAULT_REL_TOL",
    "DEFAULT_TOL",
    "Programs",
    "ProgramsAtRank",
    "combine",
    "kmeans",
    "local_density",
    "prepare",
    "programs",
    "silhouette_score",
]

# The default solver and stopping of the replicates (see the module docstring for the
# measurement): accelerated HALS stopped on the relative change of the factors.
# (their values live in jnmf.names, which the command line reads without importing JAX)
DEFAULT_METHOD = PROGRAMS_METHOD
DEFAULT_TOL = PROGRAMS_TOL
DEFAULT_REL_TOL = PROGRAMS_REL_TOL
DEFAULT_MAX_ITERATIONS = PROGRAMS_MAX_ITERATIONS


# ----------------------------------------------------------------- consensus steps (numpy)
def _l2_rows(A: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    return np.divide(A, norms, out=np.zeros_like(A), where=norms > 0)


def _pairwise_distances(A: np.ndarray) -> np.ndarray:
    sq = np.sum(A * A, axis=1)
    D2 = sq[:, None] + sq[None, :] - 2.0 * (A @ A.T)
    np.fill_diagonal(D2, 0.0)
    return np.sqrt(np.maximum(D2, 0.0))


def local_density(distances: np.ndarray, neighbors: int) -> np.ndarray:
    """Mean distance of each point to its ``neighbors`` nearest other points (Kotliar et al. 2019).

    Args:
        distances: ``n x n`` symmetric distances with a zero diagonal.
        neighbors: how many nearest other points to average over (clipped to ``1..n-1``).

    Returns:
        The local density of each point (length n; larger means more isolated).
    """
    n = distances.shape[0]
    if n < 2:
        return np.zeros(n)
    neighbors = int(min(max(neighbors, 1), n - 1))
    D = distances.copy()
    np.fill_diagonal(D, np.inf)
    nearest = np.partition(D, neighbors - 1, axis=1)[:, :neighbors]
    return nearest.mean(axis=1)


def _kmeans_pp(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centers = [X[rng.integers(X.shape[0])]]
    d2 = np.sum((X - centers[0]) ** 2, axis=1)
    for _ in range(1, k):
        total = d2.sum()
        i = rng.integers(X.shape[0]) if total <= 0 else rng.choice(X.shape[0], p=d2 / total)
        centers.append(X[i])
        d2 = np.minimum(d2, np.sum((X - X[i]) ** 2, axis=1))
    return np.array(centers)


def kmeans(
    X: np.ndarray, k: int, *, restarts: int = 10, max_iterations: int = 300, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, float]:
    """k-means clustering: Lloyd's algorithm from k-means++ starts (Arthur & Vassilvitskii 2007).

    Args:
        X: ``n x d`` points.
        k: the number of clusters (``1 <= k <= n``).
        restarts: k-means++ starts; the clustering with the smallest inertia is kept.
        max_iterations: Lloyd iterations per start.
        seed: the seed of the starts.

    Returns:
        ``(labels, centers, inertia)``: 0-based labels (length n), ``k x d`` centers and the
        sum of squared distances of the points to their centers.  An empty cluster is
        re-seeded at the point farthest from its center, so every label is used.
    """
    X = np.asarray(X, np.float64)
    n = X.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}), got {k}")
    rng = np.random.default_rng(seed)
    sq = np.sum(X * X, axis=1)
    best = None
    for _ in range(restarts):
        C = _kmeans_pp(X, k, rng)
        labels = None
        for _ in range(max_iterations):
            d2 = np.maximum(sq[:, None] - 2 * X @ C.T + np.sum(C * C, axis=1)[None, :], 0.0)
            new = np.argmin(d2, axis=1)
            counts = np.bincount(new, minlength=k)
            for j in np.flatnonzero(counts == 0):  # re-seed an empty cluster
                far = int(np.argmax(d2[np.arange(n), new]))
                new[far] = j
                d2[far, :] = np.inf
                d2[far, j] = 0.0
            if labels is not None and np.array_equal(new, labels):
                break
            labels = new
            onehot = np.zeros((n, k))
            onehot[np.arange(n), labels] = 1.0
            C = (onehot.T @ X) / onehot.sum(axis=0)[:, None]
        inertia = float(np.sum((X - C[labels]) ** 2))
        if best is None or inertia < best[2]:
            best = (labels.copy(), C.copy(), inertia)
    return best


def silhouette_score(distances: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette width of a clustering (Rousseeuw 1987).

    ``s_i = (b_i - a_i) / max(a_i, b_i)`` with ``a_i`` the mean distance of point i to
    the other members of its cluster and ``b_i`` the smallest mean distance to the
    members of another cluster; ``s_i = 0`` for a point alone in its cluster.

    Args:
        distances: ``n x n`` symmetric distances with a zero diagonal.
        labels: the cluster of each point.

    Returns:
        The mean of ``s_i`` (0 when there are fewer than 2 clusters).
    """
    labels = np.asarray(labels)
    clusters, index = np.unique(labels, return_inverse=True)
    if clusters.size < 2:
        return 0.0
    n = labels.size
    onehot = np.zeros((n, clusters.size))
    onehot[np.arange(n), index] = 1.0
    sizes = onehot.sum(axis=0)
    sums = distances @ onehot  # n x clusters: total distance to each cluster's members
    own = sizes[index]
    a = sums[np.arange(n), index] / np.maximum(own - 1, 1)
    others = np.where(onehot > 0, np.inf, sums / sizes[None, :])
    b = others.min(axis=1)
    top = np.maximum(a, b)
    s = np.where((own > 1) & (top > 0), (b - a) / np.where(top > 0, top, 1.0), 0.0)
    return float(np.mean(s))


# ----------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class ProgramsAtRank:
    """The consensus programs of one rank K (Kotliar et al. 2019).

    Attributes:
        rank: K.
        spectra: ``K x genes``, the programs refit in the input's units (or ``refit_to``'s):
            expression per unit of usage.
        consensus: ``K x genes``, the median spectrum of each cluster of replicate
            spectra, scaled to sum 1 (the spectra the usages were fitted with).
        usages: ``cells x K``, each cell's usage of each program, scaled to sum 1 per
            cell (a cell with no usage stays 0).
        stability: silhouette of the k-means clustering of the kept replicate spectra.
        error: ``||X - W H||_F`` of the consensus fit (``W``: the NNLS usages before
            their per-cell scaling, ``H``: ``consensus``).
        density: local density of every replicate spectrum (``replicates * K``).
        kept: which replicate spectra passed the density filter.
        labels: the k-means cluster of every replicate spectrum, -1 where filtered out;
            cluster j is program j.
        replicate_spectra: the L2-normalised replicate spectra (``replicates * K x
            genes``, replicate by replicate), or None when not kept.
        iterations, status, objectives: of each replicate fit.
    """

    rank: int
    spectra: np.ndarray
    consensus: np.ndarray
    usages: np.ndarray
    stability: float
    error: float
    density: np.ndarray
    kept: np.ndarray
    labels: np.ndarray
    iterations: np.ndarray
    status: np.ndarray
    objectives: np.ndarray
    replicate_spectra: np.ndarray | None = None

    @property
    def status_names(self) -> np.ndarray:
        return status_names(self.status)


_RANK_ARRAYS = (
    "spectra",
    "consensus",
    "usages",
    "density",
    "kept",
    "labels",
    "iterations",
    "status",
    "objectives",
    "replicate_spectra",
)


@dataclasses.dataclass(frozen=True)
class Programs:
    """Consensus programs over a range of ranks (:func:`programs`).

    Attributes:
        entries: one :class:`ProgramsAtRank` per rank, in the order of ``ranks``.
        seconds: wall time of the factorization (replicates, compiling included) and of
            the consensus steps, ``{"factorize": s, "consensus": s}``.
        compilations: XLA programs compiled during the call (the fit loop and the small
            programs around it; 0 when all were compiled before).
        settings: the arguments, as JSON values.
    """

    entries: tuple[ProgramsAtRank, ...]
    seconds: dict
    compilations: int
    settings: dict

    @property
    def ranks(self) -> np.ndarray:
        return np.array([e.rank for e in self.entries])

    @property
    def stability(self) -> np.ndarray:
        return np.array([e.stability for e in self.entries])

    @property
    def error(self) -> np.ndarray:
        return np.array([e.error for e in self.entries])

    @property
    def best_rank(self) -> int:
        """The rank of the most stable clustering (ties: the smallest rank)."""
        return int(self.ranks[int(np.argmax(self.stability))])

    def __getitem__(self, rank: int) -> ProgramsAtRank:
        for e in self.entries:
            if e.rank == rank:
                return e
        raise KeyError(f"rank {rank} is not in this result (ranks {list(self.ranks)})")

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def table(self) -> str:
        """The K-selection table as tab-separated text (rank, stability, error, kept fraction)."""
        lines = ["rank\tstability\terror\tkept"]
        for e in self.entries:
            lines.append(f"{e.rank}\t{e.stability:.6f}\t{e.error:.6g}\t{np.mean(e.kept):.4f}")
        return "\n".join(lines) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        """Write to one ``.npz`` file (no pickle); read back with :meth:`load` or :func:`jnmf.load`.

        Args:
            path: the file (``.npz`` is appended when it has another suffix).

        Returns:
            The path written.
        """
        from .result_files import FORMAT_VERSION, META_KEY, _versions, npz_path

        arrays = {}
        for e in self.entries:
            for name in _RANK_ARRAYS:
                value = getattr(e, name)
                if value is not None:
                    arrays[f"k{e.rank}__{name}"] = np.asarray(value)
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": "Programs",
            "ranks": [int(e.rank) for e in self.entries],
            "stability": [float(e.stability) for e in self.entries],
            "error": [float(e.error) for e in self.entries],
            "seconds": self.seconds,
            "compilations": int(self.compilations),
            "settings": self.settings,
            "versions": _versions(),
        }
        path = npz_path(path)
        np.savez(path, **arrays, **{META_KEY: np.array(json.dumps(meta, allow_nan=True))})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Programs:
        """Read a file written by :meth:`save`.

        Args:
            path: the ``.npz`` file (or the name given to :meth:`save`, without ``.npz``).

        Returns:
            The :class:`Programs`.

        Raises:
            ValueError: not a saved :class:`Programs` (or written by a newer jnmf).
        """
        from .result_files import META_KEY, read_meta, saved_path

        path = saved_path(path)
        meta = read_meta(path)
        if meta.get("kind") != "Programs":
            raise ValueError(f"{path} holds a {meta.get('kind')}, not jnmf Programs")
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files if name != META_KEY}
        entries = []
        for rank, stab, err in zip(meta["ranks"], meta["stability"], meta["error"]):
            values = {name: arrays.get(f"k{rank}__{name}") for name in _RANK_ARRAYS}
            entries.append(ProgramsAtRank(rank=int(rank), stability=float(stab), error=float(err), **values))
        return cls(tuple(entries), dict(meta["seconds"]), int(meta["compilations"]), dict(meta["settings"]))


# ----------------------------------------------------------------- the surface
def _rank_list(ranks) -> list[int]:
    if isinstance(ranks, int | np.integer) and not isinstance(ranks, bool):
        ranks = [int(ranks)]
    try:
        out = [check.positive_int("ranks", r) for r in ranks]
    except TypeError:
        raise ValueError(f"ranks must be a positive int or a sequence of them, got {ranks!r}") from None
    if not out:
        raise ValueError("ranks must name at least one rank")
    if len(set(out)) != len(out):
        raise ValueError(f"ranks must be distinct, got {out}")
    return out


def combine(
    spectra,
    counts,
    *,
    density_neighbors: float = 0.30,
    density_threshold: float = 0.5,
    kmeans_restarts: int = 10,
    refit_to=None,
    keep_replicates: bool = True,
    seed: int = 0,
) -> ProgramsAtRank:
    """The consensus of one rank's replicate spectra (steps 2-5 of Kotliar et al. 2019).

    Args:
        spectra: ``replicates x K x genes`` replicate spectra (any positive row scaling).
        counts: the ``cells x genes`` matrix they were fitted to (for the usage refit).
        density_neighbors, density_threshold, kmeans_restarts, refit_to, keep_replicates:
            as for :func:`programs`.
        seed: the seed of the k-means starts.

    Returns:
        A :class:`ProgramsAtRank` (``iterations``, ``status`` and ``objectives`` empty).
        When fewer than K spectra pass the density filter, all are clustered, with a
        warning.
    """
    import scipy.sparse as sp  # imported on use: a plain fit does not need scipy

    spectra = np.asarray(spectra, np.float64)
    if spectra.ndim != 3:
        raise ValueError(f"spectra must be replicates x K x genes, got shape {spectra.shape}")
    replicates, K, genes = spectra.shape
    X = np.asarray(counts, np.float64)
    if X.ndim != 2 or X.shape[1] != genes:
        raise ValueError(f"counts must be cells x {genes} genes, got shape {X.shape}")
    Z = X if refit_to is None else (refit_to if sp.issparse(refit_to) else np.asarray(refit_to, np.float64))
    S = _l2_rows(spectra.reshape(replicates * K, genes))
    D = _pairwise_distances(S)
    density = local_density(D, int(round(density_neighbors * replicates)))
    kept = density < density_threshold
    if kept.sum() < K:
        warnings.warn(
            f"rank {K}: only {int(kept.sum())} of {kept.size} replicate spectra pass "
            f"density_threshold={density_threshold}; clustering all of them instead",
            stacklevel=check.user_stacklevel(),
        )
        kept = np.ones_like(kept)
    idx = np.flatnonzero(kept)
    km, _, _ = kmeans(S[idx], K, restarts=kmeans_restarts, seed=seed)
    labels = np.full(kept.size, -1)
    labels[idx] = km
    stability = silhouette_score(D[np.ix_(idx, idx)], km)
    median = np.stack([np.median(S[idx][km == j], axis=0) for j in range(K)])
    total = median.sum(axis=1, keepdims=True)
    median = np.divide(median, total, out=np.zeros_like(median), where=total > 0)
    W = nnls_fixed(X, median)  # usages: min ||X - W H|| with H = median fixed
    error = float(np.linalg.norm(X - W @ median))
    usage_total = W.sum(axis=1, keepdims=True)
    U = np.divide(W, usage_total, out=np.zeros_like(W), where=usage_total > 0)
    H = nnls_fixed(Z.T, U.T).T  # spectra in input units: min ||Z - U H||
    empty = np.zeros(0)
    return ProgramsAtRank(
        rank=K,
        spectra=H,
        consensus=median,
        usages=U,
        stability=stability,
        error=error,
        density=density,
        kept=kept,
        labels=labels,
        iterations=empty.astype(np.int32),
        status=empty.astype(np.int32),
        objectives=empty,
        replicate_spectra=S if keep_replicates else None,
    )


def prepare(counts, genes: int = 2000) -> tuple[object, np.ndarray, np.ndarray]:
    """cNMF-style input: the most variable genes, each scaled to unit variance, not centred.

    The rule (documented, close to but not cNMF's v-score): every cell is scaled to the
    median library size; per gene, the Fano factor ``var / mean`` of those normalised
    counts is computed, and the ``genes`` genes with the largest Fano factor (among
    genes with a non-zero mean) are kept.  Their raw counts are then divided by their
    standard deviation over cells (Kotliar et al. 2019 scale the raw counts of the
    selected genes the same way).  A scipy.sparse input stays sparse.

    Args:
        counts: ``cells x genes`` non-negative counts (NumPy or scipy.sparse).
        genes: how many genes to keep (all with non-zero variance when there are fewer).

    Returns:
        ``(X, selected, std)``: the scaled ``cells x n`` matrix (sparse CSR when the input
        was sparse), the indices of the selected genes (by decreasing Fano factor) and the
        standard deviation each was divided by.

    Raises:
        ValueError: ``counts`` is not a non-negative 2-d matrix, ``genes < 1``, or no gene
            varies.
    """
    import scipy.sparse as sp  # imported on use: a plain fit does not need scipy

    genes = check.positive_int("genes", genes)
    sparse = sp.issparse(counts)
    if sparse:
        C = sp.csr_matrix(counts, dtype=np.float64)
        if C.ndim != 2 or (C.nnz and C.data.min() < 0) or not np.all(np.isfinite(C.data)):
            raise ValueError("counts must be a 2-d matrix of finite non-negative values")
    else:
        C = np.asarray(counts, np.float64)
        if C.ndim != 2 or not np.all(np.isfinite(C)) or (C.size and C.min() < 0):
            raise ValueError("counts must be a 2-d matrix of finite non-negative values")
    library = np.asarray(C.sum(axis=1)).ravel()
    target = np.median(library[library > 0]) if np.any(library > 0) else 1.0
    factor = np.divide(target, library, out=np.zeros_like(library), where=library > 0)

    def moments(A, weights):
        A = sp.diags(weights) @ A if sparse else A * weights[:, None]
        mean = np.asarray(A.mean(axis=0)).ravel()
        square = np.asarray((A.multiply(A) if sparse else A * A).mean(axis=0)).ravel()
        return mean, np.maximum(square - mean * mean, 0.0)

    mean, var = moments(C, factor)
    fano = np.divide(var, mean, out=np.full_like(mean, -np.inf), where=mean > 0)
    _, raw_var = moments(C, np.ones_like(library))
    candidates = np.flatnonzero((mean > 0) & (raw_var > 0))
    if candidates.size == 0:
        raise ValueError("counts: no gene varies across cells")
    order = candidates[np.argsort(-fano[candidates], kind="stable")]
    selected = order[:genes]
    std = np.sqrt(raw_var[selected])
    if sparse:
        X = (C[:, selected] @ sp.diags(1.0 / std)).tocsr()
    else:
        X = C[:, selected] / std[None, :]
    return X, selected, std


def programs(
    counts,
    ranks: int | Sequence[int],
    replicates: int = 100,
    *,
    method=DEFAULT_METHOD,
    tol: float = DEFAULT_TOL,
    rel_tol: float = DEFAULT_REL_TOL,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    density_neighbors: float = 0.30,
    density_threshold: float = 0.5,
    kmeans_restarts: int = 10,
    key=None,
    refit_to=None,
    keep_replicates: bool = True,
    strategy: str | None = None,
    **penalties,
) -> Programs:
    """Consensus gene-expression programs (cNMF, Kotliar et al. 2019) for each rank in ``ranks``.

    Args:
        counts: ``cells x genes`` non-negative matrix to factor (NumPy, JAX or
            scipy.sparse, which is densified for the fits); typically cNMF's prepared
            matrix (:func:`prepare`: highly variable genes, each scaled to unit variance
            without centring).
        ranks: one rank K or a sequence of distinct ranks.
        replicates: random-start fits per rank (cNMF's default 100).
        method: any method of :func:`jnmf.fit` (default accelerated HALS; ``"kl"`` or
            ``"beta"`` for a divergence).  The replicates use it; the usage and spectra
            refits of the consensus are least squares whatever the method, as cNMF's.
        tol: relative objective change that stops a replicate (default 0, off; see the
            module docstring: not scikit-learn's ``tol``).
        rel_tol: relative change of the factors that stops a replicate (default 1e-4:
            replicates as converged as cNMF's scikit-learn fits at its ``tol=1e-4``).
        max_iterations: iteration cap of each replicate.
        density_neighbors: fraction of the replicates whose nearest spectra define a
            spectrum's local density (cNMF's default 0.30).
        density_threshold: spectra with a larger local density are dropped (cNMF's
            default 0.5; ``inf`` keeps all; the L2-normalised distances are at most 2).
        kmeans_restarts: k-means++ starts of the clustering.
        key: int seed, JAX key or NumPy Generator of the replicates' starts (default 0).
        refit_to: optional ``cells x G`` matrix (e.g. TPM over all genes; scipy.sparse stays
            sparse) to refit the final spectra against; default ``counts``.
        keep_replicates: keep the L2-normalised replicate spectra in the result (for
            :func:`jnmf.plot.clustergram`).
        strategy: batching strategy of the replicates (default:
            :func:`jnmf.batch.batching_strategy` for fits that stop unevenly).
        **penalties: penalties of eq. 3 (``lambda_1R`` for L1 on the spectra, ...), as
            for :func:`jnmf.fit`.

    Returns:
        A :class:`Programs`: per rank, spectra, usages, stability, error, density and
        clustering.

    Raises:
        ValueError: bad input or settings, naming the argument (before compiling).
    """
    import scipy.sparse as sp  # imported on use: a plain fit does not need scipy

    check_penalty_keywords("programs", penalties, programs)
    check.concrete_arguments("programs", dict(counts=counts, ranks=ranks, key=key, **penalties))
    start = time.perf_counter()
    compiled_before = _cache_size()
    rank_list = _rank_list(ranks)
    top = max(rank_list)
    replicates = check.positive_int("replicates", replicates)
    if replicates < 2:
        raise ValueError(f"replicates must be at least 2 for a consensus, got {replicates}")
    check.in_interval("density_neighbors", density_neighbors, 0.0, 1.0, lo_open=True, hi_open=False)
    if not (isinstance(density_threshold, int | float | np.floating) and density_threshold > 0):
        raise ValueError(
            f"density_threshold must be a positive number (inf: no filter), got {density_threshold!r}"
        )
    kmeans_restarts = check.positive_int("kmeans_restarts", kmeans_restarts)
    if sp.issparse(counts):
        # the replicates and the consensus run on the dense matrix: after a selection of
        # variable genes it is typically 25-50% non-zero
        counts = counts.toarray()
    stopping = Stopping(max_iterations=max_iterations, tol=tol, rel_tol=rel_tol).validate()
    s = _setup(counts, top, method, "random", replicates, as_key(key), stopping, {})
    cells, genes = s.Y.shape
    if not np.any(s.Y):
        raise ValueError("counts is all zero: there are no programs to find")
    Z = None
    if refit_to is not None:
        Z = refit_to if sp.issparse(refit_to) else check.data("refit_to", refit_to)
        if Z.shape[0] != cells:
            raise ValueError(f"refit_to must have one row per cell ({cells}), got shape {Z.shape}")
    pipe = pipeline(s, **penalties)
    L0, R0 = pipe.padded_starts(rank_list, "random")
    strategy = strategy or batching_strategy(s.rule, uneven_stops=True)
    res = run_restarts(s.rule, pipe.scaled, L0, R0, stopping=stopping, history_size=1, strategy=strategy)
    L, R, objectives = pipe.unscaled(res.L, res.R, res.objective)
    R = np.asarray(R, np.float64)
    iterations = np.asarray(res.iterations)
    status = np.asarray(res.status)
    factorized = time.perf_counter()

    X64 = np.asarray(s.Y, np.float64)
    Z64 = X64 if Z is None else (Z if sp.issparse(Z) else np.asarray(Z, np.float64))
    entries = []
    for i, K in enumerate(rank_list):
        rows = slice(i * replicates, (i + 1) * replicates)
        entry = combine(
            R[rows, :K, :],
            X64,
            density_neighbors=density_neighbors,
            density_threshold=density_threshold,
            kmeans_restarts=kmeans_restarts,
            refit_to=Z64,
            keep_replicates=keep_replicates,
            seed=i,
        )
        entries.append(
            dataclasses.replace(
                entry, iterations=iterations[rows], status=status[rows], objectives=objectives[rows]
            )
        )
    settings = {
        "ranks": rank_list,
        "replicates": replicates,
        "method": method if isinstance(method, str) else s.rule.method_name,
        "tol": float(tol),
        "rel_tol": float(rel_tol),
        "max_iterations": int(max_iterations),
        "density_neighbors": float(density_neighbors),
        "density_threshold": float(density_threshold),
        "kmeans_restarts": kmeans_restarts,
        "strategy": strategy,
        "dtype": str(s.Y.dtype),
        "shape": [cells, genes],
        "penalties": {k: float(v) for k, v in penalties.items() if np.ndim(v) == 0},
    }
    done = time.perf_counter()
    seconds = {"factorize": factorized - start, "consensus": done - factorized}
    return Programs(tuple(entries), seconds, _cache_size() - compiled_before, settings)
