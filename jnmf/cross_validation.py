"""Cross-validated rank selection, every (rank, repeat, restart) fit in one program.

Two schemes:

* **speckled** hold-out (as RcppML's ``crossValidate``): each repeat hides a random
  ``holdout`` fraction of the entries, fits on the rest through the elementwise loss
  weight ``M`` (held-out entries get weight 0, see :func:`jnmf.fit`), and scores the
  mean squared error of the model on the hidden entries.  An over-large rank fits the
  noise of the observed entries and predicts the hidden ones worse.
* **bicv**, bi-cross-validation (Owen & Perry 2009): each repeat holds out a block of
  rows I and a block of columns J.  Writing ``Y = [[A, B], [C, D]]`` with ``A = Y[I, J]``
  the held-out block (so C holds A's rows, B its columns), the rank-k NMF
  ``D ~ L_D R_D`` of the rows and columns kept is extended by two least-squares
  problems, ``C ~ L_C R_D`` (for ``L_C``) and ``B ~ L_D R_B`` (for ``R_B``), and ``A`` is
  predicted as ``L_C R_B = C (L_D R_D)^+ B``: Owen & Perry's ``B D_k^+ C`` (their
  lettering swaps B and C) with the NMF fit as ``D_k`` (``extension="pinv"``).
  ``extension="nnls"`` solves the two problems with non-negative least squares (the
  NMF fold-in of their sec. 5, and jnmf's default before issue 15).  The score is the
  mean squared error on A.

**One program.**  The fits of all ranks are padded to the largest rank with components
that start (and stay) at zero, as in :func:`jnmf.consensus`; the repeats are the
settings of a grid over ``M`` (:func:`jnmf.batch.run_grid`); so ranks x repeats x
restarts compile once (with ``checkpoint=DIR``, one rank per chunk through one padded
program, each saved when done: :mod:`jnmf.checkpoint`).  Per (rank, repeat) the restart
with the lowest training objective is scored.  The selected rank is the smallest rank
whose mean test error over repeats is within one standard error of the lowest (``rule="1se"``, the usual guard
against noise in the curve), or the rank of the lowest mean (``rule="min"``).

**Why these defaults** (issue 15: on rank-6 data, 100 x 80 with 2% noise, speckled
picked 7 and bicv 6, and other seeds swapped them).  Past the true rank r the held-out
error rises slowly, by ~1-4% per extra component at this size, so anything that moves
the curve by a few percent flips the pick:

* *The NNLS fold-in.*  The NMF of D is not unique (dense factors: ``L_D Q``,
  ``Q^-1 R_D`` fit as well wherever both stay non-negative), and the fold-in
  ``C ~ L_C R_D`` with ``L_C >= 0`` cannot follow ``Q``.  On the issue's data the rank-6
  fits of D from random starts reached the training error of a fit started at the true
  factors, yet their NNLS-predicted block's error was 9-24x the least-squares
  prediction's (4 data sets), and higher than at ranks 7-9: past r the curve was noise
  (from the true factors the NNLS error was at the least-squares level in 3 of the 4).
  The least-squares prediction depends on ``L_D R_D`` only: at the noise level from
  either start, and rising past r (Owen & Perry's over-fitting through ``D_k^+``).
* *Unconverged fits.*  Under the hold-out's elementwise weight accelerated HALS runs
  without extrapolation, and on rank-r data its fits of rank >= r crept: they stopped
  at the 2000-iteration cap (issue's data, float32: every rank 6-9 had a fit there) or
  by ``tol`` while still moving (float64, one mask: rank 6 after 1909 iterations with
  its test error 0.9% above its converged value; rank 7 at the cap, 3% below its
  converged, over-fitted, value), as large a change as the gap being measured.  ANLS
  (exact per-row solves) stopped by its tolerance there (at most 1122 iterations), in
  1.8-4x less CPU time per call (Golub 5000 x 38 and 100 x 80), hence ``method="anls"``.

Measured with experiments/cv_rank_accuracy.py (the issue's data generator, 100 x 80,
r = 3, 6, 9, noise 2% and 5%, 10 data seeds each, ranks r - 3 .. r + 3, key 0, float32,
2026-12-04, load 9-13): how often the ``"1se"`` rule picked r, of 20 data sets per r,
and the CPU seconds of all 60 calls:

    speckled, ANLS (default)                    r = 3: 20, 6: 20, 9: 20    168 s
    speckled, accelerated HALS (before)         r = 3: 20, 6: 20, 9: 17    298 s
    bicv, ANLS, least squares (default)         r = 3: 20, 6: 20, 9: 20    108 s
    bicv, accelerated HALS, least squares       r = 3: 18, 6: 16, 9:  4    263 s
    bicv, accelerated HALS, NNLS (before)       r = 3: 14, 6: 11, 9: 13    285 s

The least-squares prediction needs converged fits: from accelerated HALS's creeping
fits its curve past r jumped 100-800x at some ranks (``D_k^+`` of a poor fit); the NNLS
fold-in from converged ANLS fits picked r in 3 of 18.  On the tests' generator
(Gaussian noise, 5 seeds) both defaults picked r in 30 of 30, the old bicv in 15.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _validate as check
from .batch import batching_strategy, check_fits_mesh, run_grid
from .checkpoint import checkpoint_directory, run_checkpointed
from .consensus import _cache_size
from .data import SparseData, is_sparse_input
from .driver import Stopping
from .fitting import _setup, as_key, padded_starting_points, pipeline
from .nnls import nnls_bpp_columns
from .problem import scale_factors

SCHEMES = ("speckled", "bicv")
SELECTION_RULES = ("min", "1se")
EXTENSIONS = ("pinv", "nnls")
DEFAULT_HOLDOUT = {"speckled": 0.05, "bicv": 0.5}
# the fits' method (see cross_validate_rank's ``method``: ANLS converges under the hold-out's
# weight where accelerated HALS crawls)
DEFAULT_CV_METHOD = "anls"


@dataclasses.dataclass(frozen=True)
class RankCV:
    """The result of :func:`cross_validate_rank`.

    Attributes:
        ranks: the ranks tried (R,).
        test_error: mean squared error on the held-out entries, ``repeats x R`` (the
            restart with the lowest training objective of each rank and repeat).
        train_error: mean squared error on the entries fitted, ``repeats x R``.
        selected_rank: the rank chosen by ``rule``.
        rule: ``"min"`` or ``"1se"``.
        scheme: ``"speckled"`` or ``"bicv"``.
        holdout: the fraction held out (of entries; of rows and of columns for bicv).
        iterations, status: per fit, ``repeats x R x restarts``.
        seconds: wall time of the whole call.
        compilations: XLA compilations the call triggered (1 program for the fits).
    """

    ranks: np.ndarray
    test_error: np.ndarray
    train_error: np.ndarray
    selected_rank: int
    rule: str
    scheme: str
    holdout: float
    iterations: np.ndarray
    status: np.ndarray
    seconds: float
    compilations: int

    @property
    def mean_test_error(self) -> np.ndarray:
        return self.test_error.mean(axis=0)

    @property
    def std_test_error(self) -> np.ndarray:
        """Spread of the test error over repeats (standard deviation; 0 for one repeat)."""
        return (
            self.test_error.std(axis=0, ddof=1) if self.test_error.shape[0] > 1 else np.zeros(len(self.ranks))
        )

    def table(self) -> str:
        """A plain-text table: rank, mean and spread of the test error, train error."""
        lines = [f"{'rank':>4}  {'test MSE':>11}  {'+/- sd':>10}  {'train MSE':>11}"]
        for r, mu, sd, tr in zip(
            self.ranks, self.mean_test_error, self.std_test_error, self.train_error.mean(axis=0), strict=True
        ):
            mark = "  <- selected" if r == self.selected_rank else ""
            lines.append(f"{r:>4d}  {mu:11.4g}  {sd:10.3g}  {tr:11.4g}{mark}")
        return "\n".join(lines)


def select_rank(ranks: np.ndarray, test_error: np.ndarray, rule: str = "min") -> int:
    """The rank with the lowest mean test error (``"min"``), or the smallest rank within
    one standard error of it (``"1se"``).

    Args:
        ranks: the ranks (R,), ascending.
        test_error: the test errors, ``repeats x R``.
        rule: ``"min"`` or ``"1se"`` (with one repeat, ``"1se"`` is ``"min"``).

    Returns:
        The selected rank.
    """
    mean = test_error.mean(axis=0)
    best = int(np.nanargmin(mean))
    if rule == "min" or test_error.shape[0] < 2:
        return int(ranks[best])
    se = test_error.std(axis=0, ddof=1) / math.sqrt(test_error.shape[0])
    ok = mean <= mean[best] + se[best]
    return int(ranks[int(np.argmax(ok))])


def _speckled_masks(key, shape, holdout: float, repeats: int, observed: np.ndarray | None) -> np.ndarray:
    """``repeats`` training masks hiding a random ``holdout`` fraction of the observed entries."""
    masks = []
    for k in jax.random.split(key, repeats):
        hide = np.asarray(jax.random.uniform(k, shape)) < holdout
        train = ~hide if observed is None else (~hide & observed)
        masks.append(train)
    return np.stack(masks)


def _block_indices(key, m: int, n: int, holdout: float, repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out rows (repeats x |I|) and columns (repeats x |J|), the same sizes per repeat."""
    rows = max(1, min(m - 1, round(holdout * m)))
    cols = max(1, min(n - 1, round(holdout * n)))
    I, J = [], []
    for k in jax.random.split(key, repeats):
        kr, kc = jax.random.split(k)
        I.append(np.sort(np.asarray(jax.random.permutation(kr, m))[:rows]))
        J.append(np.sort(np.asarray(jax.random.permutation(kc, n))[:cols]))
    return np.stack(I), np.stack(J)


