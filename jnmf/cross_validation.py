"""Cross-validated rank selection, every (rank, repeat, restart) fit in one program.

Two schemes:

* **speckled** hold-out (as RcppML's ``crossValidate``): each repeat hides a random
  ``holdout`` fraction of the entries, fits on the rest through the elementwise loss
  weight ``M`` (held-out entries get weight 0, see :func:`jnmf.fit`), and scores the
  mean squared error of the model on the hidden entries.  An over-large rank fits the
  noise of the observed entries and predicts the hidden ones worse.
* **bicv**, bi-cross-validation (Owen & Perry 2009): each repeat holds out a block of
  rows I and a block of columns J.  Writing ``Y = [[A, B], [C, D]]`` with ``A = Y[I, J]``
  the held-out block, the rank-k fit ``D ~ L_D R_D`` of the rows and columns kept is
  extended by two non-negative least-squares problems, ``C ~ L_C R_D`` (for ``L_C``) and
  ``B ~ L_D R_B`` (for ``R_B``), and ``A`` is predicted as ``L_C R_B`` (the NMF version
  of Owen & Perry's ``B D_k^+ C``; their sec. 5).  The score is the mean squared error
  on A.

**One program.**  The fits of all ranks are padded to the largest rank with components
that start (and stay) at zero, as in :func:`jnmf.consensus`; the repeats are the
settings of a grid over ``M`` (:func:`jnmf.batch.run_grid`); so ranks x repeats x
restarts compile once.  Per (rank, repeat) the restart with the lowest training
objective is scored.  The selected rank is the smallest rank whose mean test error over
repeats is within one standard error of the lowest (``rule="1se"``, the usual guard
against noise in the curve), or the rank of the lowest mean (``rule="min"``).

Measured on synthetic data of known rank r = 3, 6, 9 (100 x 80, 5% noise; see
tests/test_cross_validation.py): speckled hold-out with ``"1se"`` picks r; its test
error keeps rising past r.  The NMF bi-cross-validation curve falls steeply up to r
and is then nearly flat (the NNLS extension step limits over-fitting), so it picked
r for r = 3 and r + 2 .. r + 3 for r = 6, 9: read it as an elbow, not a minimum.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _validate as check
from .batch import run_grid
from .consensus import _cache_size
from .data import is_sparse_input
from .driver import Stopping
from .fitting import _setup, as_key, padded_starting_points, pipeline
from .nnls import nnls_bpp_columns
from .problem import scale_factors

SCHEMES = ("speckled", "bicv")
SELECTION_RULES = ("min", "1se")
DEFAULT_HOLDOUT = {"speckled": 0.05, "bicv": 0.5}


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


@eqx.filter_jit
def _bicv_predictions(Y, L, R, I, J, keep_rows, keep_cols):
    """Owen & Perry's (2009) NMF extension: ``A_hat = L_C R_B`` for every fit.

    ``L``/``R`` are (repeats, fits, ., .); ``I``/``J`` the held-out rows and columns and
    ``keep_rows``/``keep_cols`` the kept ones, per repeat.  Returns (repeats, fits, |I|, |J|).
    """

    def one(Y_rep, L, R, I, J, keep_rows, keep_cols):
        R_D = R[:, keep_cols]  # k x (n - |J|)
        L_D = L[keep_rows]  # (m - |I|) x k
        C = Y_rep[I][:, keep_cols]  # |I| x (n - |J|)
        B = Y_rep[keep_rows][:, J]  # (m - |I|) x |J|
        # C ~ L_C R_D:  min 1/2 x' (R_D R_D') x - (R_D c)' x for each row c of C
        L_Ct = nnls_bpp_columns(R_D @ R_D.T, -(R_D @ C.T))[0]  # k x |I|
        # B ~ L_D R_B:  columns of R_B
        R_B = nnls_bpp_columns(L_D.T @ L_D, -(L_D.T @ B))[0]  # k x |J|
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
    method="ahals",
    key=None,
    max_iterations: int = 2000,
    tol: float = 1e-5,
    rule: str = "1se",
    missing: str = "error",
    strategy: str | None = None,
) -> RankCV:
    """Pick the rank of ``Y ~ L R`` by cross-validation, all fits in one compiled program.

    Args:
        Y: ``m x n`` non-negative data (NaN entries are missing with ``missing="nan"``;
            they are never fitted nor scored).
        ranks: the ranks to compare (distinct positive integers).
        scheme: ``"speckled"`` (random entries held out; RcppML's approach) or ``"bicv"``
            (bi-cross-validation, Owen & Perry 2009: a block of rows and columns).
        holdout: the fraction held out: of the entries for speckled (default 0.05), of
            the rows and of the columns for bicv (default 0.5, Owen & Perry's 2 x 2 folds).
        repeats: independent hold-outs (each its own mask or blocks).
        restarts: random starts per rank and repeat; the lowest training objective is scored.
        method: a Frobenius method of :func:`jnmf.fit` that supports elementwise weights
            (every Frobenius method does; default ``"ahals"``).
        key: int seed, JAX key or NumPy Generator.
        max_iterations, tol: stopping of each fit (relative objective change ``tol``).
        rule: ``"1se"`` (default: the smallest rank whose mean test error is within one
            standard error of the lowest; past the true rank the curve is nearly flat,
            so its minimum wanders with the noise) or ``"min"`` (the lowest mean).
        missing: ``"error"`` or ``"nan"``, as for :func:`jnmf.fit`.
        strategy: batching strategy of the restarts (default per backend).

    Returns:
        A :class:`RankCV` with the test error per rank and repeat and the selected rank.

    Raises:
        ValueError: bad input or settings, naming the argument (before compiling).
    """
    check.concrete_arguments("cross_validate_rank", dict(Y=Y, ranks=ranks, key=key))
    start = time.perf_counter()
    compiled_before = _cache_size()
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if rule not in SELECTION_RULES:
        raise ValueError(f"rule must be one of {SELECTION_RULES}, got {rule!r}")
    if isinstance(ranks, int | np.integer):
        raise ValueError("ranks must be a sequence of at least two ranks to compare, e.g. range(2, 9)")
    rank_list = [int(check.positive_int("ranks", r)) for r in ranks]
    if len(rank_list) < 1 or len(set(rank_list)) != len(rank_list):
        raise ValueError(f"ranks must be distinct positive integers, got {list(ranks)}")
    holdout = DEFAULT_HOLDOUT[scheme] if holdout is None else holdout
    check.in_interval("holdout", holdout, 0.0, 1.0, lo_open=True, hi_open=True)
    repeats = check.positive_int("repeats", repeats)
    top = max(rank_list)
    stopping = Stopping(max_iterations=max_iterations, tol=tol)
    if is_sparse_input(Y):
        raise ValueError(
            "cross_validate_rank needs dense Y: its hold-out masks are dense m x n weights (for "
            "sparse Y, hold out stored entries yourself and fit with missing='unstored')"
        )
    s = _setup(Y, top, method, "random", restarts, as_key(key), stopping, {}, None, missing)
    if s.rule.loss_degree != 2:
        raise ValueError(
            f"method must minimize the Frobenius loss for cross-validation, got {s.rule.method_name!r}"
        )
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
    if not train.reshape(repeats, -1).any(axis=1).all() or not test.reshape(repeats, -1).any(axis=1).all():
        raise ValueError("holdout leaves a repeat with no training or no test entry; change holdout")

    dt = s.Y.dtype
    Y_train_only = np.where(train.all(axis=0), s.Y, 0).astype(dt)  # no held-out value reaches the starts
    pipe = pipeline(s, M=np.ones((m, n), dt))  # the base weight the grid of masks replaces
    problem = pipe.scaled
    L0, R0 = padded_starting_points(jnp.asarray(Y_train_only / s.scale), rank_list, s.restarts, key_starts)
    res = run_grid(
        s.rule,
        problem,
        {"M": train.astype(dt)},
        L0,
        R0,
        stopping=stopping,
        history_size=1,
        strategy=strategy,
    )
    L, R = scale_factors(res.L, res.R, s.scale)  # (repeats, ranks * restarts, ., .)
    objective = np.asarray(res.objective, np.float64).reshape(repeats, len(rank_list), s.restarts)
    objective = np.where(np.isfinite(objective), objective, np.inf)
    best = np.argmin(objective, axis=2)  # repeats x R

    Y64 = np.asarray(s.Y, np.float64)
    if scheme == "bicv":
        keep_rows = np.stack([np.setdiff1d(np.arange(m), I[t]) for t in range(repeats)])
        keep_cols = np.stack([np.setdiff1d(np.arange(n), J[t]) for t in range(repeats)])
        A_hat = np.asarray(
            _bicv_predictions(jnp.asarray(s.Y), L, R, jnp.asarray(I), jnp.asarray(J), keep_rows, keep_cols),
            np.float64,
        )
    L, R = np.asarray(L, np.float64), np.asarray(R, np.float64)
    test_error = np.zeros((repeats, len(rank_list)))
    train_error = np.zeros((repeats, len(rank_list)))
    for t in range(repeats):
        for i in range(len(rank_list)):
            fit_index = i * s.restarts + best[t, i]
            model = L[t, fit_index] @ R[t, fit_index]
            train_error[t, i] = np.mean((Y64 - model)[train[t]] ** 2)
            if scheme == "speckled":
                test_error[t, i] = np.mean((Y64 - model)[test[t]] ** 2)
            else:
                block = Y64[np.ix_(I[t], J[t])]
                seen = test[t][np.ix_(I[t], J[t])]
                test_error[t, i] = np.mean((block - A_hat[t, fit_index])[seen] ** 2)
    ranks_arr = np.asarray(rank_list)
    order = np.argsort(ranks_arr)
    ranks_arr, test_error, train_error = ranks_arr[order], test_error[:, order], train_error[:, order]
    shape = (repeats, len(rank_list), s.restarts)
    return RankCV(
        ranks=ranks_arr,
        test_error=test_error,
        train_error=train_error,
        selected_rank=select_rank(ranks_arr, test_error, rule),
        rule=rule,
        scheme=scheme,
        holdout=float(holdout),
        iterations=np.asarray(res.iterations).reshape(shape)[:, order],
        status=np.asarray(res.status).reshape(shape)[:, order],
        seconds=time.perf_counter() - start,
        compilations=_cache_size() - compiled_before,
    )
