"""The one iteration driver (layer 4): a single ``lax.while_loop`` for every rule.

It owns step counting, the stopping rules, the status, the objective history and
the result.  Everything that may change between calls without changing shapes
(``max_iterations``, ``min_xstep``, ``tol``, ``rel_tol``, penalty values, rule
settings) is traced, so changing it never recompiles; only ``history_size`` and
``normalize`` are static.

Stopping rules (:class:`Stopping`; any may end the loop):

* rnnmf's: the largest absolute step of every factor is below ``min_xstep``
  (``0`` disables).  In float32 (and narrower) a step below ``4 eps max|X|`` is
  rounding noise, so there the threshold is ``max(min_xstep, 4 eps max|X|)``: rnnmf's
  absolute ``1e-9`` could otherwise never fire on data of order 1.  Float64 uses
  ``min_xstep`` exactly, as rnnmf;
* relative objective change: ``|f_{k-1} - f_k| <= tol |f_{k-1}|`` (``0`` disables); for a
  rule whose objective may rise by design (:meth:`~jnmf.rules.base.AlternatingRule.objective_may_rise`:
  extrapolated HALS, whose restarts raise it) only a decrease counts, ``0 <= f_{k-1} - f_k``,
  so a small rise at a restart is not taken for convergence;
* relative change of the factors (the stopping rule of the DAMC lecture notes,
  Xiamen University 2022):
  ``delta = sum_i ||X_i^{k} - X_i^{k-1}||_F / ||X_i^{k-1}||_F < rel_tol`` (``0`` disables);
* a target: the objective is at most ``target`` (``0`` disables), e.g. to time
  restarts to a given error;
* stable clusters (the default stopping rule of R's NMF package, Gaujoux & Seoighe
  2010, after Brunet et al. 2004): every :data:`LABEL_CHECK_EVERY` iterations the
  clustering of the samples (each to its dominant factor ``argmax_j R[j, i]``) is
  compared with the previous check; the fit stops once it was unchanged at more than
  ``stable_labels`` consecutive checks (R's ``stopconv``; ``0`` disables).  As R's
  ``nmf.stop.connectivity``, the first check (iteration 10) always counts as a change
  and clusterings are compared as partitions (a relabelling is no change), so
  ``stable_labels=40`` stops at the earliest at iteration 420, after the clusters held
  for 410 iterations;
* ``max_iterations`` reached, the rule reports it is stuck, or the objective or a
  factor stopped being finite.

Every result carries a :data:`STATUS` code: converged / max_iterations / stuck /
nonfinite.

A batch of fits (``iterate_impl(batched=True)``, used by :mod:`jnmf.batch`) runs in the
same one loop, all fits at once or through fewer ``slots`` that are refilled with
pending fits as fits finish (continuous batching, :func:`_slot_loop`).

A rule is any object with ``init``, ``step(problem, state) -> (state, StepInfo)``,
``objective(problem, state)``, ``factors(state)``, ``result_factors(state)`` and
``check(problem)`` (and ``rescale(state, mode)`` for ``normalize``): the NMF rules of
:mod:`jnmf.rules` and :class:`jnmf.giqpm.GIQPM`.  Optionally ``begin_fit(problem, state,
f0)`` (the start's objective handed to the state, once), ``in_loop(problem, state)``
and ``out_of_loop(state)``: what the loop carries beyond the state a result holds (KL's
``L R``), added at the start and after rescaling, dropped at the end.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from . import _validate as check
from . import progress
from .compile_cache import guard_map_limit
from .compile_options import program_options, programs_by_options
from .names import DEFAULT_MAX_ITERATIONS, DEFAULT_TOL

Normalize = Literal["max", "sum"] | None

# Status codes of a result, in the order they are tested.
STATUS = ("converged", "max_iterations", "stuck", "nonfinite")
CONVERGED, MAX_ITERATIONS, STUCK, NONFINITE = range(4)

# Iterations between checks of the clustering (stable_labels), as R's NMF (check.interval).
LABEL_CHECK_EVERY = 10

# Steps below this many ulps of the factor's largest entry are rounding noise.
_NOISE_ULPS = 4.0


@dataclasses.dataclass(frozen=True)
class Stopping:
    """The stopping settings shared by ``iterate``, the batch functions, ``fit``,
    ``sweep`` and the CLI (the rnnmf front doors use :data:`RNNMF_STOPPING`).

    Attributes:
        max_iterations: iteration cap (default 1000).
        tol: relative objective change ``|f_{k-1} - f_k| <= tol |f_{k-1}|`` (default
            1e-4, as scikit-learn; 0 disables).
        min_xstep: rnnmf's largest-step test (default 0, off; see the module docstring
            for float32).
        rel_tol: relative change of the factors (default 0, off).
        target: stop (converged) once the objective is at most this (default 0, off).
        stable_labels: stop (converged) once the samples' clustering (argmax over R's
            rows, checked every :data:`LABEL_CHECK_EVERY` iterations) was unchanged at
            more than this many consecutive checks: R's NMF ``stopconv`` (default 0,
            off; R's NMF uses 40, i.e. the clusters held for 410 iterations).
    """

    max_iterations: int = DEFAULT_MAX_ITERATIONS
    tol: float = DEFAULT_TOL
    min_xstep: float = 0.0
    rel_tol: float = 0.0
    target: float = 0.0
    stable_labels: int = 0

    def replace(self, **overrides) -> Stopping:
        """A copy with the given (non-None) settings replaced."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def validate(self) -> Stopping:
        """Check every setting on the host (ValueError naming it)."""
        check.positive_int("max_iterations", self.max_iterations, allow_zero=True)
        check.positive_int("stable_labels", self.stable_labels, allow_zero=True)
        for name in ("tol", "min_xstep", "rel_tol", "target"):
            check.nonneg_scalar(name, getattr(self, name))
        return self

    def traced(self, dtype) -> tuple:
        """The settings as arrays, so new values never recompile."""
        return (
            check.on_device(self.max_iterations, jnp.int32),
            check.on_device(self.min_xstep, dtype),
            check.on_device(self.tol, dtype),
            check.on_device(self.rel_tol, dtype),
            check.on_device(self.target, dtype),
            check.on_device(self.stable_labels, jnp.int32),
        )


