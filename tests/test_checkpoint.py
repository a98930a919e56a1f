"""Runs that survive interruption: ``checkpoint=DIR`` of ``sweep``, ``consensus``,
``cross_validate_rank`` and ``jnmf rank --checkpoint``.

A checkpointed run must give exactly the uninterrupted result (here, on CPU with
the default strategies, exactly the one-program ``checkpoint=None`` result too), also
when it was SIGKILLed midway and resumed; a directory of another run or a damaged file
must raise a ValueError naming what differs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import jnmf
from jnmf import cli
from jnmf.checkpoint import MANIFEST, array_digest

REPO = Path(__file__).resolve().parents[1]
RANKS = [2, 4, 3]  # not sorted: chunks follow the caller's order
CONSENSUS = dict(restarts=3, max_iterations=40, stable_labels=2, key=7)
CV = dict(restarts=2, repeats=2, max_iterations=30, key=5)


@pytest.fixture(scope="module")
def Y() -> np.ndarray:
    return np.random.default_rng(0).random((30, 20))


class _CompileLog(logging.Handler):
    """Collects JAX's "Compiling jit(NAME) ..." log lines."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.names: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Compiling jit("):
            self.names.append(message[len("Compiling jit(") :].split(")")[0])


def _compiled_during(run):
    handler = _CompileLog()
    logger = logging.getLogger("jax._src.interpreters.pxla")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            value = run()
    finally:
        logger.removeHandler(handler)
    return value, handler.names


@pytest.fixture(scope="module")
def surveys(Y, tmp_path_factory):
    """The same consensus survey checkpointed (first, so its fit program is compiled
    fresh) and as one program."""
    directory = tmp_path_factory.mktemp("consensus") / "ck"
    checkpointed, compiled = _compiled_during(
        lambda: jnmf.consensus(Y, RANKS, checkpoint=directory, **CONSENSUS)
    )
    plain = jnmf.consensus(Y, RANKS, **CONSENSUS)
    return plain, checkpointed, directory, compiled


def assert_same_survey(a, b) -> None:
    assert [e.rank for e in a] == [e.rank for e in b] == RANKS
    for x, y in zip(a, b, strict=True):
        for f in dataclasses.fields(x):
            u, v = getattr(x, f.name), getattr(y, f.name)
            assert type(u) is type(v) or (isinstance(u, np.ndarray) and isinstance(v, np.ndarray)), f.name
            assert np.asarray(u).dtype == np.asarray(v).dtype, f.name
            assert np.array_equal(u, v, equal_nan=True), (x.rank, f.name)


def assert_same_cv(a, b) -> None:
    for f in dataclasses.fields(a):
        if f.name not in ("seconds", "compilations"):
            assert np.array_equal(getattr(a, f.name), getattr(b, f.name)), f.name


# ----------------------------------------------------------------------------- (a) same result


def test_checkpointed_survey_equals_the_one_program_survey(Y, surveys):
    plain, checkpointed, directory, compiled = surveys
    digest = array_digest(Y, None)  # the data's bytes (no weight M)
    assert_same_survey(plain, checkpointed)
    assert sorted(p.name for p in directory.iterdir()) == [
        "chunk-00000.npz",
        "chunk-00001.npz",
        "chunk-00002.npz",
        MANIFEST,
    ]
    # the three rank chunks share one padded shape: the fit loop compiled once, not per chunk
    assert compiled.count("_restarts") == 1, compiled
    manifest = json.loads((directory / MANIFEST).read_text())
    assert manifest["kind"] == "consensus" and manifest["chunks"] == ["rank 2", "rank 4", "rank 3"]
    assert manifest["arguments"]["ranks"] == RANKS and manifest["arguments"]["restarts"] == 3
    assert manifest["data"] == {"layout": "dense", "shape": [30, 20], "dtype": "float64", "sha256": digest}


def test_rerun_loads_every_chunk_without_fitting(Y, surveys):
    _, checkpointed, directory, _ = surveys
    stamps = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    again, compiled = _compiled_during(lambda: jnmf.consensus(Y, RANKS, checkpoint=directory, **CONSENSUS))
    assert_same_survey(checkpointed, again)
    assert "_restarts" not in compiled
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == stamps


def test_a_deleted_chunk_is_computed_again(Y, surveys, tmp_path):
    plain, _, directory, _ = surveys
    copy = shutil.copytree(directory, tmp_path / "ck")
    (copy / "chunk-00001.npz").unlink()
    assert_same_survey(plain, jnmf.consensus(Y, RANKS, checkpoint=copy, **CONSENSUS))
    assert (copy / "chunk-00001.npz").exists()


