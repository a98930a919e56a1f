"""Runs that survive interruption: a directory of finished chunks and the manifest of its run.

:func:`jnmf.sweep`, :func:`jnmf.consensus` and :func:`jnmf.cross_validate_rank` take
``checkpoint=DIR``.  They then split their work into chunks (a rank, or a group of grid
settings) run one after the other, and save each finished chunk to ``DIR`` as one
``.npz`` file (:func:`jnmf.result_files.write_npz`, no pickle), atomically: to a
temporary file in ``DIR``, then ``os.replace`` to its final name, so a run killed at any
moment leaves only whole chunk files (and perhaps a stale ``.*.tmp``, removed by the
next run).  A rerun with the same arguments loads the finished chunks and computes the
others.

``DIR/manifest.json`` records what the run is: the surface, the jnmf and JAX versions, a
SHA-256 of the data (the bytes of a dense ``Y`` after validation, or the index and value
arrays of a sparse one, hashed a block at a time so memory stays flat) and of any
elementwise weight, and the arguments that shape the result (method, ranks, restarts,
penalties, tolerances, the random key, the batching strategy, ...).  Each chunk file
carries the manifest's fingerprint and a SHA-256 of its own arrays.  A rerun whose
data, arguments or versions differ from the manifest's, or that finds a manifest or
chunk file that is unreadable, truncated, garbled or from another run, raises a
:class:`ValueError` naming what differs (and the file): never a silently wrong result.
One run at a time may use a directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .data import DataOperator, SparseData
from .result_files import FORMAT_VERSION, read_npz, write_npz

MANIFEST = "manifest.json"
# bytes hashed at a time: a row block of a dense Y is a view, so hashing copies nothing
_HASH_BLOCK = 1 << 24


def _hash_array(h, a) -> None:
    """Feed one array (NumPy or JAX) to the hash ``h``, a block of rows at a time."""
    shape = tuple(int(d) for d in np.shape(a))
    dtype = np.dtype(a.dtype)
    h.update(f"{dtype.str}{shape}".encode())
    if not shape or 0 in shape:
        h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
        return
    row_bytes = max(1, dtype.itemsize * int(np.prod(shape[1:])))
    rows = max(1, _HASH_BLOCK // row_bytes)
    for i in range(0, shape[0], rows):
        # a contiguous NumPy block is hashed in place; a JAX block is copied to the host alone
        h.update(memoryview(np.ascontiguousarray(np.asarray(a[i : i + rows]))).cast("B"))


def array_digest(*arrays) -> str:
    """SHA-256 (hex) of arrays' dtypes, shapes and bytes, hashed block by block.

    Args:
        *arrays: NumPy or JAX arrays (None counts as an absent array).

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"None")
        else:
            _hash_array(h, a)
    return h.hexdigest()


def data_fingerprint(Y, M=None) -> dict:
    """What identifies the data of a run: its layout, shape, dtype and a SHA-256 of its
    entries (and of the elementwise weight ``M``).

    Args:
        Y: validated data: a NumPy array, or a :class:`~jnmf.data.SparseData` (its row,
            column and value arrays, and weights, are hashed: the same matrix gives the
            same digest whichever sparse format it came in).
        M: the elementwise weight (None: none).

    Returns:
        A JSON-ready dict.
    """
    if isinstance(Y, SparseData):
        layout = f"sparse ({Y.unstored} unstored entries)"
        digest = array_digest(Y.rows, Y.cols, Y.values, Y.weights, M)
    elif isinstance(Y, DataOperator):
        raise ValueError(f"checkpoint: cannot fingerprint data of type {type(Y).__name__}")
    else:
        layout = "dense"
        digest = array_digest(Y, M)
    return {"layout": layout, "shape": [int(d) for d in Y.shape], "dtype": str(Y.dtype), "sha256": digest}


def describe(value) -> Any:
    """A JSON value that identifies an argument: numbers, strings and None as they are,
    arrays (and array-valued penalties) as their shape, dtype and SHA-256, sequences and
    dicts element by element.

    Args:
        value: the argument.

    Returns:
        The JSON value.

    Raises:
        ValueError: a value that is none of these.
    """
    from .fitting import _plain  # (fitting imports this module)

    if isinstance(value, Mapping):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [describe(v) for v in value]
    if isinstance(value, np.ndarray | jax.Array) and (
        value.ndim > 0 or jnp.issubdtype(value.dtype, jax.dtypes.prng_key)
    ):
        return {
            "shape": [int(d) for d in value.shape],
            "dtype": str(value.dtype),
            "sha256": array_digest(value),
        }
    try:
        return _plain(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"checkpoint: cannot fingerprint an argument of type {type(value).__name__} ({value!r:.60})"
        ) from None


def describe_key(key) -> list[int]:
    """The raw bits of a JAX key (typed or ``uint32[2]``), as JSON integers."""
    bits = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return [int(b) for b in np.asarray(bits).ravel()]


