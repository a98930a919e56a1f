"""The data operator (layer 2): the only code in jnmf that touches Y.

Every algorithm needs only a few things of the data matrix ``Y`` (``m x n``):

* the products of a factor with it, ``Ft Y`` (``k x n``) and ``R Y'`` (``k x m``): the linear
  term d of the half problem (Pav 2024, eq. 8) for R and for L;
* the constant ``1/2 <Y, W_0R Y W_0C>`` of eq. 7 and the Frobenius loss at ``(L, R)``
  (eq. 3), without an ``m x n`` residual;
* for divergences (KL, beta), ``L R`` *sampled* at the stored entries and products with
  a matrix of the same sparsity pattern (the quotient ``Y / LR``);
* with an elementwise weight M, its products in the half problem (the
  :class:`MaskOperator`);
* the largest entry and the mean (the scaling and the random starts), row blocks.

:class:`DataOperator` states that interface; each kind of data is one final class:

* :class:`DenseData`: a dense ``m x n`` array;
* :class:`TransposedDense`: a dense array held as its transpose (a Fortran-ordered host
  array, put on the device without a host transpose);
* :class:`MaskedData`: dense, with an elementwise loss weight M (0 = missing);
* :class:`SparseData`: the stored entries of a sparse matrix in coordinate form (from
  any scipy.sparse format or a ``jax.experimental.sparse`` BCOO/BCSR); the unstored
  entries are zeros (``unstored="zero"``) or missing (``unstored="missing"``, as RcppML's
  ``mask_zeros``: recommender-style data);
* :class:`RowBlock`: rows ``start:start + rows`` of a larger matrix (streaming, sharded fits).
* :class:`RowShardedData` / :class:`RowShardedSparse`: Y split by rows over a 1-D mesh;
  :func:`process_rows` builds them from each process's own rows when the mesh spans
  several processes (``jax.distributed``), and :func:`local_rows` / :func:`gathered`
  bring a row-sharded result back to the host.

Scaling (``fit`` works on ``Y / max(Y)``) is a traced scalar leaf ``inv_scale`` applied to
the (small) results, never a rescaled copy of Y.

**Sparse products.**  XLA:CPU has no fast sparse-dense product: ``BCOO @ dense`` and a
gather followed by ``segment_sum`` materialize an ``nnz x k`` temporary and ran 5-6x
slower than scipy on a 100000 x 20000 matrix at 0.2% (experiments/bench_sparse.py).  Here
the stored entries are visited in chunks of :data:`CHUNK` by a ``fori_loop`` whose body
gathers ``CHUNK x k`` rows of the factor and scatter-adds them into the ``q x k`` result:
``O(CHUNK k)`` temporary memory, no padding of the entries (the last, shorter chunk is
a static remainder), and both directions (``Y X`` and ``Y' X``) at the same speed.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

from ._validate import on_device
from .weights import Weight

# Stored entries per chunk of a sparse product (see the module docstring).
CHUNK = 4096
# Entries per row block of the dense Frobenius loss (a block's residual is about this
# many floats: 1 MiB in float32), whatever n is.
BLOCK_ENTRIES = 1 << 18
_DIAGONAL = ("identity", "scalar", "diag")


def _as_scale(x, dtype) -> Array:
    return on_device(x, dtype)


# ------------------------------------------------------------------ chunked sparse kernels
def _chunked(n_items: int, body, init, chunk: int = CHUNK):
    """``init`` folded by ``body(start, size, carry)`` over ``[0, n_items)`` in chunks: a
    ``fori_loop`` over the full chunks and one static remainder chunk."""
    n_full, rest = divmod(n_items, chunk)
    carry = init
    if n_full:
        carry = lax.fori_loop(0, n_full, lambda i, c: body(i * chunk, chunk, c), carry)
    if rest:
        carry = body(n_full * chunk, rest, carry)
    return carry


def _slice(x: Array, start, size: int) -> Array:
    return lax.dynamic_slice_in_dim(x, jnp.asarray(start, jnp.int32), size)


def scatter_product(dst: Array, src: Array, values: Array, X: Array, size: int) -> Array:
    """``out[dst[e]] += values[e] X[src[e]]`` over every stored entry e: a sparse matrix
    (entries ``(dst, src, values)``) times the row-major factor X (``q x k``), ``size x k``."""

    def body(start, width, out):
        d, s, v = _slice(dst, start, width), _slice(src, start, width), _slice(values, start, width)
        return out.at[d].add(X[s] * v[:, None], mode="promise_in_bounds")

    return _chunked(dst.shape[0], body, jnp.zeros((size, X.shape[1]), X.dtype))


def chunked_entry_sum(rows: Array, cols: Array, f) -> Array:
    """``sum_e f(r, c, e)`` over the stored entries, chunk by chunk: ``f`` maps a chunk's row and
    column indices and its slice of entries (``start``, ``width``) to a chunk's sum, so no
    array of one value per stored entry is formed."""

    def body(start, width, total):
        return total + f(_slice(rows, start, width), _slice(cols, start, width), start, width)

    return _chunked(rows.shape[0], body, jnp.zeros((), jnp.result_type(float)))


def sampled_product(rows: Array, cols: Array, A: Array, B: Array) -> Array:
    """``(A B')[rows[e], cols[e]]`` for every entry e, for row-major A (``m x k``), B (``n x k``)."""

    def body(start, width, out):
        r, c = _slice(rows, start, width), _slice(cols, start, width)
        vals = jnp.sum(A[r] * B[c], axis=-1)
        return lax.dynamic_update_slice_in_dim(out, vals, jnp.asarray(start, jnp.int32), 0)

    return _chunked(rows.shape[0], body, jnp.zeros(rows.shape, A.dtype))


# ------------------------------------------------------------------------ mask operators
class MaskOperator(eqx.Module):
    """The elementwise loss weight of one half problem, in its ``q x p`` layout (fixed
    factor by free factor): the loss part of G is ``F (mask (.) (F' Xt))`` (no Kronecker
    product, see jnmf/quadratic.py).  HALS's sweep keeps ``P = F' Xt`` as a *sweep state*."""

    # whether the weight is 1 plus this operator's part: the unit part then stays in the
    # half problem's Kronecker terms (its Gram matrix), and the operator holds the rest
    unit = False

    @abc.abstractmethod
    def apply(self, F: Array, Xt: Array) -> Array:
        """``F (mask (.) (F' Xt))``, ``k x p``."""

    @abc.abstractmethod
    def diagonal(self, F: Array) -> Array:
        """``(F (.) F) mask``: the diagonal of the loss part of G, ``k x p``."""

    @abc.abstractmethod
    def column_grams(self, F: Array) -> Array:
        """``F Diag(mask[:, c]) F'`` of every free column c, ``p x k x k`` (ANLS)."""

    @abc.abstractmethod
    def sweep_state(self, F: Array, Xt: Array):
        """``F' Xt`` where the mask is non-zero (HALS's running product)."""

    @abc.abstractmethod
    def row_gradient(self, Fj: Array, P) -> Array:
        """``Fj (mask (.) P)``: one row of the loss gradient from the sweep state."""

    @abc.abstractmethod
    def update(self, P, Fj: Array, delta: Array):
        """The sweep state after row j of Xt changed by ``delta`` (rank-one update)."""


class DenseMask(MaskOperator):
    """A dense weight M (``m x n``).  In the L step (``transposed``) the ``q x p`` layout is
    ``M'``: the products contract M's other axis, so no transposed copy is made."""

    M: Array
    transposed: bool = eqx.field(static=True)

    def apply(self, F, Xt):
        if self.transposed:  # F = R (k x n), Xt = L' (k x m): ((M (.) L R) R')'
            return ((self.M * (Xt.T @ F)) @ F.T).T
        return F @ (self.M * (F.T @ Xt))

    def diagonal(self, F):
        FF = F * F
        return (self.M @ FF.T).T if self.transposed else FF @ self.M

    def column_grams(self, F):
        if self.transposed:
            return jnp.einsum("iq,cq,jq->cij", F, self.M, F)
        return jnp.einsum("iq,qc,jq->cij", F, self.M, F)

    def sweep_state(self, F, Xt):
        return Xt.T @ F if self.transposed else F.T @ Xt

    def row_gradient(self, Fj, P):
        return (self.M * P) @ Fj if self.transposed else Fj @ (self.M * P)

    def update(self, P, Fj, delta):
        if self.transposed:
            return P + delta[:, None] * Fj[None, :]
        return P + Fj[:, None] * delta[None, :]


class SparseMask(MaskOperator):
    """A weight stored at the entries ``(fixed[e], free[e])`` of the ``q x p`` layout (zero
    elsewhere): every product visits only those entries."""

    fixed_index: Array
    free_index: Array
    weights: Array
    free_size: int = eqx.field(static=True)

    def _gram_sampled(self, F, Xt):
        return sampled_product(self.fixed_index, self.free_index, F.T, Xt.T)

    def apply(self, F, Xt):
        P = self.weights * self._gram_sampled(F, Xt)
        return scatter_product(self.free_index, self.fixed_index, P, F.T, self.free_size).T

    def diagonal(self, F):
        return scatter_product(self.free_index, self.fixed_index, self.weights, (F * F).T, self.free_size).T

    def column_grams(self, F):
        k = F.shape[0]
        outer = jnp.einsum("iq,jq->qij", F, F).reshape(F.shape[1], k * k)
        grams = scatter_product(self.free_index, self.fixed_index, self.weights, outer, self.free_size)
        return grams.reshape(self.free_size, k, k)

    def sweep_state(self, F, Xt):
        return self._gram_sampled(F, Xt)

    def row_gradient(self, Fj, P):
        vals = self.weights * P
        return scatter_product(self.free_index, self.fixed_index, vals, Fj[:, None], self.free_size)[:, 0]

    def update(self, P, Fj, delta):
        return P + Fj[self.fixed_index] * delta[self.free_index]


class UnitPlusSparseMask(SparseMask):
    """A weight of 1 everywhere plus ``weights`` at the listed entries (e.g. -1 where an
    entry is held out).  The methods give the sparse part only; the unit part is the
    unweighted loss's Gram term, which the half problem keeps (``unit``)."""

    unit = True


# ------------------------------------------------------------------------ the operators
class DataOperator(eqx.Module):
    """What the algorithms need of ``Y`` (``m x n``); see the module docstring.

    Products are with the *loss-weighted* data: ``M (.) Y`` for a masked operator, Y
    otherwise (the Kronecker weights W_0R, W_0C of eq. 3 are applied to the factors by
    the caller, jnmf/quadratic.py).  Every result is in the units of ``Y * inv_scale``.
    """

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, int]:
        """(m, n)."""

    @property
    @abc.abstractmethod
    def dtype(self):
        """The floating dtype."""

    # class attributes (not fields): whether the loss carries an elementwise weight, whether
    # unstored entries count as zeros (sparse data), whether the operator itself is m x n
    masked = False
    unstored_zero = False
    needs_mn_memory = True
    # Y's rows (and L's) are split over the devices of a mesh: code that cuts L into
    # pieces in a loop (the tiled HALS sweep) must not, or GSPMD gathers L to cut it
    rows_sharded = False

    # -- scaling
    @abc.abstractmethod
    def scaled(self, scale) -> DataOperator:
        """The operator of ``Y / scale`` (a traced scalar leaf; no copy of Y)."""

    def prepared(self) -> DataOperator:
        """This operator with its derived terms computed (once per fit, by the driver)."""
        return self

    @property
    def entries(self) -> int:
        """How many entries of Y a product visits (``m n``; sparse data: the stored ones)."""
        m, n = self.shape
        return m * n

    # -- products
    @abc.abstractmethod
    def product_R(self, Ft: Array) -> Array:
        """``Ft (M (.) Y)`` for a factor-major ``Ft`` (``k x m``): ``k x n`` (the R step's d)."""

    @abc.abstractmethod
    def product_L(self, R: Array) -> Array:
        """``R (M (.) Y)'`` for ``R`` (``k x n``): ``k x m`` (the L step's d)."""

    # -- constants and losses
    @abc.abstractmethod
    def half_norm(self, W_0R: Weight, W_0C: Weight) -> Array:
        """``1/2 <Y, W_0R Y W_0C>`` (``1/2 sum M Y^2`` when masked): the constant c of eq. 7."""

    @abc.abstractmethod
    def loss(self, L: Array, R: Array, W_0R: Weight, W_0C: Weight) -> Array:
        """``1/2 tr((Y - LR)' W_0R (Y - LR) W_0C)`` (``1/2 sum M (Y - LR)^2`` when masked)."""

    # -- stored entries (divergences)
    @abc.abstractmethod
    def stored(self) -> Array:
        """The values of Y at the stored entries (all ``m x n`` entries for dense data)."""

    @abc.abstractmethod
    def sampled(self, Lt: Array, R: Array) -> Array:
        """``L R`` at the stored entries (an ``m x n`` array for dense data)."""

    @abc.abstractmethod
    def entry_weights(self, w: Array, v: Array) -> Array:
        """The loss weight of each stored entry: ``M_ij w_i v_j`` (M = 1 unmasked)."""

    @abc.abstractmethod
    def with_stored(self, values: Array) -> DataOperator:
        """An unmasked, unscaled operator with these values at the stored entries."""

    def mask_operator(self, side: str) -> MaskOperator | None:
        """The elementwise weight of the ``side`` half problem, or None (unmasked)."""
        return None

    # -- host side
    @abc.abstractmethod
    def maximum(self) -> Array:
        """The largest entry of Y (times ``inv_scale``)."""

    @abc.abstractmethod
    def mean(self) -> Array:
        """The mean over all ``m x n`` entries (unstored zeros count as zeros)."""

    @abc.abstractmethod
    def row_block(self, start: int, stop: int) -> DataOperator:
        """Rows ``start:stop`` as an operator of the same kind."""

    def replace_mask(self, M) -> DataOperator:
        raise ValueError("M can only replace an elementwise weight: build the problem with M")

    def dense(self) -> Array:
        """Y as a dense array (tests and small problems only)."""
        raise ValueError(f"{type(self).__name__} has no dense form")


