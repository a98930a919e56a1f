"""The regularized, weighted NMF problem of Pav (2024), eq. 3 (layer 1).

    min_{L>=0, R>=0}  1/2 tr((Y - LR)' W_0R (Y - LR) W_0C)
                      + tr(W_1L' L) + tr(W_1R' R)
                      + 1/2 sum_j tr(L' W_2RL_j L W_2CL_j)
                      + 1/2 sum_j tr(R' W_2RR_j R W_2CR_j)

Every number a user may sweep is a *named* array leaf of :class:`Problem`, so
``jax.vmap`` over it needs no special handling and :meth:`Problem.replace` can set
it by the name users know.  Each factor's penalties are one :class:`FactorPenalty`:

* ``lambda_1`` (eq. 4's L1 scalar) and ``W_1`` (eq. 3's L1 weight, a scalar or a
  factor-shaped matrix); the L1 weight of eq. 3 is their sum;
* ``lambda_2`` (eq. 4's ridge: the pair ``(lambda_2 I, I)``);
* ``gamma_2`` (eq. 4's non-orthogonality: the pair ``(I, gamma_2 (11' - I))``);
* ``W_2``: any further general pairs ``(W_2R_j, W_2C_j)`` of eq. 3.

For R the non-orthogonality matrix is ``n x n`` (it acts on the columns of R),
exactly as in the reference package rnnmf.

Y itself is a :class:`~jnmf.data.DataOperator` (dense, masked, sparse, a row block):
nothing else touches it.  Nothing derived from the leaves (the constant of eq. 7, a
masked operator's ``M (.) Y``) is stored across fits: :meth:`Problem.prepared` computes it
from the current leaves, once per fit, inside the compiled program, so it cannot go
stale when a leaf is replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _validate as check
from .data import DataOperator, DenseData, MaskedData, SparseData, TransposedDense
from .weights import Weight

PenaltyPairs = tuple[tuple[Weight, Weight], ...]

# User-facing names of the sweepable leaves, and where they live.
SCALAR_PENALTIES = ("lambda_1L", "lambda_1R", "lambda_2L", "lambda_2R", "gamma_2L", "gamma_2R")
GENERAL_PENALTIES = ("W_1L", "W_1R", "W_2RL", "W_2CL", "W_2RR", "W_2CR")
REPLACEABLE = SCALAR_PENALTIES + ("W_1L", "W_1R", "W_0R", "W_0C", "M")


def pair_quadratic(pairs: PenaltyPairs, X: Array) -> Array:
    """sum_j W_R,j X W_C,j, the gradient of 1/2 sum_j tr(X' W_R,j X W_C,j)."""
    out = jnp.zeros_like(X)
    for row, col in pairs:
        out = out + row.left(col.right(X))
    return out


def penalty_value(W_1: Array, pairs: PenaltyPairs, X: Array) -> Array:
    """tr(W_1' X) + 1/2 sum_j tr(X' W_R,j X W_C,j)  (the penalty part of eq. 3)."""
    return jnp.sum(W_1 * X) + 0.5 * jnp.sum(X * pair_quadratic(pairs, X))


class FactorPenalty(eqx.Module):
    """The penalties of eq. 3 / eq. 4 on one factor, each a named array leaf.

    Attributes:
        lambda_1: the L1 scalar of eq. 4 (times the all-ones matrix).
        W_1: the L1 weight of eq. 3: a scalar or a matrix of the factor's shape.
            The L1 term is ``tr((W_1 + lambda_1)' X)``.
        lambda_2: the ridge scalar of eq. 4, the pair ``(lambda_2 I, I)``.
        gamma_2: the non-orthogonality scalar of eq. 4, the pair ``(I, gamma_2 (11' - I))``.
        W_2: further general L2 pairs ``(W_2R_j, W_2C_j)`` of eq. 3.
    """

    lambda_1: Array
    W_1: Array
    lambda_2: Array
    gamma_2: Array
    W_2: PenaltyPairs

    @staticmethod
    def zero(dtype) -> FactorPenalty:
        z = jnp.zeros((), dtype)
        return FactorPenalty(z, z, z, z, ())

    def l1(self) -> Array:
        """The L1 weight of eq. 3 (a scalar or the factor's shape)."""
        return self.W_1 + self.lambda_1

    def pairs(self) -> PenaltyPairs:
        """Every L2 pair of eq. 3: ridge, non-orthogonality, then the general ones."""
        return (
            (Weight.scalar(self.lambda_2), Weight.identity()),
            (Weight.identity(), Weight.offdiag(self.gamma_2)),
        ) + tuple(self.W_2)

    def value(self, X: Array) -> Array:
        """tr(W_1' X) + 1/2 sum_j tr(X' W_2R_j X W_2C_j)."""
        return penalty_value(self.l1(), self.pairs(), X)

    def gradient(self, X: Array) -> Array:
        return self.l1() + pair_quadratic(self.pairs(), X)

    def scaled(self, l1_factor, l2_factor) -> FactorPenalty:
        """The penalty with its L1 weights times ``l1_factor`` and L2 weights times ``l2_factor``."""
        return FactorPenalty(
            check.times(self.lambda_1, l1_factor),
            check.times(self.W_1, l1_factor),
            check.times(self.lambda_2, l2_factor),
            check.times(self.gamma_2, l2_factor),
            tuple((row.times(l2_factor), col) for row, col in self.W_2),
        )

    def is_zero(self) -> bool | None:
        """True / False when every value is concrete, None when some are traced."""
        leaves = [self.lambda_1, self.W_1, self.lambda_2, self.gamma_2]
        leaves += [w.value for pair in self.W_2 for w in pair if w.value is not None]
        if any(check.is_traced(x) for x in leaves):
            return None
        return all(not np.any(np.asarray(x)) for x in leaves)


class Problem(eqx.Module):
    """Data, weights and penalties of eq. 3 (every numeric field is a named array leaf).

    Build one with :func:`build_problem` (validating) or :meth:`Problem.from_scalars`;
    change leaves with :meth:`replace`.

    Attributes:
        data: the :class:`~jnmf.data.DataOperator` of the ``m x n`` non-negative data Y
            (dense, dense with an elementwise weight M, sparse, a row block): the only
            object that touches Y.
        W_0R, W_0C: row (``m x m``) and column (``n x n``) weights of the loss.
        penalty_L, penalty_R: the penalties on L and on R (:class:`FactorPenalty`).
        constant: the cached constant c of eq. 7, ``1/2 <Y, W_0R Y W_0C>``, or None.  Only
            the driver fills it (once per fit, after every leaf is final, with
            :meth:`prepared`); :meth:`replace` clears it.

    With an elementwise weight M (a :class:`~jnmf.data.MaskedData` operator, or sparse
    data whose unstored entries are missing) the loss of eq. 3 is
    ``1/2 sum_ij M_ij (Y - LR)_ij^2`` (0 marks a missing entry); it is not a Kronecker
    product, so W_0R and W_0C are then the identity (:func:`build_problem` folds diagonal
    ones into M).
    """

    data: DataOperator
    W_0R: Weight
    W_0C: Weight
    penalty_L: FactorPenalty
    penalty_R: FactorPenalty
    constant: Array | None = None

    @staticmethod
    def from_scalars(
        Y,
        W_0R=None,
        W_0C=None,
        lambda_1L=0.0,
        lambda_1R=0.0,
        lambda_2L=0.0,
        lambda_2R=0.0,
        gamma_2L=0.0,
        gamma_2R=0.0,
        W_1L=0.0,
        W_1R=0.0,
        W_2L: PenaltyPairs = (),
        W_2R: PenaltyPairs = (),
        M=None,
    ) -> Problem:
        """Eq. 3 from the scalars of eq. 4 (and optional general terms), unvalidated.

        ``Y`` is an array or a :class:`~jnmf.data.DataOperator`; ``W_2L`` / ``W_2R`` are
        tuples of :class:`~jnmf.weights.Weight` pairs; ``M`` an optional elementwise loss
        weight (see :class:`Problem`).
        """
        if isinstance(Y, DataOperator):
            data = Y
            if M is not None:
                raise ValueError("M cannot be combined with a data operator: build a MaskedData")
        else:
            Y = jnp.asarray(Y)
            data = DenseData(Y) if M is None else MaskedData(Y, jnp.asarray(M, Y.dtype))
        dt = data.dtype

        def side(l1, W1, l2, g2, W2):
            a = lambda v: check.on_device(v, dt)
            return FactorPenalty(a(l1), a(W1), a(l2), a(g2), tuple(W2))

        return Problem(
            data,
            Weight.from_user(W_0R),
            Weight.from_user(W_0C),
            side(lambda_1L, W_1L, lambda_2L, gamma_2L, W_2L),
            side(lambda_1R, W_1R, lambda_2R, gamma_2R, W_2R),
        )

    # ----------------------------------------------------------- derived terms
    @property
    def masked(self) -> bool:
        """Whether the loss carries an elementwise weight M (static: fixes the code path)."""
        return self.data.masked

    @property
    def shape(self) -> tuple[int, int]:
        """(m, n), the shape of Y."""
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def Y(self) -> Array:
        """The dense data array (dense operators only; sparse data has no dense Y)."""
        if not hasattr(self.data, "Y"):
            raise ValueError(f"the data of this problem are {type(self.data).__name__}, not a dense array")
        return self.data.Y

    @property
    def M(self) -> Array | None:
        """The dense elementwise weight, or None."""
        return getattr(self.data, "M", None)

    @property
    def half_data_norm(self) -> Array:
        """``1/2 tr(Y' W_0R Y W_0C)`` (``1/2 sum M Y^2``), the constant c of eq. 7."""
        if self.constant is not None:
            return self.constant
        return self.data.half_norm(self.W_0R, self.W_0C)

    def prepared(self) -> Problem:
        """This problem with its data's derived terms and the constant of eq. 7 computed
        once (the driver calls it)."""
        if self.constant is not None:
            return self
        data = self.data.prepared()
        out = eqx.tree_at(lambda p: p.data, self, data)
        return eqx.tree_at(
            lambda p: p.constant, out, data.half_norm(self.W_0R, self.W_0C), is_leaf=lambda x: x is None
        )

    # -------------------------------------------------------------- leaves
    def replace(self, **values) -> Problem:
        """A copy with the named leaves replaced (traced values are fine).

        Names: the eq.-4 scalars ``lambda_1L`` ... ``gamma_2R``, the L1 weights ``W_1L`` /
        ``W_1R`` (scalar or factor-shaped), the loss weights ``W_0R`` / ``W_0C``
        (``None``, a scalar, a vector for a diagonal, or a matrix), and the elementwise
        weight ``M`` (``m x n``; only on a problem built with one).  Each value
        REPLACES the current one; nothing is added.  Shapes are checked here, values by
        :func:`build_problem` / the surfaces (they may be traced).
        """
        unknown = set(values) - set(REPLACEABLE)
        if unknown:
            raise ValueError(f"cannot replace {sorted(unknown)}; replaceable: {REPLACEABLE}")
        dt = self.dtype
        m, n = self.shape
        out = self
        for name, v in values.items():
            if name == "M":
                out = eqx.tree_at(lambda p: p.data, out, out.data.replace_mask(v))
                continue
            if name in ("W_0R", "W_0C"):
                size = m if name == "W_0R" else n
                if v is not None and jnp.ndim(v) in (1, 2) and jnp.shape(v)[0] != size:
                    raise ValueError(f"{name} must have size {size}, got shape {jnp.shape(v)}")
                w = Weight.from_user(None if v is None else jnp.asarray(v, dt))
                out = eqx.tree_at(lambda p, nm=name: getattr(p, nm), out, w)
                continue
            side = name[-1]
            field = name[:-1] if name.startswith(("lambda", "gamma")) else "W_1"
            v = jnp.asarray(v, dt)
            if field != "W_1" and v.ndim != 0:
                raise ValueError(f"{name} must be a scalar, got shape {v.shape}")
            out = eqx.tree_at(lambda p, s=side, f=field: getattr(getattr(p, f"penalty_{s}"), f), out, v)
        if out.constant is not None:
            out = eqx.tree_at(lambda p: p.constant, out, None)
        return out

    def scaled(self, scale: float, degree: float = 2) -> Problem:
        """The same problem for the data ``Y / scale``, with factors ``L / sqrt(scale)``,
        ``R / sqrt(scale)``: its objective is the original's divided by ``scale^degree``.

        ``degree`` is the degree of the loss in Y: 2 for eq. 3 (Frobenius), 1 for the
        KL divergence, beta for the beta-divergence (``rule.loss_degree``).  Then the L1
        weights are multiplied by ``scale^(1/2 - degree)`` and the L2 weights by
        ``scale^(1 - degree)`` (loss weights unchanged), so a
        fit of the scaled problem, mapped back with :func:`scale_factors`, solves the
        original problem without its overflow or underflow.  The data are not copied:
        the operator carries ``1 / scale`` as a traced leaf.
        """
        dt = self.dtype
        # capped at the largest finite value, so zero penalties stay zero (not 0 * inf)
        top = float(jnp.finfo(dt).max)
        l1 = check.on_device(min(float(np.float64(scale) ** (0.5 - degree)), top), dt)
        l2 = check.on_device(min(float(np.float64(scale) ** (1 - degree)), top), dt)
        return Problem(
            self.data.scaled(scale),
            self.W_0R,
            self.W_0C,
            self.penalty_L.scaled(l1, l2),
            self.penalty_R.scaled(l1, l2),
        )

    # ----------------------------------------------------------------- eq. 3
    def loss(self, L: Array, R: Array) -> Array:
        """1/2 tr((Y - LR)' W_0R (Y - LR) W_0C), the weighted Frobenius loss
        (``1/2 sum M (Y - LR)^2`` with an elementwise weight).

        Computed by the data operator without an ``m x n`` residual (dense data: the
        residual of one row block at a time, which keeps full precision when the fit
        is nearly exact; see :meth:`jnmf.data.DataOperator.loss`).
        """
        return self.data.loss(L, R, self.W_0R, self.W_0C)

    def objective(self, L: Float[Array, "m k"], R: Float[Array, "k n"]) -> Array:
        """The objective of eq. 3."""
        return self.loss(L, R) + self.penalty_L.value(L) + self.penalty_R.value(R)

    def data_product_L(self, R: Array) -> Array:
        """``R (W_0R Y W_0C)'`` (``k x m``): the data part of the L step's d (eq. 8)."""
        return self.W_0R.right(self.data.product_L(self.W_0C.right(R)))

    def data_product_R(self, Lt: Array) -> Array:
        """``Lt (W_0R Y W_0C)`` (``k x n``): the data part of the R step's d (eq. 8)."""
        return self.W_0C.right(self.data.product_R(self.W_0R.right(Lt)))

    def gradients(self, L: Array, R: Array) -> tuple[Array, Array]:
        """Analytic gradients of eq. 3 with respect to L and R.

        dL = W_0R L R W_0C R' - W_0R Y W_0C R' + W_1L + sum_j W_2RL_j L W_2CL_j
        dR = L' W_0R L R W_0C - L' W_0R Y W_0C + W_1R + sum_j W_2RR_j R W_2CR_j
        (the matrix form of G x + d, eqs. 8-9, for each half step).
        """
        Lt = L.T
        if self.masked:
            mask_L, mask_R = self.data.mask_operator("L"), self.data.mask_operator("R")
            gLt = mask_L.apply(R, Lt) - self.data.product_L(R)
            gR = mask_R.apply(Lt, R) - self.data.product_R(Lt)
            if mask_L.unit:  # the weight is 1 plus the operator's part
                gLt, gR = gLt + (R @ R.T) @ Lt, gR + (Lt @ L) @ R
            return gLt.T + self.penalty_L.gradient(L), gR + self.penalty_R.gradient(R)
        WL = self.W_0R.left(L)
        RW = self.W_0C.right(R)
        gL = WL @ (R @ RW.T) - self.data_product_L(R).T + self.penalty_L.gradient(L)
        gR = (WL.T @ L) @ RW - self.data_product_R(Lt) + self.penalty_R.gradient(R)
        return gL, gR


def scale_factors(L: Array, R: Array, scale: float) -> tuple[Array, Array]:
    """Factors of :meth:`Problem.scaled` mapped back: both times ``sqrt(scale)``."""
    root = float(np.sqrt(np.float64(scale)))
    return L * root, R * root


def check_penalty_keywords(caller: str, penalties: Mapping, func: Callable | None = None) -> None:
    """Reject keywords that are neither an argument of ``func`` nor a penalty of eq. 3 / eq. 4.

    Args:
        caller: the function's public name, used in the message (``"fit"``, ``"sweep"`` ...).
        penalties: the keywords the function received through ``**penalties``.
        func: the function (its named arguments are suggested too); None: penalties only.

    Raises:
        ValueError: ``fit() got an unknown argument 'lamda_1L'; did you mean 'lambda_1L'?``
    """
    named = check.argument_names(func) if func is not None else ()
    names = SCALAR_PENALTIES + GENERAL_PENALTIES
    note = f"penalty keywords: {', '.join(names)}; other arguments: help(jnmf.{caller})"
    check.known_keywords(caller, penalties, named + names, note)


def _as_list(x) -> list:
    return list(x) if isinstance(x, list | tuple) else [x]


def _l2_pairs(rows, cols, row_n: int, col_n: int, rname: str, cname: str, dtype) -> PenaltyPairs:
    rows, cols = _as_list(rows), _as_list(cols)
    if len(rows) != len(cols):
        raise ValueError(
            f"{rname} and {cname} must be lists of the same length (paired by position), "
            f"got {len(rows)} and {len(cols)}"
        )
    pairs = []
    for j, (a, b) in enumerate(zip(rows, cols, strict=True)):
        tag = f"[{j}]" if len(rows) > 1 else ""
        check.square_weight(f"{rname}{tag}", a, row_n)
        check.square_weight(f"{cname}{tag}", b, col_n)
        pairs.append((Weight.from_user(jnp.asarray(a, dtype)), Weight.from_user(jnp.asarray(b, dtype))))
    return tuple(pairs)


def build_problem(Y, rank: int, *, W_0R=None, W_0C=None, M=None, **penalties) -> Problem:
    """Validate data, weights and penalties and build eq. 3 (the validating constructor).

    Args:
        Y: ``m x n`` non-negative floating-point data (already validated arrays pass
            through unchanged).
        rank: the inner dimension k (fixes the shapes of ``W_1L``, ``W_1R``, ``W_2CL``,
            ``W_2RR``).
        W_0R, W_0C: loss weights: None (identity), a scalar, a vector (diagonal) or a
            symmetric PSD matrix with non-negative entries.
        M: an optional ``m x n`` non-negative elementwise loss weight (0 = missing): the
            loss becomes ``1/2 sum M (.) (Y - LR)^2``.  Diagonal or scalar ``W_0R`` /
            ``W_0C`` are folded into it (``M_ij w_i v_j``); full ones cannot be combined
            with it.
        **penalties: the scalar keywords of eq. 4 (``lambda_1L`` ... ``gamma_2R``) and/or
            the general ones of eq. 3 as in rnnmf's ``gaurnmf`` (``W_1L``, ``W_1R``: scalar
            or factor-shaped; ``W_2RL``, ``W_2CL``, ``W_2RR``, ``W_2CR``: a weight or a list
            of weights paired by position).  Their terms add up.

    Returns:
        The :class:`Problem`.

    Raises:
        ValueError naming the offending argument.
    """
    check_penalty_keywords("build_problem", penalties, build_problem)
    operator = isinstance(Y, DataOperator)
    m, n = Y.shape
    dt = Y.dtype
    check.square_weight("W_0R", W_0R, m, psd=True)
    check.square_weight("W_0C", W_0C, n, psd=True)
    w0r = None if W_0R is None else jnp.asarray(W_0R, dt)
    w0c = None if W_0C is None else jnp.asarray(W_0C, dt)
    if operator and not isinstance(Y, DenseData | TransposedDense):
        if M is not None:
            raise ValueError(
                "M (an elementwise weight) needs dense data; for sparse data, missing='unstored' "
                "makes the unstored entries missing"
            )
        for name, w in (("W_0R", w0r), ("W_0C", w0c)):
            if w is not None and w.ndim == 2:
                raise ValueError(
                    f"{name} as a full matrix needs dense data; give row/column weights as vectors"
                )
        if Y.masked:
            # an elementwise weight: diagonal loss weights fold into it, as for dense M below
            for name, w in (("W_0R", w0r), ("W_0C", w0c)):
                if w is not None:
                    raise ValueError(f"{name} cannot be combined with missing='unstored'")
    elif M is not None:
        Yd = Y.Y if operator else Y
        M = jnp.asarray(check.elementwise_weight("M", M, (m, n)), dt)
        for name, w in (("W_0R", w0r), ("W_0C", w0c)):
            if w is not None and w.ndim == 2:
                raise ValueError(
                    f"{name} as a full matrix cannot be combined with an elementwise weight M; "
                    "give the row/column weights as vectors (they are folded into M)"
                )
        if w0r is not None:
            M = M * (w0r[:, None] if w0r.ndim == 1 else w0r)
        if w0c is not None:
            M = M * (w0c[None, :] if w0c.ndim == 1 else w0c)
        w0r = w0c = None
        Y = MaskedData(jnp.asarray(Yd), M)
        M = None
    sc = {key: check.nonneg_scalar(key, penalties.get(key, 0.0)) for key in SCALAR_PENALTIES}
    W_1L = check.l1_weight("W_1L", penalties.get("W_1L", 0.0), (m, rank))
    W_1R = check.l1_weight("W_1R", penalties.get("W_1R", 0.0), (rank, n))
    W_2L: PenaltyPairs = ()
    W_2R: PenaltyPairs = ()
    if any(key in penalties for key in ("W_2RL", "W_2CL")):
        W_2L = _l2_pairs(
            penalties.get("W_2RL", 0.0), penalties.get("W_2CL", 0.0), m, rank, "W_2RL", "W_2CL", dt
        )
    if any(key in penalties for key in ("W_2RR", "W_2CR")):
        W_2R = _l2_pairs(
            penalties.get("W_2RR", 0.0), penalties.get("W_2CR", 0.0), rank, n, "W_2RR", "W_2CR", dt
        )
    return Problem.from_scalars(Y, w0r, w0c, **sc, W_1L=W_1L, W_1R=W_1R, W_2L=W_2L, W_2R=W_2R, M=M)


def check_replacements(values: dict, m: int, n: int, rank: int, data: DataOperator | None = None) -> None:
    """Host-side validation of values for :meth:`Problem.replace` (before compiling); ``M``
    of sparse ``data`` weighs its stored entries."""
    for name, v in values.items():
        if name in SCALAR_PENALTIES:
            check.nonneg_scalar(name, v)
        elif name == "W_1L":
            check.l1_weight(name, v, (m, rank))
        elif name == "W_1R":
            check.l1_weight(name, v, (rank, n))
        elif name in ("W_0R", "W_0C"):
            check.square_weight(name, v, m if name == "W_0R" else n, psd=True)
        elif name == "M" and isinstance(data, SparseData):
            data.check_mask(name, v)
        elif name == "M":
            check.elementwise_weight(name, v, (m, n))


def is_traced_problem(problem: Problem) -> bool:
    return any(check.is_traced(x) for x in jax.tree.leaves(problem))