def describe_method(method, rule) -> Any:
    """A JSON value that identifies a fit method: its name, or a rule's class, structure
    and settings.

    Args:
        method: what the user passed (a name, a rule or an optax optimizer).
        rule: the rule it made.

    Returns:
        The JSON value.

    Raises:
        ValueError: the method holds functions (an optax optimizer), whose settings
            cannot be fingerprinted: pass a method by name or a jnmf rule.
    """
    if isinstance(method, str):
        return method
    leaves, treedef = jax.tree_util.tree_flatten(rule)
    structure = str(treedef)
    if " at 0x" in structure or any(callable(leaf) for leaf in leaves):
        raise ValueError(
            "checkpoint: method holds functions (e.g. an optax optimizer), which cannot be "
            "fingerprinted to check a resumed run; pass a method by name or a jnmf rule"
        )
    return {"rule": type(rule).__name__, "structure": structure, "leaves": [describe(v) for v in leaves]}


def checkpoint_directory(checkpoint) -> Path | None:
    """The checkpoint directory argument, checked (before anything runs).

    Args:
        checkpoint: None, or a directory path (created when missing).

    Returns:
        The path, or None.

    Raises:
        ValueError: ``checkpoint`` is not a path, or names an existing file.
    """
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, str | os.PathLike) or not str(checkpoint):
        raise ValueError(f"checkpoint must be a directory path or None, got {checkpoint!r}")
    path = Path(checkpoint)
    if path.exists() and not path.is_dir():
        raise ValueError(f"checkpoint must be a directory; {path} exists and is not one")
    return path


def _versions() -> dict:
    from . import __version__

    return {"jnmf": __version__, "jax": jax.__version__}


def _plain_json(value):
    """``value`` as JSON reads it back (tuples become lists)."""
    return json.loads(json.dumps(value, sort_keys=True, allow_nan=True))


def _differences(old: Mapping, new: Mapping) -> list[str]:
    return [
        f"{name}: {old.get(name, '(absent)')!r:.80} in the checkpoint, {new.get(name, '(absent)')!r:.80} now"
        for name in sorted(set(old) | set(new), key=str)
        if old.get(name) != new.get(name)
    ]


@dataclasses.dataclass
class Checkpoint:
    """The checkpoint directory of one run: its manifest and its finished chunks.

    Attributes:
        directory: the directory.
        manifest: the run's manifest (see :func:`open_checkpoint`).
        finished: the arrays of each finished chunk, by chunk index (loaded and checked
            when the checkpoint is opened).
    """

    directory: Path
    manifest: dict
    finished: dict[int, dict[str, np.ndarray]]

    @property
    def chunks(self) -> int:
        return len(self.manifest["chunks"])

    def chunk_path(self, index: int) -> Path:
        return self.directory / f"chunk-{index:05d}.npz"

    def save(self, index: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write one finished chunk atomically (temporary file, then ``os.replace``).

        Args:
            index: the chunk's index.
            arrays: its arrays, by name.
        """
        arrays = {name: np.asarray(a) for name, a in arrays.items()}
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": "checkpoint chunk",
            "run": self.manifest["kind"],
            "index": int(index),
            "label": self.manifest["chunks"][index],
            "fingerprint": self.manifest["fingerprint"],
            "sha256": array_digest(*(arrays[name] for name in sorted(arrays))),
            "arrays": sorted(arrays),
            "versions": _versions(),
        }
        write_npz(self.chunk_path(index), arrays, meta, atomic=True)
        self.finished[index] = arrays

    def run(self, compute: Callable[[int], Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Every chunk's arrays, in order: the finished ones as loaded, the others computed
        by ``compute(index)`` and saved as soon as each is done.

        Args:
            compute: computes one chunk's arrays from its index.

        Returns:
            The arrays of every chunk.
        """
        for index in range(self.chunks):
            if index not in self.finished:
                self.save(index, compute(index))
        return [self.finished[index] for index in range(self.chunks)]

    def _load(self, index: int) -> dict[str, np.ndarray]:
        path = self.chunk_path(index)
        redo = f"delete it to compute that chunk again ({self.manifest['chunks'][index]})"
        try:
            meta, arrays = read_npz(path)
        except Exception as err:  # a truncated or garbled zip fails in many ways
            raise ValueError(
                f"checkpoint chunk {path} is corrupted ({type(err).__name__}: {err}); {redo}"
            ) from None
        if meta.get("fingerprint") != self.manifest["fingerprint"] or meta.get("index") != index:
            raise ValueError(
                f"checkpoint chunk {path} belongs to another run (its fingerprint or index does not "
                f"match {self.directory / MANIFEST}); {redo}"
            )
        if sorted(arrays) != meta.get("arrays") or array_digest(
            *(arrays[name] for name in sorted(arrays))
        ) != meta.get("sha256"):
            raise ValueError(
                f"checkpoint chunk {path} is corrupted (its arrays do not match their SHA-256); {redo}"
            )
        return arrays


def open_checkpoint(
    directory: Path, kind: str, *, data: Mapping, arguments: Mapping, chunks: Sequence[str]
) -> Checkpoint:
    """Open (or start) the checkpoint of one run in ``directory`` and load its finished chunks.

    A new directory gets ``manifest.json``; an existing one must hold the manifest of the
    same run: same surface, jnmf and JAX versions, data and arguments.

    Args:
        directory: the checkpoint directory (created when missing).
        kind: the surface, e.g. ``"consensus"``.
        data: :func:`data_fingerprint` of the data.
        arguments: the arguments that shape the result, as JSON values (:func:`describe`).
        chunks: a label per chunk (e.g. ``"rank 3"``), in the order they run.

    Returns:
        The :class:`Checkpoint`, its finished chunks loaded and checked.

    Raises:
        ValueError: the directory holds another run (naming what differs) or an
            unreadable, truncated or garbled manifest or chunk file (naming it).
    """
    versions = _versions()
    body = _plain_json(
        {
            "kind": kind,
            "versions": versions,
            "data": dict(data),
            "arguments": dict(arguments),
            "chunks": list(chunks),
        }
    )
    fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    manifest = {"format_version": FORMAT_VERSION, **body, "fingerprint": fingerprint}
    path = directory / MANIFEST
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".*.tmp"):  # left by a run killed while writing
        stale.unlink(missing_ok=True)
    if path.exists():
        _check_manifest(path, manifest)
    else:
        if any(directory.glob("chunk-*.npz")):
            raise ValueError(
                f"checkpoint {directory} holds chunk files but no {MANIFEST}: use another directory"
            )
        _write_json_atomically(path, manifest)
    store = Checkpoint(directory, manifest, {})
    for index in range(len(chunks)):
        if store.chunk_path(index).exists():
            store.finished[index] = store._load(index)
    return store


