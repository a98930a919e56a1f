"""``jnmf.fit`` and ``jnmf.sweep``: the entry points users reach for (layer 6).

``fit`` factors Y at a given rank with any rule, from any initialization, with
N restarts run as ONE compiled program, and returns the best fit by objective
together with every restart's summary (and, on request, every restart's factors).
``sweep`` does the same over a grid of penalty values x restarts.

Both are scale-robust: the data are divided by their largest entry, the penalty
values are transformed along (:meth:`jnmf.problem.Problem.scaled`), and the
factors are mapped back, so ``fit(c Y)`` returns ``c`` times the product of
``fit(Y)`` for any c from 1e-30 to 1e30, in float32, for every method, and
penalties keep their meaning.  Rule settings in absolute units (MU's ``epsilon``,
AU's ``zero_tolerance``, KL's ``epsilon``, an optax learning rate) therefore apply to
the scaled data, whose largest entry is 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from . import _validate as check
from .batch import FITS_AXIS, batching_strategy, check_fits_mesh, run_grid, run_restarts
from .checkpoint import checkpoint_directory, describe, run_checkpointed
from .compile_options import ONCE_OPTIONS, top_level_program
from .data import (
    DataOperator,
    RowShardedData,
    RowShardedSparse,
    check_mesh,
    dense_operator,
    is_sparse_input,
    mesh_of,
    row_sharding,
    sharded_operator,
    sharded_sparse,
    sparse_operator,
)
from .driver import CONVERGED, NONFINITE, STATUS, Stopping, status_names
from .init import INITIALIZERS, initialize
from .problem import (
    REPLACEABLE,
    Problem,
    build_problem,
    check_penalty_keywords,
    check_replacements,
    scale_factors,
)
from .progress import FitMonitor
from .rules import DEFAULT_METHOD, METHODS, AlternatingRule, make_rule

if TYPE_CHECKING:  # an annotation only: optax is imported on use (jnmf.rules)
    import optax

__all__ = [
    "ConvergenceWarning",
    "FitResult",
    "SweepResult",
    "fit",
    "sweep",
    "DEFAULT_METHOD",
    "METHODS",
    "make_rule",
]


class ConvergenceWarning(UserWarning):
    """The returned fit stopped at the iteration cap, not on a convergence test."""


class FitResult(eqx.Module):
    """The best of ``restarts`` fits, plus every restart's summary.

    Objectives are in the user's units (float64 NumPy values: data near 1e30 have
    objectives near 1e60, beyond float32).

    Attributes:
        L, R: the best factors (``m x k``, ``k x n``).
        objective: the best restart's objective (eq. 3, or KL for ``method="kl"``),
            recomputed from the residual.
        iterations, converged, status, history, history_stride: of the best restart
            (``status`` is a code of :data:`jnmf.driver.STATUS`; see ``status_name``).
        objectives, all_iterations, all_converged, all_status: per restart.
        best: index of the best restart.
        all_L, all_R: every restart's factors (``restarts x m x k``, ``restarts x k x n``)
            with ``return_all=True``, else None.
        settings: how the fit was made (method, rank, penalties, stopping, init, restarts,
            key, ...), JSON-serializable; saved by :meth:`save`.
    """

    L: Array
    R: Array
    objective: np.ndarray
    iterations: Array
    converged: Array
    status: Array
    history: np.ndarray
    history_stride: Array
    objectives: np.ndarray
    all_iterations: Array
    all_converged: Array
    all_status: Array
    best: int = eqx.field(static=True)
    all_L: Array | None = None
    all_R: Array | None = None
    settings: dict = eqx.field(static=True, default_factory=dict)

    @property
    def status_name(self) -> str:
        """The best restart's status: converged / max_iterations / stuck / nonfinite."""
        return status_names(self.status)

    def save(self, path: str | os.PathLike) -> Path:
        """Write this result to one ``.npz`` file (no pickle); read it back with :func:`jnmf.load`.

        Args:
            path: the file to write (``.npz`` is appended when it has another suffix;
                :func:`jnmf.load` accepts the same name).

        Returns:
            The path written.
        """
        from .result_files import save

        return save(self, path)

    def gathered(self) -> FitResult:
        """This result with every array whole on the host of every process.

        A fit on a mesh that spans several processes returns ``L`` (and ``all_L``) split by
        rows over the processes' devices (each process reads its own rows with
        :func:`jnmf.data.local_rows`); this all-gathers them
        (``jax.experimental.multihost_utils.process_allgather``), so it is a collective:
        every process must call it.  On one process it only copies to the host.

        Returns:
            A :class:`FitResult` of NumPy arrays (``save`` works on it).
        """
        from .data import gathered

        return jax.tree.map(gathered, self)


def seed_key(seed: int) -> Array:
    """``jax.random.key(seed)``, built on the host for the default threefry keys and a
    seed in ``[0, 2^31)``: its key data are ``[0, seed]`` (JAX's ``threefry_seed``), and
    ``jax.random.key`` would compile two one-op programs (the seed's conversion and
    ``_threefry_seed``) in a cold process.  Other seeds and key kinds: ``jax.random.key``.

    Args:
        seed: an integer seed.

    Returns:
        The key ``jax.random.key(seed)`` gives.
    """
    if 0 <= seed < 2**31 and jax.config.jax_default_prng_impl == "threefry2x32":
        # one key per seed (a key is immutable; ~0.1 ms to build, paid by every fit)
        make = lambda: jax.random.wrap_key_data(jax.device_put(np.array([0, seed], np.uint32)))
        return check.device_cached(_SEED_KEYS, seed, make, 256)
    return jax.random.key(seed)


_SEED_KEYS: dict = {}


def as_key(key) -> Array:
    """A JAX key from None (seed 0), an int seed, a JAX key or a NumPy Generator."""
    if key is None:
        return seed_key(0)
    if isinstance(key, np.random.Generator):
        return seed_key(int(key.integers(0, 2**31 - 1)))
    if isinstance(key, int | np.integer) and not isinstance(key, bool):
        return seed_key(int(key))
    if isinstance(key, jax.Array) and (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or (key.dtype == jnp.uint32 and key.shape == (2,))
    ):
        return key
    raise ValueError(f"key must be None, an int seed, a JAX PRNG key or a numpy Generator; got {key!r}")