def _fold_in(gram, linear, extension: str):
    """The columns x of ``min 1/2 x' gram x - linear' x``: least squares through the
    pseudo-inverse (``"pinv"``; zero padded or collapsed components get 0) or non-negative
    least squares (``"nnls"``)."""
    if extension == "nnls":
        return nnls_bpp_columns(gram, -linear)[0]
    return jnp.linalg.pinv(gram, hermitian=True) @ linear


@eqx.filter_jit
def _bicv_predictions(Y, L, R, I, J, keep_rows, keep_cols, extension: str = "pinv"):
    """Owen & Perry's (2009) extension ``A_hat = L_C R_B`` for every fit (see the module
    docstring; ``extension`` chooses how ``L_C`` and ``R_B`` are solved for).

    ``L``/``R`` are (repeats, fits, ., .); ``I``/``J`` the held-out rows and columns and
    ``keep_rows``/``keep_cols`` the kept ones, per repeat.  Returns (repeats, fits, |I|, |J|).
    """

    def one(Y_rep, L, R, I, J, keep_rows, keep_cols):
        R_D = R[:, keep_cols]  # k x (n - |J|)
        L_D = L[keep_rows]  # (m - |I|) x k
        C = Y_rep[I][:, keep_cols]  # |I| x (n - |J|)
        B = Y_rep[keep_rows][:, J]  # (m - |I|) x |J|
        # C ~ L_C R_D:  min 1/2 x' (R_D R_D') x - (R_D c)' x for each row c of C
        L_Ct = _fold_in(R_D @ R_D.T, R_D @ C.T, extension)  # k x |I|
        # B ~ L_D R_B:  columns of R_B
        R_B = _fold_in(L_D.T @ L_D, L_D.T @ B, extension)  # k x |J|
        return L_Ct.T @ R_B

    per_fit = jax.vmap(one, in_axes=(None, 0, 0, None, None, None, None))
    return jax.vmap(per_fit, in_axes=(None, 0, 0, 0, 0, 0, 0))(Y, L, R, I, J, keep_rows, keep_cols)


