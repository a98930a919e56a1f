"""Consensus clustering and rank selection (Brunet et al. 2004), every rank in one program.

Each restart assigns sample j to the factor with the largest ``R[:, j]``; the
consensus matrix ``C`` is the fraction of restarts that put two samples together.
Per rank the survey reports, as R's NMF package does (``nmf(x, 2:5, nrun=50)`` and its
``summary``/``consensusmap``):

* the cophenetic correlation of the average-linkage tree of ``1 - C`` (Brunet et al.
  2004): how stable the clustering is; Brunet et al. pick the rank where it starts
  to fall;
* the dispersion ``mean(4 (C - 1/2)^2)`` (Kim & Park 2007): 1 for a crisp consensus;
* the silhouette of the consensus clustering (distance ``1 - C``);
* the consensus clustering itself (the tree cut at ``rank`` clusters), the best
  restart's objective and residual.

**One program.**  Every (rank, restart) pair runs in ONE compiled program: the
factors are padded to the largest rank with components that start at zero, and
every rule keeps a zero component exactly zero (its curvature, numerator and
gradient all vanish), so a padded fit is the fit at its own rank.  A survey over
ranks 2-10 compiles once, not once per rank.  With ``checkpoint=DIR`` the ranks run one
per chunk, through that same padded program, each saved when done so an interrupted
survey resumes (:mod:`jnmf.checkpoint`).

**Stopping.**  As R's NMF package by default (``nmf.stop.connectivity``, Brunet et
al.'s ``stopconv``): the clustering of the samples is checked every 10 iterations and a
restart stops once it was unchanged at more than ``stable_labels=40`` consecutive checks
(so after at least 420 iterations, the last 410 with stable clusters), or at
``max_iterations`` (default 2000).  Restarts that reach ``max_iterations`` count in the
consensus like the others, as in R.

Clustering uses scipy's hierarchical clustering (``linkage``, ``cophenet``, ``fcluster``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate as check
from .batch import batching_strategy, check_fits_mesh, run_restarts
from .checkpoint import checkpoint_directory, dataclass_arrays, dataclass_from_arrays, run_checkpointed
from .driver import Stopping, status_names
from .fitting import _setup, as_key, fit_losses, pipeline


@dataclasses.dataclass(frozen=True)
class Consensus:
    """The consensus of one rank's restarts.

    Attributes:
        rank: the number of factors.
        consensus: ``n x n``, the fraction of restarts that cluster samples i and j together.
        labels: the consensus clustering: the average-linkage tree of ``1 - consensus``
            cut at ``rank`` clusters (0-based labels).
        cophenetic: cophenetic correlation of that tree (Brunet et al. 2004).
        dispersion: ``mean(4 (consensus - 1/2)^2)`` (Kim & Park 2007).
        silhouette: mean silhouette of ``labels`` under the distance ``1 - consensus``.
        objectives: each restart's objective (the one its method minimizes).
        loss: each restart's ``1/2 ||Y - LR||_F^2``.
        iterations: each restart's iteration count.
        status: each restart's status code (:data:`jnmf.driver.STATUS`).
        best: index of the best restart (smallest objective).
        residual: ``||Y - LR||_F`` of the best restart.
        L, R: the best restart's factors (``m x rank``, ``rank x n``).
        history, history_stride: the best restart's objective history (see
            :class:`jnmf.driver.Result`), in the user's units.
    """

    rank: int
    consensus: np.ndarray
    labels: np.ndarray
    cophenetic: float
    dispersion: float
    silhouette: float
    objectives: np.ndarray
    loss: np.ndarray
    iterations: np.ndarray
    status: np.ndarray
    best: int
    residual: float
    L: np.ndarray
    R: np.ndarray
    history: np.ndarray
    history_stride: int

    @property
    def best_objective(self) -> float:
        return float(self.objectives[self.best])

    @property
    def status_names(self) -> np.ndarray:
        return status_names(self.status)


@dataclasses.dataclass(frozen=True)
class RankSurvey:
    """A rank survey: one :class:`Consensus` per rank, all fitted in one program.

    Attributes:
        entries: the per-rank results, in the order of ``ranks``.
        seconds: wall time of the survey (compiling included).
        compilations: how many XLA programs were compiled during the survey (the fit
            loop and the small set-up programs around it; none when everything was
            compiled before).
    """

    entries: tuple[Consensus, ...]
    seconds: float
    compilations: int

    @property
    def ranks(self) -> np.ndarray:
        return np.array([e.rank for e in self.entries])

    def _column(self, name: str) -> np.ndarray:
        return np.array([getattr(e, name) for e in self.entries])

    @property
    def cophenetic(self) -> np.ndarray:
        return self._column("cophenetic")

    @property
    def dispersion(self) -> np.ndarray:
        return self._column("dispersion")

    @property
    def silhouette(self) -> np.ndarray:
        return self._column("silhouette")

    @property
    def residual(self) -> np.ndarray:
        return self._column("residual")

    @property
    def best_objective(self) -> np.ndarray:
        return np.array([e.best_objective for e in self.entries])

    def __getitem__(self, rank: int) -> Consensus:
        for e in self.entries:
            if e.rank == rank:
                return e
        raise KeyError(f"rank {rank} is not in this survey (ranks {list(self.ranks)})")

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def connectivity(R) -> np.ndarray:
    """C_ij = 1 when samples i and j have the same dominant factor (argmax over R's rows)."""
    a = np.argmax(np.asarray(R), axis=0)
    return (a[:, None] == a[None, :]).astype(np.float64)


def _tree(C: np.ndarray):
    D = 1.0 - np.asarray(C, np.float64)
    np.fill_diagonal(D, 0.0)
    # scipy's clustering is imported here, not with jnmf: a plain fit does not need it
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    condensed = squareform(np.clip((D + D.T) / 2, 0.0, 1.0), checks=False)
    return linkage(condensed, method="average"), condensed


def cophenetic_correlation(C) -> float:
    """Pearson correlation of ``1 - C`` with the cophenetic distances of its
    average-linkage tree (Brunet et al. 2004); 1 for a perfectly crisp consensus."""
    Z, condensed = _tree(C)
    if np.std(condensed) == 0:
        return 1.0
    from scipy.cluster.hierarchy import cophenet

    c, _ = cophenet(Z, condensed)
    return float(c) if np.isfinite(c) else 1.0


def dispersion(C) -> float:
    """Dispersion of a consensus matrix, ``mean(4 (C - 1/2)^2)`` (Kim & Park 2007)."""
    C = np.asarray(C, np.float64)
    return float(np.mean(4.0 * (C - 0.5) ** 2))


def consensus_labels(C, rank: int) -> np.ndarray:
    """The average-linkage tree of ``1 - C`` cut at ``rank`` clusters (0-based labels)."""
    Z, _ = _tree(C)
    from scipy.cluster.hierarchy import fcluster

    return fcluster(Z, t=rank, criterion="maxclust").astype(np.int64) - 1


def silhouette(C, labels) -> float:
    """Mean silhouette width of ``labels`` under the distance ``1 - C`` (0 with one cluster)."""
    D = 1.0 - np.asarray(C, np.float64)
    labels = np.asarray(labels)
    clusters = np.unique(labels)
    if clusters.size < 2:
        return 0.0
    widths = []
    for i in range(D.shape[0]):
        own = labels == labels[i]
        if own.sum() <= 1:
            widths.append(0.0)
            continue
        a = D[i, own].sum() / (own.sum() - 1)
        b = min(D[i, labels == c].mean() for c in clusters if c != labels[i])
        widths.append((b - a) / max(a, b) if max(a, b) > 0 else 0.0)
    return float(np.mean(widths))


def consensus(
    Y,
    ranks: int | Sequence[int],
    *,
    restarts: int = 50,
    method="kl",
    key=None,
    max_iterations: int = 2000,
    stable_labels: int = 40,
    init: str = "uniform",
    tol: float = 0.0,
    history_size: int = 32,
    strategy: str | None = None,
    M=None,
    missing: str = "error",
    checkpoint: str | os.PathLike | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Consensus | RankSurvey:
    """Consensus clustering of ``restarts`` fits per rank, every rank in one program.

    Args:
        Y: ``m x n`` non-negative data; the n columns are the samples clustered.
        ranks: one rank (returns a :class:`Consensus`) or a sequence of ranks (returns
            a :class:`RankSurvey`).
        restarts: random restarts per rank.
        method: any method of :func:`jnmf.fit`; default the KL-divergence update
            Brunet et al. (2004) used.
        key: int seed, JAX key or NumPy Generator (one key, split per rank).
        max_iterations: iteration cap of each restart.
        stable_labels: stop a restart once its clusters (checked every 10 iterations)
            were unchanged at more than this many consecutive checks (R's NMF
            ``stopconv``, default 40: 410 iterations of stable clusters; 0 disables).
        init: the restarts' random starting factors: ``"uniform"`` (default), every
            entry uniform on ``(0, max(Y)]`` as R's NMF seeds ``nmf(x, k, seed=n)``;
            ``"random"``, jnmf's half-normal (:func:`jnmf.init.random_init`), or
            ``"sparse"``.  On Golub the half-normal starts gave a consensus dispersion
            about 0.01 lower than the uniform ones at ranks 3-5 (50 restarts).
        tol: relative objective change (0, off, as R's NMF).
        history_size: length of each restart's objective history.
        strategy: batching strategy (default: :func:`jnmf.batch.batching_strategy`
            for fits that stop unevenly: on CPU a loop of fits).
        M, missing: an elementwise loss weight (0 = missing) and the NaN policy, as for
            :func:`jnmf.fit`.
        checkpoint: a directory (created when missing) to save each finished rank in, so
            an interrupted survey resumes where it stopped (:mod:`jnmf.checkpoint`).  The
            ranks then run one after the other, one rank per chunk, all through one
            compiled program (every chunk is padded to the largest rank); rank i's
            restarts start from the same points as without a checkpoint (its key is
            ``split(key, len(ranks))[i]`` either way).  A resumed survey equals an
            uninterrupted checkpointed one bit for bit; it equals the one-program survey
            (``checkpoint=None``) bit for bit when the restarts run fit by fit
            (``strategy="map"``, the CPU default) and to rounding otherwise (a batched
            product over other batch sizes).  A directory of another run (other data,
            arguments or jnmf version) or with a damaged file raises ValueError.
        mesh: a 1-D :class:`jax.sharding.Mesh` whose axis is named ``"fits"``, to spread
            the (rank, restart) fits over its devices, Y replicated on each
            (:func:`jnmf.batch.run_restarts`: padded to a multiple of the device count,
            each device runs the one-device program on its slice, with no
            communication).  The survey equals the one-device survey (tested in float64:
            factors to 1e-10, the same best restarts and consensus clusterings).  With
            ``checkpoint`` each rank's restarts are spread so; the checkpoint does not
            record the mesh, so a survey may resume on another mesh.

    Returns:
        :class:`Consensus` or :class:`RankSurvey`.

    Raises:
        ValueError: bad input or settings, naming the argument, or a checkpoint of
            another run or damaged (naming what differs).
    """
    check.concrete_arguments("consensus", dict(Y=Y, ranks=ranks, key=key, M=M))
    if mesh is not None:
        check_fits_mesh("mesh", mesh)
    start = time.perf_counter()
    compiled_before = _cache_size()
    single = isinstance(ranks, int | np.integer)
    rank_list = [int(ranks)] if single else [int(check.positive_int("ranks", r)) for r in ranks]
    if not rank_list:
        raise ValueError("ranks must name at least one rank")
    if len(set(rank_list)) != len(rank_list):
        raise ValueError(f"ranks must be distinct, got {rank_list}")
    top = max(rank_list)
    stopping = Stopping(max_iterations=max_iterations, tol=tol, stable_labels=stable_labels)
    if init not in ("uniform", "random", "sparse"):
        raise ValueError(f"init must be 'uniform', 'random' or 'sparse' (random restarts), got {init!r}")
    directory = checkpoint_directory(checkpoint)
    s = _setup(Y, top, method, init, restarts, as_key(key), stopping, {}, M, missing)
    for r in rank_list:
        if r < 1:
            raise ValueError(f"every rank must be >= 1, got {r}")
    pipe = pipeline(s)
    strategy = strategy or batching_strategy(
        s.rule, uneven_stops=stable_labels > 0, problem=pipe.problem, rank=s.rank, fits=s.restarts
    )

    def fit_ranks(only: slice | None):
        """The restarts of ``rank_list[only]`` (None: every rank, as one program)."""
        L0, R0 = pipe.padded_starts(rank_list, init, only=only)
        return run_restarts(
            s.rule,
            pipe.scaled,
            L0,
            R0,
            stopping=stopping,
            history_size=history_size,
            strategy=strategy,
            mesh=mesh,
        )

    if directory is None:
        res = fit_ranks(None)
        compilations = _cache_size() - compiled_before
        entries = _entries(s, pipe, res, rank_list)
    else:
        # one rank per chunk: every chunk has the same padded shapes, so one compiled program
        chunks = run_checkpointed(
            directory,
            "consensus",
            s,
            method,
            [f"rank {r}" for r in rank_list],
            lambda i: dataclass_arrays(
                _entries(s, pipe, fit_ranks(slice(i, i + 1)), rank_list[i : i + 1])[0]
            ),
            ranks=rank_list,
            init=init,
            history_size=int(history_size),
            strategy=strategy,
            missing=missing,
        )
        entries = [dataclass_from_arrays(Consensus, arrays) for arrays in chunks]
        compilations = _cache_size() - compiled_before
    if single:
        return entries[0]
    return RankSurvey(tuple(entries), time.perf_counter() - start, compilations)


def _entries(s, pipe, res, rank_list: list[int]) -> list[Consensus]:
    """The :class:`Consensus` of each rank of one batch of restarts (``restarts`` per rank)."""
    L, R, objectives = pipe.unscaled(res.L, res.R, res.objective)
    L, R = np.asarray(L), np.asarray(R)
    unit = pipe.unit
    iterations = np.asarray(res.iterations)
    # the (weighted) Frobenius loss of every fit, from the data operator (sparse stays sparse)
    losses = np.asarray(
        fit_losses(pipe.problem, jnp.asarray(L, s.Y.dtype), jnp.asarray(R, s.Y.dtype)), np.float64
    )

    entries = []
    for i, r in enumerate(rank_list):
        rows = slice(i * s.restarts, (i + 1) * s.restarts)
        Lr, Rr = L[rows, :, :r], R[rows, :r, :]
        C = np.mean([connectivity(Rk) for Rk in Rr], axis=0)
        loss = losses[rows]
        obj = objectives[rows]
        best = int(np.argmin(np.where(np.isfinite(obj), obj, np.inf)))
        labels = consensus_labels(C, r)
        entries.append(
            Consensus(
                rank=r,
                consensus=C,
                labels=labels,
                cophenetic=cophenetic_correlation(C),
                dispersion=dispersion(C),
                silhouette=silhouette(C, labels),
                objectives=obj,
                loss=loss,
                iterations=iterations[rows],
                status=np.asarray(res.status)[rows],
                best=best,
                residual=float(np.sqrt(2.0 * loss[best])),
                L=Lr[best],
                R=Rr[best],
                history=np.asarray(res.history[rows][best], np.float64) * unit,
                history_stride=int(res.history_stride[rows][best]),
            )
        )
    return entries


_COMPILES = [0]


def _count_backend_compiles(event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_backend_compiles)


def _cache_size() -> int:
    """XLA compilations so far in this process (for the survey's count)."""
    return _COMPILES[0]