def data_scale(Y: np.ndarray) -> float:
    """max(Y), or 1 for an all-zero Y: ``fit`` works on ``Y / data_scale(Y)``.

    Dividing by max(Y) itself (not a nearby power of 2, which would be exact) makes
    the scaled data of ``Y`` and ``c Y`` equal up to rounding, so even rules that are
    not scale-equivariant (an optax optimizer's absolute learning rate) give ``c``
    times the same fit.
    """
    if isinstance(Y, DataOperator):
        top = float(Y.maximum())
    else:
        top = check.checked_maximum(Y)  # the value checks' max, if they just checked Y
        if top is None:
            top = float(np.max(Y)) if Y.size else 0.0
    return top if top > 0 else 1.0


def _user_start(name: str, X, shape: tuple[int, int], restarts: int, dtype) -> Array:
    """A user's starting factor, one (``shape``) or a stack of ``restarts`` (one per restart)."""
    arr = np.asarray(X) if not check.is_traced(X) else X
    if arr.ndim == 3:
        if arr.shape != (restarts, *shape):
            raise ValueError(
                f"{name} as a stack of starts must have shape {(restarts, *shape)} (restarts, ...), "
                f"got {tuple(arr.shape)}"
            )
        for i in range(restarts):
            check.matrix(f"{name}[{i}]", arr[i])
        return jnp.asarray(arr, dtype)
    arr = check.matrix(name, arr)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(arr.shape)}")
    if restarts == 1 and not check.is_traced(arr):  # no one-op broadcast program to dispatch
        return check.on_device(np.asarray(arr)[None], dtype)
    return jnp.broadcast_to(jnp.asarray(arr, dtype), (restarts, *shape))


def starting_points(Y, rank: int, init, restarts: int, key) -> tuple[Array, Array]:
    """``restarts`` starting pairs, stacked: from an initializer name, or a user pair
    ``(L0, R0)``: one start for every restart, or stacks of shapes ``(restarts, m, k)`` and
    ``(restarts, k, n)`` (e.g. another tool's seeded replicates).

    ``Y`` is the data (an array or a :class:`~jnmf.data.DataOperator`): random starts use
    only its shape, mean and maximum."""
    if isinstance(init, tuple | list):
        L0, R0 = init
        m, n = Y.shape
        lr = np.shape(L0)[-1] if np.ndim(L0) >= 2 else None
        if lr is not None and lr != rank:
            raise ValueError(f"init L has rank {lr}, expected rank={rank}")
        dt = Y.dtype
        return _user_start("init L", L0, (m, rank), restarts, dt), _user_start(
            "init R", R0, (rank, n), restarts, dt
        )
    # one compiled program draws all the starts (op by op, a first fit compiled a dozen
    # small programs here: the key splits, the scale, each factor's draw)
    return _named_starts(Y, rank, init, restarts, key)


# The starts programs are compiled with LLVM's optimization level 1 (XLA's default is 2)
# and XLA's fusion emitters off: JAX's threefry random bits compile 3-7x faster at level 1
# (a 1000 x 500 rank-10 start on XLA:CPU: 4.8 -> 1.6 s; with 4 restarts, whose vmapped keys
# compile slower still, 12.2 -> 1.8 s), and another ~1.5x faster without the fusion
# emitters (0.53 -> 0.36 s of CPU, experiments/README.md "Cold jnmf fit"), while the bits
# drawn stay the same (tests/test_fit.py; level 0 changes the normal draw's last bits).
# A start is drawn once per fit: its run time (milliseconds at this size either way) does
# not matter.  Only on XLA:CPU (see jnmf.compile_options.top_level_on_cpu).
DRAW_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": False}


def _named_starts_impl(Y, rank: int, init: str, restarts: int, key) -> tuple[Array, Array]:
    keys = jax.random.split(key, restarts)
    return jax.vmap(lambda k: initialize(Y, rank, init, k))(keys)


_named_starts = top_level_program(_named_starts_impl, DRAW_COMPILER_OPTIONS, static_argnums=(1, 2, 3))


def padded_starting_points(
    Y, ranks: Sequence[int], restarts: int, key, init: str = "random", *, only: slice | None = None
) -> tuple[Array, Array]:
    """``restarts`` random starts per rank, padded to ``max(ranks)`` with zero components.

    Rank r's restarts draw rank-r random factors (``init``: "random" at rank r's scale,
    ``sqrt(mean / r)``; "uniform" on ``(0, max(Y)]`` whatever the rank, as R's NMF) and
    then zeros: every rule keeps a zero component exactly zero, so the padded fit is the
    fit at rank r, and all ranks run in one compiled program.  The starts of all ranks
    are drawn by one small compiled program.

    Args:
        Y: the (scaled) data the starts are drawn for.
        ranks: the ranks; the factors are padded to the largest.
        restarts: starts per rank.
        key: a JAX key, split into one key per rank (``split(key, len(ranks))[i]`` for
            ``ranks[i]``).
        init: ``"random"`` or ``"uniform"``.
        only: draw only the starts of ``ranks[only]``, exactly as the full draw draws
            them (same keys, padded to ``max(ranks)``): a run can fit its ranks in chunks.

    Returns:
        ``(L0, R0)``: stacks of ``len(ranks[only]) * restarts`` starts, rank by rank.
    """
    ranks = list(ranks)
    keys = jax.random.split(key, len(ranks))
    top = max(ranks)
    if only is not None:
        # a gather with the positions as an operand: one small program for every chunk
        ranks, keys = ranks[only], keys[np.arange(len(ranks))[only]]
    Y = Y if isinstance(Y, DataOperator) else jnp.asarray(Y)
    return _padded_starts(Y, jnp.asarray(ranks, Y.dtype), keys, top, restarts, init)