def run_checkpointed(
    directory: Path,
    kind: str,
    setup,
    method,
    chunks: Sequence[str],
    compute: Callable[[int], Mapping[str, np.ndarray]],
    **arguments,
) -> list[dict[str, np.ndarray]]:
    """Run a surface's chunks through the checkpoint in ``directory``: the finished ones
    are loaded, the others computed and saved one by one.

    Args:
        directory: the checkpoint directory.
        kind: the surface, e.g. ``"consensus"``.
        setup: the surface's validated inputs (:func:`jnmf.fitting._setup`): its data,
            weight, restarts, rule, key and stopping enter the manifest.
        method: the method the user passed.
        chunks: a label per chunk.
        compute: computes one chunk's arrays from its index.
        **arguments: the surface's other arguments that shape the result (JSON values,
            see :func:`describe`).

    Returns:
        The arrays of every chunk, in order.

    Raises:
        ValueError: the directory holds another run or a damaged file (see
            :func:`open_checkpoint`).
    """
    common = {
        "restarts": setup.restarts,
        "method": describe_method(method, setup.rule),
        "key": describe_key(setup.key),
        "stopping": describe(dataclasses.asdict(setup.stopping)),
    }
    store = open_checkpoint(
        directory,
        kind,
        data=data_fingerprint(setup.Y, setup.M),
        arguments={**common, **arguments},
        chunks=chunks,
    )
    return store.run(compute)


def _check_manifest(path: Path, manifest: dict) -> None:
    try:
        old = json.loads(path.read_text())
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise ValueError(f"checkpoint manifest {path} is unreadable ({err}): use another directory") from None
    if old.get("fingerprint") == manifest["fingerprint"] and old == manifest:
        return
    where = f"checkpoint {path.parent} was written"
    if old.get("kind") != manifest["kind"]:
        raise ValueError(f"{where} by {old.get('kind')!r}, not {manifest['kind']!r}: use another directory")
    problems = []
    if old.get("versions") != manifest["versions"]:
        problems.append(
            "by another version: " + "; ".join(_differences(old.get("versions") or {}, manifest["versions"]))
        )
    if old.get("data") != manifest["data"]:
        problems.append("for other data: " + "; ".join(_differences(old.get("data") or {}, manifest["data"])))
    if old.get("arguments") != manifest["arguments"]:
        problems.append(
            "with other arguments: "
            + "; ".join(_differences(old.get("arguments") or {}, manifest["arguments"]))
        )
    if old.get("chunks") != manifest["chunks"]:
        problems.append(f"with other chunks: {old.get('chunks')} in the checkpoint, {manifest['chunks']} now")
    if not problems:
        problems.append(f"with another manifest ({path} is damaged)")
    raise ValueError(
        f"{where} "
        + "; and ".join(problems)
        + ": rerun with the same inputs to resume it, or use another directory"
    )


def _write_json_atomically(path: Path, document: dict) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w") as file:
        json.dump(document, file, indent=1, allow_nan=True)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def dataclass_arrays(value) -> dict[str, np.ndarray]:
    """A dataclass of arrays and numbers as a dict of NumPy arrays (a chunk's content)."""
    return {f.name: np.asarray(getattr(value, f.name)) for f in dataclasses.fields(value)}


def dataclass_from_arrays(cls, arrays: Mapping[str, np.ndarray]):
    """The inverse of :func:`dataclass_arrays`: fields annotated ``int`` / ``float`` come back
    as Python numbers, the others as arrays."""
    values = {}
    for f in dataclasses.fields(cls):
        a = arrays[f.name]
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        values[f.name] = int(a) if kind == "int" else float(a) if kind == "float" else a
    return cls(**values)