def cross_validate_rank(
    Y,
    ranks: Sequence[int],
    *,
    scheme: str = "speckled",
    holdout: float | None = None,
    repeats: int = 3,
    restarts: int = 2,
    method=DEFAULT_CV_METHOD,
    key=None,
    max_iterations: int = 2000,
    tol: float = 1e-5,
    rule: str = "1se",
    missing: str = "error",
    strategy: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    mesh: jax.sharding.Mesh | None = None,
    extension: str = "pinv",
) -> RankCV:
    """Pick the rank of ``Y ~ L R`` by cross-validation, all fits in one compiled program.

    Args:
        Y: ``m x n`` non-negative data (NaN entries are missing with ``missing="nan"``;
            they are never fitted nor scored), dense or sparse (any scipy.sparse format,
            BCOO / BCSR; never densified).  Sparse speckled hold-out hides a ``holdout``
            fraction of the stored entries and as many unstored zeros, and scores the
            mean squared error of a uniformly drawn entry by strata; with
            ``missing="unstored"`` only stored entries are fitted, held out and scored.
            Sparse bicv holds out rows and columns through diagonal loss weights (unstored
            zeros only).
        ranks: the ranks to compare (distinct positive integers).
        scheme: ``"speckled"`` (random entries held out; RcppML's approach) or ``"bicv"``
            (bi-cross-validation, Owen & Perry 2009: a block of rows and columns).
        holdout: the fraction held out: of the entries for speckled (default 0.05), of
            the rows and of the columns for bicv (default 0.5, Owen & Perry's 2 x 2 folds).
        repeats: independent hold-outs (each its own mask or blocks).
        restarts: random starts per rank and repeat; the lowest training objective is scored.
        method: a Frobenius method of :func:`jnmf.fit` that supports elementwise weights
            (every Frobenius method does).  Default ``"anls"``: with the hold-out's
            elementwise weight, accelerated HALS runs without extrapolation and its fits
            of rank >= r stopped at the iteration cap, under-fitted, on rank-r data, which
            tipped the picks (see the module docstring); ANLS converges there in fewer
            and cheaper iterations.
        key: int seed, JAX key or NumPy Generator.
        max_iterations, tol: stopping of each fit (relative objective change ``tol``).
        rule: ``"1se"`` (default: the smallest rank whose mean test error is within one
            standard error of the lowest; past the true rank the curve is nearly flat,
            so its minimum wanders with the noise) or ``"min"`` (the lowest mean).
        missing: ``"error"``, ``"nan"`` or (sparse Y) ``"unstored"``, as for :func:`jnmf.fit`.
        strategy: batching strategy of the restarts (default per backend).
        checkpoint: a directory (created when missing) to save each finished rank in, so
            an interrupted call resumes where it stopped (:mod:`jnmf.checkpoint`).  The
            ranks then run one after the other, one rank (all its repeats and restarts)
            per chunk, all through one compiled program (every chunk is padded to the
            largest rank), with the same hold-outs and the same starts as without a
            checkpoint (rank i's key is ``split(key_starts, len(ranks))[i]`` either way).
            A resumed call equals an uninterrupted checkpointed one bit for bit; it equals
            the one-program call (``checkpoint=None``) bit for bit when the fits run one
            by one (``strategy="map"``) and to rounding otherwise (batched products over
            other batch sizes).
        mesh: a 1-D :class:`jax.sharding.Mesh` whose axis is named ``"fits"``, to spread
            the fits over its devices, Y replicated on each (:func:`jnmf.batch.run_grid`:
            the (rank, restart) pairs, or the repeats when that pads fewer fits, are
            split over the devices; each device runs the one-device program on its
            slice, with no communication).  The result equals the one-device call (tested
            in float64: the same test errors to 1e-10 and the same selected rank).  With
            ``checkpoint`` each rank's fits are spread so; the checkpoint does not record
            the mesh.
        extension: how bicv predicts the held-out block from the fit ``D ~ L_D R_D`` of
            the kept rows and columns: ``"pinv"`` (default; least squares,
            ``A_hat = C (L_D R_D)^+ B``, Owen & Perry's form) or ``"nnls"`` (two
            non-negative least-squares fold-ins, the NMF version; depends on which of
            the many NMFs of ``D`` the fit found, see the module docstring).

    Returns:
        A :class:`RankCV` with the test error per rank and repeat and the selected rank.

    Raises:
        ValueError: bad input or settings, naming the argument (before compiling), or a
            checkpoint of another run or damaged (naming what differs).
    """
    check.concrete_arguments("cross_validate_rank", dict(Y=Y, ranks=ranks, key=key))
    if mesh is not None:
        check_fits_mesh("mesh", mesh)
    start = time.perf_counter()
    compiled_before = _cache_size()
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if rule not in SELECTION_RULES:
        raise ValueError(f"rule must be one of {SELECTION_RULES}, got {rule!r}")
    if extension not in EXTENSIONS:
        raise ValueError(f"extension must be one of {EXTENSIONS}, got {extension!r}")
    if isinstance(ranks, int | np.integer):
        raise ValueError("ranks must be a sequence of at least two ranks to compare, e.g. range(2, 9)")
    rank_list = [int(check.positive_int("ranks", r)) for r in ranks]
    if len(rank_list) < 1 or len(set(rank_list)) != len(rank_list):
        raise ValueError(f"ranks must be distinct positive integers, got {list(ranks)}")
    holdout = DEFAULT_HOLDOUT[scheme] if holdout is None else holdout
    check.in_interval("holdout", holdout, 0.0, 1.0, lo_open=True, hi_open=True)
    repeats = check.positive_int("repeats", repeats)
    directory = checkpoint_directory(checkpoint)
    top = max(rank_list)
    stopping = Stopping(max_iterations=max_iterations, tol=tol)
    if is_sparse_input(Y) and scheme == "bicv" and missing == "unstored":
        raise ValueError(
            "scheme='bicv' with missing='unstored' is not supported: the NNLS extension of "
            "the held-out block would need every row's own weighted Gram matrix; use "
            "scheme='speckled'"
        )
    s = _setup(Y, top, method, "random", restarts, as_key(key), stopping, {}, None, missing)
    if s.rule.loss_degree != 2:
        raise ValueError(
            f"method must minimize the Frobenius loss for cross-validation, got {s.rule.method_name!r}"
        )
    plan = _sparse_plan if s.sparse else _dense_plan
    pipe, fit_ranks = plan(s, rank_list, scheme, holdout, repeats, stopping, strategy, mesh, extension)

    if directory is None:
        scores = fit_ranks(None)
    else:
        # one rank per chunk: every chunk has the same padded shapes, so one compiled program
        chunks = run_checkpointed(
            directory,
            "cross_validate_rank",
            s,
            method,
            [f"rank {r}" for r in rank_list],
            lambda i: fit_ranks(slice(i, i + 1)),
            ranks=rank_list,
            scheme=scheme,
            holdout=float(holdout),
            repeats=repeats,
            strategy=strategy or batching_strategy(s.rule, problem=pipe.scaled, rank=s.rank, fits=s.restarts),
            missing=missing,
            **({"extension": extension} if scheme == "bicv" else {}),
        )
        scores = {name: np.concatenate([c[name] for c in chunks], axis=1) for name in chunks[0]}
    ranks_arr = np.asarray(rank_list)
    order = np.argsort(ranks_arr)
    ranks_arr = ranks_arr[order]
    test_error, train_error = scores["test_error"][:, order], scores["train_error"][:, order]
    return RankCV(
        ranks=ranks_arr,
        test_error=test_error,
        train_error=train_error,
        selected_rank=select_rank(ranks_arr, test_error, rule),
        rule=rule,
        scheme=scheme,
        holdout=float(holdout),
        iterations=scores["iterations"][:, order],
        status=scores["status"][:, order],
        seconds=time.perf_counter() - start,
        compilations=_cache_size() - compiled_before,
    )