DEFAULT_STOPPING = Stopping()
RNNMF_STOPPING = Stopping(max_iterations=1000, tol=0.0, min_xstep=1e-9)


def status_names(status) -> str | np.ndarray:
    """The name(s) of status code(s): a str for one fit, an array of str for a batch."""
    codes = np.asarray(status)
    if codes.ndim == 0:
        return STATUS[int(codes)]
    return np.array(STATUS, dtype=object)[codes]


class Result(eqx.Module):
    """The outcome of a fit.

    Attributes:
        factors: the final factors ((L, R) for NMF rules, (x,) for GIQPM).
        iterations: number of iterations taken.
        converged: whether a convergence test (not the iteration cap) stopped it.
        status: a code of :data:`STATUS` (``status_name`` gives its name).
        objective: the objective at the final iterate (computed from the residual).
        history: objective after iterations ``stride, 2 stride, ...`` (NaN-padded),
            a fixed-size buffer so ``max_iterations`` never changes shapes.  Rules
            compute it cheaply from the last half step, which is exact only to about
            ``eps * ||Y||^2`` (cancellation): below that floor, use ``objective``.
        history_stride: iterations between history entries.
        steps: the last largest absolute step of each factor.
        state: the final rule state.
    """

    factors: tuple
    iterations: Array
    converged: Array
    status: Array
    objective: Array
    history: Array
    history_stride: Array
    steps: Array
    state: Any

    @property
    def status_name(self):
        return status_names(self.status)

    @property
    def L(self) -> Array:
        return self.factors[0]

    @property
    def R(self) -> Array:
        return self.factors[1]

    @property
    def x(self) -> Array:
        return self.factors[0]

    @property
    def Lstep(self) -> Array:
        return self.steps[..., 0]

    @property
    def Rstep(self) -> Array:
        return self.steps[..., 1]