def _padded_starts_impl(Y, ranks, keys, top: int, restarts: int, init: str) -> tuple[Array, Array]:
    def one_rank(r, key):
        L0, R0 = jax.vmap(lambda k: initialize(Y, top, init, k))(jax.random.split(key, restarts))
        live = (jnp.arange(top) < r).astype(L0.dtype)
        if init == "random":
            live = live * jnp.sqrt(top / r)  # drawn at rank top's scale
        return L0 * live[None, None, :], R0 * live[None, :, None]

    L0, R0 = jax.vmap(one_rank)(ranks, keys)
    return L0.reshape(-1, *L0.shape[2:]), R0.reshape(-1, *R0.shape[2:])


_padded_starts = top_level_program(_padded_starts_impl, DRAW_COMPILER_OPTIONS, static_argnums=(3, 4, 5))


class _Setup(eqx.Module):
    """Validated inputs shared by the surfaces (host side, before compiling).

    ``Y`` is a validated host array (dense data) or a :class:`~jnmf.data.SparseData`
    operator (sparse input, never densified)."""

    Y: np.ndarray | DataOperator
    rank: int
    rule: AlternatingRule
    restarts: int
    key: Array
    stopping: Stopping
    scale: float
    degree: float
    M: np.ndarray | None = None

    @property
    def sparse(self) -> bool:
        return isinstance(self.Y, DataOperator)


MISSING = ("error", "nan", "unstored")


def validated_data(Y, M=None, missing: str = "error"):
    """``(Y, M)`` checked on the host: a dense NumPy array (NaN entries, with
    ``missing="nan"``, zeroed and folded into the elementwise weight M), or, for sparse
    input (every scipy.sparse format, ``jax.experimental.sparse`` BCOO / BCSR), a
    :class:`~jnmf.data.SparseData` that is never densified.

    Raises:
        ValueError: naming the argument, before anything is compiled.
    """
    if missing not in MISSING:
        raise ValueError(f"missing must be one of {MISSING}, got {missing!r}")
    if isinstance(Y, RowShardedData | RowShardedSparse):  # validated already (fit with a mesh)
        return Y, None
    if is_sparse_input(Y):
        if M is not None:
            raise ValueError(
                "M (an elementwise weight) needs dense Y; for sparse Y, missing='unstored' makes "
                "the unstored entries missing"
            )
        if missing == "nan":
            raise ValueError("missing='nan' needs dense Y; sparse Y may use missing='unstored'")
        data = sparse_operator("Y", Y, "missing" if missing == "unstored" else "zero")
        if missing == "unstored" and data.nnz == 0:
            raise ValueError("Y stores no entries: with missing='unstored' nothing would be fitted")
        return data, None
    if missing == "unstored":
        raise ValueError("missing='unstored' is for sparse Y (scipy.sparse, BCOO); dense Y may use 'nan'")
    Y, present = check.data_with_missing("Y", Y, missing)
    M = check.elementwise_weight("M", M, Y.shape, Y.dtype)
    if present is not None:
        M = present.astype(Y.dtype) if M is None else np.where(present, M, 0).astype(Y.dtype)
        if not np.any(M):
            raise ValueError("M is zero at every entry of Y that is not NaN: nothing would be fitted")
    if M is not None:
        # entries of weight 0 must not matter, not even to the data scale or the starts
        Y = np.where(M > 0, Y, 0).astype(Y.dtype)
    return Y, M


def _setup(Y, rank, method, init, restarts, key, stopping, overrides, M=None, missing="error") -> _Setup:
    Y, M = validated_data(Y, M, missing)
    rank = check.positive_int("rank", rank)
    if rank > min(Y.shape):
        raise ValueError(f"rank must be at most min(Y.shape) = {min(Y.shape)}, got {rank}")
    restarts = check.positive_int("restarts", restarts)
    stop = (stopping or Stopping()).replace(**overrides).validate()
    rule = make_rule(method)
    if not isinstance(init, tuple | list) and init not in INITIALIZERS:
        raise ValueError(f"init must be one of {sorted(INITIALIZERS)} or an (L, R) pair; got {init!r}")
    degree = rule.loss_degree  # the objective's degree of homogeneity in Y
    return _Setup(Y, rank, rule, restarts, as_key(key), stop, data_scale(Y), degree, M)


def device_data(s: _Setup) -> DataOperator:
    """The setup's data as an operator on the device (a dense Y is copied at most once:
    see :func:`jnmf.data.dense_operator`)."""
    return dense_operator(s.Y)


class Pipeline(eqx.Module):
    """The one fit pipeline of the surfaces (``fit``, ``sweep``, ``consensus``,
    ``cross_validate_rank``): validated setup -> the problem on the device -> the scaled
    problem the rules run on -> starting points -> (run) -> results in the user's units.

    Attributes:
        setup: the validated inputs (:func:`_setup`).
        problem: eq. 3 for the user's data (its losses are in the user's units).
        scaled: the same problem for ``Y / scale`` (:meth:`jnmf.problem.Problem.scaled`),
            the one every rule runs on.
        unit: ``scale ** degree``: objectives of ``scaled`` times this are in the user's units.
    """

    setup: _Setup
    problem: Problem
    scaled: Problem
    unit: float = eqx.field(static=True)

    def starts(self, init) -> tuple[Array, Array]:
        """``restarts`` starting pairs for the scaled problem (an initializer name, or user
        starts in the user's units)."""
        return _scaled_starts(self.setup, self.scaled.data, init)

    def padded_starts(self, ranks, init: str = "random", data=None, only=None) -> tuple[Array, Array]:
        """``restarts`` random starts per rank (of ``ranks[only]``), padded to the largest rank
        (:func:`padded_starting_points`), drawn for ``data`` (default: the scaled data)."""
        s = self.setup
        return padded_starting_points(
            self.scaled.data if data is None else data, ranks, s.restarts, s.key, init, only=only
        )

    def unscaled(self, L: Array, R: Array, objective) -> tuple[Array, Array, np.ndarray]:
        """Factors and objectives of the scaled problem in the user's units."""
        L, R = scale_factors(L, R, self.setup.scale)
        return L, R, np.asarray(objective, np.float64) * self.unit


