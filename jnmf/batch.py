"""Batching (layer 5): restarts and penalty grids as one compiled program.

Every function here runs the one driver loop (:func:`jnmf.driver.iterate_impl`)
over a batch of fits, with one of two strategies, chosen here and nowhere else:

* ``"vmap"``: the rule's step under ``jax.vmap``, all fits in ONE loop.  Y is shared
  (not batched), so each product with Y becomes one large GEMM over all fits: JAX's
  batching rule for ``dot_general`` folds the batch axis of the factor into its free
  dimension, i.e. the restarts are stacked along the rank axis.  Fits that stopped
  early are frozen (their state is carried unchanged), so results equal the
  unbatched ones.
* ``"hybrid"``: one loop, but only the work that batching stacks is vmapped (building
  each half problem: the products with the shared Y); the half steps themselves run
  as a ``lax.map`` loop over fits, each in its unbatched code.  On CPU this is what
  HALS's memory-bound column sweeps and ANLS's pivoting want: batched, every row
  update becomes a strided gather/scatter over all fits, and a data-dependent inner
  loop runs for the slowest fit and pays a select per pass.  The loop over fits skips
  the fits that are done (finished, or a retired slot; :func:`_loop_over_active`), so
  they cost only their share of the stacked products.
* ``"map"``: ``lax.map`` over the fits, each with its own loop, in one program.  It
  shares no product with Y, but each fit stops on its own and runs its unbatched
  code.

:func:`batching_strategy` picks one per rule, rank, number of fits and backend from
measurements (experiments/bench_strategy.py); every function takes ``strategy=`` to
override it.
On GPU/TPU everything is batched (``"vmap"``).

**Continuous batching (slots).**  One batched loop over all B fits runs until the
slowest fit stops, and the finished fits, frozen, keep costing their step.  With
``slots=S < B`` the batched loop (``"vmap"``/``"hybrid"``) holds S fits at a time: when a
slot's fit is done its carry is written out at the fit's index and the slot is reloaded
with the next pending fit's start, inside the one compiled loop
(:func:`jnmf.driver._slot_loop`); slots with no fit left are frozen until the last fit
is written.  Results equal the fit-by-fit ones (tests/test_slots.py).
:func:`restart_slots` picks S from shapes only (never from timing or settings), so
changing counts, tolerances or penalties never recompiles; every function takes
``slots=`` to override it.  Grids run each setting's restarts through the slots, except
under ``"vmap"`` over the settings; spread over a mesh, each device runs its slice
through the slots.

**Concurrent groups (CPU).**  XLA:CPU runs a program's independent operations one at a
time, so a batched program's per-fit work (HALS's column sweeps, a ``"map"`` loop's fits)
runs on one core; only its large products use the others.  With ``groups=G > 1``
:func:`run_restarts`, :func:`continue_restarts` and :func:`run_grid` deal the fits into G
equal groups (padded with copies of the last fit, as for a mesh), compile the one-device
program once, run it on every group from its own thread (XLA releases the GIL while it
runs) and put the results back in order, equal to one program's (tests/test_groups.py).
:func:`concurrent_groups` picks G from the backend, the fits and the usable CPUs only
(default ``min(CPUs, fits // 2)`` on CPU for ``"hybrid"`` and ``"map"``;
``JNMF_CPU_GROUPS=1`` turns it off).

**Spread over devices.**  With ``mesh=`` (a 1-D :class:`jax.sharding.Mesh` whose axis is
named ``"fits"``), :func:`run_restarts` and :func:`run_grid` split the batch over the
mesh's devices: it is padded to a multiple of the device count with copies of its last
fit, split along its leading axis, and each device runs the program above (the same
strategy) on its slice inside ``jax.shard_map``, with the problem, Y included,
replicated.  The fits are independent, so the compiled program holds no collective; the
padded fits are dropped and the results come back on the default device, equal to a
one-device run's (tests/test_mesh_batch.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from . import _validate as check
from .compile_cache import guard_map_limit
from .compile_options import (
    ONCE_OPTIONS,
    compile_ahead,
    program_options,
    programs_by_options,
    top_level_on_cpu,
    top_level_program,
)
from .driver import DEFAULT_STOPPING, Result, Stopping, check_static_options, iterate_impl
from .problem import Problem, check_replacements
from .rules.base import AlternatingRule, HalfStep, alternate

STRATEGIES = ("vmap", "hybrid", "map")

# Continuous batching (restart_slots): on CPU a batched loop of at least SLOT_FRACTION
# fits runs them through max(SLOT_FITS, fits // SLOT_FRACTION) slots.  Measured with
# experiments/bench_restarts.py (32 restarts of accelerated HALS on ORL faces, rank 25,
# float32, each to relative error 0.1755: 27 / 39 / 58 iterations min / median / max;
# "hybrid"; 2026-12-04, three runs, experiments/README.md "Continuous batching"):
# S = 4 / 8 / 16 / 32 (no refill) took 23.6 / 25.3 / 26.6 / 37.3 s (load 3-8), then S =
# 2 / 4 / 32 17.9 / 22.1 / 27.0 s (load 17-20, one repeat) and S = 2 / 4 16.4 / 20.5 s
# (load 13-10, median of 2): fewer slots waste less on finished fits, and 2 fits still
# stack the products with Y.  Larger batches keep fits // 16 slots (unmeasured beyond 32
# fits: the stacked products stay as wide as the measured ones, or wider).
# Re-measured after finished fits stopped paying their half steps ("hybrid",
# _loop_over_active; experiments/README.md "Finished fits skip their half steps";
# 2026-12-04 17:33-17:50 UTC, load 3-6, 19 / 22 / 27 iterations): S = 2 / 4 / 8 / 16 / 32
# took 10.56 / 10.77 / 10.20 / 10.33 / 11.57 s against a loop of single fits' 11.13 s,
# and in a second process-by-process comparison S = 2 beat S = 16 in 3 of 4 rounds: S = 2
# to 16 now lie close: S = 8 beat S = 2 in three runs under load (by 3%, 9%, 7%; load
# 3-6), but in the one quiet run (18:03-18:05 UTC, load 1.3-1.8) S = 2 / 8 / 32 took 4.85
# / 5.09 / 6.14 s against the loop's 5.85 s: the rule is kept (S = 2 for 32 fits).
SLOT_FITS = 2
SLOT_FRACTION = 16

# ... except for the methods that run all their work batched ("vmap": MU, AU), whose
# slots stack the products of more fits.  At 2 slots a batched MU/AU loop multiplies Y by
# 50-row factors (ORL, rank 25), and a 50-row product runs slower than a wide one:
# 16 x k = 50 took 180 ms of CPU against 155 for k = 800 (experiments/README.md,
# "Batched rows as a user runs them"; 2026-12-04 23:00-23:41 UTC, load 8-12, CPU time).
# 32 fits x (T(8) - T(2)) / 6 iterations, tol = 0: MU at S = 2 / 8 / 32 took 201 / 179 ms
# and 212 / 179 / 199 ms per iteration, AU 238 / 203 and 226 / 204 / 249 (S = 32 loses to
# the batched Gram matrices of 32 fits, a slow batched dot_general); 16 MU fits to tol
# 1e-4 (384-454 iterations) 45.9 s at S = 2 against 41.2 s at S = 8.  Unmeasured for the
# other "vmap" rules (they keep SLOT_FITS).
VMAP_SLOT_FITS: dict[str, int] = {"mu": 8, "au": 8}

# On CPU the strategy depends on the method and on whether stacking the fits' products
# with Y pays, i.e. on the rank.  One product of a fit with Y (``Y R'`` or ``L' Y``) does
# 2k flops per element of Y read: at small k one fit's products are bound by streaming Y
# (float32: 2k flops per 4 bytes against the machine's balance of ~150 GFLOP/s over
# ~13 GB/s, i.e. k < ~23) or run in XLA's slow skinny-matrix kernels (~55-60 GFLOP/s at
# k = 25 on ORL), while B fits stacked along the rank axis read Y once for all and run
# near the matmul rate.  Measured with experiments/bench_strategy.py (32 restarts x 10
# iterations, float32, vmap / hybrid / map; experiments/README.md): 6000 x 2000 at rank
# 9, HALS 2.9 / 3.6 / 7.6 s, accelerated HALS 16.8 / 8.5 / 17.9 s; ORL faces (10304 x
# 400) at rank 25, HALS 11.3 / 11.9 / 12.3 s, accelerated HALS 29.0 / 19.7 / 30.4 s, MU
# 40.5 / 39.9 / 57.0 s; but 1000 x 500 at rank 50, HALS 13.8 / 12.7 / 11.6 s: there a
# single fit's products already run near the rate.  The threshold lies between 25 and 50.
# Re-run at load ~4 (accelerated HALS / HALS, vmap / hybrid / map): 6000 x 2000, 14.5 /
# 5.4 / 10.9 s and 3.2 / 3.1 / 6.6 s; ORL 6.3 / 4.1 / 5.1 s and 4.1 / 3.9 / 4.9 s;
# 1000 x 500 at rank 10, 0.34 / 0.25 / 0.32 s and 0.14 / 0.14 / 0.18 s: stacking pays on
# a cache-sized Y too (an 8 MiB size test tried under load 14 did not hold up).
STACK_BELOW_RANK = 32

# Each method's strategy when stacking pays: HALS stacks only its products ("hybrid":
# batched column sweeps become strided gathers, and accelerated HALS's inner loop would
# run for the slowest fit); ANLS's time is its per-fit pivoting, and KL has no product
# with Y to share (its quotient Y / (L R) is per fit): both stay fit by fit; the others
# run batched.  Unlisted rules: "vmap".
#
# KL stays "map" with slots too (experiments/README.md, "Continuous batching"): at equal
# work (40 fits of Golub at rank 5 x 300 iterations, float32, load 17-19) "map" took
# 23.7 s, "vmap" 27.6 s all at once and 23.4 s through 20 slots; the Golub survey
# (experiments/bench_golub_survey.py --skip-r --strategies vmap, ranks 2-5 x 50 restarts,
# 430-2000 iterations, load 4-5) took 30.5 s warm as "map" and 159.9 s as "vmap" through
# 12 slots (5.2x slower).
_CPU_STACKED: dict[str, str] = {"hals": "hybrid", "anls": "map", "kl": "map"}

# ... and when it does not (a fit's products already run near the matmul rate; measured
# on ORL faces, rank 25, on the earlier machine: 32 restarts x 30 iterations of ahals,
# vmap 6.1 s, map 3.4 s, a Python loop 3.3 s; 8 restarts x 15 iterations: kl vmap 1.37 s,
# map 0.83 s; mu 0.27 / 0.29 s, au 0.30 / 0.31 s, pg 0.31 / 0.29 s): batched column
# sweeps, pivoting and m x n quotients lose.  Unlisted rules: "vmap".
_CPU_UNSTACKED: dict[str, str] = {"hals": "map", "anls": "map", "kl": "map"}


def cpu_strategy(method_name: str, rank: int | None, fits: int | None) -> str:
    """The CPU strategy for ``fits`` dense fits of a method at ``rank`` (a pure function).

    Args:
        method_name: the rule's ``method_name`` (``"hals"`` also names accelerated HALS).
        rank: the rank k of every fit (None: unknown, taken as not stacking).
        fits: the number of fits run together (None: unknown, taken as not stacking).

    Returns:
        ``"vmap"``, ``"hybrid"`` or ``"map"``.
    """
    stack = rank is not None and fits is not None and fits > 1 and rank < STACK_BELOW_RANK
    return (_CPU_STACKED if stack else _CPU_UNSTACKED).get(method_name, "vmap")


def batching_strategy(
    rule,
    backend: str | None = None,
    *,
    uneven_stops: bool = False,
    problem=None,
    rank: int | None = None,
    fits: int | None = None,
) -> str:
    """The strategy for a batch of fits of ``rule`` on ``backend`` (default: JAX's).

    Args:
        rule: the rule of every fit.
        backend: ``"cpu"``, ``"gpu"``, ``"tpu"`` (default: JAX's default backend).
        problem: the problem (optional): on CPU, data whose products are gather/scatter loops
            (sparse data, :attr:`jnmf.data.DataOperator.needs_mn_memory` False) run fit by
            fit, ``"map"``: vmapped, the chunked scatter products ran 8-13x slower than a
            loop of fits (experiments/README.md, "Big data on one device").
        uneven_stops: the fits are expected to stop after very different numbers of
            iterations (a consensus survey's stable-cluster rule: 80 to 400 iterations
            on Golub).  One batched loop runs every fit until the slowest stops; on CPU
            a loop of fits then does several times less work (measured: a 4-rank x
            50-restart KL survey of Golub took 27 s as "map" against 210 s as "vmap").
        rank: the rank of every fit; with ``fits``, decides on CPU whether stacking the
            products with Y pays (:func:`cpu_strategy`).  None: as if it did not.
        fits: the number of fits in the batch (None: unknown).

    Returns:
        ``"vmap"``, ``"hybrid"`` or ``"map"``.
    """
    backend = backend or jax.default_backend()
    if backend == "cpu":
        if uneven_stops:
            return "map"
        data = getattr(problem, "data", None)
        if data is not None and not data.needs_mn_memory:
            return "map"
        return cpu_strategy(getattr(rule, "method_name", None), rank, fits)
    return "vmap"


def restart_slots(
    strategy: str, method_name: str | None, rank: int | None, fits: int, backend: str = "cpu"
) -> int | None:
    """The number of slots a batched loop of ``fits`` fits runs them through (a pure
    function of shapes: changing counts, tolerances or penalties never recompiles).

    A batched loop (``"vmap"``/``"hybrid"``) over every fit at once runs until the
    slowest fit stops; with S < B slots, a slot whose fit is done is refilled with the
    next pending one (continuous batching, :func:`jnmf.driver._slot_loop`), so the loop
    runs about ``sum of iterations / S`` times.  Fewer slots waste less on finished
    fits but stack fewer products with Y (under ``"hybrid"`` a finished fit costs only its
    share of the stacked products); see :data:`SLOT_FITS` for the measurements.

    Args:
        strategy: the batching strategy (``"map"``: every fit has its own loop, no slots).
        method_name: the rule's ``method_name``: under ``"vmap"``, MU and AU take at least
            :data:`VMAP_SLOT_FITS` slots (their stacked products run faster wider).
        rank: the rank of every fit (unused today).
        fits: the number of fits B in the batch (on one device).
        backend: ``"cpu"`` (default), ``"gpu"`` or ``"tpu"``: slots are measured on CPU
            only; elsewhere all fits run at once, as before.

    Returns:
        The number of slots, or None for no refill (all fits at once).
    """
    if backend != "cpu" or strategy == "map" or fits < SLOT_FRACTION:
        return None  # small batches (unmeasured) run all at once, as before
    least = VMAP_SLOT_FITS.get(method_name, SLOT_FITS) if strategy == "vmap" else SLOT_FITS
    return max(least, fits // SLOT_FRACTION)


# Concurrent groups on CPU (concurrent_groups): XLA:CPU runs a program's independent ops
# one at a time, so a batched loop's per-fit work (HALS's column sweeps, a "map" loop's
# fits) runs on ONE core; only its large products use the others.  Two copies of the same
# compiled program, each over half of the fits and each called from its own Python thread
# (XLA releases the GIL while it runs), keep every core busy.  A batch of at least
# GROUP_FITS fits per group is split into min(usable CPUs, fits // GROUP_FITS) groups.
# Measured (experiments/README.md, "Concurrent groups on CPU"; ORL, rank 25, accelerated
# HALS "hybrid", each fit to relative error 0.1755; 2 CPUs): at load 1.2-1.9 (20:40 UTC)
# two groups took 0.50 / 0.95 / 1.79 / 3.63 s against one program's 0.62 / 1.25 / 2.38 /
# 4.97 s for 4 / 8 / 16 / 32 fits (1.25-1.37x); under load 3.4-5.4 (other sessions' jobs,
# 20:05-20:30 UTC, no idle core to gain) they were 0.91-0.95x at 4 fits, 0.84-0.95x at 8,
# 1.02-1.39x at 16, 0.96x at 32.  The Golub KL survey ("map", 200 fits) took 25-46 s in
# two groups against 56-57 s in one (load 3.3-3.9).  Groups start at 4 fits (2 per
# group); more than 2 CPUs were not measured.
GROUP_FITS = 2

# The environment variable that overrides the chooser on CPU (1: off; n: n groups).
GROUPS_ENV = "JNMF_CPU_GROUPS"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else
    ``os.cpu_count()``).

    Returns:
        The count, at least 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - no affinity on this OS
        return max(1, os.cpu_count() or 1)


def concurrent_groups(
    backend: str,
    fits: int,
    strategy: str | None = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = False,
    cpus: int | None = None,
) -> int:
    """The number of concurrent groups a batch of ``fits`` fits runs in (a pure function
    of the backend, the count and the machine: tolerances, counts of iterations and
    penalties never change it).

    Each group runs the same compiled one-device program on its share of the fits, from
    its own thread (see :data:`GROUP_FITS`): on XLA:CPU a batched program runs its per-fit
    work on one core, and groups put the others to work.

    Args:
        backend: ``"cpu"``, ``"gpu"`` or ``"tpu"``: groups only on ``"cpu"`` (an
            accelerator runs a batch's fits in parallel already).
        fits: the number of fits in the batch.
        strategy: the batching strategy: groups for ``"hybrid"`` and ``"map"`` (measured),
            or None (unknown); ``"vmap"`` runs in one program (not measured: its per-fit
            work is batched operations, and a sweep's chunks vmapped over their settings
            must round as the whole sweep does, tests/test_checkpoint.py).
        mesh: the fits are spread over a mesh: one group (the devices split them).
        progress: progress reports from inside the loop: one group (one stream of reports).
        cpus: the usable CPUs (default: :func:`usable_cpus`).

    Returns:
        ``min(cpus, fits // GROUP_FITS)``, at least 1 (1 for ``"vmap"``); the environment
        variable ``JNMF_CPU_GROUPS`` (a positive integer) overrides it on CPU (1: off).

    Raises:
        ValueError: ``JNMF_CPU_GROUPS`` is not a positive integer.
    """
    if backend != "cpu" or mesh is not None or progress or fits < 2:
        return 1
    env = os.environ.get(GROUPS_ENV, "").strip()
    if env:
        try:
            wanted = int(env)
        except ValueError:
            wanted = 0
        if wanted < 1:
            raise ValueError(f"the environment variable {GROUPS_ENV} must be a positive integer, got {env!r}")
        return min(wanted, fits)
    if strategy == "vmap":
        return 1
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, min(cpus, fits // GROUP_FITS))


def _groups_for(groups, fits: int, mesh, progress: bool, strategy: str | None = None) -> int:
    """``groups`` checked (ValueError naming it) and capped at ``fits``, or, None, chosen
    (:func:`concurrent_groups`) for ``strategy``."""
    if groups is None:
        return concurrent_groups(jax.default_backend(), fits, strategy, mesh=mesh, progress=progress)
    groups = check.positive_int("groups", groups)
    if groups > 1 and mesh is not None:
        raise ValueError("groups > 1 (concurrent groups) is not supported with mesh (spread fits)")
    if groups > 1 and progress:
        raise ValueError("groups > 1 (concurrent groups) is not supported with progress_every")
    return max(1, min(groups, fits))


def _slots_for(slots, strategy, rule, R, fits: int | None = None) -> int | None:
    """``slots`` checked (ValueError naming it), or chosen (:func:`restart_slots`) from the
    stack of right factors ``R`` (``(fits, k, n)``); ``fits``: the fits one device runs
    (default: all of ``R``'s)."""
    if slots is not None:
        return check.positive_int("slots", slots)
    if R.ndim != 3:
        return None
    method = getattr(rule, "method_name", None)
    fits = R.shape[0] if fits is None else fits
    return restart_slots(strategy, method, R.shape[-2], fits, jax.default_backend())


def _loop_over_fits(f):
    """``f`` applied fit by fit (``lax.map`` over the leading axis of its arguments)."""
    return lambda *args: jax.lax.map(lambda a: f(*a), args)


def _loop_over_active(active):
    """A ``solo`` transform for :func:`jnmf.rules.base.alternate`: the half step applied
    fit by fit to the fits with ``active`` True only, as a ``lax.while_loop`` over their
    indices (in fit order), each fit's results written in place into the batch; the other
    fits (done: their step is discarded by the driver's freeze) cost nothing and come back
    as they came in (``X`` and ``aux`` passed through, step 0, not stuck).  The fits that
    run do exactly what ``lax.map`` (:func:`_loop_over_fits`) does.

    Only the outputs the half step computes are written per fit: those it passes on from
    its inputs unchanged (most of extrapolated HALS's auxiliary state; found by tracing
    the step, ``jax.make_jaxpr``) are the input batch's own leaves, as ``lax.map``'s
    forwarding does.  Written per fit they cost ~7% more CPU time per iteration (32 ORL
    fits, float32); so did ``lax.cond(active, step, skip)`` inside the ``lax.map``
    (experiments/README.md, "Finished fits skip their half steps").  A half step whose output is not
    shaped as ``HalfStep(X, aux, ...)`` (no rule here) runs for every fit (``lax.map``).
    """

    def transform(f):
        def run(hp, X, aux):
            batch, static = eqx.partition((hp, X, aux), eqx.is_array)
            leaves, treedef = jax.tree.flatten(batch)
            one = lambda ls: f(*eqx.combine(jax.tree.unflatten(treedef, ls), static))
            out = eqx.filter_eval_shape(one, [x[0] for x in leaves])
            if not isinstance(out, HalfStep) or _shapes((out.X, out.aux)) != _shapes((X[0], _fit_of(aux, 0))):
                return jax.lax.map(lambda a: f(*a), (hp, X, aux))
            flat = lambda ls: jax.tree.leaves(one(ls))
            jaxpr = jax.make_jaxpr(flat)([x[0] for x in leaves]).jaxpr
            # output o is input forwarded[o] unchanged, or computed (None); a value output
            # twice (extrapolated HALS's L_hat: the step's X and aux.Lt) is written once
            position = {id(v): i for i, v in enumerate(jaxpr.invars)}
            forwarded = [position.get(id(v)) for v in jaxpr.outvars]
            first = {}
            for o, v in enumerate(jaxpr.outvars):
                if forwarded[o] is None:
                    first.setdefault(id(v), o)
            computed = list(first.values())
            zeros = lambda s: None if s is None else jnp.zeros((X.shape[0],) + s.shape, s.dtype)
            # a skipped fit's computed outputs: its X and aux as they came in
            skipped = jax.tree.leaves(HalfStep(X, aux, zeros(out.step), zeros(out.stuck)))
            order = jnp.argsort(~active, stable=True)  # the active fits first, in fit order
            count = jnp.sum(active)

            def body(carry):
                i, written = carry
                j = order[i]
                new = flat([jax.lax.dynamic_index_in_dim(x, j, 0, keepdims=False) for x in leaves])
                put = lambda b, o: jax.lax.dynamic_update_index_in_dim(b, new[o], j, 0)
                return i + 1, [put(b, o) for b, o in zip(written, computed)]

            start = (jnp.zeros((), count.dtype), [skipped[o] for o in computed])
            written = dict(zip(computed, jax.lax.while_loop(lambda c: c[0] < count, body, start)[1]))
            result = [
                leaves[i] if i is not None else written[first[id(v)]]
                for i, v in zip(forwarded, jaxpr.outvars)
            ]
            return jax.tree.unflatten(jax.tree.structure(out), result)

        return run

    return transform


def _fit_of(tree, i):
    """Fit ``i`` of a batch: every array leaf's entry ``i`` of its leading axis."""
    return jax.tree.map(lambda a: a[i] if eqx.is_array(a) else a, tree)


def _shapes(tree):
    """The structure, shapes and dtypes of a pytree's array leaves."""
    return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


def _run(
    rule, problem, states, opts, history_size, normalize, strategy, progress_every=None, slots=None
) -> Result:
    if strategy == "map":
        return jax.lax.map(
            lambda s: iterate_impl(
                rule, problem, s, *opts, history_size, normalize, progress_every=progress_every
            ),
            states,
        )
    step = None
    if strategy == "hybrid" and isinstance(rule, AlternatingRule):
        # finished fits (and retired slots) skip their half steps: they cost only their
        # share of the stacked products
        step = lambda p, s, active: alternate(rule, p, s, shared=jax.vmap, solo=_loop_over_active(active))
    return iterate_impl(
        rule,
        problem,
        states,
        *opts,
        history_size,
        normalize,
        batched=True,
        batched_step=step,
        progress_every=progress_every,
        slots=slots,
    )


def _restarts(
    rule, problem, states, opts, history_size, normalize, strategy, progress_every, slots=None
) -> Result:
    return _run(rule, problem, states, opts, history_size, normalize, strategy, progress_every, slots)


# the loop program, once per set of compiler options (named "_restarts" in logs either way)
_restarts_programs = programs_by_options(_restarts, eqx.filter_jit)
_restarts = _restarts_programs(None)  # XLA's default options


def _for_rule(programs, rule, problem, *args, settings: int = 1):
    """The program of ``programs`` for ``rule``, compiled with
    :func:`jnmf.compile_options.program_options` (the rule's options, and for a small
    problem its ``small_compiler_options``, when the call with ``args`` is top level on
    XLA:CPU).  The states among ``args`` (their ``R``, ``(fits, k, n)``) give the rank and
    the fits; ``settings``: the grid settings each start runs under."""
    R = next((a.R for a in args if isinstance(getattr(a, "R", None), jax.Array)), None)
    return programs(program_options(rule, problem, R, settings, *args))


def _grid_impl(rule, problem, grid, states, opts, history_size, normalize, strategy, slots=None) -> Result:
    # Under vmap over the settings the slots' lax.cond would become a select paid at
    # every iteration: the settings' restarts then run all at once, without refill.
    slots = None if strategy == "vmap" else slots

    def one_setting(values):
        setting = problem.replace(**values)
        # the starts' states were made for the base problem: remade for this setting's
        # (a rule's starting state may hold a value of eq. 3, which the settings change)
        fresh = getattr(rule, "for_problem", None)
        starts = states if fresh is None else jax.vmap(lambda s: fresh(setting, s))(states)
        return _run(rule, setting, starts, opts, history_size, normalize, strategy, slots=slots)

    if strategy == "vmap":
        return jax.vmap(one_setting)(grid)
    return jax.lax.map(one_setting, grid)


_grid_programs = programs_by_options(_grid_impl, eqx.filter_jit)
_grid = _grid_programs(None)


# ----------------------------------------------------------------- fits spread over a mesh
FITS_AXIS = "fits"
_P = jax.sharding.PartitionSpec


def check_fits_mesh(name: str, mesh) -> jax.sharding.Mesh:
    """A mesh to spread a batch of fits over: a :class:`jax.sharding.Mesh` with the one
    axis :data:`FITS_AXIS` (``"fits"``).

    Raises:
        ValueError: naming ``name``: not a Mesh, no ``"fits"`` axis, or other axes too.
    """
    if not isinstance(mesh, jax.sharding.Mesh):
        raise ValueError(f"{name} must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if FITS_AXIS not in mesh.axis_names:
        raise ValueError(
            f"{name} must have an axis named {FITS_AXIS!r} to spread the fits over, "
            f"got axes {mesh.axis_names}"
        )
    if len(mesh.axis_names) != 1:
        raise ValueError(
            f"{name} must be a 1-D mesh (the one axis {FITS_AXIS!r}) to spread fits over; a mesh of "
            f"fits x rows is not supported yet, got axes {mesh.axis_names}"
        )
    return mesh


def _padded(tree, size: int):
    """Every array leaf's leading axis padded to ``size`` by repeating its last entry: the
    padded fits are copies of a real one (never zero factors a rule might divide by), and
    are dropped afterwards.  Padded on the host, on their way to the mesh: on the device
    each leaf's concatenation would compile a program of its own."""

    def pad(x):
        x = np.asarray(x)
        return np.concatenate([x, np.repeat(x[-1:], size - x.shape[0], axis=0)])

    return jax.tree.map(lambda x: pad(x) if eqx.is_array(x) else x, tree)


def _gathered(tree, kept):
    """The array leaves of a spread result, the padded fits dropped (``kept`` indexes the
    real ones), back on the default device as after a one-device run.  They leave the
    mesh through the host: dropping the padded fits on the devices would compile a small
    program per leaf, or put a gather into the fits' program; and the rest of each
    surface (choosing the best fit, losses, scores) then runs through the same compiled
    programs as after a one-device run."""
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[kept]) if eqx.is_array(x) else x, tree)


# ------------------------------------------------------------ concurrent groups on CPU
def _group_parts(tree, groups: int) -> list:
    """``tree``'s array leaves dealt along their leading axis into ``groups`` equal parts:
    entry ``i`` goes to part ``i % groups`` (so fits that come sorted by cost, as a rank
    survey's ranks do, are spread evenly over the groups), the leaves first padded to a
    multiple of ``groups`` with copies of the last entry (:func:`_padded`, on the host);
    each part back on the default device (``jax.device_put``: no compile)."""
    count = jax.tree.leaves(eqx.filter(tree, eqx.is_array))[0].shape[0]
    padded = _padded(tree, -(-count // groups) * groups)
    deal = lambda g, x: jax.device_put(np.ascontiguousarray(x[g::groups])) if eqx.is_array(x) else x
    return [jax.tree.map(lambda x, g=g: deal(g, x), padded) for g in range(groups)]


def _run_groups(program, calls: list[tuple], axis: int, count: int):
    """``program(*args)`` for every ``args`` of ``calls`` (one per group, equal shapes, dealt
    by :func:`_group_parts`), each from its own thread, and the results put back in order
    along ``axis`` (group ``g``'s ``j``-th fit is fit ``j * groups + g``) with the padded
    fits (those from ``count`` on) dropped.

    The program is compiled once, before the threads start (:func:`compile_ahead` fills
    JAX's cache that the calls then hit), so no two threads compile it; XLA releases the
    GIL while a program runs, so the groups run at once, each on a core of its own.  The
    results are joined on the host, as :func:`_gathered` does (on the device each leaf's
    concatenation would compile a program of its own), and put back with
    ``jax.device_put``, which compiles nothing (``jnp.asarray`` of a host array compiles
    a small program per new shape)."""
    compile_ahead(program, *calls[0])
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="jnmf-group") as pool:
        results = list(pool.map(lambda args: jax.block_until_ready(program(*args)), calls))
    static = eqx.partition(results[0], eqx.is_array)[1]
    keep = (slice(None),) * axis + (slice(0, count),)

    def join(*xs):  # (..., per, ...) per group -> (..., per, groups, ...) -> (..., per * groups, ...)
        x = np.stack([np.asarray(x) for x in xs], axis + 1)
        x = x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2 :])
        return jax.device_put(np.ascontiguousarray(x[keep]))

    arrays = jax.tree.map(join, *[eqx.filter(r, eqx.is_array) for r in results])
    return eqx.combine(arrays, static)


def _restarts_in_groups(rule, problem, states, opts, groups, count, history_size, normalize, strategy, slots):
    """The restarts program run on ``states`` dealt into ``groups`` concurrent groups."""
    parts = _group_parts(states, groups)
    program = _for_rule(_restarts_programs, rule, problem, parts[0], opts)
    static = (int(history_size), normalize, strategy, None, slots)
    return _run_groups(program, [(rule, problem, part, opts, *static) for part in parts], 0, count)


def _placed(tree, mesh: jax.sharding.Mesh, spec):
    """Every array leaf of ``tree`` put on ``mesh`` with the partition ``spec``."""
    sharding = jax.sharding.NamedSharding(mesh, spec)
    return jax.tree.map(lambda x: jax.device_put(x, sharding) if eqx.is_array(x) else x, tree)


def _on_fits(f, mesh: jax.sharding.Mesh, in_specs: tuple, out_spec, *args):
    """``f(*args)`` with every device of ``mesh`` running it on its own slice of the fits
    (``jax.shard_map`` over the fits axis); ``in_specs`` says per argument which are split
    (the fits' leaves) and which replicated (the problem: Y is copied to every device).

    Each device runs the one-device code on its slice, with no collective at all: the fits
    are independent, and each device's loop stops when its own fits have.  ``check_vma``
    is off because the rules' loops start their carries from constants that do not vary
    over the mesh; every output leaf is per fit, split as ``out_spec`` says."""
    dynamic, static = eqx.partition(args, eqx.is_array)
    static_out = []

    def body(dynamic):
        arrays, rest = eqx.partition(f(*eqx.combine(dynamic, static)), eqx.is_array)
        static_out.append(rest)
        return arrays

    spread = jax.shard_map(body, mesh=mesh, in_specs=(in_specs,), out_specs=out_spec, check_vma=False)
    arrays = spread(dynamic)
    return eqx.combine(arrays, static_out[0])


@eqx.filter_jit
def _spread_restarts(
    rule, problem, states, opts, history_size, normalize, strategy, mesh, slots=None
) -> Result:
    def run(rule, problem, states, opts):
        return _run(rule, problem, states, opts, history_size, normalize, strategy, slots=slots)

    split = _P(FITS_AXIS)
    return _on_fits(run, mesh, (_P(), _P(), split, _P()), split, rule, problem, states, opts)


@eqx.filter_jit
def _spread_grid(
    rule, problem, grid, states, opts, history_size, normalize, strategy, mesh, on_settings, slots=None
):
    def run(rule, problem, grid, states, opts):
        return _grid_impl(rule, problem, grid, states, opts, history_size, normalize, strategy, slots)

    split, whole = _P(FITS_AXIS), _P()
    specs = (whole, whole, split, whole, whole) if on_settings else (whole, whole, whole, split, whole)
    out_spec = split if on_settings else _P(None, FITS_AXIS)
    return _on_fits(run, mesh, specs, out_spec, rule, problem, grid, states, opts)


def _per_device(mesh: jax.sharding.Mesh | None, count: int) -> int:
    """How many of ``count`` fits each device runs when they are spread over ``mesh``
    (padded; ``count`` without a mesh)."""
    devices = 1 if mesh is None else mesh.devices.size
    return -(-count // devices)


def _size_on(mesh: jax.sharding.Mesh, count: int) -> int:
    """``count`` rounded up to a multiple of the mesh's devices."""
    return _per_device(mesh, count) * mesh.devices.size


def _options(rule, stopping, overrides, history_size, normalize, strategy, R, problem=None):
    """The validated run options (traced) and the batching strategy (``R``: the stack of
    right factors, ``(fits, k, n)``, gives the dtype, rank and number of fits)."""
    check_static_options(history_size, normalize)
    stop = (stopping or DEFAULT_STOPPING).replace(**overrides).validate()
    fits, rank = (R.shape[0], R.shape[-2]) if R.ndim == 3 else (None, None)
    strategy = strategy or batching_strategy(rule, problem=problem, rank=rank, fits=fits)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}; got {strategy!r}")
    return stop.traced(R.dtype), strategy


def _prepare(rule, problem, L0, R0, stopping, overrides, history_size, normalize, strategy):
    opts, strategy = _options(rule, stopping, overrides, history_size, normalize, strategy, R0, problem)
    if L0.ndim != 3 or R0.ndim != 3 or L0.shape[0] != R0.shape[0]:
        raise ValueError(
            f"L0 and R0 must be stacks of starting factors with one leading axis, got shapes "
            f"{L0.shape} and {R0.shape}"
        )
    return initial_states(rule, problem, L0, R0), opts, strategy


def initial_states_impl(rule, problem, L0, R0):
    """The rule's starting states of the stacked starts ``L0`` (b, m, k) and ``R0`` (b, k, n).

    Args:
        rule: the rule (its ``init``).
        problem: the problem the fits solve.
        L0, R0: the stacked starting factors.

    Returns:
        The b states, stacked along a leading axis.
    """
    return jax.vmap(lambda L, R: rule.init(problem, L, R))(L0, R0)


# The starting states in one program, run once per fit and compiled cheaply (op by op, a
# first fit compiled five: the transpose, extrapolated HALS's start objective, its dtype
# conversions and broadcasts).
initial_states = top_level_program(initial_states_impl, ONCE_OPTIONS, eqx.filter_jit)


def initial_state_impl(rule, problem, L0, R0):
    """The rule's starting state of one start ``L0`` (m, k), ``R0`` (k, n), unbatched.

    Args:
        rule: the rule (its ``init``).
        problem: the problem the fit solves.
        L0, R0: the starting factors.

    Returns:
        The state.
    """
    return rule.init(problem, L0, R0)


# One fit's starting state, compiled cheaply like initial_states; a single fit run on it
# needs no program to drop the batch axis of one (issue 15: each tiny program a first fit
# of a new shape compiles costs ~10-40 ms).
initial_state = top_level_program(initial_state_impl, ONCE_OPTIONS, eqx.filter_jit)


def run_restarts(
    rule,
    problem: Problem,
    L0: Array,
    R0: Array,
    *,
    stopping: Stopping | None = None,
    max_iterations: int | None = None,
    min_xstep: float | None = None,
    tol: float | None = None,
    rel_tol: float | None = None,
    history_size: int = 1000,
    normalize=None,
    strategy: str | None = None,
    progress_every: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    slots: int | None = None,
    groups: int | None = None,
) -> Result:
    """Fit from each of the starting points ``L0[i], R0[i]`` as one compiled program.

    Args:
        rule: an NMF rule; ``rule.check(problem)`` runs first.
        problem: the :class:`~jnmf.problem.Problem` (run as given: ``jnmf.fit`` also
            rescales the data, see :func:`jnmf.fitting.fit`).
        L0, R0: starting factors with a leading restart axis, ``(b, m, k)`` and ``(b, k, n)``.
        stopping, max_iterations, min_xstep, tol, rel_tol: as for :func:`jnmf.driver.iterate`.
        history_size, normalize: as for :func:`jnmf.driver.iterate`.
        strategy: ``"vmap"``, ``"hybrid"`` or ``"map"`` (default: :func:`batching_strategy`).
        progress_every: report progress to the host every this many iterations, from
            inside the compiled loop (:mod:`jnmf.progress`); None (default) compiles the
            loop without reports.  The stride is traced: changing it does not recompile.
            Through slots, each report gives the loop's own iteration count (no fit has
            run more), the best objective over the fits in the slots and the number of
            fits finished and written out.
        mesh: a 1-D mesh with the axis ``"fits"`` (:func:`check_fits_mesh`) to spread the
            restarts over its devices: the batch is padded to a multiple of the device count
            (with copies of the last start, dropped afterwards), split over the devices, and
            each device runs the one-device program (``strategy`` included) on its slice
            with the problem (Y) replicated; the program has no collective.  The results
            come back on the default device, as from a one-device run.  Not with
            ``progress_every``.
        slots: with a batched strategy (``"vmap"``/``"hybrid"``), run the fits through
            this many slots, refilling a slot with the next pending fit when its fit is
            done (:func:`jnmf.driver._slot_loop`); a count >= the fits (per device, with
            ``mesh``) runs them all at once.  None (default): :func:`restart_slots`.
            Results are the same for every count.
        groups: deal the fits into this many equal groups (fit ``i`` to group ``i % groups``;
            padded with copies of the last start, dropped afterwards) and run each group's
            program (the same compiled program: ONE compile) from its own thread at once,
            putting the results back in order: on XLA:CPU a batched program runs its
            per-fit work on one core, and the groups put every core to work.  Each group
            picks its own slots.  1: one program for all fits.  None (default):
            :func:`concurrent_groups` (on CPU, ``"hybrid"``/``"map"``, 2+ usable CPUs, 4+ fits; the
            environment variable ``JNMF_CPU_GROUPS`` overrides it, 1 = off).  Not with
            ``mesh`` or ``progress_every``; only on CPU, and inside a trace (``jit``,
            ``vmap``) the fits run as one program.  Results are the same for every count.

    Returns:
        A :class:`~jnmf.driver.Result` whose leaves have a leading restart axis.

    Raises:
        ValueError: a bad ``mesh``, ``slots`` or ``groups`` (before compiling), or bad shapes
            or settings.
    """
    if mesh is not None:
        check_fits_mesh("mesh", mesh)
        if progress_every is not None:
            raise ValueError("progress_every (progress reports) is not supported with mesh (spread fits)")
    count = L0.shape[0] if L0.ndim == 3 else 1
    if groups is not None:  # checked before compiling
        groups = _groups_for(groups, count, mesh, progress_every is not None)
    rule.check(problem)
    overrides = dict(max_iterations=max_iterations, min_xstep=min_xstep, tol=tol, rel_tol=rel_tol)
    states, opts, strategy = _prepare(
        rule, problem, L0, R0, stopping, overrides, history_size, normalize, strategy
    )
    groups = _groups_for(groups, count, mesh, progress_every is not None, strategy)
    slots = _slots_for(
        slots, strategy, rule, R0, _per_device(mesh, count) if groups == 1 else -(-count // groups)
    )
    guard_map_limit()
    if groups > 1 and top_level_on_cpu(rule, problem, states, opts):
        return _restarts_in_groups(
            rule, problem, states, opts, groups, count, history_size, normalize, strategy, slots
        )
    if mesh is not None:
        states = _placed(_padded(states, _size_on(mesh, count)), mesh, _P(FITS_AXIS))
        rule, problem, opts = _placed((rule, problem, opts), mesh, _P())
        res = _spread_restarts(
            rule, problem, states, opts, int(history_size), normalize, strategy, mesh, slots
        )
        return _gathered(res, np.s_[:count])
    every = None
    if progress_every is not None:
        every = jnp.asarray(check.positive_int("progress_every", progress_every), jnp.int32)
    return _for_rule(_restarts_programs, rule, problem, states, opts)(
        rule, problem, states, opts, int(history_size), normalize, strategy, every, slots
    )


def continue_restarts(
    rule,
    problem: Problem,
    states,
    *,
    stopping: Stopping | None = None,
    max_iterations: int | None = None,
    min_xstep: float | None = None,
    tol: float | None = None,
    rel_tol: float | None = None,
    history_size: int = 1000,
    normalize=None,
    strategy: str | None = None,
    slots: int | None = None,
    groups: int | None = None,
) -> Result:
    """:func:`run_restarts` from a batch of rule states (e.g. ``Result.state`` of an earlier
    call), so a fit can run in chunks with tests between them; the rule's auxiliary state
    (annealed steps, optimizer moments, ``L R``) carries over, so chunks of ``n`` iterations
    give exactly the iterates of one longer run (with the convergence tests off).

    Args:
        rule, problem, stopping, ..., slots, groups: as for :func:`run_restarts`.
        states: the rule's states with a leading restart axis.

    Returns:
        A :class:`~jnmf.driver.Result` whose leaves have a leading restart axis.

    Raises:
        ValueError: a bad ``slots`` or ``groups`` (before compiling), or bad settings.
    """
    R = rule.factors(states)[1]
    count = R.shape[0] if R.ndim == 3 else 1
    if groups is not None:  # checked before compiling
        groups = _groups_for(groups, count, None, False)
    rule.check(problem)
    overrides = dict(max_iterations=max_iterations, min_xstep=min_xstep, tol=tol, rel_tol=rel_tol)
    opts, strategy = _options(rule, stopping, overrides, history_size, normalize, strategy, R, problem)
    groups = _groups_for(groups, count, None, False, strategy)
    slots = _slots_for(slots, strategy, rule, R, -(-count // groups))
    guard_map_limit()
    if groups > 1 and top_level_on_cpu(rule, problem, states, opts):
        return _restarts_in_groups(
            rule, problem, states, opts, groups, count, history_size, normalize, strategy, slots
        )
    return _for_rule(_restarts_programs, rule, problem, states, opts)(
        rule, problem, states, opts, int(history_size), normalize, strategy, None, slots
    )


def run_grid(
    rule,
    problem: Problem,
    grid: Mapping[str, Array],
    L0: Array,
    R0: Array,
    *,
    stopping: Stopping | None = None,
    max_iterations: int | None = None,
    min_xstep: float | None = None,
    tol: float | None = None,
    rel_tol: float | None = None,
    history_size: int = 1000,
    normalize=None,
    strategy: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    slots: int | None = None,
    groups: int | None = None,
) -> Result:
    """Fit every (setting, restart) pair as one compiled program.

    Args:
        rule, problem, L0, R0, stopping, ...: as for :func:`run_restarts`.
        grid: maps leaf names of :meth:`jnmf.problem.Problem.replace` (``lambda_1L`` ...
            ``gamma_2R``, ``W_1L``, ``W_1R``, ``W_0R``, ``W_0C``) to arrays with one leading
            axis of equal length G (one entry per setting).  Each value REPLACES the
            problem's.
        mesh: a 1-D mesh with the axis ``"fits"`` (:func:`check_fits_mesh`) to spread the
            fits over its devices, as :func:`run_restarts` does: either the settings or
            the restarts are split over the devices (each device runs all restarts of its
            settings, or its restarts of every setting), whichever needs fewer padded fits
            (ties: the settings).
        slots: as for :func:`run_restarts`, over each setting's restarts; not with the
            strategy ``"vmap"``, which runs the settings under ``vmap`` (there a slot's
            refill would be paid at every iteration).
        groups: as for :func:`run_restarts`, over the settings x restarts fits: the
            settings are dealt into the groups (each setting's restarts stay together,
            stacked as in one program), or the restarts when there are fewer settings than
            groups.  None (default): :func:`concurrent_groups` of the settings alone, so
            a chosen count only deals settings, two or more per group.

    Returns:
        A :class:`~jnmf.driver.Result` whose leaves have leading axes (G, restarts).

    Raises:
        ValueError: a bad ``mesh``, grid or ``groups`` (before compiling), or bad shapes or
            settings.
    """
    if mesh is not None:
        check_fits_mesh("mesh", mesh)
    if groups is not None:
        _groups_for(groups, 2, mesh, False)  # checked before compiling
    dt = L0.dtype
    m, n = problem.shape
    k = L0.shape[-1]
    grid = {key: np.asarray(v, dt) for key, v in grid.items()}
    sizes = {v.shape[0] if v.ndim else None for v in grid.values()}
    if not grid or None in sizes or len(sizes) != 1:
        raise ValueError("grid must map names to arrays with one leading axis of equal length")
    for i in range(next(iter(sizes))):
        values = {key: v[i] for key, v in grid.items()}
        check_replacements(values, m, n, k, problem.data)
        rule.check(problem.replace(**values))
    overrides = dict(max_iterations=max_iterations, min_xstep=min_xstep, tol=tol, rel_tol=rel_tol)
    states, opts, strategy = _prepare(
        rule, problem, L0, R0, stopping, overrides, history_size, normalize, strategy
    )
    grid = {key: jnp.asarray(v) for key, v in grid.items()}
    settings, restarts = next(iter(grid.values())).shape[0], L0.shape[0]
    on_settings = True
    if mesh is not None:
        padded_settings = (_size_on(mesh, settings) - settings) * restarts
        on_settings = padded_settings <= (_size_on(mesh, restarts) - restarts) * settings
    if groups is None:
        # a chosen count deals the settings only, GROUP_FITS or more per group: each
        # setting's restarts stay stacked and each group's loop over its settings runs at
        # least twice, so the results equal a chunked sweep's (jnmf.checkpoint) to the bit
        # (a group of one setting compiles that loop away, and XLA then fused and rounded
        # differently: 1e-14 in float64)
        groups = _groups_for(None, settings, mesh, False, strategy)
    else:
        groups = min(_groups_for(groups, settings * restarts, mesh, False, strategy), max(settings, restarts))
    if groups > 1:
        # deal the settings (each setting's restarts stay stacked together, so the results
        # equal a chunked sweep's, jnmf.checkpoint, to the bit), unless there are too few
        on_settings = settings >= groups
        local = restarts if on_settings else -(-restarts // groups)
    else:
        local = restarts if on_settings else _per_device(mesh, restarts)
    slots = _slots_for(slots, strategy, rule, R0, local)
    guard_map_limit()
    if groups > 1 and top_level_on_cpu(rule, problem, grid, states, opts):
        if on_settings:
            calls = [(part, states) for part in _group_parts(grid, groups)]
        else:
            calls = [(grid, part) for part in _group_parts(states, groups)]
        each = next(iter(calls[0][0].values())).shape[0]
        program = _for_rule(_grid_programs, rule, problem, *calls[0], opts, settings=each)
        static = (int(history_size), normalize, strategy, slots)
        calls = [(rule, problem, g, st, opts, *static) for g, st in calls]
        return _run_groups(program, calls, 0 if on_settings else 1, settings if on_settings else restarts)
    if mesh is None:
        program = _for_rule(_grid_programs, rule, problem, grid, states, opts, settings=settings)
        return program(rule, problem, grid, states, opts, int(history_size), normalize, strategy, slots)
    if on_settings:
        grid = _placed(_padded(grid, _size_on(mesh, settings)), mesh, _P(FITS_AXIS))
        states = _placed(states, mesh, _P())
    else:
        states = _placed(_padded(states, _size_on(mesh, restarts)), mesh, _P(FITS_AXIS))
        grid = _placed(grid, mesh, _P())
    rule, problem, opts = _placed((rule, problem, opts), mesh, _P())
    res = _spread_grid(
        rule, problem, grid, states, opts, int(history_size), normalize, strategy, mesh, on_settings, slots
    )
    return _gathered(res, np.s_[:settings] if on_settings else np.s_[:, :restarts])
