"""Results you can keep: :class:`~jnmf.fitting.FitResult` and :class:`~jnmf.fitting.SweepResult`
in one ``.npz`` file, read back by :func:`load`.

The file holds every array of the result under its field name plus ``__meta__``, a
0-d unicode array with a JSON document: ``format_version``, the result's kind, its
non-array fields (``best``, ``settings``), the status names and the versions of
jnmf, JAX, NumPy and Python that wrote it.  Nothing is pickled, so
``np.load(path, allow_pickle=False)`` reads it, and so does any NPZ reader.

``format_version`` counts incompatible changes of this layout; a file written by a
newer jnmf (a larger version) is refused with a message naming both versions rather
than misread.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
from pathlib import Path

import jax
import numpy as np

__all__ = ["FORMAT_VERSION", "load", "save"]

FORMAT_VERSION = 1
META_KEY = "__meta__"

# Array fields of each kind of result, in file order; None-valued ones are left out.
_FIT_ARRAYS = (
    "L",
    "R",
    "objective",
    "iterations",
    "converged",
    "status",
    "history",
    "history_stride",
    "objectives",
    "all_iterations",
    "all_converged",
    "all_status",
    "all_L",
    "all_R",
)
_SWEEP_ARRAYS = (
    "objectives",
    "loss",
    "iterations",
    "converged",
    "status",
    "sparsity_L",
    "sparsity_R",
    "best",
    "L",
    "R",
)
# The swept values of a SweepResult (its ``settings`` dict of arrays) are stored as
# arrays named with this prefix.
_GRID_PREFIX = "grid__"


def _versions() -> dict:
    from . import __version__

    return {
        "jnmf": __version__,
        "jax": jax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def npz_path(path: str | os.PathLike) -> Path:
    """The file :func:`save` writes for ``path``: ``.npz`` appended when it has another
    suffix (as ``np.savez`` does)."""
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def saved_path(path: str | os.PathLike) -> Path:
    """The file a result saved under ``path`` lies in: ``path`` itself when it exists,
    else ``path + ".npz"`` when that exists (``save("fit")`` wrote ``fit.npz``).

    Raises:
        FileNotFoundError: neither exists (naming both).
    """
    path = Path(path)
    if path.exists():
        return path
    written = npz_path(path)
    if written.exists():
        return written
    tried = f"{path}" if written == path else f"{path} or {written}"
    raise FileNotFoundError(f"no saved jnmf result at {tried}")


def save(result, path: str | os.PathLike) -> Path:
    """Write a ``FitResult`` or ``SweepResult`` to one ``.npz`` file.

    Args:
        result: the result of :func:`jnmf.fit` or :func:`jnmf.sweep`.
        path: the file; ``.npz`` is appended when it has another suffix, as NumPy does.

    Returns:
        The path written.

    Raises:
        TypeError: ``result`` is neither kind of result.
    """
    from .driver import status_names
    from .fitting import FitResult, SweepResult

    arrays: dict[str, np.ndarray] = {}
    if isinstance(result, FitResult):
        kind, fields = "FitResult", _FIT_ARRAYS
        meta_fields = {
            "best": int(result.best),
            "settings": dict(result.settings),
            "status_name": str(result.status_name),
            "all_status_names": [str(n) for n in status_names(np.asarray(result.all_status))],
        }
    elif isinstance(result, SweepResult):
        kind, fields = "SweepResult", _SWEEP_ARRAYS
        grid_names = list(result.settings)
        for name in grid_names:
            arrays[_GRID_PREFIX + name] = np.asarray(result.settings[name])
        meta_fields = {
            "grid": grid_names,
            "status_names": np.asarray(status_names(np.asarray(result.status)), str).tolist(),
        }
    else:
        raise TypeError(f"can save a jnmf FitResult or SweepResult, not {type(result).__name__}")
    for name in fields:
        value = getattr(result, name)
        if getattr(value, "is_fully_addressable", True) is False:
            raise ValueError(
                f"result.{name} is spread over the devices of several processes: save "
                "result.gathered() (a collective: call it on every process, then save on one)"
            )
        if value is not None:
            arrays[name] = np.asarray(value)
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "arrays": list(arrays),
        **meta_fields,
        "versions": _versions(),
    }
    path = npz_path(path)
    write_npz(path, arrays, meta)
    return path


def write_npz(path: Path, arrays: dict[str, np.ndarray], meta: dict, *, atomic: bool = False) -> None:
    """Write ``arrays`` and the JSON document ``meta`` (as ``__meta__``) to one ``.npz`` file.

    Args:
        path: the file (written under this exact name).
        arrays: the arrays, by name.
        meta: a JSON document (NaN allowed: a diverged fit's objective is NaN, which
            Python's json reads back).
        atomic: write to a temporary file next to ``path`` (``.NAME.*.tmp``), flush it to
            disk, then ``os.replace`` it to ``path``: a reader sees the old file or the whole
            new one, never a part, even if the writer is killed.
    """
    payload = {**arrays, META_KEY: np.array(json.dumps(meta, allow_nan=True))}
    if not atomic:
        np.savez(path, **payload)
        return
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            np.savez(file, **payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_npz(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """The ``__meta__`` document (checked as by :func:`read_meta`) and the arrays of a file
    written by :func:`write_npz`, read without pickle.

    Args:
        path: the file.

    Returns:
        ``(meta, arrays)``.

    Raises:
        ValueError: not a jnmf file, or one written in a newer format.
    """
    meta = read_meta(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files if name != META_KEY}
    return meta, arrays


def read_meta(path: str | os.PathLike) -> dict:
    """The ``__meta__`` JSON document of a saved result, checked for a readable format.

    Args:
        path: a file written by :func:`save` (the name given to it: ``.npz`` may be left off).

    Returns:
        The document as a dict.

    Raises:
        FileNotFoundError: no such file (with or without ``.npz``).
        ValueError: not a jnmf result file, or one written in a newer format.
    """
    path = saved_path(path)
    with np.load(path, allow_pickle=False) as data:
        if META_KEY not in data.files:
            raise ValueError(f"{path} is not a jnmf result file (it has no {META_KEY} entry)")
        meta = json.loads(str(data[META_KEY][()]))
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise ValueError(f"{path}: {META_KEY} has no integer format_version")
    if version > FORMAT_VERSION:
        from . import __version__

        raise ValueError(
            f"{path} was written in jnmf result format version {version} (by jnmf "
            f"{meta.get('versions', {}).get('jnmf', '?')}); this jnmf {__version__} reads format "
            f"versions up to {FORMAT_VERSION}: upgrade jnmf to load it"
        )
    return meta


def load(path: str | os.PathLike):
    """Read a result written by :meth:`FitResult.save <jnmf.fitting.FitResult.save>` (or :func:`save`).

    Arrays come back as NumPy arrays with their saved dtypes (float64 factors stay
    float64 whether or not JAX's x64 mode is on); every JAX function accepts them.

    Args:
        path: the ``.npz`` file, or the name given to ``save`` (``load("fit")`` reads the
            ``fit.npz`` that ``save("fit")`` wrote).

    Returns:
        A :class:`~jnmf.fitting.FitResult`, :class:`~jnmf.fitting.SweepResult` or
        :class:`~jnmf.programs.Programs`.

    Raises:
        FileNotFoundError: no such file (with or without ``.npz``).
        ValueError: not a jnmf result file, or one written by a newer jnmf (naming
            both format versions).
    """
    from .fitting import FitResult, Settings, SweepResult

    path = saved_path(path)
    meta = read_meta(path)
    if meta["kind"] == "Programs":
        from .programs import Programs

        return Programs.load(path)
    meta, arrays = read_npz(path)
    # 0-d arrays were scalars; NumPy scalars keep their dtype
    arrays = {name: (a[()] if a.ndim == 0 else a) for name, a in arrays.items()}
    if meta["kind"] == "FitResult":
        values = {name: arrays.get(name) for name in _FIT_ARRAYS}
        return FitResult(**values, best=int(meta["best"]), settings=Settings(meta["settings"]))
    if meta["kind"] == "SweepResult":
        grid = {name: arrays[_GRID_PREFIX + name] for name in meta["grid"]}
        values = {name: arrays.get(name) for name in _SWEEP_ARRAYS}
        return SweepResult(settings=grid, **values)
    raise ValueError(f"{path}: unknown result kind {meta['kind']!r}")
