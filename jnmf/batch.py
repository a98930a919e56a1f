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
  loop runs for the slowest fit and pays a select per pass.
* ``"map"``: ``lax.map`` over the fits, each with its own loop, in one program.  It
  shares no product with Y, but each fit stops on its own and runs its unbatched
  code.

:func:`batching_strategy` picks one per rule and backend from measurements
(experiments/bench_batching.py); every function takes ``strategy=`` to override it.
On GPU/TPU everything is batched (``"vmap"``).

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

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from . import _validate as check
from .compile_cache import release_programs_near_map_limit
from .driver import DEFAULT_STOPPING, Result, Stopping, check_static_options, iterate_impl
from .problem import Problem, check_replacements
from .rules.base import AlternatingRule, alternate

STRATEGIES = ("vmap", "hybrid", "map")

# The strategy of each method on CPU, measured with experiments/bench_batching.py on ORL
# faces (10304 x 400, rank 25; time of 32 restarts x 30 iterations, ahals: vmap 6.1 s,
# map 3.4 s, a Python loop 3.3 s; 8 restarts x 15 iterations: kl vmap 1.37 s, map 0.83 s;
# mu 0.27 / 0.29 s, au 0.30 / 0.31 s, pg 0.31 / 0.29 s).  With 2 cores a single fit already
# runs its products with Y near the matmul rate, so stacking fits gains little, while
# batched column sweeps, pivoting and m x n quotients lose.  Unlisted rules: "vmap".
_CPU_STRATEGY: dict[str, str] = {"hals": "map", "anls": "map", "kl": "map"}


def batching_strategy(rule, backend: str | None = None, *, uneven_stops: bool = False, problem=None) -> str:
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
        return _CPU_STRATEGY.get(getattr(rule, "method_name", None), "vmap")
    return "vmap"


def _loop_over_fits(f):
    """``f`` applied fit by fit (``lax.map`` over the leading axis of its arguments)."""
    return lambda *args: jax.lax.map(lambda a: f(*a), args)


def _run(rule, problem, states, opts, history_size, normalize, strategy, progress_every=None) -> Result:
    if strategy == "map":
        return jax.lax.map(
            lambda s: iterate_impl(
                rule, problem, s, *opts, history_size, normalize, progress_every=progress_every
            ),
            states,
        )
    step = None
    if strategy == "hybrid" and isinstance(rule, AlternatingRule):
        step = lambda p, s: alternate(rule, p, s, shared=jax.vmap, solo=_loop_over_fits)
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
    )


@eqx.filter_jit
def _restarts(rule, problem, states, opts, history_size, normalize, strategy, progress_every) -> Result:
    return _run(rule, problem, states, opts, history_size, normalize, strategy, progress_every)


def _grid_impl(rule, problem, grid, states, opts, history_size, normalize, strategy) -> Result:
    def one_setting(values):
        return _run(rule, problem.replace(**values), states, opts, history_size, normalize, strategy)

    if strategy == "vmap":
        return jax.vmap(one_setting)(grid)
    return jax.lax.map(one_setting, grid)


_grid = eqx.filter_jit(_grid_impl)


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
def _spread_restarts(rule, problem, states, opts, history_size, normalize, strategy, mesh) -> Result:
    def run(rule, problem, states, opts):
        return _run(rule, problem, states, opts, history_size, normalize, strategy)

    split = _P(FITS_AXIS)
    return _on_fits(run, mesh, (_P(), _P(), split, _P()), split, rule, problem, states, opts)


@eqx.filter_jit
def _spread_grid(rule, problem, grid, states, opts, history_size, normalize, strategy, mesh, on_settings):
    def run(rule, problem, grid, states, opts):
        return _grid_impl(rule, problem, grid, states, opts, history_size, normalize, strategy)

    split, whole = _P(FITS_AXIS), _P()
    specs = (whole, whole, split, whole, whole) if on_settings else (whole, whole, whole, split, whole)
    out_spec = split if on_settings else _P(None, FITS_AXIS)
    return _on_fits(run, mesh, specs, out_spec, rule, problem, grid, states, opts)


def _size_on(mesh: jax.sharding.Mesh, count: int) -> int:
    """``count`` rounded up to a multiple of the mesh's devices."""
    devices = mesh.devices.size
    return -(-count // devices) * devices


def _options(rule, stopping, overrides, history_size, normalize, strategy, dtype, problem=None):
    """The validated run options (traced) and the batching strategy."""
    check_static_options(history_size, normalize)
    stop = (stopping or DEFAULT_STOPPING).replace(**overrides).validate()
    strategy = strategy or batching_strategy(rule, problem=problem)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}; got {strategy!r}")
    return stop.traced(dtype), strategy