def pipeline(s: _Setup, *, M=None, W_0R=None, W_0C=None, **penalties) -> Pipeline:
    """The :class:`Pipeline` of a validated setup: builds eq. 3 on the device (sparse data as
    a sparse operator), checks the rule can solve it and scales it.

    Args:
        s: the validated setup.
        M: the elementwise loss weight (default: the setup's, from ``missing="nan"`` or ``M=``).
        W_0R, W_0C, **penalties: as for :func:`jnmf.problem.build_problem`.

    Returns:
        The pipeline.

    Raises:
        ValueError: a weight or penalty the data or the rule cannot take (before compiling).
    """
    problem = build_problem(
        device_data(s), s.rank, W_0R=W_0R, W_0C=W_0C, M=s.M if M is None else M, **penalties
    )
    s.rule.check(problem)
    return Pipeline(s, problem, problem.scaled(s.scale, s.degree), float(s.scale) ** s.degree)


class Settings(dict):
    """A dict of plain JSON values that hashes by its content, so a :class:`FitResult`
    holding one as static data can still pass through ``jax.jit``."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(json.dumps(self, sort_keys=True))


def _plain(value):
    """A JSON value for a setting: numbers as Python numbers; an array as its shape and dtype
    (array-valued penalties are described, not stored)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if np.ndim(value) == 0:
        return float(np.asarray(value))
    return {"array": {"shape": list(np.shape(value)), "dtype": str(np.asarray(value).dtype)}}


def fit_settings(
    s: _Setup,
    method,
    init,
    key,
    normalize,
    history_size: int,
    strategy,
    W_0R,
    W_0C,
    penalties: dict,
    problem=None,
) -> Settings:
    """The arguments of a fit as JSON values (``FitResult.settings``).

    ``key`` keeps the raw bits of the JAX key the restarts were drawn from (so a NumPy
    Generator or JAX key is recorded too); ``seed`` is the int seed when one was given.
    """
    key_bits = jax.random.key_data(s.key) if jnp.issubdtype(s.key.dtype, jax.dtypes.prng_key) else s.key
    weights = {"W_0R": W_0R, "W_0C": W_0C, "M": s.M}
    return Settings(
        method=method if isinstance(method, str) else s.rule.method_name,
        rule=_rule_text(s.rule),
        rank=s.rank,
        restarts=s.restarts,
        init=init if isinstance(init, str) else "given (L0, R0)",
        seed=0 if key is None else (int(key) if isinstance(key, int | np.integer) else None),
        key=[int(b) for b in np.asarray(key_bits).ravel()],
        stopping={name: _plain(v) for name, v in dataclasses.asdict(s.stopping).items()},
        penalties={name: _plain(v) for name, v in {**penalties, **weights}.items() if v is not None},
        normalize=normalize,
        history_size=int(history_size),
        strategy=strategy or batching_strategy(s.rule, problem=problem, rank=s.rank, fits=s.restarts),
        dtype=str(s.Y.dtype),
        shape=list(s.Y.shape),
    )


# repr of recent rules (a rule is immutable; make_rule returns one rule per name): the
# pretty-printed repr took ~0.4 ms of every fit's settings
_RULE_TEXTS: dict[int, tuple[AlternatingRule, str]] = {}


def _rule_text(rule: AlternatingRule) -> str:
    """``repr(rule)``, computed once per rule object."""
    hit = _RULE_TEXTS.get(id(rule))
    if hit is not None and hit[0] is rule:
        return hit[1]
    if len(_RULE_TEXTS) >= 64:
        _RULE_TEXTS.clear()
    text = repr(rule)
    _RULE_TEXTS[id(rule)] = (rule, text)
    return text


def _scaled_starts(s: _Setup, Ys, init) -> tuple[Array, Array]:
    root = math.sqrt(s.scale)
    if isinstance(init, tuple | list):
        init = (np.asarray(init[0], np.float64) / root, np.asarray(init[1], np.float64) / root)
    return starting_points(Ys, s.rank, init, s.restarts, s.key)


def _unscaled_best_impl(L, R, root, best, picked: dict) -> tuple[Array, Array, Array, Array, dict]:
    """All restarts' factors in the user's units (times ``root = sqrt(scale)``, as
    :func:`jnmf.problem.scale_factors`), restart ``best``'s factors and restart ``best`` of
    each of ``picked``'s stacks: one compiled program (indexed op by op, a fit compiled
    one small program per array)."""
    L, R = L * root, R * root
    return L, R, L[best], R[best], {name: stack[best] for name, stack in picked.items()}


# runs once per fit, on the factors only: compiled cheaply (jnmf.compile_options.ONCE_OPTIONS)
_unscaled_best = top_level_program(_unscaled_best_impl, ONCE_OPTIONS)


def _pick_best(objectives: np.ndarray, status: np.ndarray) -> int:
    ok = np.isfinite(objectives) & (status != NONFINITE)
    if not ok.any():
        raise FloatingPointError(
            "every restart produced non-finite values; jnmf rescales its input, so this should not "
            "happen for valid data: please report it with the data's shape, dtype and range"
        )
    return int(np.argmin(np.where(ok, objectives, np.inf)))


def _warn_status(status_code: int, where: str) -> None:
    if status_code != CONVERGED and STATUS[status_code] == "max_iterations":
        warnings.warn(
            f"{where} stopped at max_iterations without meeting a convergence test; "
            "raise max_iterations or loosen tol",
            ConvergenceWarning,
            stacklevel=check.user_stacklevel(),
        )


def _any_nonzero(Y) -> bool:
    if isinstance(Y, DataOperator):
        return float(Y.maximum()) > 0
    return bool(np.any(Y))