def _dense_plan(s, rank_list, scheme, holdout, repeats, stopping, strategy, mesh=None, extension="pinv"):
    """The pipeline and ``fit_ranks(only)`` (fit and score ``rank_list[only]``, None: every
    rank as one program) of dense data: the hold-outs are a grid of dense masks."""
    top = max(rank_list)
    m, n = s.Y.shape
    observed = None if s.M is None else np.asarray(s.M) > 0
    key_holdout, key_starts = jax.random.split(s.key)

    if scheme == "speckled":
        train = _speckled_masks(key_holdout, (m, n), holdout, repeats, observed)
        test = ~train if observed is None else (~train & observed)
        if top > min(m, n):
            raise ValueError(f"every rank must be at most min(Y.shape) = {min(m, n)}, got {top}")
    else:
        I, J = _block_indices(key_holdout, m, n, holdout, repeats)
        train = np.ones((repeats, m, n), bool)
        for t in range(repeats):
            train[t, I[t], :] = False
            train[t, :, J[t]] = False
        if observed is not None:
            train &= observed
        test = np.zeros_like(train)
        for t in range(repeats):
            test[t][np.ix_(I[t], J[t])] = True
        if observed is not None:
            test &= observed
        if top > min(m - I.shape[1], n - J.shape[1]):
            raise ValueError(
                f"every rank must be at most the kept block's smaller side "
                f"{min(m - I.shape[1], n - J.shape[1])} (lower holdout or the ranks), got {top}"
            )
    _check_holdout_split(train.reshape(repeats, -1).any(axis=1), test.reshape(repeats, -1).any(axis=1))

    dt = s.Y.dtype
    Y_train_only = np.where(train.all(axis=0), s.Y, 0).astype(dt)  # no held-out value reaches the starts
    pipe = pipeline(s, M=np.ones((m, n), dt))  # the base weight the grid of masks replaces
    blocks = (I, J, extension) if scheme == "bicv" else None

    def fit_ranks(only: slice | None) -> dict[str, np.ndarray]:
        """Fit and score ``rank_list[only]`` (None: every rank, as one program)."""
        starts = padded_starting_points(
            jnp.asarray(Y_train_only / s.scale), rank_list, s.restarts, key_starts, only=only
        )
        res = run_grid(
            s.rule,
            pipe.scaled,
            {"M": train.astype(dt)},
            *starts,
            stopping=stopping,
            history_size=1,
            strategy=strategy,
            mesh=mesh,
        )
        return _scores(s, res, len(rank_list) if only is None else 1, train, test, blocks)

    return pipe, fit_ranks


