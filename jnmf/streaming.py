"""Streaming (online) NMF over row blocks of Y: ``jnmf.fit_stream`` (a surface, layer 6).

For data that do not fit in memory or arrive in pieces.  Y (``m x n``) comes as row
blocks ``Y_b`` (numpy arrays, scipy.sparse matrices, or an ``.npy`` file read block by
block through ``np.load(..., mmap_mode="r")``); only one block is held at a time.

Per block, with R (``k x n``) fixed, the block's rows of L solve the L half problem
(Pav 2024, eq. 8: gram ``R R'``, linear ``-R Y_b'``): a least-squares start projected on
the non-negative orthant, then HALS sweeps (Cichocki & Phan 2009).  The R half problem
needs Y only through its sufficient statistics (Mairal et al. 2010)

    A = sum_b L_b' L_b  (k x k),      B = sum_b L_b' Y_b  (k x n),

so R is updated from ``HalfProblem(gram=A, linear=-B)`` by HALS sweeps.  In the first
pass R is updated after every block from the running sums (Mairal et al.'s online
dictionary learning, without forgetting).  In later passes the running sums of the
pass are completed by the previous pass's statistics, weighted by the fraction of rows
not yet seen; at the end of every pass R is updated from that pass's exact statistics,
so the objective reported for a pass, ``1/2 sum_b ||Y_b - L_b R||^2 = c - <B, R> +
1/2 <A R, R>``, is that of the returned pair (L of the pass, final R) exactly.

Every block goes through the data operator (:func:`jnmf.data.dense_operator`,
:func:`jnmf.data.sparse_operator`), so a sparse block is never densified.  Restarts
are batched (``vmap`` over a leading restart axis of R and of each block's L).  The
block step is compiled once per block shape: a shorter block is padded with zero rows
to the first block's row count, and a sparse block's stored entries are padded (with
zeros) to a power of two, so a stream compiles a handful of times at most.
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import warnings
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from . import _validate as check
from .compile_cache import guard_map_limit
from .data import DataOperator, SparseData, dense_operator, is_sparse_input, sparse_operator
from .driver import CONVERGED, MAX_ITERATIONS
from .fitting import ConvergenceWarning, FitResult, as_key
from .progress import progress_bar, stderr_is_terminal
from .quadratic import HalfProblem
from .rules.hals_sweeps import hals_sweeps
from .weights import Weight

__all__ = ["fit_stream", "iter_npy_blocks"]

_I = Weight.identity()
_MIN_NNZ = 4096


# ------------------------------------------------------------------ compiled block steps
def _solve_L(op: DataOperator, R: Array, sweeps: int) -> tuple[Array, Array, Array]:
    """One restart: the block's Lt (``k x rows``) given R, and its statistics (A_b, B_b)."""
    k = R.shape[0]
    G = R @ R.T
    linear = -op.product_L(R)  # k x rows
    ridge = 1e-12 * jnp.trace(G) / k + jnp.finfo(G.dtype).tiny
    Lt0 = jnp.maximum(jnp.linalg.solve(G + ridge * jnp.eye(k, dtype=G.dtype), -linear), 0.0)
    Lt0 = jnp.where(jnp.isfinite(Lt0), Lt0, 0.0)
    hp = HalfProblem(gram=G, weight=_I, linear=linear, penalties=(), fixed_size=R.shape[1])
    Lt = hals_sweeps(hp, Lt0, sweeps, jnp.asarray(0.0, G.dtype))
    return Lt, Lt @ Lt.T, op.product_R(Lt)


def _update_R(R: Array, A: Array, B: Array, sweeps: int) -> Array:
    """One restart: HALS sweeps on the R half problem ``1/2 <A R, R> - <B, R>``."""
    hp = HalfProblem(gram=A, weight=_I, linear=-B, penalties=(), fixed_size=0)
    return hals_sweeps(hp, R, sweeps, jnp.asarray(0.0, R.dtype))