def _zero_fit(s: _Setup, return_all: bool, history_size: int, settings: dict) -> FitResult:
    """An all-zero Y: the zero factors are the exact solution (status converged)."""
    m, n = s.Y.shape
    dt = s.Y.dtype
    b = s.restarts
    zeros_b = np.zeros(b)
    return FitResult(
        L=jnp.zeros((m, s.rank), dt),
        R=jnp.zeros((s.rank, n), dt),
        objective=np.float64(0.0),
        iterations=jnp.zeros((), jnp.int32),
        converged=jnp.ones((), bool),
        status=jnp.asarray(CONVERGED, jnp.int32),
        history=np.full(history_size, np.nan),
        history_stride=jnp.ones((), jnp.int32),
        objectives=zeros_b,
        all_iterations=jnp.zeros(b, jnp.int32),
        all_converged=jnp.ones(b, bool),
        all_status=jnp.full(b, CONVERGED, jnp.int32),
        best=0,
        all_L=jnp.zeros((b, m, s.rank), dt) if return_all else None,
        all_R=jnp.zeros((b, s.rank, n), dt) if return_all else None,
        settings=settings,
    )


def _check_mesh_fit(Y, mesh, M, missing, W_0R, W_0C) -> None:
    """What a row-sharded fit refuses, on the host (ValueError naming the argument)."""
    check_mesh("mesh", mesh, 0)  # the rows are checked with Y (sharded_operator)
    for name, value in (("M", M), ("W_0R", W_0R), ("W_0C", W_0C)):
        if value is not None:
            raise ValueError(f"{name} is not supported with mesh (row-sharded fits)")
    if missing != "error":
        raise ValueError(f"missing={missing!r} is not supported with mesh (row-sharded fits)")


