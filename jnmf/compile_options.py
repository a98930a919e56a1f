"""Per-program XLA compiler options on XLA:CPU (compile latency, issue 15 part 5).

Some programs compile much faster on XLA:CPU with options other than XLA's defaults,
but the options would slow others down, so they are set per program rather than for
the process (``XLA_FLAGS``):

* the starts programs (:mod:`jnmf.fitting`) at LLVM optimization level 1;
* a rule's loop program with the rule's own ``compiler_options``
  (:class:`jnmf.rules.base.AlternatingRule`; ANLS turns XLA's fusion emitters off).

JAX takes per-program options only on a top-level ``jit``: inside another trace a
program is inlined into its caller and compiled with the caller's options.  Other
backends keep XLA's defaults.
"""

from __future__ import annotations

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


def programs_by_options(fun: Callable, jit: Callable = jax.jit, **jit_kwargs) -> Callable:
    """``fun`` jitted once per set of compiler options, each made on first use.

    Args:
        fun: the function to compile.
        jit: ``jax.jit`` or a wrapper that passes ``compiler_options`` on to it
            (``equinox.filter_jit``).
        jit_kwargs: further arguments of ``jit`` (e.g. ``static_argnums``).

    Returns:
        ``program(options)``: the jitted ``fun`` compiled with ``options`` (a mapping
        of XLA option names to values; None or empty: XLA's defaults).
    """
    programs: dict = {}

    def program(options: Mapping | None = None):
        key = tuple(sorted(options.items())) if options else ()
        if key not in programs:
            extra = {"compiler_options": dict(key)} if key else {}
            programs[key] = jit(fun, **jit_kwargs, **extra)
        return programs[key]

    return program
