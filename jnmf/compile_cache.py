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
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["DISABLE_VARIABLE", "compile_cache_disabled", "default_cache_dir", "enable_compile_cache"]

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