@pytest.mark.parametrize("scheme", ["speckled", "bicv"])
def test_checkpointed_cross_validation_equals_the_one_program_one(Y, tmp_path, scheme):
    plain = jnmf.cross_validate_rank(Y, RANKS, scheme=scheme, **CV)
    checkpointed = jnmf.cross_validate_rank(Y, RANKS, scheme=scheme, checkpoint=tmp_path, **CV)
    assert_same_cv(plain, checkpointed)
    assert list(checkpointed.ranks) == [2, 3, 4]
    (tmp_path / "chunk-00002.npz").unlink()
    assert_same_cv(plain, jnmf.cross_validate_rank(Y, RANKS, scheme=scheme, checkpoint=tmp_path, **CV))


@pytest.mark.parametrize(("method", "factors"), [("ahals", "all"), ("mu", "best")])
def test_checkpointed_sweep_equals_the_one_program_sweep(Y, tmp_path, method, factors):
    grid = {"lambda_1L": [0.0, 0.1, 0.3, 1.0, 2.0]}  # 5 settings in chunks of 2: the last is padded
    kw = dict(restarts=2, max_iterations=25, key=1, method=method, factors=factors)
    plain = jnmf.sweep(Y, 3, grid, **kw)
    checkpointed = jnmf.sweep(Y, 3, grid, checkpoint=tmp_path, chunk_size=2, **kw)
    assert len(list(tmp_path.glob("chunk-*.npz"))) == 3
    (tmp_path / "chunk-00001.npz").unlink()
    resumed = jnmf.sweep(Y, 3, grid, checkpoint=tmp_path, chunk_size=2, **kw)
    for result in (checkpointed, resumed):
        for name in ("objectives", "loss", "iterations", "converged", "status", "sparsity_L", "sparsity_R"):
            assert np.array_equal(getattr(plain, name), getattr(result, name)), name
        assert np.array_equal(plain.best, result.best)
        assert np.array_equal(plain.L, result.L) and np.array_equal(plain.R, result.R)
        assert np.array_equal(plain.settings["lambda_1L"], result.settings["lambda_1L"])
    with pytest.raises(ValueError, match="chunk_size: 2 in the checkpoint, 3 now"):
        jnmf.sweep(Y, 3, grid, checkpoint=tmp_path, chunk_size=3, **kw)


# ----------------------------------------------------------------------------- (b) killed, resumed

KILLED_RUN = """
import json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import jnmf
from jnmf.checkpoint import Checkpoint

directory, data, ranks, kw = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
save = Checkpoint.save


def stalled_save(self, index, arrays):
    if index >= 1:
        # stalls while writing chunk 1, as a kill mid-write leaves a torn temporary file
        (self.directory / ".chunk-00001.npz.torn.tmp").write_bytes(b"PK\\x03\\x04 torn")
        time.sleep(600)
    save(self, index, arrays)


Checkpoint.save = stalled_save
jnmf.consensus(np.load(data), ranks, checkpoint=directory, **kw)
"""


def test_a_killed_survey_resumes_to_the_uninterrupted_result(Y, surveys, tmp_path):
    plain, checkpointed, _, _ = surveys
    np.save(tmp_path / "Y.npy", Y)
    directory = tmp_path / "ck"
    env = dict(os.environ, PYTHONPATH=str(REPO), JNMF_NO_COMPILE_CACHE="1")
    args = [str(directory), str(tmp_path / "Y.npy"), json.dumps(RANKS), json.dumps(CONSENSUS)]
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    torn = directory / ".chunk-00001.npz.torn.tmp"
    try:
        deadline = time.monotonic() + 240
        while not ((directory / "chunk-00000.npz").exists() and torn.exists()):
            if process.poll() is not None:
                pytest.fail(
                    f"the run ended before it was killed: {process.communicate()[1].decode()[-2000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail("no chunk was written within 240 s")
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        process.stdout.close()
        process.stderr.close()
    assert sorted(p.name for p in directory.glob("chunk-*")) == ["chunk-00000.npz"]

    resumed = jnmf.consensus(Y, RANKS, checkpoint=directory, **CONSENSUS)
    assert_same_survey(checkpointed, resumed)
    assert_same_survey(plain, resumed)
    assert not torn.exists()  # the killed writer's temporary file is cleared
    assert len(list(directory.glob("chunk-*.npz"))) == 3


# ----------------------------------------------------------------------------- (c) another run


@pytest.fixture
def copied(surveys, tmp_path) -> Path:
    """A copy of the finished survey's checkpoint, free to damage."""
    return shutil.copytree(surveys[2], tmp_path / "ck")


def test_other_data_is_refused(Y, copied):
    other = Y.copy()
    other[3, 4] += 1e-9
    with pytest.raises(
        ValueError, match=r"was written for other data: sha256: '[0-9a-f]+' in the checkpoint"
    ):
        jnmf.consensus(other, RANKS, checkpoint=copied, **CONSENSUS)
    with pytest.raises(ValueError, match="other data: dtype: 'float64' in the checkpoint, 'float32' now"):
        jnmf.consensus(Y.astype(np.float32), RANKS, checkpoint=copied, **CONSENSUS)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (dict(restarts=4), "restarts: 3 in the checkpoint, 4 now"),
        (dict(key=8), "key: "),
        (dict(max_iterations=41), "stopping: "),
        (dict(method="mu"), "method: 'kl' in the checkpoint, 'mu' now"),
        (dict(init="random"), "init: 'uniform' in the checkpoint, 'random' now"),
    ],
)
def test_other_arguments_are_refused(Y, copied, change, named):
    with pytest.raises(ValueError, match="with other arguments: ") as info:
        jnmf.consensus(Y, RANKS, checkpoint=copied, **{**CONSENSUS, **change})
    assert named in str(info.value)