def _scores(s, res, count: int, train: np.ndarray, test: np.ndarray, blocks) -> dict[str, np.ndarray]:
    """Test and train errors (``repeats x count``) of the best restart of each repeat and
    rank of one grid run over ``count`` ranks, and every fit's iterations and status
    (``repeats x count x restarts``).  ``blocks``: bicv's held-out rows, columns and extension."""
    repeats = train.shape[0]
    m, n = s.Y.shape
    L, R = scale_factors(res.L, res.R, s.scale)  # (repeats, count * restarts, ., .)
    shape = (repeats, count, s.restarts)
    objective = np.asarray(res.objective, np.float64).reshape(shape)
    objective = np.where(np.isfinite(objective), objective, np.inf)
    best = np.argmin(objective, axis=2)  # repeats x count

    Y64 = np.asarray(s.Y, np.float64)
    if blocks is not None:
        I, J, extension = blocks
        keep_rows = np.stack([np.setdiff1d(np.arange(m), I[t]) for t in range(repeats)])
        keep_cols = np.stack([np.setdiff1d(np.arange(n), J[t]) for t in range(repeats)])
        A_hat = np.asarray(
            _bicv_predictions(
                jnp.asarray(s.Y), L, R, jnp.asarray(I), jnp.asarray(J), keep_rows, keep_cols, extension
            ),
            np.float64,
        )
    L, R = np.asarray(L, np.float64), np.asarray(R, np.float64)
    test_error = np.zeros((repeats, count))
    train_error = np.zeros((repeats, count))
    for t in range(repeats):
        for i in range(count):
            fit_index = i * s.restarts + best[t, i]
            model = L[t, fit_index] @ R[t, fit_index]
            train_error[t, i] = np.mean((Y64 - model)[train[t]] ** 2)
            if blocks is None:
                test_error[t, i] = np.mean((Y64 - model)[test[t]] ** 2)
            else:
                block = Y64[np.ix_(I[t], J[t])]
                seen = test[t][np.ix_(I[t], J[t])]
                test_error[t, i] = np.mean((block - A_hat[t, fit_index])[seen] ** 2)
    return {
        "test_error": test_error,
        "train_error": train_error,
        "iterations": np.asarray(res.iterations).reshape(shape),
        "status": np.asarray(res.status).reshape(shape),
    }