def _on_mesh(L: Array, R: Array, mesh: jax.sharding.Mesh) -> tuple[Array, Array]:
    """A fit's factors as a row-sharded fit returns them: L split by rows, R replicated
    (a no-op for factors already placed so)."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.device_put(L, row_sharding(mesh)), jax.device_put(R, replicated)


def fit(
    Y,
    rank: int,
    *,
    method: str | AlternatingRule | optax.GradientTransformation = DEFAULT_METHOD,
    init="random",
    restarts: int = 1,
    key=None,
    stopping: Stopping | None = None,
    max_iterations: int | None = None,
    tol: float | None = None,
    min_xstep: float | None = None,
    rel_tol: float | None = None,
    normalize=None,
    history_size: int = 1000,
    return_all: bool = False,
    strategy: str | None = None,
    verbose: int = 0,
    progress: bool = False,
    progress_every: int = 10,
    M=None,
    missing: str = "error",
    W_0R=None,
    W_0C=None,
    mesh: jax.sharding.Mesh | None = None,
    **penalties,
) -> FitResult:
    """Factor a non-negative ``Y ~ L R`` at ``rank`` (eq. 3 of Pav 2024, or KL).

    Args:
        Y: ``m x n`` non-negative data (integers are converted; float16/bfloat16 are
            computed in float32; float64 needs JAX's x64 mode, else float32 with a warning).
        rank: the inner dimension k.
        method: a name in :data:`jnmf.rules.METHODS` (default ``"ahals"``, accelerated
            HALS with Ang & Gillis's (2019) extrapolation, the fastest Frobenius solver
            measured, see experiments/bench_orl.py; with an elementwise weight ``M`` or
            missing values it runs without extrapolation, as ``"ahals-plain"``; its
            ``history`` may rise at an extrapolation restart, and the result is the best
            iterate), a rule of :mod:`jnmf.rules`, or an optax optimizer (projected gradient).
        init: ``"random"`` (scikit-learn's scaling), ``"sparse"``, ``"uniform"`` (R NMF's), ``"nndsvd"``,
            ``"nndsvda"``, ``"nndsvdar"`` or an ``(L0, R0)`` pair.
        restarts: number of fits, run as one compiled program; the best is returned.
        key: int seed, JAX key or NumPy Generator for the initializations (default 0).
        stopping: a :class:`~jnmf.driver.Stopping` (default: its documented defaults,
            1000 iterations, ``tol=1e-4``); ``max_iterations``, ``tol``, ``min_xstep``,
            ``rel_tol`` override single settings.  A ``target`` objective is in the
            user's units.
        normalize: ``"max"``/``"sum"`` rescale L's columns every iteration.
        history_size: length of the objective history buffer.
        return_all: also return every restart's factors (``all_L``, ``all_R``).
        strategy: ``"vmap"`` or ``"map"`` batching of restarts (default: per backend,
            :func:`jnmf.batch.batching_strategy`).
        verbose: 1 prints scikit-learn style lines ("Epoch 10 reached after 0.012 seconds,
            objective: ...") every ``progress_every`` iterations and at the end; 2 also a
            line per restart.  Reported from inside the compiled loop.
        progress: show a tqdm progress bar of the iterations on stderr.
        progress_every: iterations between reports when ``verbose`` or ``progress``
            (traced: changing it does not recompile).  Without either, the loop is
            compiled without reports (and, unlike a loop with reports, can be kept in
            JAX's persistent compilation cache).
        M: an optional ``m x n`` non-negative elementwise weight of the loss,
            ``1/2 sum M (.) (Y - LR)^2`` (or the divergence weighted entry by entry);
            ``M_ij = 0`` marks a missing entry.  Supported by every method except ANLS
            with full W_0R / W_0C (see :func:`jnmf.problem.build_problem`).  Costs one
            extra ``m x n`` array per half step.
        missing: ``"error"`` (default: NaN in Y is an error) or ``"nan"``: NaN entries of Y
            are missing (weight 0; combined with ``M`` when given).
        W_0R, W_0C, **penalties: weights and penalties of eq. 3 / eq. 4, as for
            :func:`jnmf.problem.build_problem` (``lambda_1L`` ... ``gamma_2R``, ``W_1L`` ...).
        mesh: a 1-D :class:`jax.sharding.Mesh` (one axis, e.g. ``"rows"``) to fit on
            several devices: Y (dense, or sparse with unstored zeros) and L are split
            by rows over the mesh's devices, R is replicated, and each iteration
            reduces only ``k x n`` and ``k x k`` partial sums across devices (Y and L
            are never gathered).  A jax.Array Y
            already sharded by rows (``NamedSharding(mesh, P("rows", None))``) is
            fitted on its own mesh without ``mesh=``, and so is the Y of
            :func:`jnmf.data.process_rows` on a mesh spanning several processes
            (``jax.distributed``: each process loads only its rows; every process
            must pass the same arguments and ``key``).  The returned L keeps the row
            sharding, R is replicated (:meth:`FitResult.gathered` collects L on every
            process).  Restarts are batched as on one device.  The
            mesh size must divide ``m``; ``M``, ``missing``, ``W_0R`` / ``W_0C`` and
            KL / beta on sparse Y are refused.  Tested for ``"mu"``, ``"hals"``,
            ``"ahals"``, ``"au"``, ``"kl"`` (sparse: ``"mu"``, ``"hals"``): results
            equal the one-device fit up to rounding.  A mesh whose one axis is named
            ``"fits"`` instead spreads the restarts over its devices, Y replicated on
            each (:func:`jnmf.batch.run_restarts`): every device runs its slice of the
            restarts with no communication; the restarts are padded to a multiple of
            the device count (the padded ones are dropped), and the result equals the
            one-device fit (tested in float64 to 1e-10).  Every other argument works as
            without a mesh, except ``verbose`` / ``progress`` (refused); a mesh with a
            ``"fits"`` axis and another axis is refused (not yet supported).

    Returns:
        A :class:`FitResult` (its ``settings`` record the arguments).  Warns
        :class:`ConvergenceWarning` when the best fit hit the iteration cap.

    Raises:
        ValueError: bad input or settings, naming the argument (before compiling).
        FloatingPointError: every restart became non-finite (a bug for valid input).
    """
    check_penalty_keywords("fit", penalties, fit)
    arguments = dict(Y=Y, rank=rank, init=init, key=key, M=M, W_0R=W_0R, W_0C=W_0C, **penalties)
    check.concrete_arguments("fit", arguments)
    overrides = dict(max_iterations=max_iterations, tol=tol, min_xstep=min_xstep, rel_tol=rel_tol)
    fits_mesh = None  # a mesh to spread the restarts over (Y replicated on each device)
    if isinstance(mesh, jax.sharding.Mesh) and FITS_AXIS in mesh.axis_names:
        fits_mesh, mesh = check_fits_mesh("mesh", mesh), None
        if verbose or progress:
            raise ValueError("verbose / progress are not supported with a 'fits' mesh (spread restarts)")
    else:  # a mesh to split Y's rows over
        mesh = mesh if mesh is not None else mesh_of(Y)
    if mesh is not None:
        _check_mesh_fit(Y, mesh, M, missing, W_0R, W_0C)
        # Y lives on the mesh, split by rows
        Y = (
            sharded_sparse(sparse_operator("Y", Y), mesh)
            if is_sparse_input(Y)
            else sharded_operator("Y", Y, mesh)
        )
    s = _setup(Y, rank, method, init, restarts, key, stopping, overrides, M, missing)
    pipe = pipeline(s, W_0R=W_0R, W_0C=W_0C, **penalties)
    settings = fit_settings(
        s, method, init, key, normalize, history_size, strategy, W_0R, W_0C, penalties, pipe.problem
    )
    settings["missing"] = missing
    if float(s.scale) == 1.0 and not _any_nonzero(s.Y):
        zero = _zero_fit(s, return_all, history_size, settings)
        if mesh is None:
            return zero
        L, R = _on_mesh(zero.L, zero.R, mesh)
        return dataclasses.replace(zero, L=L, R=R)
    L0, R0 = pipe.starts(init)
    if mesh is not None:
        P = jax.sharding.PartitionSpec
        L0 = jax.device_put(L0, jax.sharding.NamedSharding(mesh, P(None, mesh.axis_names[0], None)))
        R0 = jax.device_put(R0, jax.sharding.NamedSharding(mesh, P()))
    unit = pipe.unit  # objectives scale as Y^degree
    monitor = None
    if verbose or progress:
        monitor = FitMonitor(
            restarts=s.restarts,
            max_iterations=s.stopping.max_iterations,
            unit=unit,
            verbose=verbose,
            bar=progress,
            sequential=settings["strategy"] == "map",
            description=f"{settings['method']} rank {s.rank}",
        )
    with monitor or contextlib.nullcontext():
        res = run_restarts(
            s.rule,
            pipe.scaled,
            L0,
            R0,
            stopping=s.stopping.replace(target=s.stopping.target / unit),
            history_size=history_size,
            normalize=normalize,
            strategy=strategy,
            progress_every=progress_every if monitor else None,
            mesh=fits_mesh,
        )
    objectives = np.asarray(res.objective, np.float64) * unit
    all_status = np.asarray(res.status)
    best = _pick_best(objectives, all_status)
    _warn_status(int(all_status[best]), "the best fit")
    names = ("iterations", "converged", "status", "history", "history_stride")
    L, R, L_best, R_best, one = _unscaled_best(
        res.L, res.R, math.sqrt(s.scale), best, {name: getattr(res, name) for name in names}
    )
    if mesh is not None:
        L_best, R_best = _on_mesh(L_best, R_best, mesh)
    result = FitResult(
        L=L_best,
        R=R_best,
        objective=objectives[best],
        history=np.asarray(one.pop("history"), np.float64) * unit,
        **one,
        objectives=objectives,
        all_iterations=res.iterations,
        all_converged=res.converged,
        all_status=res.status,
        best=best,
        all_L=L if return_all else None,
        all_R=R if return_all else None,
        settings=settings,
    )
    if monitor:
        monitor.finish(result)
    return result


class SweepResult(eqx.Module):
    """Every (setting, restart) fit of a penalty sweep (objectives in the user's units).

    Attributes:
        settings: dict name -> values, one entry per grid point (leading axis G).
        objectives, loss, iterations, converged, status: shape (G, restarts).
        sparsity_L, sparsity_R: fraction of exact zeros, shape (G, restarts).
        L, R: factors of shape (G, restarts, ...) if ``factors="all"``, (G, ...) for
            the best restart of each setting if ``"best"``, None if ``"none"``.
        best: index of the best restart per setting, shape (G,).
    """

    settings: dict
    objectives: np.ndarray
    loss: np.ndarray
    iterations: Array
    converged: Array
    status: Array
    sparsity_L: Array
    sparsity_R: Array
    best: np.ndarray
    L: Array | None
    R: Array | None

    def save(self, path: str | os.PathLike) -> Path:
        """Write this result to one ``.npz`` file (no pickle); read it back with :func:`jnmf.load`.

        Args:
            path: the file to write (``.npz`` is appended when it has another suffix;
                :func:`jnmf.load` accepts the same name).

        Returns:
            The path written.
        """
        from .result_files import save

        return save(self, path)


def _grid_points(grid: Mapping[str, Sequence], product: bool) -> dict[str, np.ndarray]:
    if not grid:
        raise ValueError("grid must name at least one value to sweep")
    bad = set(grid) - set(REPLACEABLE)
    if bad:
        raise ValueError(f"grid: cannot sweep {sorted(bad)}; sweepable: {REPLACEABLE}")
    columns = {}
    for name, vals in grid.items():
        if isinstance(vals, np.ndarray | jax.Array) and np.ndim(vals) >= 1:
            vals = list(vals)
        if not isinstance(vals, list | tuple) or len(vals) == 0:
            raise ValueError(f"grid[{name!r}] must be a non-empty list of values")
        try:
            stacked = np.stack([np.asarray(v, dtype=float) for v in vals])
        except ValueError as e:
            raise ValueError(f"grid[{name!r}]: every value must have the same shape ({e})") from None
        columns[name] = stacked
    names = list(columns)
    if product:
        idx = list(itertools.product(*(range(len(columns[n])) for n in names)))
        return {n: columns[n][[p[i] for p in idx]] for i, n in enumerate(names)}
    if len({len(c) for c in columns.values()}) != 1:
        raise ValueError("with product=False every grid list must have the same length")
    return columns


def sweep(
    Y,
    rank: int,
    grid: Mapping[str, Sequence],
    *,
    product: bool = True,
    method: str | AlternatingRule | optax.GradientTransformation = DEFAULT_METHOD,
    init="random",
    restarts: int = 1,
    key=None,
    stopping: Stopping | None = None,
    max_iterations: int | None = None,
    tol: float | None = None,
    min_xstep: float | None = None,
    rel_tol: float | None = None,
    factors: str = "best",
    history_size: int = 1,
    strategy: str | None = None,
    M=None,
    missing: str = "error",
    W_0R=None,
    W_0C=None,
    checkpoint: str | os.PathLike | None = None,
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    **penalties,
) -> SweepResult:
    """Fit a grid of problem settings x restarts as one compiled program.

    Args:
        Y, rank, method, init, restarts, key, stopping, ...: as for :func:`fit`.
        grid: maps names to lists of values: the eq.-4 scalars ``lambda_1L`` ...
            ``gamma_2R``, elementwise L1 weights ``W_1L`` (``m x k`` each) / ``W_1R``
            (``k x n``), diagonal loss weights ``W_0R`` (length m) / ``W_0C`` (length n),
            elementwise weights ``M`` (``m x n`` each: e.g. one hold-out mask per fold).
            A swept value REPLACES the base value given as a keyword (so naming a key
            in both is an error).
        M, missing: an elementwise loss weight and the NaN policy, as for :func:`fit`.
        product: the Cartesian product of the lists (True) or zip them (equal lengths).
        factors: ``"all"``, ``"best"`` or ``"none"`` (summaries only).
        checkpoint: a directory (created when missing) to save each finished chunk of
            grid settings in, so an interrupted sweep resumes where it stopped
            (:mod:`jnmf.checkpoint`).  The chunks run one after the other through one
            compiled program (the last one padded to the same size), from the same
            ``restarts`` starting points as without a checkpoint.  A resumed sweep equals
            an uninterrupted checkpointed one bit for bit; it equals the one-program sweep
            (``checkpoint=None``) bit for bit when the settings run one by one (every
            strategy but ``"vmap"``) and to rounding otherwise (batched products over
            other batch sizes).  A directory of another run (other data, arguments or
            jnmf version) or with a damaged file raises ValueError.  ``method`` must then
            be a name or a jnmf rule (an optax optimizer cannot be fingerprinted).
        chunk_size: grid settings per chunk with ``checkpoint`` (default: a tenth of the
            grid, rounded up, so at most 10 chunks).
        mesh: a 1-D :class:`jax.sharding.Mesh` whose axis is named ``"fits"``, to spread
            the (setting, restart) fits over its devices, Y replicated on each
            (:func:`jnmf.batch.run_grid`: the settings, or the restarts when that pads
            fewer fits, are split over the devices; each device runs the one-device
            program on its slice, with no communication).  The result equals the
            one-device sweep (tested in float64 to 1e-10).  With ``checkpoint`` each chunk
            is spread so; the checkpoint does not record the mesh, so a sweep may resume
            on another mesh (bit for bit when the fits run one by one, to rounding
            otherwise, as for the chunks).

    Returns:
        A :class:`SweepResult`; every setting starts from the same ``restarts`` points.

    Raises:
        ValueError: bad input or settings, naming the argument (before compiling), or a
            checkpoint of another run or damaged (naming what differs).
    """
    check_penalty_keywords("sweep", penalties, sweep)
    arguments = dict(Y=Y, rank=rank, grid=grid, init=init, key=key, M=M, W_0R=W_0R, W_0C=W_0C)
    check.concrete_arguments("sweep", {**arguments, **penalties})
    if mesh is not None:
        check_fits_mesh("mesh", mesh)
    overrides = dict(max_iterations=max_iterations, tol=tol, min_xstep=min_xstep, rel_tol=rel_tol)
    directory = checkpoint_directory(checkpoint)
    if chunk_size is not None:
        if directory is None:
            raise ValueError("chunk_size applies only with checkpoint=DIR")
        chunk_size = check.positive_int("chunk_size", chunk_size)
    s = _setup(Y, rank, method, init, restarts, key, stopping, overrides, M, missing)
    settings = _grid_points(grid, product)
    clash = set(settings) & (
        set(penalties) | {k for k, v in (("W_0R", W_0R), ("W_0C", W_0C), ("M", M)) if v is not None}
    )
    if clash:
        raise ValueError(f"{sorted(clash)} given both in grid and as fixed values")
    if "M" in settings and (W_0R is not None or W_0C is not None or {"W_0R", "W_0C"} & set(settings)):
        raise ValueError("grid['M'] cannot be combined with W_0R / W_0C: fold them into the swept M")
    if factors not in ("all", "best", "none"):
        raise ValueError(f"factors must be 'all', 'best' or 'none'; got {factors!r}")
    if "M" in settings and s.sparse:
        raise ValueError("grid['M'] needs dense Y (elementwise weights of a sparse Y are not supported)")
    m, n = s.Y.shape
    for i in range(len(next(iter(settings.values())))):
        check_replacements({k: v[i] for k, v in settings.items()}, m, n, s.rank)
    base_M = s.M
    if "M" in settings:
        if s.M is not None:
            # the data's own missing entries stay missing in every swept weight
            settings["M"] = settings["M"] * (s.M > 0)
        base_M = np.ones(s.Y.shape, s.Y.dtype)  # the base leaf the grid replaces
    pipe = pipeline(s, M=base_M, W_0R=W_0R, W_0C=W_0C, **penalties)
    problem = pipe.scaled
    scaled_settings = scale_settings(settings, s.scale, s.degree)
    L0, R0 = pipe.starts(init)
    unit = pipe.unit

    def fit_grid_chunk(values: dict) -> dict:
        """Every (setting, restart) fit of the (scaled) settings ``values``, summarized."""
        res = run_grid(
            s.rule,
            problem,
            values,
            L0,
            R0,
            stopping=s.stopping.replace(target=s.stopping.target / unit),
            history_size=history_size,
            strategy=strategy,
            mesh=mesh,
        )
        L, R, objectives = pipe.unscaled(res.L, res.R, res.objective)
        traced = {k: jnp.asarray(v, s.Y.dtype) for k, v in values.items()}
        loss = np.asarray(_grid_losses(problem, traced, res.L, res.R), np.float64) * float(s.scale) ** 2
        ok = np.isfinite(objectives) & (np.asarray(res.status) != NONFINITE)
        best = np.argmin(np.where(ok, objectives, np.inf), axis=1)
        G = objectives.shape[0]
        if factors == "best":
            L, R = L[np.arange(G), best], R[np.arange(G), best]
        elif factors == "none":
            L = R = None
        return dict(
            objectives=objectives,
            loss=loss,
            iterations=res.iterations,
            converged=res.converged,
            status=res.status,
            sparsity_L=jnp.mean(res.L == 0, axis=(-2, -1)),
            sparsity_R=jnp.mean(res.R == 0, axis=(-2, -1)),
            best=best,
            L=L,
            R=R,
        )

    if directory is None:
        out = fit_grid_chunk(scaled_settings)
    else:
        out = _checkpointed_sweep(
            directory,
            s,
            fit_grid_chunk,
            scaled_settings,
            chunk_size,
            grid=settings,
            rank=s.rank,
            method=method,
            init=init if isinstance(init, str) else list(init),
            factors=factors,
            history_size=int(history_size),
            strategy=strategy or batching_strategy(s.rule, problem=problem, rank=s.rank, fits=s.restarts),
            missing=missing,
            penalties=penalties,
            W_0R=W_0R,
            W_0C=W_0C,
        )
    return SweepResult(settings={k: np.asarray(v) for k, v in settings.items()}, **out)


def _checkpointed_sweep(
    directory, s: _Setup, fit_chunk, scaled_settings: dict, chunk_size, method, **arguments
):
    """:func:`sweep` in chunks of ``chunk_size`` grid settings, each saved to the checkpoint
    ``directory`` when done.  The last chunk is padded (its last setting repeated) to the
    same size, so every chunk runs the same compiled program."""
    G = len(next(iter(scaled_settings.values())))
    size = min(G, chunk_size or -(-G // 10))
    count = -(-G // size)

    def compute(c: int) -> dict:
        chosen = np.minimum(np.arange(c * size, (c + 1) * size), G - 1)
        part = fit_chunk({k: v[chosen] for k, v in scaled_settings.items()})
        kept = min(size, G - c * size)
        return {k: np.asarray(v)[:kept] for k, v in part.items() if v is not None}

    labels = [f"settings {c * size}-{min(G, (c + 1) * size) - 1}" for c in range(count)]
    described = {name: describe(value) for name, value in arguments.items()}
    chunks = run_checkpointed(directory, "sweep", s, method, labels, compute, chunk_size=size, **described)
    out = {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}
    return {**out, "L": out.get("L"), "R": out.get("R")}


def scale_settings(settings: Mapping[str, np.ndarray], scale: float, degree: float) -> dict:
    """Swept values transformed as :meth:`jnmf.problem.Problem.scaled` transforms the base."""
    l1 = scale ** (0.5 - degree)
    l2 = scale ** (1 - degree)
    out = {}
    for name, v in settings.items():
        if name.startswith(("lambda_1", "W_1")):
            out[name] = v * l1
        elif name.startswith(("lambda_2", "gamma_2")):
            out[name] = v * l2
        else:
            out[name] = v
    return out


@eqx.filter_jit
def _grid_losses(problem: Problem, settings, L, R):
    """1/2 ||Y - LR||^2 (weighted) of every (setting, restart) fit (fit by fit: the data
    operator's loss holds one row block of residual at a time)."""

    def per_setting(args):
        values, Ls, Rs = args
        p = problem.replace(**values)
        return jax.lax.map(lambda LR: p.loss(*LR), (Ls, Rs))

    return jax.lax.map(per_setting, (settings, L, R))


@eqx.filter_jit
def fit_losses(problem: Problem, L: Array, R: Array) -> Array:
    """The Frobenius loss of eq. 3 (``1/2 ||Y - LR||^2``, weighted) of a stack of fits.

    Args:
        problem: the problem (its data operator computes each loss without an ``m x n``
            residual).
        L, R: stacks of factors, ``(b, m, k)`` and ``(b, k, n)``.

    Returns:
        The ``b`` losses.
    """
    return jax.lax.map(lambda LR: problem.loss(*LR), (L, R))