@functools.partial(jax.jit, static_argnames=("l_sweeps", "r_sweeps", "online"))
def _block_step(op, R, A_cur, B_cur, A_prev, B_prev, weight_prev, *, l_sweeps, r_sweeps, online):
    """The compiled step of one block, batched over restarts (leading axis of R, A, B)."""
    Lt, A_b, B_b = jax.vmap(lambda r: _solve_L(op, r, l_sweeps))(R)
    A_cur, B_cur = A_cur + A_b, B_cur + B_b
    if online:
        A_run = A_cur + weight_prev * A_prev
        B_run = B_cur + weight_prev * B_prev
        R = jax.vmap(lambda r, a, b: _update_R(r, a, b, r_sweeps))(R, A_run, B_run)
    return Lt, R, A_cur, B_cur, op.half_norm(_I, _I)


@functools.partial(jax.jit, static_argnames=("r_sweeps",))
def _pass_end(R, A, B, half_norm, *, r_sweeps):
    """R from the pass's exact statistics, and each restart's objective at (L, R)."""
    R = jax.vmap(lambda r, a, b: _update_R(r, a, b, r_sweeps))(R, A, B)
    obj = half_norm - jnp.sum(B * R, axis=(1, 2)) + 0.5 * jnp.sum((A @ R) * R, axis=(1, 2))
    return R, jnp.maximum(obj, 0.0)