def _check_holdout_split(has_train, has_test) -> None:
    if not np.all(has_train) or not np.all(has_test):
        raise ValueError("holdout leaves a repeat with no training or no test entry; change holdout")


# ------------------------------------------------------------------------ sparse data
# Sparse Y is never densified.  Speckled: each repeat holds out a ``holdout`` fraction of
# the stored entries and, with unstored zeros, as many zeros drawn uniformly from the
# unstored positions; those zeros are stored (value 0) so that every repeat's hold-out is
# a weight 0 on stored entries of one shared operator, and the repeats are a grid over
# those weights (one compiled program).  The test error estimates the mean squared error
# of a uniformly drawn entry by strata: the stored entries' share ``nnz / mn`` times their
# held-out error, plus the rest times the held-out zeros' error.  Bi-cross-validation
# holds out rows and columns through the diagonal loss weights W_0R / W_0C (0 on the
# held-out ones), and scores the held-out block by trace identities: no block is formed.


def _sample_unstored(rng, keys_stored: np.ndarray, m: int, n: int, count: int) -> np.ndarray:
    """``count`` distinct linear indices ``i n + j`` of unstored entries, uniformly."""
    free = m * n - keys_stored.size
    count = min(count, free)
    if count == 0:
        return np.zeros(0, np.int64)
    if free <= 4 * count:  # a small or dense matrix: choose among all unstored positions
        unstored = np.setdiff1d(np.arange(m * n, dtype=np.int64), keys_stored, assume_unique=True)
        return np.sort(rng.choice(unstored, count, replace=False))
    picked = np.zeros(0, np.int64)
    while picked.size < count:
        draw = rng.integers(0, m * n, 2 * count, dtype=np.int64)
        pos = np.clip(np.searchsorted(keys_stored, draw), 0, max(keys_stored.size - 1, 0))
        hit = keys_stored[pos] == draw if keys_stored.size else np.zeros(draw.size, bool)
        picked = np.unique(np.concatenate([picked, draw[~hit]]))
    return np.sort(rng.permutation(picked)[:count])


