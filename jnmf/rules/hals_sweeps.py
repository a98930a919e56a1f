"""HALS column sweeps, tiled over the p columns of the factor-major unknown Xt (k x p).

A sweep updates row j of Xt for j = 0..k-1 (column j of the factor):

    Xt[j] <- max(0, Xt[j] - ((G Xt)[j] + linear[j]) / curvature[j])

and each update reads the whole current Xt through ``(G Xt)[j]``.  When every
p-side weight is a multiple of I (the common case: identity or scalar loss weights,
ridge, non-orthogonality of L; see :meth:`jnmf.quadratic.HalfProblem.split_terms`)
``(G Xt)[j] = mixing[j] @ Xt`` touches only column c of Xt to produce column c, so
the p columns are independent: the k row updates of a sweep can run on one block
("tile") of columns at a time, all k of them while the tile is in cache, and give
exactly the iterate of the untiled sweep (the same operations on every element, in
the same order).

How the tiles run, and why (measured on a 2-core AMD EPYC, XLA:CPU, jax 0.10; see
experiments/bench_hals_tiled.py):

* One sweep is a ``fori_loop`` over the ``p // tile`` full tiles plus one static
  remainder tile, so p needs no padding and no transposed copy of Xt, linear or
  curvature is made; a tile is cut with ``dynamic_slice`` and written back in place.
* Inside a tile the k rows run as a ``fori_loop`` whose body is one GEMV
  (``mixing[j] @ tile``) and one fused row update.  Rows are cut with
  ``lax.dynamic_slice`` rather than ``Xt[j]`` / ``Xt.at[j].set``, which add index
  wrapping and a bounds-checked scatter (extra kernels per row; the per-row launch
  cost is what dominates for k x 400 unknowns such as ORL's R).  Unrolling the row
  loop (Python loop or ``unroll=``) was slower: XLA then inserts copies of the tile.
* The early-exit test of accelerated HALS needs the squared change of the whole Xt;
  it is summed tile by tile inside the sweep (no extra pass over Xt).  Only the
  summation order differs from the untiled sum, i.e. the result agrees up to
  rounding.

Terms with a non-scalar p-side weight (diagonal, full or off-diagonal W_0R / W_0C,
non-orthogonality of R) fall back to the untiled sweep, unchanged.

With an elementwise loss weight (missing values) row j's loss gradient is
``F[j] @ (mask (.) (F' Xt))``: the sweep keeps ``P = F' Xt`` (``q x p``, or only its entries
where the mask is stored, :class:`jnmf.data.SparseMask`) and updates it
by a rank-one term after each row, so a sweep costs about three products of the size
of computing d, and the sum is exact (no majorization: each column's block is
diagonal in j's coordinates).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ..quadratic import HalfProblem

# Columns per tile.  For k = 25 a 1024-column tile is 100 KiB per array (Xt, linear,
# curvature), well inside L2; the per-row GEMV then runs ~2x faster than over a whole
# 25 x 10304 Xt, while tiles of 256-512 columns pay more per-row kernel launches
# than they gain in locality (experiments/bench_hals_tiled.py).
TILE = 1024


def sweep_tile(backend: str, p: int) -> int:
    """The columns per tile of a sweep over a k x p unknown on ``backend``.

    Tiles pay on CPU, where a tile stays in cache (:data:`TILE`).  On a GPU every pass
    of a ``fori_loop`` is one or more kernel launches and a read of the loop's counter
    by the host, so 1024-column tiles made a sweep ``p / 1024`` times longer: a dense
    HALS iteration on 65536 x 8192 (rank 20, float32) took 25.6 ms on an NVIDIA H200,
    against 1.1 ms for a multiplicative-update iteration reading Y as often
    (experiments/gpu_check.sh, 2026-12-04).  There the sweep runs over all p columns
    at once.

    Args:
        backend: ``"cpu"``, ``"gpu"`` or ``"tpu"`` (as ``jax.default_backend()`` names it).
        p: the number of columns of the unknown (rows of L, or columns of R).

    Returns:
        The tile width, between 1 and ``p``.
    """
    return TILE if backend == "cpu" else max(int(p), 1)


def hals_sweeps(
    hp: HalfProblem, Xt: Array, max_sweeps: int, delta: Array, *, tile: int | None = None
) -> Array:
    """Up to ``max_sweeps`` HALS sweeps over the rows of the factor-major unknown Xt (k x p).

    With ``max_sweeps > 1`` (accelerated HALS) sweeping stops early once a sweep
    changes Xt (sum of squares) by at most ``delta**2`` times the first sweep's change.
    A coordinate with zero curvature is left unchanged.  Jittable, and correct under
    ``vmap`` as is (each tile then carries the batch axis: tiles of shape (B, k, tile)),
    but on CPU ``lax.map`` over fits runs it 2-6x faster than ``vmap`` does (see
    experiments/bench_hals_tiled.py), which is why jnmf.batch batches HALS fits with
    its "hybrid" strategy there.  Differentiable (forward and reverse mode) almost
    everywhere: a fixed number of loop passes of projections.

    Args:
        hp: the half-step problem (eqs. 6-9 of Pav 2024): its split terms give the
            row updates, its block majorizer the curvature of each row.
        Xt: the unknown, factor-major (k x p): R itself, or L transposed.
        max_sweeps: the most sweeps (1: plain HALS; Gillis & Glineur 2012 for more).
        delta: the early-exit ratio of accelerated HALS (ignored for one sweep).
        tile: columns per tile (default :func:`sweep_tile` for JAX's default backend).

    Returns:
        The swept unknown, the shape of ``Xt``.
    """
    if tile is None:
        tile = sweep_tile(jax.default_backend(), Xt.shape[-1])
    mixing, others = hp.split_terms()
    curvature = hp.block_majorizer()
    if hp.masked:
        return _repeat(_masked_sweep(hp, mixing, others, curvature), Xt, max_sweeps, delta)
    if hp.free_sharded:
        # a row-sharded L is swept whole: cutting it into tiles in a loop makes GSPMD
        # gather it (each device sweeps its own rows; the rows are independent)
        tile = Xt.shape[1]
    tiled = _tiled_sweep(mixing, hp.linear, curvature, tile)
    if not others:
        return _repeat(tiled, Xt, max_sweeps, delta)
    untiled = _untiled_sweep(hp, mixing, others, curvature)
    if not all(p_side.kind == "offdiag" for p_side, _ in others):
        return _repeat(untiled, Xt, max_sweeps, delta)
    # Non-orthogonality of R (gamma_2R) puts a c (11' - I) weight on the p side, which
    # couples all columns of a row, so it cannot be tiled.  jnmf.build_problem always
    # includes that term with a traced value, 0 unless asked for; at 0 it adds exactly
    # nothing (its curvature share gamma (p - 1) B_jj is 0 too), so the tiled sweep
    # gives the same iterate.  The test is on values, hence a cond (one branch runs,
    # unless gamma itself is batched under vmap, as in a gamma_2R grid).
    inactive = jnp.all(jnp.stack([jnp.all(p_side.value == 0) for p_side, _ in others]))
    return lax.cond(
        inactive,
        lambda X: _repeat(tiled, X, max_sweeps, delta),
        lambda X: _repeat(untiled, X, max_sweeps, delta),
        Xt,
    )


def _repeat(sweep, Xt: Array, max_sweeps: int, delta: Array) -> Array:
    """Accelerated HALS's loop: sweep, then sweep again while the last sweep changed Xt
    (sum of squares) by more than ``delta**2`` times the first sweep did.

    A ``fori_loop`` over the static ``max_sweeps`` with a ``cond`` that skips the
    remaining sweeps, rather than a ``while_loop``: the same sweeps run, and the step
    stays reverse-mode differentiable (JAX cannot transpose a ``while_loop``).
    """
    X1, first = sweep(Xt)
    if max_sweeps <= 1:
        return X1
    threshold = delta**2 * first

    def body(_, carry):
        X, change = carry
        return lax.cond(change > threshold, sweep, lambda X: (X, change), X)

    X, _ = lax.fori_loop(1, max_sweeps, body, (X1, first))
    return X


def _update(row: Array, g: Array, c: Array) -> Array:
    """The closed-form row update; rows with zero curvature stay as they are."""
    positive = c > 0
    return jnp.where(positive, jnp.maximum(row - g / jnp.where(positive, c, 1.0), 0.0), row)


def _tile_rows(mixing: Array, X: Array, linear: Array, curvature: Array, start) -> Array:
    """All k row updates on one tile X = Xt[:, start:start + width] (in cache)."""
    k, width = X.shape

    def row(j, X):
        # one index dtype for every slice, also under jax_enable_x64
        j, zero = jnp.asarray(j, jnp.int32), jnp.zeros((), jnp.int32)
        g = lax.dynamic_slice(mixing, (j, zero), (1, k)) @ X + lax.dynamic_slice(
            linear, (j, start), (1, width)
        )
        c = lax.dynamic_slice(curvature, (j, start), (1, width))
        new = _update(lax.dynamic_slice(X, (j, zero), (1, width)), g, c)
        return lax.dynamic_update_slice(X, new, (j, zero))

    return lax.fori_loop(0, k, row, X)


def _tiled_sweep(mixing: Array, linear: Array, curvature: Array, tile: int):
    """One sweep as a loop over column tiles; returns (Xt_new, squared change)."""

    def sweep(Xt):
        k, p = Xt.shape
        n_full, rest = divmod(p, tile)

        def one_tile(Xt, start, width):
            start = jnp.asarray(start, jnp.int32)  # all slice indices int32, also under x64
            X = lax.dynamic_slice(Xt, (jnp.zeros_like(start), start), (k, width))
            X_new = _tile_rows(mixing, X, linear, curvature, start)
            Xt = lax.dynamic_update_slice(Xt, X_new, (jnp.zeros_like(start), start))
            return Xt, jnp.sum((X_new - X) ** 2)

        change = jnp.zeros((), Xt.dtype)
        if (n_full, rest) == (1, 0):
            # one tile, the whole Xt: no loop, so no cut (a row-sharded Xt stays in place)
            return one_tile(Xt, 0, p)
        if n_full:

            def body(t, carry):
                Xt, change = carry
                Xt, c = one_tile(Xt, t * tile, tile)
                return Xt, change + c

            Xt, change = lax.fori_loop(0, n_full, body, (Xt, change))
        if rest:
            Xt, c = one_tile(Xt, n_full * tile, rest)
            change = change + c
        return Xt, change

    return sweep


def _penalty_row(mixing: Array, others, j, Xt: Array) -> Array:
    """Row j of ``G Xt`` over the Kronecker terms (mixing and the other p-side terms)."""
    out = mixing[j] @ Xt
    for p_side, B in others:
        out = out + p_side.right((B[j] @ Xt)[None, :])[0]
    return out


def _masked_sweep(hp: HalfProblem, mixing: Array, others, curvature: Array):
    """The sweep with an elementwise loss weight: row j's loss gradient is
    ``F[j] @ (mask (.) P)`` with ``P = F' Xt`` kept current by a rank-one update per row."""
    k = hp.linear.shape[0]
    F, mask = hp.fixed, hp.mask

    def sweep(Xt):
        def update(j, carry):
            Xt, P = carry
            Fj = F[j]
            g = mask.row_gradient(Fj, P) + _penalty_row(mixing, others, j, Xt) + hp.linear[j]
            new = _update(Xt[j], g, curvature[j])
            return Xt.at[j].set(new), mask.update(P, Fj, new - Xt[j])

        X_new, _ = lax.fori_loop(0, k, update, (Xt, mask.sweep_state(F, Xt)))
        return X_new, jnp.sum((X_new - Xt) ** 2)

    return sweep


def _untiled_sweep(hp: HalfProblem, mixing: Array, others, curvature: Array):
    """The sweep when some p-side weight is not a multiple of I (columns coupled or
    scaled per column): row by row over the whole Xt, as before tiling."""
    k = hp.linear.shape[0]

    def sweep(Xt):
        def update(j, Xt):
            new = _update(Xt[j], _penalty_row(mixing, others, j, Xt) + hp.linear[j], curvature[j])
            return Xt.at[j].set(new)

        X_new = jax.lax.fori_loop(0, k, update, Xt)
        return X_new, jnp.sum((X_new - Xt) ** 2)

    return sweep
