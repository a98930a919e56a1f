"""The per-fit loop jnmf used before core v2 (jnmf/_fitwise.py then), kept for the
before/after comparisons of bench_anls.py and bench_hals_tiled.py only: the batch
layer (jnmf.batch, strategy "hybrid") now makes this choice.

Run a per-fit computation as a loop over fits when it is batched by ``vmap``.

Some per-fit work gains nothing from batching on CPU and loses to it: a HALS
sweep is a chain of small memory-bound row updates (batched, every row update
becomes a strided gather/scatter over all fits, and a data-dependent inner loop
runs for the slowest fit and pays a select per pass), and XLA's batched ``A B'``
with a long contraction runs ~5x below a loop of single products.  Wrapping such
a function with :func:`fitwise` keeps its unbatched code for each fit
(``lax.map`` over the batch axis) while everything around it, notably the large
products with Y, is still batched.
"""

from __future__ import annotations

from collections.abc import Callable

import jax


def fitwise(f: Callable) -> Callable:
    """``f`` unchanged when called on one fit; under ``vmap``, ``lax.map`` over the fits.

    ``f`` must not close over traced values: pass every array (the rule included)
    as an argument.  Not differentiable on its own: wrap the result in
    ``jax.custom_jvp`` where derivatives are needed (see :func:`jnmf.quadratic.cross_gram`).
    """
    wrapped = jax.custom_batching.custom_vmap(f)

    @wrapped.def_vmap
    def _rule(axis_size, in_batched, *args):
        flat, tree = jax.tree.flatten(args)
        flags = jax.tree.leaves(in_batched)
        batched = [x for x, b in zip(flat, flags, strict=True) if b]

        def one(xs):
            it = iter(xs)
            full = [next(it) if b else x for x, b in zip(flat, flags, strict=True)]
            return f(*jax.tree.unflatten(tree, full))

        out = jax.lax.map(one, batched)
        return out, jax.tree.map(lambda _: True, out)

    return wrapped