def _prepare(rule, problem, L0, R0, stopping, overrides, history_size, normalize, strategy):
    opts, strategy = _options(rule, stopping, overrides, history_size, normalize, strategy, L0.dtype, problem)
    if L0.ndim != 3 or R0.ndim != 3 or L0.shape[0] != R0.shape[0]:
        raise ValueError(
            f"L0 and R0 must be stacks of starting factors with one leading axis, got shapes "
            f"{L0.shape} and {R0.shape}"
        )
    states = jax.vmap(lambda L, R: rule.init(problem, L, R))(L0, R0)
    return states, opts, strategy


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
        mesh: a 1-D mesh with the axis ``"fits"`` (:func:`check_fits_mesh`) to spread the
            restarts over its devices: the batch is padded to a multiple of the device count
            (with copies of the last start, dropped afterwards), split over the devices, and
            each device runs the one-device program (``strategy`` included) on its slice
            with the problem (Y) replicated; the program has no collective.  The results
            come back on the default device, as from a one-device run.  Not with
            ``progress_every``.

    Returns:
        A :class:`~jnmf.driver.Result` whose leaves have a leading restart axis.

    Raises:
        ValueError: a bad ``mesh`` (before compiling), or bad shapes or settings.
    """
    if mesh is not None:
        check_fits_mesh("mesh", mesh)
        if progress_every is not None:
            raise ValueError("progress_every (progress reports) is not supported with mesh (spread fits)")
    rule.check(problem)
    overrides = dict(max_iterations=max_iterations, min_xstep=min_xstep, tol=tol, rel_tol=rel_tol)
    states, opts, strategy = _prepare(
        rule, problem, L0, R0, stopping, overrides, history_size, normalize, strategy
    )
    release_programs_near_map_limit()
    if mesh is not None:
        count = L0.shape[0]
        states = _placed(_padded(states, _size_on(mesh, count)), mesh, _P(FITS_AXIS))
        rule, problem, opts = _placed((rule, problem, opts), mesh, _P())
        res = _spread_restarts(rule, problem, states, opts, int(history_size), normalize, strategy, mesh)
        return _gathered(res, np.s_[:count])
    every = None
    if progress_every is not None:
        every = jnp.asarray(check.positive_int("progress_every", progress_every), jnp.int32)
    return _restarts(rule, problem, states, opts, int(history_size), normalize, strategy, every)


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
) -> Result:
    """:func:`run_restarts` from a batch of rule states (e.g. ``Result.state`` of an earlier
    call), so a fit can run in chunks with tests between them; the rule's auxiliary state
    (annealed steps, optimizer moments, ``L R``) carries over, so chunks of ``n`` iterations
    give exactly the iterates of one longer run (with the convergence tests off).

    Args:
        rule, problem, stopping, ...: as for :func:`run_restarts`.
        states: the rule's states with a leading restart axis.

    Returns:
        A :class:`~jnmf.driver.Result` whose leaves have a leading restart axis.
    """
    rule.check(problem)
    overrides = dict(max_iterations=max_iterations, min_xstep=min_xstep, tol=tol, rel_tol=rel_tol)
    dtype = rule.factors(states)[0].dtype
    opts, strategy = _options(rule, stopping, overrides, history_size, normalize, strategy, dtype, problem)
    release_programs_near_map_limit()
    return _restarts(rule, problem, states, opts, int(history_size), normalize, strategy, None)


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

    Returns:
        A :class:`~jnmf.driver.Result` whose leaves have leading axes (G, restarts).

    Raises:
        ValueError: a bad ``mesh`` or grid (before compiling), or bad shapes or settings.
    """
    if mesh is not None:
        check_fits_mesh("mesh", mesh)
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
    release_programs_near_map_limit()
    if mesh is None:
        return _grid(rule, problem, grid, states, opts, int(history_size), normalize, strategy)
    settings, restarts = next(iter(grid.values())).shape[0], L0.shape[0]
    padded_settings = (_size_on(mesh, settings) - settings) * restarts
    on_settings = padded_settings <= (_size_on(mesh, restarts) - restarts) * settings
    if on_settings:
        grid = _placed(_padded(grid, _size_on(mesh, settings)), mesh, _P(FITS_AXIS))
        states = _placed(states, mesh, _P())
    else:
        states = _placed(_padded(states, _size_on(mesh, restarts)), mesh, _P(FITS_AXIS))
        grid = _placed(grid, mesh, _P())
    rule, problem, opts = _placed((rule, problem, opts), mesh, _P())
    res = _spread_grid(
        rule, problem, grid, states, opts, int(history_size), normalize, strategy, mesh, on_settings
    )
    return _gathered(res, np.s_[:settings] if on_settings else np.s_[:, :restarts])