def test_other_ranks_and_surfaces_are_refused(Y, copied):
    with pytest.raises(ValueError, match=r"ranks: \[2, 4, 3\] in the checkpoint, \[2, 3, 4\] now"):
        jnmf.consensus(Y, [2, 3, 4], checkpoint=copied, **CONSENSUS)
    with pytest.raises(ValueError, match="written by 'consensus', not 'cross_validate_rank'"):
        jnmf.cross_validate_rank(Y, RANKS, checkpoint=copied, **CV)


def test_another_jnmf_version_is_refused(Y, copied, monkeypatch):
    monkeypatch.setattr(jnmf, "__version__", "99.0.0")
    with pytest.raises(
        ValueError, match=r"by another version: jnmf: '[^']+' in the checkpoint, '99.0.0' now"
    ):
        jnmf.consensus(Y, RANKS, checkpoint=copied, **CONSENSUS)


def test_truncated_and_garbled_chunks_are_refused(Y, copied):
    chunk = copied / "chunk-00001.npz"
    whole = chunk.read_bytes()
    chunk.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"chunk-00001.npz is corrupted .*delete it .*\(rank 4\)"):
        jnmf.consensus(Y, RANKS, checkpoint=copied, **CONSENSUS)
    garbled = bytearray(whole)
    middle = len(garbled) // 2
    garbled[middle : middle + 8] = bytes(255 - b for b in garbled[middle : middle + 8])
    chunk.write_bytes(bytes(garbled))
    with pytest.raises(ValueError, match=r"chunk-00001.npz is corrupted"):
        jnmf.consensus(Y, RANKS, checkpoint=copied, **CONSENSUS)


def test_a_chunk_of_another_run_is_refused(Y, copied):
    shutil.copy(copied / "chunk-00000.npz", copied / "chunk-00002.npz")
    with pytest.raises(ValueError, match=r"chunk-00002.npz belongs to another run"):
        jnmf.consensus(Y, RANKS, checkpoint=copied, **CONSENSUS)


def test_a_garbled_manifest_is_refused(Y, copied):
    (copied / MANIFEST).write_text('{"kind": "consensus", "fingerpr')
    with pytest.raises(ValueError, match=r"manifest .*manifest.json is unreadable"):
        jnmf.consensus(Y, RANKS, checkpoint=copied, **CONSENSUS)
    (copied / MANIFEST).unlink()
    with pytest.raises(ValueError, match="holds chunk files but no manifest.json"):
        jnmf.consensus(Y, RANKS, checkpoint=copied, **CONSENSUS)


def test_bad_checkpoint_arguments(Y, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="checkpoint must be a directory"):
        jnmf.consensus(Y, RANKS, checkpoint=tmp_path / "file", **CONSENSUS)
    with pytest.raises(ValueError, match="checkpoint must be a directory path or None"):
        jnmf.cross_validate_rank(Y, RANKS, checkpoint=3, **CV)
    with pytest.raises(ValueError, match="chunk_size applies only with checkpoint"):
        jnmf.sweep(Y, 2, {"lambda_1L": [0.0, 1.0]}, chunk_size=1)
    with pytest.raises(ValueError, match="chunk_size must be"):
        jnmf.sweep(Y, 2, {"lambda_1L": [0.0, 1.0]}, checkpoint=tmp_path / "s", chunk_size=0)
    with pytest.raises(ValueError, match="optax optimizer"):
        jnmf.sweep(Y, 2, {"lambda_1L": [0.0, 1.0]}, method=optax.adam(1e-2), checkpoint=tmp_path / "o")


# ----------------------------------------------------------------------------- (d) the CLI