def partition_labels(labels: Array, clusters: int) -> Array:
    """Canonical labels of a clustering (``labels`` in ``[0, clusters)``): each sample
    gets the index of the first sample in its cluster, so two label vectors are equal
    exactly when they define the same partition (R's NMF compares connectivity
    matrices; this is that test in O(clusters n) instead of O(n^2))."""
    labels = labels.astype(jnp.int32)
    clusters = jnp.arange(clusters, dtype=jnp.int32)
    first = jnp.argmax(labels[None, :] == clusters[:, None], axis=1).astype(jnp.int32)
    return first[labels]


def _relative_change(new: tuple, old: tuple) -> Array:
    total = 0.0
    for a, b in zip(new, old, strict=True):
        nb = jnp.sqrt(jnp.sum(b * b))
        total = total + jnp.sqrt(jnp.sum((a - b) ** 2)) / jnp.where(nb > 0, nb, 1.0)
    return total


def _report_progress(k: Array, f: Array, done: Array) -> None:
    """Send the loop's position to the host: over a batch, the furthest iteration
    count, the best finite objective and how many fits have finished, so the host
    receives three scalars however many fits run (ordered: reports arrive in loop order)."""
    best = jnp.min(jnp.where(jnp.isfinite(f), f, jnp.inf))
    jax.debug.callback(progress.report, jnp.max(k), best, jnp.sum(done), ordered=True)


