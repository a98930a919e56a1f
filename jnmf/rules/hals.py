"""HALS: hierarchical alternating least squares (Cichocki & Phan 2009), with the
acceleration of Gillis & Glineur (2012).

Each half step minimizes phi (eq. 9) over one column of the unknown X at a time,
holding the others fixed.  The block of G belonging to column j is
``sum_t B_t[j, j] A_t`` (A_t the p-side, B_t the k-side weight of each quadratic
term, the loss included).  When every A_t is diagonal (identity, scalar or
diagonal loss weights; ridge; non-orthogonality of L) the block is diagonal and
the column minimization is closed form:

    X[:, j] <- max(0, X[:, j] - (G X + d)[:, j] / c_j),   c_j = diag of the block.

Otherwise (full W_0R / W_0C, non-orthogonality of R, whose c x c weight
gamma (11' - I) couples the rows of R') each A_t is replaced by its diagonal
majorizer Diag(A_t 1) (Lemma 2.1 with b = 1; all weights have non-negative
entries), so the same update still never increases phi; it is then a
majorization step rather than an exact block minimization.

The expensive part of a half step is ``d`` (a product with Y, O(mnk)); a column
sweep costs only O(pk^2).  Accelerated HALS therefore repeats the sweep, reusing
d and the Gram matrix, while it pays: at most ``1 + alpha * rho`` sweeps, where
rho ~ (cost of d) / (cost of a sweep), stopping early when a sweep changes X by
less than ``delta`` times what the first sweep did (Gillis & Glineur, sec. 3).

Implementation note: the sweep runs on the factor-major unknown Xt (k x p, see
jnmf/quadratic.py), so each column update of X reads and writes one contiguous
row.  A coordinate with zero curvature (a vanished column of the fixed factor)
is left unchanged, which keeps float32 free of division by zero.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
from jaxtyping import Array

from ..quadratic import HalfProblem
from .base import AlternatingRule, HalfStep, as_setting
from .hals_sweeps import hals_sweeps


def hals_is_exact(hp: HalfProblem) -> bool:
    """Whether the row blocks of G are diagonal (the closed form is exact)."""
    diagonal_kinds = ("identity", "scalar", "diag")
    p_sides = [hp.weight] + [p_side for _, p_side in hp.penalties]
    return all(w.kind in diagonal_kinds for w in p_sides)


def accelerated_sweeps(p: int, q: int, k: int, alpha: float, entries: int | None = None) -> int:
    """1 + floor(alpha * rho) with rho = (pqk + qk^2) / (pk + p k^2): the number of
    sweeps that cost about as much as computing d (Gillis & Glineur, eq. 3.3).

    ``entries`` is the number of entries of Y the product visits (default ``pq``, dense
    data; the stored entries of sparse data, whose product costs ``nnz k``, not ``pqk``)."""
    entries = p * q if entries is None else entries
    rho = (entries * k + q * k * k) / (p * k + p * k * k)
    return 1 + int(alpha * rho)


class HALS(AlternatingRule):
    """HALS / accelerated HALS for eq. 3 (exact column minimization for diagonal
    weights, a monotone majorization step otherwise; see the module docstring).

    ``inner_sweeps=1`` is plain HALS (Cichocki & Phan 2009).  ``inner_sweeps=None``
    picks Gillis & Glineur's ``1 + alpha * rho`` for each half step from the shapes,
    with the early exit ``delta``.  Their rho counts flops; here a sweep is
    memory-bound and runs several times below the GEMM's flop rate, so the default
    ``alpha`` is 0.2 rather than their 0.5 (on ORL faces, rank 25, time to a fixed
    error was flat for alpha in [0.1, 0.25] and 45% longer at 0.5; see
    experiments/bench_orl.py).  Supports every term of eq. 3.
    """

    method_name: ClassVar[str] = "hals"
    alpha: float = eqx.field(static=True)
    inner_sweeps: int | None = eqx.field(static=True)
    delta: Array

    def __init__(self, inner_sweeps: int | None = 1, alpha: float = 0.2, delta=0.1):
        self.inner_sweeps = inner_sweeps
        self.alpha = float(alpha)
        self.delta = as_setting(delta)

    def sweeps(self, p: int, q: int, k: int, entries: int | None = None) -> int:
        """How many sweeps a half step on a ``k x p`` unknown may take (fixed factor ``k x q``;
        ``entries``: the entries of Y its product visits, default ``pq``)."""
        if self.inner_sweeps is not None:
            return int(self.inner_sweeps)
        return accelerated_sweeps(p, q, k, self.alpha, entries)

    def half_step(self, hp: HalfProblem, Xt: Array, aux, side: str) -> HalfStep:
        k, p = Xt.shape
        n_sweeps = self.sweeps(p, hp.fixed_size, k, hp.data_entries or None)
        if hp.masked and self.inner_sweeps is None:
            # with an elementwise weight a sweep costs as much as d itself (rho ~ 1/3),
            # so Gillis & Glineur's rule gives a single sweep
            n_sweeps = 1
        return HalfStep(hals_sweeps(hp, Xt, n_sweeps, self.delta.astype(Xt.dtype)), aux)
