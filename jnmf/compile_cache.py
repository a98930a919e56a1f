"""Fast second runs: JAX's persistent compilation cache in a per-user directory.

Compiling a fit's program costs seconds on a CPU (more than the fit itself for
small data); JAX can keep the compiled programs on disk and reuse them in later
processes.  The ``jnmf`` command line turns this on by default; a notebook or a
script calls :func:`enable_compile_cache`.

The directory is ``$XDG_CACHE_HOME/jnmf/jax`` (``~/.cache/jnmf/jax`` without
XDG_CACHE_HOME).  ``JNMF_NO_COMPILE_CACHE=1`` in the environment turns it off
everywhere (the CLI's ``--no-cache`` for one command).

Programs with host callbacks (a fit with ``verbose`` or ``progress``) are never
written to the cache: JAX refuses to, as the callback is bound to the process.

As JAX warns, the cache is trusted code: do not point it at a directory that others
can write to.

Long sessions: every compiled CPU program that JAX keeps in memory holds memory
mappings of the process, about three per kernel (its code, read-only data and data
sections: 3 for ``x + c``, about 85 for a jnmf fit), and Linux caps a process at
``vm.max_map_count`` mappings (65530 by default).  A process that compiles about
20,000 tiny programs or 700 fits and keeps them all (a long notebook, or the whole
test suite in one pytest process) then fails to map the next program's code inside XLA: a segmentation
fault while compiling (the crash reported in jax-ml/jax#27201; reproduced by
``experiments/xla_map_limit_crash.py``: XLA logs "LLVM compilation error: Cannot allocate
memory" and the process dies of SIGSEGV in the compile).  Before each call of a
compiled fit (every surface: restarts and grids, ``iterate`` and the rnnmf front doors,
differentiable fits, minibatch and streaming steps), :func:`guard_map_limit` drops
JAX's in-memory programs (``jax.clear_caches``) once the process holds more than 3/4
of its mapping limit; they are compiled again on their next use.  It counts the
mappings only when JAX compiled (or loaded) a program since it last looked, so it
costs nothing in a loop of already-compiled steps.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import jax

from ._validate import is_traced

__all__ = [
    "DISABLE_VARIABLE",
    "compile_cache_disabled",
    "default_cache_dir",
    "enable_compile_cache",
    "guard_map_limit",
    "release_programs_near_map_limit",
]

DISABLE_VARIABLE = "JNMF_NO_COMPILE_CACHE"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/jnmf/jax``, or ``~/.cache/jnmf/jax`` when XDG_CACHE_HOME is unset or empty."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jnmf" / "jax"


def compile_cache_disabled() -> bool:
    """Whether the environment turns the cache off (``JNMF_NO_COMPILE_CACHE`` set, and not 0/false/no)."""
    value = os.environ.get(DISABLE_VARIABLE, "").strip().lower()
    return value not in ("", "0", "false", "no")


def enable_compile_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Keep compiled programs on disk, so later processes skip compiling them.

    Sets JAX's ``jax_compilation_cache_dir`` and lowers its thresholds (by default
    JAX only keeps programs that took over a second to compile) so every program a
    fit compiles is kept: small programs too, since one fit compiles several.  The
    settings are JAX's and process-wide.

    Args:
        path: the cache directory (created if missing); default: the one JAX is already
            configured with (``JAX_COMPILATION_CACHE_DIR``), else :func:`default_cache_dir`.

    Returns:
        The directory in use, or None when ``JNMF_NO_COMPILE_CACHE`` turns the cache
        off (nothing is changed then).
    """
    if compile_cache_disabled():
        return None
    previous = jax.config.jax_compilation_cache_dir
    if path is not None:
        directory = Path(path)
    else:
        directory = Path(previous) if previous else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if previous and previous != str(directory):
        # JAX opens its cache once per process; moving it needs a fresh start
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()
    return directory


# fraction of vm.max_map_count above which the in-memory programs are dropped
MAP_LIMIT_FRACTION = 0.75


def _map_limit() -> int | None:
    try:
        with open("/proc/sys/vm/max_map_count") as limit:
            return int(limit.read())
    except (OSError, ValueError):  # not Linux
        return None


_MAP_LIMIT = _map_limit()


def memory_map_count() -> int | None:
    """The number of memory mappings of this process (lines of /proc/self/maps), or None
    where there is no /proc (not Linux)."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: maps.read(1 << 16), b""))
    except OSError:
        return None


def release_programs_near_map_limit(fraction: float = MAP_LIMIT_FRACTION) -> bool:
    """Drop JAX's in-memory compiled programs when the process nears its mapping limit.

    Every compiled CPU program JAX keeps holds memory mappings; past Linux's
    ``vm.max_map_count`` the next compile crashes inside XLA (see the module docstring).
    Called before each fit; costs one read of /proc/self/maps (well under a millisecond
    for a few thousand mappings).

    Args:
        fraction: drop the programs above this fraction of ``vm.max_map_count``.

    Returns:
        Whether the programs were dropped (they recompile on their next use; a
        RuntimeWarning says so once per drop).
    """
    return _release(fraction, stacklevel=4)


def _release(fraction: float, stacklevel: int) -> bool:
    count = memory_map_count() if _MAP_LIMIT else None
    if count is None or count <= fraction * _MAP_LIMIT:
        return False
    jax.clear_caches()
    warnings.warn(
        f"this process holds {count} memory mappings of at most {_MAP_LIMIT} (vm.max_map_count), "
        "mostly JAX's compiled programs; jnmf dropped them (jax.clear_caches()) so that compiling "
        "more cannot crash, and they will be compiled again when used",
        RuntimeWarning,
        stacklevel=stacklevel,
    )
    return True


# JAX's event around every backend compile (or load from the persistent cache):
# jax._src.dispatch.BACKEND_COMPILE_EVENT
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = 0  # programs JAX compiled or loaded in this process (counted by _count_compile)
_looked_at = -1  # _compiles when guard_map_limit last counted the mappings


def _count_compile(event: str, duration: float, **kwargs) -> None:
    # only counts: dropping programs from inside JAX's compile path is not safe
    global _compiles
    if event == _COMPILE_EVENT:
        _compiles += 1


jax.monitoring.register_event_duration_secs_listener(_count_compile)


def guard_map_limit(*operands) -> bool:
    """:func:`release_programs_near_map_limit`, looked at only when JAX compiled since the last look.

    Called before every compiled fit or step of jnmf.  Reading /proc/self/maps costs
    0.7 ms at 440 mappings but 19 ms at 49,000, too much for a loop of minibatch steps;
    new mappings come only with new programs, so this reads it only when JAX compiled
    (or loaded) a program since the last read, and otherwise costs one comparison.

    Args:
        *operands: the call's arrays (any pytrees); when one is traced (the call is part
            of a program being traced, under ``jax.jit`` or ``jax.vmap``), nothing is
            done: the programs are not dropped in the middle of a trace.

    Returns:
        Whether the programs were dropped.
    """
    global _looked_at
    if _compiles == _looked_at or any(is_traced(x) for x in jax.tree.leaves(operands)):
        return False
    _looked_at = _compiles
    return _release(MAP_LIMIT_FRACTION, stacklevel=4)
