"""Per-program XLA compiler options on XLA:CPU (compile latency, issue 15 part 5).

Some programs compile much faster on XLA:CPU with options other than XLA's defaults,
but the options would slow others down, so they are set per program rather than for
the process (``XLA_FLAGS``):

* the starts programs (:mod:`jnmf.fitting`) at LLVM optimization level 1;
* a rule's loop program with the rule's own ``compiler_options``
  (:class:`jnmf.rules.base.AlternatingRule`; ANLS turns XLA's fusion emitters off), and
  for a small problem (:func:`small_loop`) with the rule's ``small_compiler_options``
  on top (:func:`loop_options`);
* the programs a fit runs once around its loop (the starting states, the results in the
  user's units) with :data:`ONCE_OPTIONS`.

JAX takes per-program options only on a top-level ``jit``: inside another trace a
program is inlined into its caller and compiled with the caller's options.  Other
backends keep XLA's defaults.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping

import jax

from ._validate import is_traced


def top_level_on_cpu(*args) -> bool:
    """Whether a jitted call with ``args`` may take per-program options: on XLA:CPU
    (where the options were measured; other backends keep XLA's defaults) and outside
    any trace (no traced argument, and no enclosing trace, e.g. a ``jit`` whose
    arguments are all closed-over constants).

    Args:
        *args: the call's arguments (any pytrees).

    Returns:
        Whether the call may run a program compiled with its own options.
    """
    if jax.default_backend() != "cpu":
        return False
    if any(is_traced(leaf) for leaf in jax.tree.leaves(args)):
        return False
    try:
        from jax._src.core import trace_state_clean
    except ImportError:  # pragma: no cover - moved in a later JAX: decide by the arguments
        return True
    return trace_state_clean()


# A loop program is "small" when its fits hold at most this many factor entries in all,
# ``fits * (m + n) * k``.  At that size XLA's optimizations cannot pay for their compile
# time within the default iteration cap: for accelerated HALS at 1000 x 500, rank 10 (15,000
# entries), fusion emitters off and LLVM level 0 compile the loop ~1.1 s faster and cost
# ~0.85 ms more per iteration, so they are even at ~1,300 iterations, beyond the default
# cap of 1,000 (experiments/README.md, "Cold jnmf fit").  Above it (and for rules whose
# ``small_compiler_options`` are None) the loop is compiled as before.  The price is paid
# again by every later run of the same compiled program (in this process, or from the
# persistent cache): the environment variable ``JNMF_SMALL_LOOP_ENTRIES`` overrides the
# size (0: every loop compiled with XLA's optimizations, for long or repeated fits).
SMALL_LOOP_ENTRIES = 16_384

# Fusion emitters off, LLVM level 0 and the program's LLVM code generated as one module
# rather than split into parts for parallel code generation: the cheapest compile XLA:CPU
# offers, for programs whose run time is negligible (once per fit, or a small problem's
# loop).  Unsplit, the estimator's loop program at 500 x 300, rank 10 spent ~0.08 s less
# CPU compiling (0.57-0.62 s against 0.67-0.89 s for its whole first fit, 6 runs each,
# alternated, load 5.5-6; XLA's own profile showed 50 ms in "SplitModule" alone), with no
# change in run time (experiments/README.md, "First contact").
CHEAP_OPTIONS = {
    "xla_cpu_use_fusion_emitters": False,
    "xla_backend_optimization_level": 0,
    "xla_cpu_parallel_codegen_split_count": 1,
}

# The programs a fit runs once, before and after its loop (elementwise work on the
# factors and one pass over Y): compiled as cheaply as XLA:CPU can.
ONCE_OPTIONS = CHEAP_OPTIONS


def small_loop(m: int, n: int, rank: int, fits: int) -> bool:
    """Whether a loop program of ``fits`` fits of an ``m x n`` problem at ``rank`` is small
    (at most :data:`SMALL_LOOP_ENTRIES` factor entries in all, or as many as the
    environment variable ``JNMF_SMALL_LOOP_ENTRIES`` says).

    Args:
        m, n: the data's shape.
        rank: the factors' inner dimension.
        fits: the fits the program runs together (restarts times grid settings).

    Returns:
        Whether the program may take a rule's ``small_compiler_options``.
    """
    limit = os.environ.get("JNMF_SMALL_LOOP_ENTRIES")
    limit = SMALL_LOOP_ENTRIES if limit in (None, "") else int(limit)
    return fits * (m + n) * rank <= limit


def loop_options(rule, m: int, n: int, rank: int, fits: int) -> dict | None:
    """The XLA:CPU options of ``rule``'s loop program: the rule's ``compiler_options``,
    with its ``small_compiler_options`` on top when the program is :func:`small_loop`.

    The choice depends only on shapes (which recompile anyway), never on a count, a
    tolerance or a penalty.

    Args:
        rule: the rule (its class attributes ``compiler_options`` and
            ``small_compiler_options``, each a mapping or None; absent: None).
        m, n, rank, fits: as for :func:`small_loop`.

    Returns:
        The options, or None for XLA's defaults.
    """
    options = dict(getattr(rule, "compiler_options", None) or {})
    small = getattr(rule, "small_compiler_options", None)
    if small and small_loop(m, n, rank, fits):
        options.update(small)
    return options or None


def program_options(rule, problem, R, settings: int, *args) -> dict | None:
    """The options of ``rule``'s loop program for a call with ``args``: XLA's defaults
    (None) unless the call is :func:`top_level_on_cpu`; the rule's ``compiler_options``
    when no rank can be read (``R`` None or a vector, or a problem without a shape); else
    :func:`loop_options` at ``problem``'s shape, ``R``'s rank and fits.

    Args:
        rule: the rule.
        problem: the problem (its ``shape``, ``m x n``).
        R: the states' R, ``(..., k, n)`` (leading axes: the fits), or None.
        settings: the grid settings each fit of ``R`` runs under (1 without a grid).
        *args: the call's other arguments (the top-level test looks at them too).

    Returns:
        The options, or None for XLA's defaults.
    """
    if not top_level_on_cpu(rule, problem, *args):
        return None
    if R is None or R.ndim < 2 or not hasattr(problem, "shape"):
        return getattr(rule, "compiler_options", None)
    m, n = problem.shape
    return loop_options(rule, m, n, R.shape[-2], math.prod(R.shape[:-2]) * settings)


# XLA option names this jaxlib refused ("No such compile option"), found on first use.
# XLA renames and drops options between releases: jaxlib 0.11 no longer knows
# ``xla_cpu_use_fusion_emitters``, which jaxlib 0.10 needs (seen on 2026-12-04, where
# every fit on CPU failed to compile with it).  A program is then compiled without the
# refused options: a slower compile, never an error.
_REFUSED: set[str] = set()
_REFUSED_OPTION = re.compile(r"No such compile option: '([^']+)'")


def refused_option(error: BaseException) -> str | None:
    """The option name an XLA "No such compile option" error names, else None.

    Args:
        error: an exception raised by a call of a jitted function.

    Returns:
        The refused option's name, or None for any other error.
    """
    found = _REFUSED_OPTION.search(str(error))
    return found.group(1) if found else None


def known_options(options: Mapping | None) -> dict:
    """``options`` without the names this jaxlib refused so far (:func:`refused_option`).

    Args:
        options: XLA option names and values (None: none).

    Returns:
        The options to compile with.
    """
    return {name: value for name, value in (options or {}).items() if name not in _REFUSED}


def programs_by_options(fun: Callable, jit: Callable = jax.jit, **jit_kwargs) -> Callable:
    """``fun`` jitted once per set of compiler options, each made on first use.

    An option the installed XLA does not know is dropped (and remembered) the first time
    a compile refuses it, and the call is made again without it: options are a matter of
    speed, so a renamed or removed option costs compile or run time, not the fit.

    Args:
        fun: the function to compile.
        jit: ``jax.jit`` or a wrapper that passes ``compiler_options`` on to it
            (``equinox.filter_jit``).
        jit_kwargs: further arguments of ``jit`` (e.g. ``static_argnums``).

    Returns:
        ``program(options)``: the jitted ``fun`` compiled with ``options`` (a mapping
        of XLA option names to values; None or empty: XLA's defaults).
    """
    programs: dict = {}  # the jitted fun, by the options it is compiled with
    calls: dict = {}  # program(options), by the options asked for

    def jitted(options: dict):
        key = tuple(sorted(options.items()))
        if key not in programs:
            extra = {"compiler_options": dict(key)} if key else {}
            programs[key] = jit(fun, **jit_kwargs, **extra)
        return programs[key]

    def checked(options: dict):
        def retried(use):  # use(the jitted fun), again without each option XLA refuses
            while True:
                kept = known_options(options)
                try:
                    return use(jitted(kept))
                except Exception as error:  # XlaRuntimeError / JaxRuntimeError, by release
                    name = refused_option(error)
                    if name is None or name not in kept:
                        raise
                    _REFUSED.add(name)  # the compile failed: nothing ran, so run it again

        def call(*args, **kwargs):
            return retried(lambda program: program(*args, **kwargs))

        call.compile_ahead = lambda *args: retried(lambda program: program.lower(*args).compile())
        return call

    def program(options: Mapping | None = None):
        key = tuple(sorted((options or {}).items()))
        if not key:
            return jitted({})
        if key not in calls:
            calls[key] = checked(dict(key))
        return calls[key]

    return program


def compile_ahead(program: Callable, *args):
    """Compile ``program`` (from :func:`programs_by_options`) for ``args`` without running
    it, into JAX's cache that a later ``program(*args)`` hits.

    Args:
        program: a jitted function, or one :func:`programs_by_options` made.
        *args: the arguments of the later call.

    Returns:
        The compiled program.
    """
    ahead = getattr(program, "compile_ahead", None)
    return ahead(*args) if ahead is not None else program.lower(*args).compile()


def top_level_program(fun: Callable, options: Mapping, jit: Callable = jax.jit, **jit_kwargs) -> Callable:
    """``fun`` jitted with XLA's default options and with ``options``; each call runs the
    latter when it is :func:`top_level_on_cpu`.

    Args:
        fun: the function to compile.
        options: the XLA option names and values for top-level calls on XLA:CPU.
        jit, jit_kwargs: as for :func:`programs_by_options`.

    Returns:
        A function with ``fun``'s arguments and results.
    """
    programs = programs_by_options(fun, jit, **jit_kwargs)

    def run(*args):
        return programs(options if top_level_on_cpu(*args) else None)(*args)

    return run