# ------------------------------------------------------------------ reading the blocks
def iter_npy_blocks(path, block_rows: int) -> Iterable[np.ndarray]:
    """Row blocks of a 2-d ``.npy`` file, each an in-memory copy, read through
    ``np.load(path, mmap_mode="r")``; after each copy the mapped pages are released
    (``madvise(MADV_DONTNEED)``) so the file's pages do not accumulate in resident memory.

    Args:
        path: the ``.npy`` file.
        block_rows: rows per block (the last block may be shorter).

    Returns:
        A generator of C-contiguous arrays of ``block_rows x n`` (or fewer) rows.
    """
    mm = np.load(path, mmap_mode="r")
    raw = getattr(mm, "_mmap", None)
    row_bytes = mm.shape[1] * mm.dtype.itemsize
    offset = getattr(mm, "offset", 0)
    try:
        for start in range(0, mm.shape[0], block_rows):
            stop = min(start + block_rows, mm.shape[0])
            block = np.array(mm[start:stop])
            if raw is not None and hasattr(raw, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
                lo = (offset + start * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
                hi = min(offset + stop * row_bytes, len(raw))
                try:
                    raw.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
                except (OSError, ValueError):
                    pass
            yield block
    finally:
        del mm


def _matrix_blocks(Y, block_rows: int) -> Callable[[], Iterable]:
    def gen():
        for start in range(0, Y.shape[0], block_rows):
            yield Y[start : start + block_rows]

    return gen


def _as_source(blocks, block_rows, epochs) -> tuple[Callable[[], Iterable], int | None]:
    """A callable giving one pass's iterable of blocks, and the block count when known."""
    if isinstance(blocks, str | os.PathLike):
        path = os.fspath(blocks)
        if not os.path.isfile(path):
            raise ValueError(f"blocks: no such file {path!r}")
        try:
            mm = np.load(path, mmap_mode="r")
        except Exception as e:
            raise ValueError(f"blocks: {path!r} is not a readable .npy file ({e})") from e
        if not isinstance(mm, np.ndarray) or mm.ndim != 2 or mm.shape[0] == 0 or mm.shape[1] == 0:
            raise ValueError(f"blocks: {path!r} must hold a non-empty 2-d array")
        if mm.dtype.kind not in "iuf":
            raise ValueError(f"blocks: {path!r} must hold real numbers, got dtype {mm.dtype}")
        if block_rows is None:
            block_rows = max(1, (64 << 20) // (mm.shape[1] * mm.dtype.itemsize))
        m = mm.shape[0]
        del mm
        return (lambda: iter_npy_blocks(path, block_rows)), math.ceil(m / block_rows)
    if isinstance(blocks, np.ndarray) or is_sparse_input(blocks):
        if block_rows is None:
            raise ValueError("block_rows: required when blocks is one matrix (to cut it into row blocks)")
        if getattr(blocks, "ndim", 0) != 2 or blocks.shape[0] == 0:
            raise ValueError(
                f"blocks: a matrix must be non-empty and 2-d, got shape {getattr(blocks, 'shape', None)}"
            )
        Y = blocks.tocsr() if is_sparse_input(blocks) and hasattr(blocks, "tocsr") else blocks
        return _matrix_blocks(Y, block_rows), math.ceil(Y.shape[0] / block_rows)
    if callable(blocks):
        return blocks, None
    if isinstance(blocks, Sequence):
        if len(blocks) == 0:
            raise ValueError("blocks: got an empty sequence")
        return (lambda: iter(blocks)), len(blocks)
    if isinstance(blocks, Iterable):
        if epochs > 1:
            raise ValueError(
                "blocks: a one-shot iterator allows only epochs=1; pass a sequence, a callable "
                "returning a fresh iterable, or a path to an .npy file"
            )
        return (lambda: blocks), None
    raise ValueError(
        "blocks must be a sequence or iterable of row blocks (numpy / scipy.sparse), a callable "
        f"returning one, a matrix with block_rows, or a path to an .npy file; got {type(blocks).__name__}"
    )


def _pad_pow2(n: int) -> int:
    return max(_MIN_NNZ, 1 << (max(n, 1) - 1).bit_length())


def _block_operator(x, index: int, n: int | None, rows_pad: int | None, dtype, unstored: str):
    """(operator padded to ``rows_pad`` rows, true row count) of one block; ValueError
    naming ``blocks[index]`` for bad data."""
    name = f"blocks[{index}]"
    if is_sparse_input(x):
        op = sparse_operator(name, x, unstored, dtype)
        rows = op.shape[0]
        if n is not None and op.shape[1] != n:
            raise ValueError(f"{name} has {op.shape[1]} columns, the first block has {n}")
        rp = max(rows, rows_pad or 0)
        nnz, pad = op.nnz, _pad_pow2(op.nnz) - op.nnz
        zi = jnp.zeros(pad, jnp.int32)
        weights = op.weights
        if weights is not None:
            weights = jnp.concatenate([weights, jnp.zeros(pad, weights.dtype)])
        del nnz
        op = SparseData(
            jnp.concatenate([op.rows, zi]),
            jnp.concatenate([op.cols, zi]),
            jnp.concatenate([op.values, jnp.zeros(pad, op.dtype)]),
            (rp, op.shape[1]),
            unstored,
            weights=weights,
        )
        return op, rows
    a = np.asarray(x)
    if a.dtype == object or a.dtype.kind not in "iubf":
        raise ValueError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-d array, got shape {a.shape}")
    if n is not None and a.shape[1] != n:
        raise ValueError(f"{name} has {a.shape[1]} columns, the first block has {n}")
    a = a.astype(dtype, copy=False)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite; it has NaN or infinite entries")
    if a.min() < 0:
        raise ValueError(f"{name} must be non-negative (min {a.min()})")
    rows = a.shape[0]
    if rows_pad is not None and rows < rows_pad:
        a = np.concatenate([a, np.zeros((rows_pad - rows, a.shape[1]), a.dtype)])
    return dense_operator(a), rows


def _block_dtype(x):
    if is_sparse_input(x):
        return check.float_dtype(x.data if hasattr(x, "data") else np.zeros(0, np.float32))
    return check.float_dtype(np.asarray(x[:1]) if hasattr(x, "shape") else np.asarray(x))


# ------------------------------------------------------------------ the surface
def fit_stream(
    blocks,
    rank: int,
    *,
    block_rows: int | None = None,
    epochs: int = 20,
    tol: float = 1e-5,
    restarts: int = 1,
    key=None,
    l_sweeps: int = 10,
    r_sweeps: int = 10,
    online: bool = True,
    unstored: str = "zero",
    return_L: bool = True,
    return_all: bool = False,
    progress: bool | None = None,
    warn: bool = True,
) -> FitResult:
    """Online NMF over row blocks of Y (Mairal et al. 2010), Frobenius loss, with HALS
    half steps (Cichocki & Phan 2009) on the data operator: Y is never held whole.

    Args:
        blocks: the row blocks of Y (``m x n``), top to bottom, in one of these forms:
            a sequence of blocks; a callable returning a fresh iterable of blocks (called
            once per pass); a one-shot iterator (then ``epochs`` must be 1); one matrix
            (numpy, ``np.memmap``, scipy.sparse) cut every ``block_rows`` rows; or the path
            of a 2-d ``.npy`` file, read block by block through ``np.load(mmap_mode="r")``.
            A block is a numpy array or any scipy.sparse matrix (kept sparse), finite
            and non-negative, all with the same number of columns.
        rank: k, the number of factors.
        block_rows: rows per block for a matrix or an ``.npy`` path (default for a path:
            about 64 MB per block).
        epochs: the most passes over the data.
        tol: a restart has converged once a pass lowers its objective by at most ``tol``
            times the objective; the stream stops when every restart has.
        restarts: random starts of R, run batched.
        key: a seed, JAX key or NumPy Generator for the starts.
        l_sweeps: HALS sweeps of each block's L (after a projected least-squares start).
        r_sweeps: HALS sweeps of each R update.
        online: update R after every block from the running statistics (Mairal et al.);
            False updates it only at the end of a pass (plain alternating HALS).
        unstored: for sparse blocks, ``"zero"`` or ``"missing"`` (see :mod:`jnmf.data`).
        return_L: keep the rows of L (``m x k`` on the host); False for a huge Y (then
            ``L`` is None).
        return_all: also return every restart's factors (``all_L``, ``all_R``).
        progress: a tqdm bar over the blocks (default: when stderr is a terminal).
        warn: a :class:`~jnmf.fitting.ConvergenceWarning` when the best restart ran out
            of passes.

    Returns:
        A :class:`~jnmf.fitting.FitResult`: the best restart's L (rows in stream order)
        and R, its objective ``1/2 ||Y - L R||^2``, passes as ``iterations``, status
        converged / max_iterations, and the per-pass objective as ``history``.

    Raises:
        ValueError: naming the argument, for bad arguments (before anything compiles) and
            for a bad block (naming ``blocks[i]``) when it is read.
    """
    for name, v, lo in (("rank", rank, 1), ("epochs", epochs, 1), ("restarts", restarts, 1)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    for name, v in (("l_sweeps", l_sweeps), ("r_sweeps", r_sweeps)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if block_rows is not None and (
        isinstance(block_rows, bool) or not isinstance(block_rows, int | np.integer) or block_rows < 1
    ):
        raise ValueError(f"block_rows must be a positive integer, got {block_rows!r}")
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if unstored not in ("zero", "missing"):
        raise ValueError(f"unstored must be 'zero' or 'missing', got {unstored!r}")
    source, n_blocks = _as_source(blocks, block_rows, epochs)
    if isinstance(blocks, Sequence) and not isinstance(blocks, str):
        for i, b in enumerate(blocks):  # cheap checks of every block before compiling
            if not (is_sparse_input(b) or isinstance(b, np.ndarray) or hasattr(b, "__array__")):
                raise ValueError(
                    f"blocks[{i}] must be a numpy array or scipy.sparse matrix, got {type(b).__name__}"
                )
            if len(getattr(b, "shape", ())) != 2:
                raise ValueError(f"blocks[{i}] must be 2-d, got shape {getattr(b, 'shape', None)}")
            if b.shape[1] != blocks[0].shape[1]:
                raise ValueError(
                    f"blocks[{i}] has {b.shape[1]} columns, the first block has {blocks[0].shape[1]}"
                )
    k, restarts, epochs = int(rank), int(restarts), int(epochs)
    show = stderr_is_terminal() if progress is None else bool(progress)
    dtype = n = rows_pad = None
    R = A_prev = B_prev = None
    m_prev = None
    history, best_hist = [], []
    converged = np.zeros(restarts, bool)
    last_obj = np.full(restarts, np.inf)
    passes = done = 0
    L_blocks: list[np.ndarray] = []
    bar = progress_bar((n_blocks or 1) * epochs, "fit_stream", enabled=show, unit="block")
    try:
        for epoch in range(epochs):
            L_blocks = []
            seen = 0
            hn = 0.0
            A_cur = B_cur = None
            for i, x in enumerate(source()):
                if dtype is None:
                    dtype = np.dtype(_block_dtype(x))
                op, rows = _block_operator(x, i, n, rows_pad, dtype, unstored)
                if n is None:
                    n, rows_pad = op.shape[1], op.shape[0]
                    if k > min(n, 10**12):
                        raise ValueError(f"rank must be at most n = {n}, got {k}")
                    R = _start(op, k, n, restarts, key, dtype)
                    A_prev = jnp.zeros((restarts, k, k), dtype)
                    B_prev = jnp.zeros((restarts, k, n), dtype)
                if A_cur is None:
                    A_cur = jnp.zeros((restarts, k, k), dtype)
                    B_cur = jnp.zeros((restarts, k, n), dtype)
                seen += rows
                w_prev = 0.0 if m_prev is None else max(0.0, 1.0 - seen / m_prev)
                guard_map_limit()  # a new block shape compiles a step
                Lt, R, A_cur, B_cur, h = _block_step(
                    op, R, A_cur, B_cur, A_prev, B_prev, jnp.asarray(w_prev, dtype),
                    l_sweeps=int(l_sweeps), r_sweeps=int(r_sweeps), online=bool(online),
                )  # fmt: skip
                hn += float(h)
                if return_L:
                    L_blocks.append(np.asarray(Lt[:, :, :rows]).transpose(0, 2, 1))
                del op, x
                done += 1
                bar.advance_to(done, f"pass {epoch + 1}")
            if A_cur is None:
                raise ValueError("blocks: the stream gave no blocks")
            m_prev = seen
            guard_map_limit()
            R, obj = _pass_end(R, A_cur, B_cur, jnp.asarray(hn, dtype), r_sweeps=int(r_sweeps))
            obj = np.asarray(obj, np.float64)
            if not np.all(np.isfinite(obj)):
                raise FloatingPointError("fit_stream: the objective is not finite")
            A_prev, B_prev = A_cur, B_cur
            passes += 1
            history.append(obj)
            converged |= (last_obj - obj) <= tol * np.maximum(obj, np.finfo(np.float64).tiny)
            last_obj = obj
            best_hist.append(float(obj.min()))
            if converged.all():
                break
    finally:
        bar.close()
    best = int(np.argmin(last_obj))
    status = np.where(converged, CONVERGED, MAX_ITERATIONS).astype(np.int32)
    if warn and not converged[best]:
        warnings.warn(
            f"fit_stream: no convergence in {epochs} passes (tol={tol}); raise epochs",
            ConvergenceWarning,
            stacklevel=2,
        )
    all_L = np.concatenate(L_blocks, axis=1) if return_L else None
    return FitResult(
        L=None if all_L is None else all_L[best],
        R=R[best],
        objective=np.float64(last_obj[best]),
        iterations=jnp.asarray(passes, jnp.int32),
        converged=jnp.asarray(converged[best]),
        status=jnp.asarray(status[best]),
        history=np.asarray([h[best] for h in history], np.float64),
        history_stride=jnp.asarray(1, jnp.int32),
        objectives=last_obj.copy(),
        all_iterations=jnp.full(restarts, passes, jnp.int32),
        all_converged=jnp.asarray(converged),
        all_status=jnp.asarray(status),
        best=best,
        all_L=all_L if return_all else None,
        all_R=R if return_all else None,
        settings=dict(
            method="stream_hals",
            rank=k,
            epochs=epochs,
            tol=float(tol),
            restarts=restarts,
            l_sweeps=int(l_sweeps),
            r_sweeps=int(r_sweeps),
            online=bool(online),
            rows=int(m_prev),
            columns=int(n),
        ),
    )


def _start(op: DataOperator, k: int, n: int, restarts: int, key, dtype) -> Array:
    """Uniform random starts of R scaled to the first block's mean (``restarts x k x n``)."""
    mean = float(op.mean())
    scale = math.sqrt(mean / k) if mean > 0 else 1.0
    return jax.random.uniform(as_key(key), (restarts, k, n), dtype) * jnp.asarray(scale, dtype)
