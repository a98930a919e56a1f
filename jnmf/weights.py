"""Square weighting matrices of Pav (2024), eq. 3, stored compactly.

Every weight in eq. 3 (W_0R, W_0C and the W_2 pairs) is a square, symmetric,
non-negative matrix, but in practice most are the identity, a multiple of it, a
diagonal, or the non-orthogonality matrix ``gamma (11' - I)`` of eq. 4.  Storing
them densely would cost O(m^2) memory and O(m^2 k) time per product, so a
:class:`Weight` keeps the *kind* (a static field: it fixes the code path) and the
*value* (an array leaf: it can be traced, swept and ``vmap``-ed).
"""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

Kind = Literal["identity", "scalar", "diag", "full", "offdiag"]


class Weight(eqx.Module):
    """A symmetric square matrix W in compact form.

    kinds: ``identity`` (I, no value), ``scalar`` (c I), ``diag`` (Diag(v)),
    ``full`` (a dense symmetric matrix) and ``offdiag`` (c (11' - I), the
    non-orthogonality weight of eq. 4).
    """

    value: Array | None
    kind: Kind = eqx.field(static=True)

    @staticmethod
    def identity() -> Weight:
        return Weight(None, "identity")

    @staticmethod
    def scalar(c) -> Weight:
        return Weight(jnp.asarray(c), "scalar")

    @staticmethod
    def offdiag(c) -> Weight:
        return Weight(jnp.asarray(c), "offdiag")

    @staticmethod
    def from_user(w) -> Weight:
        """None -> identity, 0-d -> scalar, 1-d -> diagonal, 2-d -> full."""
        if w is None:
            return Weight.identity()
        if isinstance(w, Weight):
            return w
        w = jnp.asarray(w)
        kind = {0: "scalar", 1: "diag", 2: "full"}[w.ndim]
        return Weight(w, kind)

    def times(self, c) -> Weight:
        """c W, of the same kind (the identity becomes the scalar c)."""
        if self.kind == "identity":
            return Weight.scalar(c)
        return Weight(self.value * c, self.kind)

    def left(self, X: Array) -> Array:
        """W @ X (W acts on the rows of X)."""
        v = self.value
        if self.kind == "identity":
            return X
        if self.kind == "scalar":
            return v * X
        if self.kind == "diag":
            return v[:, None] * X
        if self.kind == "full":
            return v @ X
        # c (11' - I) X = c (column sums of X, broadcast) - c X
        return v * (jnp.sum(X, axis=0, keepdims=True) - X)

    def right(self, X: Array) -> Array:
        """X @ W (W acts on the columns of X); W is symmetric."""
        v = self.value
        if self.kind == "identity":
            return X
        if self.kind == "scalar":
            return X * v
        if self.kind == "diag":
            return X * v[None, :]
        if self.kind == "full":
            return X @ v
        return v * (jnp.sum(X, axis=1, keepdims=True) - X)

    def diagonal(self, n: int, dtype=None) -> Array:
        """diag(W) as a length-n vector (used by coordinate methods such as HALS)."""
        dtype = dtype or jnp.result_type(float)
        if self.kind == "identity":
            return jnp.ones((n,), dtype)
        if self.kind == "scalar":
            return jnp.full((n,), self.value, dtype)
        if self.kind == "diag":
            return self.value.astype(dtype)
        if self.kind == "full":
            return jnp.diagonal(self.value).astype(dtype)
        return jnp.zeros((n,), dtype)

    def row_sums(self, n: int, dtype=None) -> Array:
        """W 1 as a length-n vector.  For W with non-negative entries,
        Diag(W 1) - W is diagonally dominant, so Diag(W 1) >= W (Lemma 2.1 with b = 1):
        the diagonal majorizer coordinate methods use for non-diagonal weights."""
        dtype = dtype or jnp.result_type(float)
        if self.kind == "full":
            return jnp.sum(self.value, axis=1).astype(dtype)
        if self.kind == "offdiag":
            return jnp.full((n,), self.value * (n - 1), dtype)
        return self.diagonal(n, dtype)

    def dense(self, n: int, dtype=None) -> Array:
        """The n x n matrix (tests and small problems only)."""
        dtype = dtype or jnp.result_type(float)
        return self.left(jnp.eye(n, dtype=dtype))