def _row_col_weights(W_0R: Weight, W_0C: Weight, m: int, n: int, dtype):
    """The diagonals (w, v) of diagonal-kind loss weights (None for the identity)."""
    w = None if W_0R.kind == "identity" else W_0R.diagonal(m, dtype)
    v = None if W_0C.kind == "identity" else W_0C.diagonal(n, dtype)
    return w, v


def _blocked_sum(Y: Array, f) -> Array:
    """``sum_b f(start_b, Y[rows of b])`` over row blocks (no ``m x n`` temporary)."""
    m, n = Y.shape
    block = max(8, BLOCK_ENTRIES // max(n, 1))

    def body(start, size, total):
        rows = lax.dynamic_slice_in_dim(Y, jnp.asarray(start, jnp.int32), size, 0)
        return total + f(start, size, rows)

    return _chunked(m, body, jnp.zeros((), Y.dtype), block)


class _DenseArray(DataOperator):
    """What the dense operators share: the array Y and the traced scale; every entry is stored."""

    Y: Array
    inv_scale: Array

    @property
    def shape(self):
        return tuple(self.Y.shape)

    @property
    def dtype(self):
        return self.Y.dtype

    def stored(self):
        return self.Y * self.inv_scale

    def sampled(self, Lt, R):
        return Lt.T @ R

    def with_stored(self, values):
        return DenseData(values)

    def mean(self):
        return jnp.mean(self.Y) * self.inv_scale

    def dense(self):
        return self.Y * self.inv_scale


class DenseData(_DenseArray):
    """A dense ``m x n`` array Y.

    The products are two GEMMs against Y itself: the L step's ``R Y'`` contracts Y's
    second axis (XLA reads Y transposed; no transposed copy is kept).  The Frobenius
    loss is summed over row blocks of the residual (exact to rounding, no ``m x n``
    temporary), except with full (non-diagonal) W_0R / W_0C, which need the whole residual.
    """

    def __init__(self, Y, inv_scale=None):
        self.Y = Y
        self.inv_scale = _as_scale(1.0 if inv_scale is None else inv_scale, Y.dtype)

    def scaled(self, scale):
        return DenseData(self.Y, self.inv_scale / on_device(scale, self.Y.dtype))

    # The scale multiplies the (small) factor before the product, never Y: no scaled copy of
    # Y, and no overflow for data near the float32 limits (fit's scale equivariance).
    def product_R(self, Ft):
        return (Ft * self.inv_scale) @ self.Y

    def product_L(self, R):
        return (R * self.inv_scale) @ self.Y.T

    def half_norm(self, W_0R, W_0C):
        Y, s = self.Y, self.inv_scale
        m, n = Y.shape
        if W_0R.kind in _DIAGONAL and W_0C.kind in _DIAGONAL:
            w, v = _row_col_weights(W_0R, W_0C, m, n, Y.dtype)
            Ys = Y * s  # fused into the reduction: no m x n temporary
            sq = Ys * Ys if v is None else Ys * Ys * v[None, :]
            row_sq = jnp.sum(sq, axis=1)
            return 0.5 * (jnp.sum(row_sq) if w is None else jnp.sum(w * row_sq))
        Ys = Y * s
        return 0.5 * jnp.sum(Ys * W_0R.left(W_0C.right(Ys)))

    def loss(self, L, R, W_0R, W_0C):
        m, n = self.shape
        s = self.inv_scale
        if not (W_0R.kind in _DIAGONAL and W_0C.kind in _DIAGONAL):
            E = self.Y * s - L @ R  # full weights couple all rows: the whole residual
            return 0.5 * jnp.sum(E * W_0R.left(W_0C.right(E)))
        w, v = _row_col_weights(W_0R, W_0C, m, n, self.dtype)

        def block(start, size, Yb):
            Lb = lax.dynamic_slice_in_dim(L, jnp.asarray(start, jnp.int32), size, 0)
            E = Yb * s - Lb @ R
            E2 = E * E if v is None else E * E * v[None, :]
            if w is not None:
                E2 = E2 * lax.dynamic_slice_in_dim(w, jnp.asarray(start, jnp.int32), size)[:, None]
            return jnp.sum(E2)

        return 0.5 * _blocked_sum(self.Y, block)

    def entry_weights(self, w, v):
        return w[:, None] * v[None, :]

    def maximum(self):
        return jnp.max(self.Y) * self.inv_scale

    def row_block(self, start, stop):
        return DenseData(self.Y[start:stop], self.inv_scale)


class TransposedDense(DataOperator):
    """A dense ``m x n`` Y held as its transpose ``Yt`` (``n x m``).

    A Fortran-ordered host array (scikit-learn users' ``X.T``, ORL's images as columns) is
    C-contiguous as Y': :func:`dense_operator` puts ``Y'`` on the device as it is, where
    :class:`DenseData` would need a transposed host copy first (3.5 ms on ORL, 10304 x 400
    float32; the plain copy of Y' to the device is 1.5 ms).  Every method is
    :class:`DenseData`'s on ``Y'`` with the roles of the factors and of the loss weights
    swapped (``Y ~ L R`` iff ``Y' ~ R' L'``; ``<Y, W_0R Y W_0C> = <Y', W_0C Y' W_0R>``), so
    the products contract ``Yt``'s other axis (XLA's dot reads either; no transposed copy
    of Y is made) and the loss sums blocks of Y's columns.  One code path for the
    arithmetic; results equal DenseData's to rounding (a different summation order).

    The stored entries (:meth:`stored`, :meth:`sampled`, :meth:`entry_weights`,
    :meth:`with_stored`: the divergences' elementwise terms) are in ``Yt``'s order, ``n x m``,
    as sparse data's are in its own order; :attr:`Y` and :meth:`dense` are ``m x n``.
    """

    Yt: Array
    inv_scale: Array

    def __init__(self, Yt, inv_scale=None):
        self.Yt = Yt
        self.inv_scale = _as_scale(1.0 if inv_scale is None else inv_scale, Yt.dtype)

    @property
    def _flipped(self) -> DenseData:
        """The operator of Y' (the same arrays, no copy)."""
        return DenseData(self.Yt, self.inv_scale)

    @property
    def Y(self) -> Array:
        """Y (``m x n``), a transposed view of ``Yt`` (a copy outside a compiled program)."""
        return self.Yt.T

    @property
    def shape(self):
        n, m = self.Yt.shape
        return (m, n)

    @property
    def dtype(self):
        return self.Yt.dtype

    def scaled(self, scale):
        return TransposedDense(self.Yt, self.inv_scale / on_device(scale, self.Yt.dtype))

    def product_R(self, Ft):
        return self._flipped.product_L(Ft)  # (Ft s) Yt' = Ft Y

    def product_L(self, R):
        return self._flipped.product_R(R)  # (R s) Yt = R Y'

    def half_norm(self, W_0R, W_0C):
        return self._flipped.half_norm(W_0C, W_0R)

    def loss(self, L, R, W_0R, W_0C):
        return self._flipped.loss(R.T, L.T, W_0C, W_0R)

    def stored(self):
        return self._flipped.stored()  # in Yt's order

    def sampled(self, Lt, R):
        return self._flipped.sampled(R, Lt)  # (L R)' = R' Lt

    def entry_weights(self, w, v):
        return self._flipped.entry_weights(v, w)

    def with_stored(self, values):
        return TransposedDense(values)

    def maximum(self):
        return self._flipped.maximum()

    def mean(self):
        return self._flipped.mean()

    def row_block(self, start, stop):
        return TransposedDense(self.Yt[:, start:stop], self.inv_scale)

    def dense(self):
        return self.Yt.T * self.inv_scale


class MaskedData(_DenseArray):
    """Dense Y with an elementwise loss weight M (``m x n``, 0 = missing): the loss is
    ``1/2 sum M (.) (Y - LR)^2``.  The products need ``M (.) Y``, formed once per fit
    (:meth:`prepared`): masked fits hold that extra ``m x n`` array, and each half step
    of a Frobenius rule one more (``M (.) (F' Xt)``, see :class:`DenseMask`)."""

    masked = True

    M: Array
    MY: Array | None = None

    def __init__(self, Y, M, inv_scale=None, MY=None):
        self.Y = Y
        self.M = M
        self.inv_scale = _as_scale(1.0 if inv_scale is None else inv_scale, Y.dtype)
        self.MY = MY

    def scaled(self, scale):
        return MaskedData(self.Y, self.M, self.inv_scale / on_device(scale, self.Y.dtype))

    def prepared(self):
        if self.MY is not None:
            return self
        return MaskedData(self.Y, self.M, self.inv_scale, self.M * self.Y)

    def _weighted(self):
        return self.M * self.Y if self.MY is None else self.MY

    def product_R(self, Ft):
        return (Ft * self.inv_scale) @ self._weighted()

    def product_L(self, R):
        return (R * self.inv_scale) @ self._weighted().T

    def half_norm(self, W_0R, W_0C):
        Ys = self.Y * self.inv_scale
        return 0.5 * jnp.sum(self.M * Ys * Ys)

    def loss(self, L, R, W_0R, W_0C):
        s = self.inv_scale

        def block(start, size, Yb):
            st = jnp.asarray(start, jnp.int32)
            Lb = lax.dynamic_slice_in_dim(L, st, size, 0)
            Mb = lax.dynamic_slice_in_dim(self.M, st, size, 0)
            E = Yb * s - Lb @ R
            return jnp.sum(Mb * E * E)

        return 0.5 * _blocked_sum(self.Y, block)

    def entry_weights(self, w, v):
        return self.M * (w[:, None] * v[None, :])

    def mask_operator(self, side):
        return DenseMask(self.M, side == "L")

    def maximum(self):
        return jnp.max(jnp.where(self.M > 0, self.Y, 0)) * self.inv_scale

    def row_block(self, start, stop):
        return MaskedData(self.Y[start:stop], self.M[start:stop], self.inv_scale)

    def replace_mask(self, M):
        if jnp.shape(M) != self.shape:
            raise ValueError(f"M must have shape {self.shape}, got {jnp.shape(M)}")
        return MaskedData(self.Y, jnp.asarray(M, self.dtype), self.inv_scale)


class SparseData(DataOperator):
    """The stored entries of a sparse ``m x n`` matrix, in coordinate form sorted by row.

    Attributes:
        rows, cols: int32 indices of the stored entries (``nnz``).
        values: their values.
        inv_scale: the traced scale factor.
        weights: the loss weight of each stored entry, or None (every weight 1).  With
            ``unstored="missing"`` it is always present (1 unless given) and unstored
            entries weigh 0; with unstored zeros, unstored entries weigh 1 and these
            weights only change the stored ones (how sparse cross-validation holds out
            entries: a held-out zero is stored with value 0 and weight 0).
        shape: (m, n), static.
        unstored: ``"zero"`` (unstored entries are zeros, the default) or ``"missing"``
            (they carry no loss: RcppML's ``mask_zeros``), static.

    Per iteration a fit costs ``O(nnz k + (m + n) k^2)`` and holds ``O(nnz + (m + n) k)``:
    no ``m x n`` array exists.  With unstored zeros the Frobenius loss is
    ``1/2 (sum_stored w (Y^2 - 2 Y LR) + <Lt W_0R Lt', R W_0C R'>)``.
    """

    rows: Array
    cols: Array
    values: Array
    inv_scale: Array
    weights: Array | None
    static_shape: tuple[int, int] = eqx.field(static=True)
    unstored: str = eqx.field(static=True)
    needs_mn_memory = False

    def __init__(self, rows, cols, values, shape, unstored="zero", inv_scale=None, weights=None):
        self.rows = rows
        self.cols = cols
        self.values = values
        self.static_shape = (int(shape[0]), int(shape[1]))
        self.unstored = unstored
        self.inv_scale = _as_scale(1.0 if inv_scale is None else inv_scale, values.dtype)
        if unstored == "missing" and weights is None:
            weights = jnp.ones_like(values)
        self.weights = weights

    @property
    def masked(self):  # type: ignore[override]
        return self.weights is not None

    @property
    def unstored_zero(self):  # type: ignore[override]
        return self.unstored == "zero"

    @property
    def shape(self):
        return self.static_shape

    @property
    def dtype(self):
        return self.values.dtype

    @property
    def nnz(self) -> int:
        return int(self.rows.shape[0])

    @property
    def entries(self) -> int:
        return self.nnz

    def _new(self, **changes) -> SparseData:
        args = dict(
            rows=self.rows,
            cols=self.cols,
            values=self.values,
            shape=self.shape,
            unstored=self.unstored,
            inv_scale=self.inv_scale,
            weights=self.weights,
        )
        args.update(changes)
        return SparseData(**args)

    def scaled(self, scale):
        return self._new(inv_scale=self.inv_scale / on_device(scale, self.dtype))

    def _vals(self):
        """The values the products use: ``weights (.) Y`` when masked."""
        return self.values if self.weights is None else self.values * self.weights

    def product_R(self, Ft):
        m, n = self.shape
        return scatter_product(self.cols, self.rows, self._vals(), (Ft * self.inv_scale).T, n).T

    def product_L(self, R):
        m, n = self.shape
        return scatter_product(self.rows, self.cols, self._vals(), (R * self.inv_scale).T, m).T

    def _entry_sum(self, W_0R, W_0C, f) -> Array:
        """``sum_e f(Y_e, r, c[, weight_e]) w_r v_c`` over the stored entries, chunk by chunk
        (``w``, ``v`` the diagonal loss weights; ``f`` gets the entries' own weights as a
        fourth argument when the data has them)."""
        m, n = self.shape
        w, v = _row_col_weights(W_0R, W_0C, m, n, self.dtype)

        def chunk(r, c, start, width):
            Y = _slice(self.values, start, width) * self.inv_scale
            weight = None if self.weights is None else _slice(self.weights, start, width)
            term = f(Y, r, c) if weight is None else f(Y, r, c, weight)
            if w is not None:
                term = term * w[r]
            if v is not None:
                term = term * v[c]
            return jnp.sum(term)

        return chunked_entry_sum(self.rows, self.cols, chunk).astype(self.dtype)

    def half_norm(self, W_0R, W_0C):
        return 0.5 * self._entry_sum(W_0R, W_0C, lambda Y, r, c, weight=1.0: weight * Y * Y)

    def loss(self, L, R, W_0R, W_0C):
        Rt = R.T
        model = lambda r, c: jnp.sum(L[r] * Rt[c], axis=-1)  # (LR) at a chunk's entries
        if not self.unstored_zero:
            return 0.5 * self._entry_sum(W_0R, W_0C, lambda Y, r, c, weight: weight * (Y - model(r, c)) ** 2)

        # unstored zeros: sum_all (LR)^2 by the k x k Gram matrices; the stored entries add
        # Y^2 - 2 Y LR, plus (weight - 1) (Y - LR)^2 where their weight is not 1
        def stored_term(Y, r, c, weight=None):
            LR = model(r, c)
            term = Y * (Y - 2.0 * LR)
            return term if weight is None else term + (weight - 1.0) * (Y - LR) ** 2

        stored = self._entry_sum(W_0R, W_0C, stored_term)
        gram = jnp.sum(W_0R.right(L.T) @ L * (W_0C.right(R) @ Rt))
        return 0.5 * (stored + gram)

    def stored(self):
        return self.values * self.inv_scale

    def sampled(self, Lt, R):
        return sampled_product(self.rows, self.cols, Lt.T, R.T)

    def entry_weights(self, w, v):
        if self.unstored_zero and self.weights is not None:
            # KL and beta sum the unstored zeros' share with weight 1 through the factors'
            # column sums; a weight on stored entries would leave that share wrong
            raise ValueError("KL / beta losses cannot weight the stored entries of data with unstored zeros")
        out = w[self.rows] * v[self.cols]
        return out if self.weights is None else out * self.weights

    def with_stored(self, values):
        return SparseData(self.rows, self.cols, values, self.shape, "zero")

    def mask_operator(self, side):
        if not self.masked:
            return None
        m, n = self.shape
        # with unstored zeros every entry weighs 1 plus a correction at the stored entries
        mask = UnitPlusSparseMask if self.unstored_zero else SparseMask
        weights = self.weights - 1.0 if self.unstored_zero else self.weights
        if side == "L":  # q x p = n x m
            return mask(self.cols, self.rows, weights, m)
        return mask(self.rows, self.cols, weights, n)

    def maximum(self):
        return jnp.max(self.values, initial=0.0) * self.inv_scale

    def mean(self):
        m, n = self.shape
        if not self.unstored_zero:
            return jnp.mean(self.values) * self.inv_scale if self.nnz else jnp.zeros((), self.dtype)
        return jnp.sum(self.values) / (m * n) * self.inv_scale

    def row_block(self, start, stop):
        rows = np.asarray(self.rows)
        lo, hi = np.searchsorted(rows, [start, stop])
        return SparseData(
            jnp.asarray(rows[lo:hi] - start),
            self.cols[lo:hi],
            self.values[lo:hi],
            (stop - start, self.shape[1]),
            self.unstored,
            self.inv_scale,
            None if self.weights is None else self.weights[lo:hi],
        )

    def replace_mask(self, M):
        """New weights of the stored entries (``nnz``): how a grid of hold-outs varies."""
        if not self.masked:
            return super().replace_mask(M)
        M = jnp.asarray(M, self.dtype)
        if M.shape != self.values.shape:
            raise ValueError(f"M of sparse data weighs its {self.nnz} stored entries, got shape {M.shape}")
        return self._new(weights=M)

    def check_mask(self, name: str, M) -> None:
        """Host check of a replacement for :meth:`replace_mask`."""
        arr = np.asarray(M)
        if arr.shape != self.values.shape:
            raise ValueError(f"{name} must weigh the {self.nnz} stored entries, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError(f"{name} must be finite and non-negative")

    def dense(self):
        m, n = self.shape
        return jnp.zeros((m, n), self.dtype).at[self.rows, self.cols].add(self.values) * self.inv_scale


class RowBlock(DataOperator):
    """Rows ``start:start + m_block`` of an ``total_rows x n`` matrix: an operator of any
    kind plus where its rows sit (streamed and row-sharded fits sum their k x n and
    k x k partial results over blocks; the L factor of a block is its own rows)."""

    block: DataOperator
    start: int = eqx.field(static=True)
    total_rows: int = eqx.field(static=True)

    @property
    def masked(self):  # type: ignore[override]
        return self.block.masked

    @property
    def unstored_zero(self):  # type: ignore[override]
        return self.block.unstored_zero

    @property
    def shape(self):
        return self.block.shape

    @property
    def dtype(self):
        return self.block.dtype

    def _wrap(self, block):
        return RowBlock(block, self.start, self.total_rows)

    @property
    def entries(self) -> int:
        return self.block.entries

    def scaled(self, scale):
        return self._wrap(self.block.scaled(scale))

    def prepared(self):
        return self._wrap(self.block.prepared())

    def product_R(self, Ft):
        return self.block.product_R(Ft)

    def product_L(self, R):
        return self.block.product_L(R)

    def half_norm(self, W_0R, W_0C):
        return self.block.half_norm(W_0R, W_0C)

    def loss(self, L, R, W_0R, W_0C):
        return self.block.loss(L, R, W_0R, W_0C)

    def stored(self):
        return self.block.stored()

    def sampled(self, Lt, R):
        return self.block.sampled(Lt, R)

    def entry_weights(self, w, v):
        return self.block.entry_weights(w, v)

    def with_stored(self, values):
        return self._wrap(self.block.with_stored(values))

    def mask_operator(self, side):
        return self.block.mask_operator(side)

    def maximum(self):
        return self.block.maximum()

    def mean(self):
        return self.block.mean()

    def row_block(self, start, stop):
        return RowBlock(self.block.row_block(start, stop), self.start + start, self.total_rows)

    def dense(self):
        return self.block.dense()


_P = jax.sharding.PartitionSpec


class _RowSharded(DataOperator):
    """What the row-sharded operators share: Y's rows are split over the devices of a
    1-D mesh, each device holds one row block, the block's rows of L (``Lt`` sharded on
    its columns) and a replicated R.

    Every product and loss runs the operator of the device's own row block inside
    ``jax.shard_map`` and, as streaming sums its row blocks (jnmf/streaming.py), sums
    the blocks' ``k x n`` and scalar results with ``psum`` (one all-reduce each): the R
    step's ``Lt Y``, the losses, the constant of eq. 7.  The L step's ``R Y'`` is local
    (``k x m``, sharded on m).  Y is never gathered.  Subclasses say which leaves hold
    the data (``_leaves``, sharded on their first axis) and build a block from them.
    """

    inv_scale: Array
    mesh: jax.sharding.Mesh = eqx.field(static=True)
    static_shape: tuple[int, int] = eqx.field(static=True)
    rows_sharded = True

    @property
    def axis(self) -> str:
        return self.mesh.axis_names[0]

    @property
    def shape(self):
        return self.static_shape

    @property
    def dtype(self):
        return self._leaves()[-1].dtype  # the values

    @abc.abstractmethod
    def _leaves(self) -> tuple:
        """The data arrays, each sharded on its first axis."""

    @abc.abstractmethod
    def _block(self, leaves: tuple, inv_scale) -> DataOperator:
        """One device's row block from its shards of :meth:`_leaves`."""

    def _shard(self, f, in_specs, out_specs, *args):
        """``f(block, *args)`` on every device's row block.

        ``check_vma=False``: the blocks' own loops (the dense loss's row blocks, the sparse
        products' chunks) start their sums from constants that do not vary over the mesh,
        which shard_map's type check refuses; every result leaves here either ``psum``-ed
        (replicated, as ``out_specs`` says) or sharded."""
        leaves = self._leaves()

        def body(leaves, inv_scale, *rest):
            return f(self._block(leaves, inv_scale), *rest)

        data_specs = tuple(_P(self.axis, *(None,) * (x.ndim - 1)) for x in leaves)
        return jax.shard_map(
            body, mesh=self.mesh, in_specs=(data_specs, _P(), *in_specs), out_specs=out_specs, check_vma=False
        )(leaves, self.inv_scale, *args)

    def _psum(self, x):
        return lax.psum(x, self.axis)

    def product_R(self, Ft):
        return self._shard(lambda b, F: self._psum(b.product_R(F)), (_P(None, self.axis),), _P(), Ft)

    def product_L(self, R):
        return self._shard(lambda b, R: b.product_L(R), (_P(),), _P(None, self.axis), R)

    @staticmethod
    def _check_weights(W_0R, W_0C):
        if W_0R.kind != "identity" or W_0C.kind != "identity":
            raise ValueError("W_0R / W_0C are not supported with row-sharded data (mesh)")

    def half_norm(self, W_0R, W_0C):
        self._check_weights(W_0R, W_0C)
        return self._shard(lambda b: self._psum(b.half_norm(W_0R, W_0C)), (), _P())

    def loss(self, L, R, W_0R, W_0C):
        self._check_weights(W_0R, W_0C)
        local = lambda b, L, R: self._psum(b.loss(L, R, W_0R, W_0C))  # noqa: E731
        return self._shard(local, (_P(self.axis, None), _P()), _P(), L, R)

    def maximum(self):
        return self._shard(lambda b: lax.pmax(b.maximum(), self.axis), (), _P())


class RowShardedData(_RowSharded):
    """A dense ``m x n`` Y split by rows over a 1-D mesh (``NamedSharding(mesh, P(axis,
    None))``); each device's row block is a :class:`DenseData` (see :class:`_RowSharded`).
    ``m`` must be a multiple of the mesh size.  The divergences' entrywise terms
    (:meth:`stored`, :meth:`sampled`) are ``m x n`` arrays partitioned by GSPMD."""

    Y: Array

    def __init__(self, Y, mesh, inv_scale=None):
        self.Y = Y
        self.mesh = mesh
        self.static_shape = (int(Y.shape[0]), int(Y.shape[1]))
        self.inv_scale = _as_scale(1.0 if inv_scale is None else inv_scale, Y.dtype)

    def _leaves(self):
        return (self.Y,)

    def _block(self, leaves, inv_scale):
        return DenseData(leaves[0], inv_scale)

    def scaled(self, scale):
        return RowShardedData(self.Y, self.mesh, self.inv_scale / on_device(scale, self.dtype))

    def stored(self):
        return self.Y * self.inv_scale

    def sampled(self, Lt, R):
        return Lt.T @ R

    def entry_weights(self, w, v):
        return w[:, None] * v[None, :]

    def with_stored(self, values):
        return RowShardedData(values, self.mesh)

    def mean(self):
        m, n = self.shape
        return self._shard(lambda b: self._psum(jnp.sum(b.Y)) / (m * n) * b.inv_scale, (), _P())

    def row_block(self, start, stop):
        return DenseData(self.Y[start:stop], self.inv_scale)

    def dense(self):
        return self.Y * self.inv_scale


class RowShardedSparse(_RowSharded):
    """A sparse ``m x n`` Y (unstored entries are zeros) split by rows over a 1-D mesh:
    device d holds the stored entries of rows ``d m/D : (d+1) m/D`` in coordinate form
    (row indices local to its block), padded with zero entries to the largest block's
    count (a zero entry adds nothing to a product or a loss).  Each device's row block
    is a :class:`SparseData` (see :class:`_RowSharded`).  Only the Frobenius rules:
    the divergences' entrywise terms are refused."""

    rows: Array
    cols: Array
    values: Array
    needs_mn_memory = False
    unstored_zero = True

    def __init__(self, rows, cols, values, shape, mesh, inv_scale=None):
        self.rows, self.cols, self.values = rows, cols, values
        self.static_shape = (int(shape[0]), int(shape[1]))
        self.mesh = mesh
        self.inv_scale = _as_scale(1.0 if inv_scale is None else inv_scale, values.dtype)

    @property
    def entries(self) -> int:
        return int(self.values.shape[0])

    def _leaves(self):
        return (self.rows, self.cols, self.values)

    def _block(self, leaves, inv_scale):
        m, n = self.shape
        rows, cols, values = leaves
        return SparseData(rows, cols, values, (m // self.mesh.devices.size, n), "zero", inv_scale)

    def scaled(self, scale):
        return RowShardedSparse(
            self.rows,
            self.cols,
            self.values,
            self.shape,
            self.mesh,
            self.inv_scale / on_device(scale, self.dtype),
        )

    def mean(self):
        m, n = self.shape
        return self._shard(lambda b: self._psum(jnp.sum(b.values)) / (m * n) * b.inv_scale, (), _P())

    def _refuse(self, *args):
        raise ValueError("row-sharded sparse Y (mesh) supports the Frobenius methods only, not KL / beta")

    stored = sampled = entry_weights = with_stored = _refuse

    def row_block(self, start, stop):
        raise ValueError("row-sharded sparse Y (mesh) has no row blocks on the host")


def row_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """The sharding of an ``m x n`` matrix split by rows over a 1-D ``mesh``."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names[0], None))


def check_mesh(name: str, mesh, rows: int) -> jax.sharding.Mesh:
    """A 1-D :class:`jax.sharding.Mesh` whose size divides ``rows`` (ValueError naming ``name``)."""
    if not isinstance(mesh, jax.sharding.Mesh):
        raise ValueError(f"{name} must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if len(mesh.axis_names) != 1:
        raise ValueError(f"{name} must be a 1-D mesh (one axis, the rows), got axes {mesh.axis_names}")
    if any(kind != jax.sharding.AxisType.Auto for kind in mesh.axis_types):
        # jnmf leaves the partitioning of the loop to GSPMD, which explicit axes refuse
        raise ValueError(
            f"{name} must have an Auto axis (jax.make_mesh(..., axis_types=(jax.sharding.AxisType.Auto,)) "
            f"or jax.sharding.Mesh(devices, ('rows',))), got {mesh.axis_types}"
        )
    size = mesh.devices.size
    if rows % size:
        raise ValueError(f"{name} has {size} devices, which must divide the {rows} rows of Y")
    return mesh


def mesh_of(Y) -> jax.sharding.Mesh | None:
    """The 1-D mesh of a jax.Array sharded by rows (``NamedSharding(mesh, P(axis, None))``)
    or of a row-sharded operator (:func:`process_rows`), else None."""
    if isinstance(Y, _RowSharded):
        return Y.mesh
    sharding = getattr(Y, "sharding", None)
    if not isinstance(sharding, jax.sharding.NamedSharding) or len(sharding.mesh.axis_names) != 1:
        return None
    spec = tuple(sharding.spec) + (None,) * (2 - len(sharding.spec))
    if spec[0] == sharding.mesh.axis_names[0] and spec[1] is None and sharding.mesh.devices.size > 1:
        return sharding.mesh
    return None


@jax.jit
def _finite_and_min(Y: Array) -> tuple[Array, Array]:
    return jnp.all(jnp.isfinite(Y)), jnp.min(Y)


def sharded_operator(name: str, Y, mesh: jax.sharding.Mesh) -> RowShardedData | RowShardedSparse:
    """A validated :class:`RowShardedData` of ``Y`` on ``mesh``, split by rows
    (:func:`row_sharding`).

    Args:
        name: the argument's name, for error messages.
        Y: a host array (validated on the host, then placed) or a jax.Array (validated on
            its devices: two scalar reductions, no host copy; an array already sharded by
            rows stays where it is), or an operator of :func:`process_rows` (returned as it is).
        mesh: a 1-D mesh whose size divides Y's rows (:func:`check_mesh`).

    Returns:
        The operator, in the fit dtype (:func:`jnmf._validate.float_dtype`).

    Raises:
        ValueError: naming ``name``: a bad shape, dtype or value, or a mesh that does not fit.
    """
    from . import _validate as check

    if isinstance(Y, _RowSharded):  # validated by process_rows
        if Y.mesh != mesh:
            raise ValueError(f"mesh must be the mesh {name} is sharded on (process_rows)")
        return Y
    if not isinstance(Y, jax.Array) or check.is_traced(Y):
        Y = check.data(name, Y)
        check_mesh("mesh", mesh, Y.shape[0])
        return RowShardedData(jax.device_put(Y, row_sharding(mesh)), mesh)
    if not (jnp.issubdtype(Y.dtype, jnp.floating) or np.dtype(Y.dtype).kind in "iub"):
        raise ValueError(f"{name} must be a real numeric array, got dtype {Y.dtype}")
    if Y.ndim != 2:
        raise ValueError(f"{name} must be a 2-d matrix, got shape {tuple(Y.shape)}")
    if Y.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(Y.shape)}")
    check_mesh("mesh", mesh, Y.shape[0])
    Y = jax.device_put(Y, row_sharding(mesh))
    dtype = check.float_dtype(Y)
    if Y.dtype != dtype:
        Y = jax.jit(lambda x: x.astype(dtype), out_shardings=row_sharding(mesh))(Y)
    finite, low = _finite_and_min(Y)
    if not bool(finite):
        raise ValueError(f"{name} must be finite; it contains NaN or infinite entries")
    if float(low) < 0:
        raise ValueError(f"{name} must be non-negative; it has entries < 0 (min {float(low)})")
    return RowShardedData(Y, mesh)


def sharded_sparse(data: SparseData, mesh: jax.sharding.Mesh) -> RowShardedSparse:
    """A :class:`RowShardedSparse` of validated sparse data (unstored zeros, no entry
    weights) on ``mesh``: each device gets its row block's stored entries, padded with
    zero entries to the largest block's count.

    Args:
        data: the sparse operator (:func:`sparse_operator`; sorted by row).
        mesh: a 1-D mesh whose size divides the rows (:func:`check_mesh`).

    Returns:
        The operator; per device ``3 x`` the largest block's stored entries.

    Raises:
        ValueError: a mesh that does not fit, or data with missing entries or weights.
    """
    m, n = data.shape
    check_mesh("mesh", mesh, m)
    if not data.unstored_zero or data.weights is not None:
        raise ValueError(
            "mesh: sparse Y with missing (unstored) entries or weights cannot be row-sharded yet"
        )
    devices = mesh.devices.size
    block = m // devices
    rows, cols, values = (np.asarray(x) for x in (data.rows, data.cols, data.values))
    starts = np.arange(devices) * block
    bounds = np.searchsorted(rows, np.append(starts, m))
    cap = max(1, int(np.max(np.diff(bounds))))
    padded = _padded_blocks(rows, cols, values, bounds, starts, cap)
    sharding = jax.sharding.NamedSharding(mesh, _P(mesh.axis_names[0]))
    put = lambda x: jax.device_put(x.reshape(-1), sharding)  # noqa: E731
    return RowShardedSparse(*(put(x) for x in padded), (m, n), mesh)


def _padded_blocks(rows, cols, values, bounds, starts, cap: int) -> tuple[np.ndarray, ...]:
    """Row blocks of sorted host COO entries, one per device: block d holds entries
    ``bounds[d]:bounds[d+1]`` with row indices made local (minus ``starts[d]``), padded
    with zero entries to ``cap``.  Returns ``(rows, cols, values)``, each ``blocks x cap``."""
    out_rows = np.zeros((len(starts), cap), np.int32)
    out_cols = np.zeros((len(starts), cap), np.int32)
    out_values = np.zeros((len(starts), cap), values.dtype)
    for d, start in enumerate(starts):
        lo, hi = bounds[d], bounds[d + 1]
        out_rows[d, : hi - lo] = rows[lo:hi] - start
        out_cols[d, : hi - lo] = cols[lo:hi]
        out_values[d, : hi - lo] = values[lo:hi]
    return out_rows, out_cols, out_values


# ------------------------------------------------------------------ several processes
def _agreed(facts: list[int]) -> np.ndarray:
    """Every process's ``facts`` (small ints), stacked ``processes x len(facts)``: the one
    exchange :func:`process_rows` makes, so that every process sees the same global facts
    and raises the same errors (a process that raised alone would leave the others
    waiting in the fit's first collective)."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(facts, np.int64)))


def process_rows(source, mesh: jax.sharding.Mesh, *, name: str = "Y") -> RowShardedData | RowShardedSparse:
    """Y for a fit on a mesh that spans several processes, from each process's own rows.

    Under ``jax.distributed.initialize`` every process runs the same program and calls
    this with the same ``mesh``; each process reads (or gives) only the rows of its own
    devices and the result is one global row-sharded Y, to pass to ``jnmf.fit(Y, k,
    mesh=mesh)`` (or without ``mesh=``: it is Y's).  Device ``d`` of the mesh holds rows
    ``d m/D : (d+1) m/D``, as in every row-sharded fit (:class:`RowShardedData`); with
    the devices listed process by process (``jax.devices()`` order), process ``p`` of
    ``P`` holds rows ``p m/P : (p+1) m/P``.  Nothing is gathered: the checks run on each
    process's rows and one small all-gather of per-process facts (row and column counts,
    dtype, which checks failed, the largest block's stored entries) makes every process
    agree; the fit's scale (``max(Y)``) and its zero test are reductions on the devices.
    Works on one process too.

    Args:
        source: a file path (``.npy``: a memory-mapped row range; ``.mtx`` / ``.mtx.gz``:
            streamed, only these rows' entries kept; ``.h5ad``: AnnData's backed mode,
            needs the optional ``anndata``; see :func:`jnmf.io.read_rows`), the same on
            every process; or this process's rows: a dense array or a scipy.sparse
            matrix, the same shape on every process.
        mesh: a 1-D mesh whose size divides the rows (:func:`check_mesh`).
        name: the argument's name, for error messages.

    Returns:
        A :class:`RowShardedData` (dense rows) or :class:`RowShardedSparse` (sparse rows,
        unstored entries zero) in the fit dtype (:func:`jnmf._validate.float_dtype`).

    Raises:
        ValueError: on every process alike, naming the processes whose rows are bad (a
            bad file, shape, dtype or value), or a mesh that does not fit.  A process
            whose rows failed raises its own error (of whatever type), the others a
            ValueError naming it: no process is left waiting for the others.
    """
    import scipy.sparse

    from . import _validate as check
    from . import io as matrix_io

    check_mesh("mesh", mesh, 0)
    here = jax.process_index()
    devices = [d for d in mesh.devices.flat if d.process_index == here]
    if not devices:
        raise ValueError(f"mesh has no device of process {here}: every process of the fit needs one")
    error, block, m, n, lo = "", None, 0, 0, 0
    try:
        from_file = isinstance(source, str | bytes) or hasattr(source, "__fspath__")
        if from_file:
            m, n = matrix_io.matrix_shape(source)
            check_mesh("mesh", mesh, m)
        else:
            block = source
            if np.ndim(block) != 2:
                raise ValueError(
                    f"{name} must be this process's rows as a 2-d matrix, got shape {np.shape(block)}"
                )
            rows, n = (int(d) for d in block.shape)
            if rows % len(devices):
                raise ValueError(
                    f"{name}: {rows} rows do not split evenly over this process's {len(devices)} devices"
                )
            m = rows * mesh.devices.size // len(devices)
        height = m // mesh.devices.size
        first_row = _device_rows(mesh, m, n)
        order = sorted(devices, key=first_row.get)  # this process's devices, by their rows
        starts = [first_row[d] for d in order]
        lo = starts[0]
        if starts[-1] - lo != (len(starts) - 1) * height:
            raise ValueError(f"mesh: the devices of process {here} do not hold one contiguous block of rows")
        if from_file:
            block = matrix_io.read_rows(source, lo, lo + len(starts) * height)
        sparse = scipy.sparse.issparse(block)
        label = f"{name} (rows {lo}:{lo + block.shape[0]} on process {here})"
        block = sparse_operator(label, block) if sparse else check.data(label, block)
    except Exception as err:  # any failure here must reach the other processes, not strand them
        error, failure, sparse = " ".join(str(err).split()) or type(err).__name__, err, False
    dtype = np.dtype(block.dtype) if not error else np.dtype(np.float32)
    if sparse and not error:
        rows, cols, values = (np.asarray(x) for x in (block.rows, block.cols, block.values))
        local = [s - lo for s in starts]
        bounds = np.searchsorted(rows, np.append(local, local[-1] + height))
        count = int(np.max(np.diff(bounds)))
    facts = _agreed([bool(error), m, n, int(sparse), dtype.itemsize, count if sparse and not error else 0])
    bad = [p for p in range(len(facts)) if facts[p, 0]]
    if error:
        raise failure
    if bad:
        raise ValueError(f"{name}: the rows of process(es) {bad} are bad (see their error)")
    if len({tuple(row[1:5]) for row in facts}) > 1:
        table = ", ".join(
            f"process {p}: {r[1]} x {r[2]} {'sparse' if r[3] else 'dense'} {8 * r[4]}-bit"
            for p, r in enumerate(facts)
        )
        raise ValueError(f"{name}: the processes disagree on Y ({table})")
    if not sparse:
        sharding = row_sharding(mesh)
        arrays = [jax.device_put(block[s - lo : s - lo + height], d) for s, d in zip(starts, order)]
        Y = jax.make_array_from_single_device_arrays((m, n), sharding, arrays)
        return RowShardedData(Y, mesh)
    cap = max(1, int(facts[:, 5].max()))
    padded = _padded_blocks(rows, cols, values, bounds, local, cap)
    sharding = jax.sharding.NamedSharding(mesh, _P(mesh.axis_names[0]))

    def put(x):
        arrays = [jax.device_put(x[i], d) for i, d in enumerate(order)]
        return jax.make_array_from_single_device_arrays((mesh.devices.size * cap,), sharding, arrays)

    return RowShardedSparse(*(put(x) for x in padded), (m, n), mesh)


def _device_rows(mesh: jax.sharding.Mesh, m: int, n: int) -> dict:
    """The first row each of this process's devices holds of an ``m x n`` row-sharded array."""
    index = row_sharding(mesh).addressable_devices_indices_map((m, n))
    return {d: (rows.start or 0) for d, (rows, *_) in index.items()}


def local_rows(x: jax.Array) -> tuple[int, np.ndarray]:
    """This process's rows of a row-sharded array (e.g. the L of a fit on several
    processes), as one host block, read from its devices without any exchange.

    Args:
        x: an array sharded by rows (``NamedSharding(mesh, P(axis, None))``) whose
            devices in this process hold one contiguous block of rows.

    Returns:
        ``(start, rows)``: the block is ``x[start:start + len(rows)]``.

    Raises:
        ValueError: ``x`` is not sharded by rows, or this process's rows are not contiguous.
    """
    if mesh_of(x) is None and not (isinstance(x, jax.Array) and x.is_fully_addressable):
        raise ValueError("x must be an array sharded by rows (NamedSharding(mesh, P(axis, None)))")
    shards = {}
    for shard in x.addressable_shards:
        shards.setdefault(shard.index[0].start or 0, shard)
    start, height = min(shards), sum(np.shape(s.data)[0] for s in shards.values())
    block = np.concatenate([np.asarray(shards[s].data) for s in sorted(shards)])
    if max(shards) - start + np.shape(shards[max(shards)].data)[0] != height:
        raise ValueError("x: this process's rows are not one contiguous block")
    return start, block


def gathered(x):
    """``x`` as a host (NumPy) array on every process: an array spread over the devices of
    several processes is all-gathered (a collective: every process must call this at the
    same point), any other array is copied to the host.  None stays None.

    Args:
        x: a jax.Array, a NumPy array, a scalar or None.

    Returns:
        The whole array on the host.
    """
    if x is None:
        return None
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


# ------------------------------------------------------------------------ construction
def is_sparse_input(x) -> bool:
    """Whether ``x`` is a scipy.sparse matrix/array or a ``jax.experimental.sparse`` BCOO/BCSR."""
    if hasattr(x, "tocoo") and hasattr(x, "nnz") and not isinstance(x, np.ndarray):
        return True
    return type(x).__module__.startswith("jax.experimental.sparse")


def sparse_from_coo(rows, cols, values, shape, unstored: str = "zero", dtype=None) -> SparseData:
    """A :class:`SparseData` from host COO arrays (duplicates summed, sorted by row)."""
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    values = np.asarray(values)
    if dtype is not None:
        values = values.astype(dtype, copy=False)
    m, n = int(shape[0]), int(shape[1])
    order_sorted = rows.size < 2 or bool(
        np.all((rows[1:] > rows[:-1]) | ((rows[1:] == rows[:-1]) & (cols[1:] > cols[:-1])))
    )
    if not order_sorted:
        key = rows * n + cols
        order = np.argsort(key, kind="stable")
        key, values = key[order], values[order]
        first = np.ones(key.size, bool)
        first[1:] = key[1:] != key[:-1]
        starts = np.flatnonzero(first)
        values = np.add.reduceat(values, starts) if values.size else values
        key = key[starts]
        rows, cols = key // n, key % n
    return SparseData(
        jax.device_put(rows.astype(np.int32)),
        jax.device_put(cols.astype(np.int32)),
        jax.device_put(values),
        (m, n),
        unstored,
    )


def dense_operator(Y) -> DenseData | TransposedDense:
    """The dense operator over a validated host (NumPy) or device array.

    Args:
        Y: an ``m x n`` array (or an operator, returned as it is).

    Returns:
        A :class:`DenseData`, or for a Fortran-ordered (and not C-ordered) NumPy array a
        :class:`TransposedDense` over its transpose, which is C-contiguous: no host
        transpose.  ``jax.device_put`` of a C-contiguous NumPy array whose buffer is 64-byte
        aligned is zero-copy on the CPU backend (the device array aliases the caller's
        memory, e.g. an ``np.load(..., mmap_mode="r")`` file or an array from
        :func:`aligned_empty`); any other array is copied once.
    """
    if isinstance(Y, DataOperator):
        return Y
    if isinstance(Y, jax.Array):
        return DenseData(Y)
    if Y.ndim == 2 and Y.flags.f_contiguous and not Y.flags.c_contiguous:
        return TransposedDense(jax.device_put(Y.T))
    return DenseData(jax.device_put(np.ascontiguousarray(Y)))


def aligned_empty(shape, dtype, alignment: int = 64) -> np.ndarray:
    """An uninitialized C-contiguous array whose buffer is ``alignment``-byte aligned, so
    that :func:`dense_operator` (hence ``jnmf.fit``) can use it without a device copy."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + alignment, np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset : offset + size].view(dtype).reshape(shape)


def sparse_operator(name: str, x, unstored: str = "zero", dtype=None) -> SparseData:
    """A validated :class:`SparseData` from any scipy.sparse matrix/array or a
    ``jax.experimental.sparse`` BCOO / BCSR, without densifying it.

    Args:
        name: the argument's name, for error messages.
        x: the sparse matrix (2-d, non-empty; stored values finite and non-negative).
        unstored: ``"zero"`` (unstored entries are zeros) or ``"missing"`` (they carry no loss).
        dtype: the floating dtype (default: :func:`jnmf._validate.float_dtype` of the values).

    Returns:
        The operator; memory: the stored entries once more on the device (int32 row and
        column indices and the values), sorted by row, duplicates summed.

    Raises:
        ValueError: naming ``name``, for a bad shape, dtype or value.
    """
    from . import _validate as check

    if type(x).__module__.startswith("jax.experimental.sparse"):
        if hasattr(x, "to_bcoo"):
            x = x.to_bcoo()
        if getattr(x, "n_batch", 0) or getattr(x, "n_dense", 0) or x.ndim != 2:
            raise ValueError(f"{name} as a BCOO must be a plain 2-d matrix (no batch or dense dimensions)")
        shape = tuple(int(d) for d in x.shape)
        idx = np.asarray(x.indices)
        values = np.asarray(x.data)
        rows, cols = idx[:, 0], idx[:, 1]
        keep = (rows < shape[0]) & (cols < shape[1])  # BCOO pads with out-of-range indices
        rows, cols, values = rows[keep], cols[keep], values[keep]
    else:
        if x.ndim != 2:
            raise ValueError(f"{name} must be a 2-d matrix, got shape {tuple(x.shape)}")
        shape = tuple(int(d) for d in x.shape)
        csr = x.tocsr()
        if not csr.has_canonical_format:
            csr = csr.copy()
            csr.sum_duplicates()
        values = csr.data
        rows = cols = None
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {shape}")
    kind = np.dtype(values.dtype).kind
    if values.dtype == object or kind not in "iubf":
        raise ValueError(f"{name} must be a real numeric matrix, got dtype {values.dtype}")
    dt = np.dtype(dtype) if dtype is not None else np.dtype(check.float_dtype(values))
    values = values.astype(dt, copy=False)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be finite; it stores NaN or infinite entries")
    if values.size and values.min() < 0:
        raise ValueError(f"{name} must be non-negative; it stores entries < 0 (min {values.min()})")
    if unstored not in ("zero", "missing"):
        raise ValueError(f"unstored must be 'zero' or 'missing', got {unstored!r}")
    if rows is None:
        counts = np.diff(csr.indptr)
        rows = np.repeat(np.arange(shape[0], dtype=np.int32), counts)
        cols = csr.indices.astype(np.int32, copy=False)
        return SparseData(jax.device_put(rows), jax.device_put(cols), jax.device_put(values), shape, unstored)
    return sparse_from_coo(rows, cols, values, shape, unstored, dt)