def _speckled_sparse(data: SparseData, rng, holdout: float, repeats: int):
    """The shared operator (the stored entries plus the held-out zeros, all weights 1), the
    training weights ``repeats x entries``, and per repeat the positions (into the shared
    operator) of the held-out stored entries and of the held-out zeros."""
    m, n = data.shape
    rows, cols = np.asarray(data.rows, np.int64), np.asarray(data.cols, np.int64)
    keys_stored = rows * n + cols  # sorted: the operator is sorted by row, then column
    nnz = keys_stored.size
    count = max(1, round(holdout * nnz))
    held_stored = [np.sort(rng.choice(nnz, count, replace=False)) for _ in range(repeats)]
    zero_keys = []
    if data.unstored_zero:
        zero_keys = [_sample_unstored(rng, keys_stored, m, n, count) for _ in range(repeats)]
    extra = np.unique(np.concatenate(zero_keys)) if zero_keys else np.zeros(0, np.int64)
    keys = np.concatenate([keys_stored, extra])
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    where = np.empty_like(order)
    where[order] = np.arange(order.size)  # position in the shared operator of each entry
    values = np.concatenate([np.asarray(data.values), np.zeros(extra.size, data.dtype)])[order]
    shared = SparseData(
        jnp.asarray((keys // n).astype(np.int32)),
        jnp.asarray((keys % n).astype(np.int32)),
        jnp.asarray(values),
        (m, n),
        data.unstored,
        data.inv_scale,
        jnp.ones(keys.size, data.dtype),
    )
    test_stored = [where[h] for h in held_stored]
    test_zero = [np.searchsorted(keys, z) for z in zero_keys] if zero_keys else [None] * repeats
    train = np.ones((repeats, keys.size), data.dtype)
    for t in range(repeats):
        train[t, test_stored[t]] = 0
        if test_zero[t] is not None:
            train[t, test_zero[t]] = 0
    return shared, train, test_stored, test_zero


@eqx.filter_jit
def _train_sse(problem, grid: dict, L, R):
    """Sum of squared errors on the training entries of every fit: ``2 * loss`` of the
    problem with repeat t's values of the ``grid`` leaves (each ``repeats x ...``; L, R
    repeats x fits)."""

    def per_repeat(values, L, R):
        p = problem.replace(**values)
        return jax.vmap(lambda L, R: 2.0 * p.loss(L, R))(L, R)

    return jax.vmap(per_repeat)(grid, L, R)


@eqx.filter_jit
def _sampled_models(rows, cols, L, R):
    """``(L R)`` at the entries ``(rows, cols)`` of every fit (L, R: fits x . x .)."""
    return jax.vmap(lambda L, R: jnp.sum(L[rows] * R.T[cols], axis=-1))(L, R)


@eqx.filter_jit
def _bicv_block_errors(data, L, R, I, J, keep_rows, keep_cols, extension: str = "pinv"):
    """Owen & Perry's (2009) extension on sparse data: the squared error summed over the
    held-out block ``A = Y[I, J]`` of every fit, without forming a block.

    ``L_C`` and ``R_B`` solve the (least-squares or NNLS) problems of the dense scheme; their linear terms are
    products of the data with the kept part of the other factor (one pass over Y), and
    ``||A - L_C R_B||^2 = ||A||^2 - 2 <A, L_C R_B> + <L_C' L_C, R_B R_B'>`` with the middle
    term sampled at A's stored entries.  ``keep_rows``/``keep_cols`` are 0/1 vectors.
    Returns (repeats, fits).
    """

    def one(L, R, I, J, keep_rows, keep_cols, in_block):
        R_D = R * keep_cols[None, :]
        Lt_D = L.T * keep_rows[None, :]
        L_Ct = _fold_in(R_D @ R_D.T, data.product_L(R_D)[:, I], extension)  # k x |I|
        R_B = _fold_in(Lt_D @ Lt_D.T, data.product_R(Lt_D)[:, J], extension)  # k x |J|
        L_C_full = jnp.zeros((data.shape[0], L.shape[1]), L.dtype).at[I].set(L_Ct.T)
        R_B_full = jnp.zeros((R.shape[0], data.shape[1]), R.dtype).at[:, J].set(R_B)
        model = jnp.sum(L_C_full[data.rows] * R_B_full.T[data.cols], axis=-1)
        Y = data.stored()
        cross = jnp.sum(jnp.where(in_block, Y * model, 0.0))
        gram = jnp.sum((L_Ct @ L_Ct.T) * (R_B @ R_B.T))
        return -2.0 * cross + gram

    in_block = jax.vmap(lambda I_mask, J_mask: I_mask[data.rows] & J_mask[data.cols])(
        keep_rows == 0, keep_cols == 0
    )
    per_fit = jax.vmap(one, in_axes=(0, 0, None, None, None, None, None))
    return jax.vmap(per_fit, in_axes=(0, 0, 0, 0, 0, 0, 0))(L, R, I, J, keep_rows, keep_cols, in_block)


def _sparse_plan(s, rank_list, scheme, holdout, repeats, stopping, strategy, mesh=None, extension="pinv"):
    """:func:`_dense_plan` for sparse data (see the comment above)."""
    data: SparseData = s.Y
    m, n = data.shape
    top = max(rank_list)
    key_holdout, key_starts = jax.random.split(s.key)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key_holdout)).ravel().tolist())
    dt = data.dtype
    if scheme == "speckled":
        if top > min(m, n):
            raise ValueError(f"every rank must be at most min(Y.shape) = {min(m, n)}, got {top}")
        shared, train, test_stored, test_zero = _speckled_sparse(data, rng, holdout, repeats)
        _check_holdout_split(train.any(axis=1), [t.size > 0 for t in test_stored])
        s = dataclasses.replace(s, Y=shared)
        grid = {"M": train}
        # no held-out value reaches the starts
        start_data = shared.with_stored(shared.values * jnp.asarray(train.min(axis=0)))
    else:
        I, J = _block_indices(key_holdout, m, n, holdout, repeats)
        if top > min(m - I.shape[1], n - J.shape[1]):
            raise ValueError(
                f"every rank must be at most the kept block's smaller side "
                f"{min(m - I.shape[1], n - J.shape[1])} (lower holdout or the ranks), got {top}"
            )
        keep_rows = np.ones((repeats, m), dt)
        keep_cols = np.ones((repeats, n), dt)
        for t in range(repeats):
            keep_rows[t, I[t]] = 0
            keep_cols[t, J[t]] = 0
        grid = {"W_0R": keep_rows, "W_0C": keep_cols}
        rows, cols = np.asarray(data.rows), np.asarray(data.cols)
        kept_everywhere = keep_rows.min(axis=0)[rows] * keep_cols.min(axis=0)[cols]
        start_data = data.with_stored(data.values * jnp.asarray(kept_everywhere, dt))
    pipe = pipeline(s, **({} if scheme == "speckled" else {"W_0R": keep_rows[0], "W_0C": keep_cols[0]}))
    problem = pipe.problem
    Y_stored = np.asarray(problem.data.stored(), np.float64)

    def fit_ranks(only: slice | None) -> dict[str, np.ndarray]:
        count = len(rank_list) if only is None else len(rank_list[only])
        starts = padded_starting_points(
            start_data.scaled(s.scale), rank_list, s.restarts, key_starts, only=only
        )
        res = run_grid(
            s.rule,
            pipe.scaled,
            grid,
            *starts,
            stopping=stopping,
            history_size=1,
            strategy=strategy,
            mesh=mesh,
        )
        L, R = _best_fits(s, res, count)
        if scheme == "speckled":
            train_error, test_error = _speckled_scores(
                problem, L, R, train, test_stored, test_zero, Y_stored, data
            )
        else:
            train_error, test_error = _bicv_scores(
                problem, L, R, I, J, keep_rows, keep_cols, Y_stored, data, extension
            )
        shape = (repeats, count, s.restarts)
        return {
            "test_error": test_error,
            "train_error": train_error,
            "iterations": np.asarray(res.iterations).reshape(shape),
            "status": np.asarray(res.status).reshape(shape),
        }

    return pipe, fit_ranks