def test_cli_rank_resumes_from_its_checkpoint(Y, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_use_agg", lambda: False)  # no figures: faster, same numbers
    np.save(tmp_path / "Y.npy", Y[:12, :8])
    checkpoint = tmp_path / "ck"
    command = [
        "rank",
        str(tmp_path / "Y.npy"),
        "--ranks",
        "2-3",
        "--restarts",
        "3",
        "--max-iterations",
        "40",
        "--cv",
        "speckled",
        "--cv-repeats",
        "2",
        "--checkpoint",
        str(checkpoint),
        "--quiet",
    ]
    assert cli.main([*command, "--out", str(tmp_path / "first")]) == 0
    assert sorted(p.name for p in (checkpoint / "consensus").glob("chunk-*")) == [
        "chunk-00000.npz",
        "chunk-00001.npz",
    ]
    (checkpoint / "consensus" / "chunk-00001.npz").unlink()  # as if killed during rank 3
    (checkpoint / "cv" / "chunk-00000.npz").unlink()
    kept = checkpoint / "consensus" / "chunk-00000.npz"
    stamp = kept.stat().st_mtime_ns
    assert cli.main([*command, "--out", str(tmp_path / "second")]) == 0
    assert kept.stat().st_mtime_ns == stamp  # loaded, not computed again
    for name in ("consensus.npz", "factors.npz"):
        first, second = np.load(tmp_path / "first" / name), np.load(tmp_path / "second" / name)
        assert first.files == second.files
        for key in first.files:
            assert np.array_equal(first[key], second[key]), (name, key)
    first, second = (json.loads((tmp_path / out / "summary.json").read_text()) for out in ("first", "second"))
    assert first["ranks"] == second["ranks"] and first["best_fit"] == second["best_fit"]
    for summary in (first, second):
        del summary["cross_validation"]["seconds"]
    assert first["cross_validation"] == second["cross_validation"]

    capsys.readouterr()
    changed = [("4" if word == "3" and i == 5 else word) for i, word in enumerate(command)]
    assert cli.main([*changed, "--out", str(tmp_path / "third")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("jnmf: error: checkpoint ") and "restarts: 3 in the checkpoint, 4 now" in error


# ----------------------------------------------------------------------------- fingerprints


def test_data_is_hashed_block_by_block_whatever_its_layout(monkeypatch):
    import hashlib

    import jnmf.checkpoint as checkpoint

    a = np.random.default_rng(1).random((37, 11))
    whole = array_digest(a)
    monkeypatch.setattr(checkpoint, "_HASH_BLOCK", 3 * 11 * 8)  # 3 rows a block: 13 blocks
    assert array_digest(a) == whole == array_digest(np.asfortranarray(a))
    expected = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()
    assert whole == expected
    assert array_digest(a.astype(np.float32)) != whole and array_digest(a.reshape(11, 37)) != whole


def test_sparse_data_is_fingerprinted_by_its_stored_entries():
    import scipy.sparse

    from jnmf.checkpoint import data_fingerprint
    from jnmf.fitting import validated_data

    X = scipy.sparse.random(30, 20, density=0.2, format="csr", random_state=0)
    prints = [data_fingerprint(*validated_data(form)) for form in (X, X.tocoo(), X.tocsc())]
    assert prints[0] == prints[1] == prints[2]
    assert prints[0]["layout"] == "sparse (zero unstored entries)" and prints[0]["shape"] == [30, 20]
    changed = X.copy()
    changed.data[5] += 0.5
    assert data_fingerprint(*validated_data(changed))["sha256"] != prints[0]["sha256"]
    missing = data_fingerprint(*validated_data(X, missing="unstored"))
    assert missing["sha256"] != prints[0]["sha256"] and "missing" in missing["layout"]
    dense = X.toarray()
    assert (
        data_fingerprint(*validated_data(dense))["sha256"]
        != data_fingerprint(*validated_data(dense, M=np.full(dense.shape, 0.5)))["sha256"]
    )


def test_sparse_survey_resumes_to_the_same_result(tmp_path):
    import scipy.sparse

    X = scipy.sparse.random(30, 20, density=0.3, format="csr", random_state=2)
    kw = dict(restarts=2, max_iterations=30, stable_labels=2, key=4, method="mu")
    plain = jnmf.consensus(X, [3, 2], **kw)
    checkpointed = jnmf.consensus(X, [3, 2], checkpoint=tmp_path, **kw)
    (tmp_path / "chunk-00000.npz").unlink()
    resumed = jnmf.consensus(X.tocoo(), [3, 2], checkpoint=tmp_path, **kw)  # same matrix, other format
    for a in (checkpointed, resumed):
        for x, y in zip(plain, a, strict=True):
            assert np.array_equal(x.consensus, y.consensus) and np.array_equal(x.objectives, y.objectives)
            assert np.array_equal(x.L, y.L) and np.array_equal(x.R, y.R)
    X.data[0] += 1.0
    with pytest.raises(ValueError, match="other data: sha256"):
        jnmf.consensus(X, [3, 2], checkpoint=tmp_path, **kw)