def iterate_impl(
    rule,
    problem,
    state,
    max_iterations,
    min_xstep,
    tol,
    rel_tol,
    target,
    stable_labels,
    history_size,
    normalize,
    batched: bool = False,
    batched_step=None,
    progress_every=None,
    slots: int | None = None,
) -> Result:
    """The loop itself, unjitted.

    With ``batched=True`` every leaf of ``state`` has a leading fit axis and the one
    loop advances all fits together (``vmap`` of the step); it runs while any fit is
    unfinished and freezes finished ones.  Unlike ``vmap`` of the whole loop, the
    freezing select is skipped (``lax.cond``) while no fit has finished, which saves
    full passes over every factor per iteration: with many restarts of a large
    problem the factors do not fit in cache, so those passes cost as much as the
    small products.  ``batched_step(problem, states, active)`` computes the step of every
    fit (default: ``vmap`` of ``rule.step``); the batch layer passes its own to choose how
    the fits' work is batched (jnmf.batch).  ``active`` is False for the fits that are done
    (finished, or a retired slot): their steps are discarded by the freeze, so a step may
    skip them (the "hybrid" strategy's loop of half steps over the active fits does,
    :func:`jnmf.batch._loop_over_active`).

    ``slots`` (static; batched only): run the B fits through this many slots, refilling
    a slot with the next pending fit as soon as its fit is done (continuous batching, see
    :func:`_slot_loop`); None, or ``slots >= B``, runs all fits at once as above.  The
    results are the same either way: each fit's iterates depend only on its own start.

    ``progress_every`` (None, or a traced integer stride) reports progress to the host
    (:func:`jnmf.progress.report`) at the start and every ``progress_every`` iterations,
    from inside the loop.  None is static and compiles exactly the loop without reports.
    With slots, the iteration reported is the loop's own count (every fit's count is at
    most that), the objective the best over the fits in the slots, and the finished
    count the fits written out so far.
    """
    per_fit = (lambda f: jax.vmap(f)) if batched else (lambda f: f)
    if hasattr(problem, "prepared"):
        problem = problem.prepared()  # derived data terms, once per fit
    # what the loop carries beyond the public state (KL: L R), added here, dropped at the end
    in_loop = getattr(rule, "in_loop", lambda p, s: s)
    out_of_loop = getattr(rule, "out_of_loop", lambda s: s)
    state = per_fit(lambda s: in_loop(problem, s))(state)
    factors0 = rule.factors(state)
    dtype = factors0[0].dtype
    noise_floor = jnp.finfo(dtype).eps > 1e-10  # static: float32 and narrower
    # The first and last objectives (a pass over the data each) run fit by fit even in a
    # batched loop: vmapped, a data operator's row-blocked loss would hold a block per fit.
    # The first is the rule's cheap form where it has one (AlternatingRule.start_objective:
    # one product with Y, the form every later iteration's objective takes), the last is
    # always recomputed from the residual.
    each_fit = (lambda f: lambda s: jax.lax.map(f, s)) if batched else (lambda f: f)
    start_objective = getattr(rule, "start_objective", rule.objective)
    f0 = each_fit(lambda s: start_objective(problem, s).astype(dtype))(state)
    # a rule whose state keeps the start's objective (extrapolated HALS) takes this one
    begin_fit = getattr(rule, "begin_fit", None)
    if begin_fit is not None:
        state = per_fit(lambda s, f: begin_fit(problem, s, f))(state, f0)
    lead = f0.shape  # () or (batch,)
    stride = jnp.maximum(1, -(-max_iterations // history_size)).astype(jnp.int32)
    # A rule whose objective costs a pass over the data (KL, beta, masked losses) gets it
    # evaluated only where it is used; the step's own value is then dead code for XLA.
    lazy_objective = bool(getattr(rule, "costly_objective", lambda p: False)(problem))
    may_rise = bool(getattr(rule, "objective_may_rise", lambda p: False)(problem))

    def labels_of(state):
        R = rule.factors(state)[-1]
        if R.ndim < 2:  # a vector problem (GIQPM): no samples to cluster
            return jnp.zeros((1,), jnp.int32)
        return partition_labels(jnp.argmax(R, axis=0), R.shape[0])

    def halted(info):
        """Whether the step found nothing to do (not counted; the run ends converged)."""
        return jnp.zeros((), bool) if info.halted is None else info.halted

    def counted(k, state, info):
        """One fit's count and state after a step (columns rescaled with ``normalize``)."""
        if normalize is not None:
            state = in_loop(problem, rule.rescale(state, normalize))
        return k + jnp.where(halted(info), 0, 1).astype(k.dtype), state

    def needs(k):
        """Whether a fit at count ``k`` needs its objective (when the rule's is costly) and
        whether it checks its clustering."""
        record = (k % stride) == 0
        need = record | (tol > 0) | (target > 0) | (k >= max_iterations) | (progress_every is not None)
        return need, (stable_labels > 0) & (k % LABEL_CHECK_EVERY == 0)

    def guarded_values(k, state, info, f, labels, each=lambda g: g, when=None):
        """The count and state after the step, and the values only some iterations need (a
        costly objective, the clustering), each computed under a ``lax.cond``.

        One fit: ``each`` and ``when`` are the identity.  A batch (``each=jax.vmap``,
        ``when=jnp.any``): vmapped, each fit's ``lax.cond`` would become a select that
        evaluates both branches for every fit at every iteration (the predicates depend on
        each fit's own count); instead one ``lax.cond`` per value asks whether ANY fit
        needs it, computes it for all fits (vmapped, as before) and keeps it where needed:
        the same values, and iterations in which no fit needs one pay nothing for it.
        """
        when = when or (lambda pred: pred)
        k, state = each(counted)(k, state, info)
        need, check_labels = each(needs)(k)

        def kept(pred, fresh, old):
            return jnp.where(pred.reshape(pred.shape + (1,) * (old.ndim - pred.ndim)), fresh, old)

        if lazy_objective:
            objective = each(lambda s: rule.objective(problem, s).astype(dtype))
            f_new = jax.lax.cond(when(need), lambda: kept(need, objective(state), f), lambda: f)
        else:
            f_new = info.objective.astype(dtype)
        new_labels = jax.lax.cond(
            when(check_labels), lambda: kept(check_labels, each(labels_of)(state), labels), lambda: labels
        )
        return k, state, f_new, new_labels

    def bookkeeping(k, old, state, info, f, f_new, history, labels, new_labels, since):
        """The stopping tests of one fit after one step from ``old`` to ``state`` (``k``,
        ``state``, ``f_new`` and ``new_labels`` from :func:`guarded_values`)."""
        record = (k % stride) == 0
        slot = jnp.clip(k // stride - 1, 0, history_size - 1)
        history = history.at[slot].set(jnp.where(record, f_new, history[slot]))
        steps = info.steps.astype(dtype)
        threshold = min_xstep
        if noise_floor:
            # a pass over the factors: only when the step test is on (min_xstep is not
            # batched, so this stays a cond under vmap)
            def floor():
                sizes = jnp.stack([jnp.max(jnp.abs(x)) for x in rule.factors(state)]).astype(dtype)
                return jnp.maximum(min_xstep, _NOISE_ULPS * jnp.finfo(dtype).eps * sizes)

            threshold = jax.lax.cond(min_xstep > 0, floor, lambda: jnp.zeros(len(steps), dtype))
        converged = jnp.all(steps < threshold)
        small_change = jnp.abs(f - f_new) <= tol * jnp.abs(f)
        if may_rise:  # static: only a small decrease is convergence, never a rise
            small_change &= f_new <= f
        converged |= (tol > 0) & small_change
        converged |= (target > 0) & (f_new <= target)
        check_labels = needs(k)[1]
        changed = jnp.any(new_labels != labels)
        since = jnp.where(changed, k, since)
        # R's nmf.stop.connectivity: more than stable_labels unchanged checks in a row
        converged |= check_labels & (k - since > LABEL_CHECK_EVERY * stable_labels)
        labels = new_labels
        # the relative change costs passes over the factors: only when asked for
        rel = jax.lax.cond(
            rel_tol > 0,
            lambda: _relative_change(rule.factors(state), rule.factors(old)),
            lambda: jnp.asarray(jnp.inf, dtype),
        )
        converged |= rel < rel_tol
        converged |= halted(info)
        if info.converged is not None:  # the rule's own test (static: the rule has one)
            converged |= info.converged
        finite = jnp.isfinite(f_new) & jnp.all(jnp.isfinite(steps))
        converged &= finite
        stuck = info.stuck & finite & ~converged
        status = jnp.select(
            [~finite, converged, stuck], [NONFINITE, CONVERGED, STUCK], MAX_ITERATIONS
        ).astype(jnp.int32)
        done = converged | (k >= max_iterations) | stuck | ~finite
        return k, state, f_new, history, labels, since, steps, converged, status, done

    if not batched:

        def advance(k, state, f, history, labels, since, done):
            del done
            new, info = rule.step(problem, state)
            k_new, new, f_new, new_labels = guarded_values(k, new, info, f, labels)
            return bookkeeping(k_new, state, new, info, f, f_new, history, labels, new_labels, since)
    else:
        step_all = batched_step or (lambda p, states, active: jax.vmap(lambda s: rule.step(p, s))(states))

        def advance(k, states, f, history, labels, since, done):
            new, infos = step_all(problem, states, ~done)
            k_new, new, f_new, labels_new = guarded_values(k, new, infos, f, labels, jax.vmap, jnp.any)
            tests = jax.vmap(bookkeeping)
            return tests(k_new, states, new, infos, f, f_new, history, labels, labels_new, since)

    def cond(carry):
        return jnp.any(~carry[-1])

    def step_and_freeze(carry):
        stepped = advance(*carry[:6], carry[-1])
        if not batched:
            return stepped
        done = carry[-1]

        def freeze():
            return jax.tree.map(
                lambda a, b: jnp.where(done.reshape(done.shape + (1,) * (a.ndim - 1)), a, b),
                carry,
                stepped,
            )

        return jax.lax.cond(jnp.any(done), freeze, lambda: stepped)

    def body(carry):
        new = step_and_freeze(carry)
        if progress_every is not None:
            k_new, f_new, done_new = new[0], new[2], new[-1]
            jax.lax.cond(
                jnp.max(k_new) % progress_every == 0,
                lambda: _report_progress(k_new, f_new, done_new),
                lambda: None,
            )
        return new

    carry = (
        jnp.zeros(lead, jnp.int32),
        state,
        f0,
        jnp.full(lead + (history_size,), jnp.nan, dtype),
        per_fit(labels_of)(state),
        # the last change of the clustering: the first check always counts as one (R
        # compares it with an empty connectivity matrix)
        jnp.full(lead, LABEL_CHECK_EVERY, jnp.int32),
        jnp.full(lead + (len(factors0),), jnp.inf, dtype),
        jnp.zeros(lead, bool),
        jnp.full(lead, MAX_ITERATIONS, jnp.int32),
        jnp.broadcast_to(max_iterations <= 0, lead),
    )
    if progress_every is not None:
        _report_progress(carry[0], f0, carry[-1])  # iteration 0: the compiled loop starts
    if batched and slots is not None and slots < lead[0]:
        carry = _slot_loop(step_and_freeze, carry, slots, progress_every)
    else:
        carry = jax.lax.while_loop(cond, body, carry)
    k, state, _, history, _, _, steps, converged, status, _ = carry
    # The per-iteration objective (history, tol test) is the cheap form of
    # quadratic.objective_after_R_step, exact only to ~eps ||Y||^2; the reported
    # final objective is recomputed once, from the residual.
    f = each_fit(lambda s: rule.objective(problem, s).astype(dtype))(state)
    factors = per_fit(rule.result_factors)(state)
    state = per_fit(out_of_loop)(state)
    # a final objective that overflows (the cheap one did not) is non-finite too
    status = jnp.where(jnp.isfinite(f), status, NONFINITE).astype(jnp.int32)
    converged = converged & (status == CONVERGED)
    return Result(factors, k, converged, status, f, history, jnp.broadcast_to(stride, lead), steps, state)


def _slot_loop(step, fits, slots: int, progress_every):
    """Continuous batching: the B fits of ``fits`` (the loop carry of every fit, leading
    axis B) run through ``slots`` slots, and the final carry of every fit is returned.

    One ``lax.while_loop`` advances the S slots together (``step``: one batched step,
    done slots frozen).  When a slot's fit is done, its carry is written over that fit's
    entry of ``fits`` and the slot is reloaded with the next pending fit's starting
    carry, read from the same buffer: the entries of fits not yet started still hold
    their starts, and the ones written over are those of fits already loaded, so one
    buffer of B carries serves as both.  A slot with no pending fit left is retired
    (frozen).  The write and reload run under ``lax.cond``, so iterations in which no fit
    finishes pay nothing for them.  The loop ends when every fit has been written.

    Why: one batched loop over all B fits runs until the slowest stops, and the frozen
    fits keep costing their step; with slots, a finished fit's place is taken by a
    pending one, so the loop runs about ``total iterations / S`` times instead of
    ``max iterations`` (experiments/README.md, "bench_strategy.py, bench_restarts.py").
    """
    count = fits[0].shape[0]
    slot_carry = jax.tree.map(lambda a: a[:slots], fits)
    # the fit each slot holds; ``count`` (out of range) marks a retired slot
    fit_of_slot = jnp.arange(slots, dtype=jnp.int32)
    loaded = jnp.asarray(slots, jnp.int32)  # fits loaded so far (0 .. loaded-1)

    def refill(finished, slot_carry, fit_of_slot, loaded, fits):
        # written at its fit's index; the others at the sentinel ``count``, dropped
        where = jnp.where(finished, fit_of_slot, count)
        fits = jax.tree.map(lambda b, s: b.at[where].set(s, mode="drop"), fits, slot_carry)
        # the finished slots take the next pending fits, in slot order
        pending = loaded + jnp.cumsum(finished.astype(jnp.int32)) - 1
        load = finished & (pending < count)
        start = jax.tree.map(lambda b: b[jnp.clip(pending, 0, count - 1)], fits)
        slot_carry = jax.tree.map(
            lambda s, b: jnp.where(load.reshape(load.shape + (1,) * (s.ndim - 1)), b, s), slot_carry, start
        )
        fit_of_slot = jnp.where(finished, jnp.where(load, pending, count), fit_of_slot)
        loaded = loaded + jnp.sum(load).astype(jnp.int32)
        return slot_carry, fit_of_slot, loaded, fits

    def cond(carry):
        return jnp.any(carry[2] < count)

    def body(carry):
        t, slot_carry, fit_of_slot, loaded, fits = carry
        slot_carry = step(slot_carry)
        finished = slot_carry[-1] & (fit_of_slot < count)
        slot_carry, fit_of_slot, loaded, fits = jax.lax.cond(
            jnp.any(finished),
            refill,
            lambda finished, *c: c,
            finished,
            slot_carry,
            fit_of_slot,
            loaded,
            fits,
        )
        t = t + 1
        if progress_every is not None:
            active = fit_of_slot < count
            written = loaded - jnp.sum(active)
            f = jnp.where(active, slot_carry[2], jnp.inf)
            jax.lax.cond(
                t % progress_every == 0,
                lambda: _report_progress(t, f, written),
                lambda: None,
            )
        return t, slot_carry, fit_of_slot, loaded, fits

    carry = (jnp.zeros((), jnp.int32), slot_carry, fit_of_slot, loaded, fits)
    return jax.lax.while_loop(cond, body, carry)[-1]


# the loop program, once per set of compiler options (jnmf.compile_options.loop_options)
_iterate_programs = programs_by_options(iterate_impl, eqx.filter_jit)
_iterate = _iterate_programs(None)  # XLA's default options


def _iterate_for(rule, problem, state):
    """The loop program for one fit, compiled with
    :func:`jnmf.compile_options.program_options` (the rule's options when the call is top
    level on XLA:CPU)."""
    factors = rule.factors(state) if hasattr(rule, "factors") else ()
    R = factors[1] if len(factors) == 2 and factors[1].ndim == 2 else None
    return _iterate_programs(program_options(rule, problem, R, 1, state))


def check_static_options(history_size, normalize) -> None:
    if normalize not in (None, "max", "sum"):
        raise ValueError(f"normalize must be None, 'max' or 'sum'; got {normalize!r}")
    check.positive_int("history_size", history_size)


def iterate(
    rule,
    problem,
    state,
    *,
    stopping: Stopping | None = None,
    max_iterations: int | None = None,
    min_xstep: float | None = None,
    tol: float | None = None,
    rel_tol: float | None = None,
    history_size: int = 1000,
    normalize: Normalize = None,
) -> Result:
    """Run ``rule`` from ``state`` until a stopping rule fires (see module docstring).

    Jittable and vmappable: ``jax.vmap`` over starting states or problem leaves
    runs all fits in one loop (finished ones are frozen by the batched loop).

    Args:
        rule: an NMF rule (:mod:`jnmf.rules`) or :class:`jnmf.giqpm.GIQPM`.
        problem: the :class:`~jnmf.problem.Problem` (or :class:`~jnmf.quadratic.VectorQP`).
        state: the rule's starting state (``rule.init(problem, L0, R0)``).
        stopping: the stopping settings (default :data:`DEFAULT_STOPPING`); the
            keywords ``max_iterations``, ``min_xstep``, ``tol``, ``rel_tol`` override it.
        history_size: length of the objective history buffer (static).
        normalize: ``"max"``/``"sum"`` rescale L's columns after every iteration (static).

    Returns:
        A :class:`Result` with the factors, iteration count, status and history.

    Raises:
        ValueError: a bad setting, or a problem the rule cannot solve (``rule.check``).
    """
    check_static_options(history_size, normalize)
    stop = (stopping or DEFAULT_STOPPING).replace(
        max_iterations=max_iterations, min_xstep=min_xstep, tol=tol, rel_tol=rel_tol
    )
    if not any(check.is_traced(x) for x in jax.tree.leaves(dataclasses.astuple(stop))):
        stop.validate()
    rule.check(problem)
    dtype = rule.factors(state)[0].dtype
    guard_map_limit(problem, state)
    program = _iterate_for(rule, problem, state)
    return program(rule, problem, state, *stop.traced(dtype), int(history_size), normalize)