def _best_fits(s, res, count: int) -> tuple[jax.Array, jax.Array]:
    """The factors (user units) of the restart with the lowest objective of each repeat and
    rank of a grid run over ``count`` ranks: ``repeats x count x . x .``."""
    L, R = scale_factors(res.L, res.R, s.scale)  # (repeats, count * restarts, ., .)
    objective = np.asarray(res.objective, np.float64).reshape(L.shape[0], count, s.restarts)
    best = np.argmin(np.where(np.isfinite(objective), objective, np.inf), axis=2)
    pick = jnp.asarray((np.arange(count) * s.restarts)[None, :] + best)[:, :, None, None]
    return jnp.take_along_axis(L, pick, axis=1), jnp.take_along_axis(R, pick, axis=1)


def _speckled_scores(problem, L, R, train, test_stored, test_zero, Y_stored, data):
    """Train and test mean squared errors (``repeats x count``) of sparse speckled hold-out."""
    m, n = problem.shape
    repeats = train.shape[0]
    sse = np.asarray(_train_sse(problem, {"M": jnp.asarray(train)}, L, R), np.float64)
    n_train = (m * n if data.unstored_zero else problem.data.nnz) - (train == 0).sum(axis=1)
    train_error = sse / n_train[:, None]
    test_error = np.zeros_like(train_error)
    share = data.nnz / (m * n) if data.unstored_zero else 1.0  # the stored stratum's share
    for t in range(repeats):
        rows_t = problem.data.rows[test_stored[t]]
        cols_t = problem.data.cols[test_stored[t]]
        model = np.asarray(_sampled_models(rows_t, cols_t, L[t], R[t]), np.float64)
        test_error[t] = share * np.mean((Y_stored[test_stored[t]][None, :] - model) ** 2, axis=1)
        if test_zero[t] is not None and test_zero[t].size:
            rows_z = problem.data.rows[test_zero[t]]
            cols_z = problem.data.cols[test_zero[t]]
            model_z = np.asarray(_sampled_models(rows_z, cols_z, L[t], R[t]), np.float64)
            test_error[t] += (1.0 - share) * np.mean(model_z**2, axis=1)
    return train_error, test_error


def _bicv_scores(problem, L, R, I, J, keep_rows, keep_cols, Y_stored, data, extension="pinv"):
    """Train and test mean squared errors (``repeats x count``) of sparse bi-cross-validation."""
    m, n = problem.shape
    repeats = keep_rows.shape[0]
    grid = {"W_0R": jnp.asarray(keep_rows), "W_0C": jnp.asarray(keep_cols)}
    sse = np.asarray(_train_sse(problem, grid, L, R), np.float64)
    train_error = sse / ((m - I.shape[1]) * (n - J.shape[1]))
    block = np.asarray(
        _bicv_block_errors(
            problem.data,
            L,
            R,
            jnp.asarray(I),
            jnp.asarray(J),
            jnp.asarray(keep_rows),
            jnp.asarray(keep_cols),
            extension,
        ),
        np.float64,
    )
    rows, cols = np.asarray(data.rows), np.asarray(data.cols)
    block_norm = np.array(
        [np.sum(Y_stored[(keep_rows[t][rows] == 0) & (keep_cols[t][cols] == 0)] ** 2) for t in range(repeats)]
    )
    test_error = (block + block_norm[:, None]) / (I.shape[1] * J.shape[1])
    return train_error, test_error
