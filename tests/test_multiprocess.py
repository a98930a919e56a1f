"""Fits spread over several processes (``jax.distributed``, multi-controller).

The multi-process tests start 2 and 4 CPU processes on 127.0.0.1 (tests/multiprocess_fit.py,
one CPU device each, JAX's gloo CPU collectives), each loading only its own rows with
``jnmf.data.process_rows``; they are bounded in time and killed on failure.  Their
factors must equal this process's one-device fit to 1e-10 (relative, float64: x64 is on
in conftest.py).  The loaders and argument checks run in-process on one device.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
import scipy.io
import scipy.sparse
from device_script import CHEAP_COMPILE  # (tests/ is on sys.path under pytest)
from jax.sharding import Mesh

import jnmf
from jnmf.data import RowShardedData, RowShardedSparse, check_mesh, gathered, local_rows, process_rows
from jnmf.io import MatrixFileError, matrix_shape, read_rows

M_ROWS, N_COLS, RANK, ITERATIONS = 16, 9, 3, 15
WORKER = Path(__file__).with_name("multiprocess_fit.py")
# seconds for all processes of one launch (start-up, compiling, fitting) on a loaded 2-core machine
LAUNCH_TIMEOUT = 240
# CPU only (no accelerator plugins probed); XLA's cheaper compile (about 30% less CPU for
# these tiny programs) changes only rounding, far below the 1e-10 compared
WORKER_ENV = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": CHEAP_COMPILE,
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A dense .npy and a sparse .mtx (general) matrix, plus their in-memory values."""
    root = tmp_path_factory.mktemp("multiprocess")
    rng = np.random.default_rng(0)
    dense = rng.random((M_ROWS, N_COLS))
    sparse = scipy.sparse.random(M_ROWS, N_COLS, density=0.4, random_state=2, format="csr")
    np.save(root / "dense.npy", dense)
    scipy.io.mmwrite(root / "sparse.mtx", sparse)
    return dict(root=root, dense=dense, sparse=sparse)


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(processes: int, cases: list[dict], out: Path) -> None:
    """Run ``processes`` workers to the end, or kill them all and fail (with their stderr)."""
    out.mkdir()
    port, spec = _free_port(), json.dumps(cases)
    logs = [out / f"stderr-{p}.txt" for p in range(processes)]
    procs = []
    try:
        for p in range(processes):
            cmd = [sys.executable, str(WORKER), str(p), str(processes), str(port), str(out), spec]
            procs.append(
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=logs[p].open("w"), env=WORKER_ENV)
            )
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while any(proc.poll() is None for proc in procs):
            if time.monotonic() > deadline or any(proc.returncode not in (None, 0) for proc in procs):
                break
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    failed = [(p, proc.returncode) for p, proc in enumerate(procs) if proc.returncode != 0]
    if failed:
        tails = "\n".join(f"--- process {p} (exit {rc}):\n{logs[p].read_text()[-3000:]}" for p, rc in failed)
        pytest.fail(f"multi-process fit failed or timed out after {LAUNCH_TIMEOUT} s:\n{tails}")


def _case(name, path, method, restarts=1, **extra):
    return dict(
        name=name, path=str(path), method=method, rank=RANK, iterations=ITERATIONS, restarts=restarts, **extra
    )


def _reference(Y, method, restarts=1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
        return jnmf.fit(
            Y, RANK, method=method, key=3, max_iterations=ITERATIONS, restarts=restarts, return_all=True
        )


def _relative(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def _check_case(out: Path, name: str, processes: int, reference, sparse: bool) -> None:
    ref_L, ref_R = np.asarray(reference.L), np.asarray(reference.R)
    starts = []
    for p in range(processes):
        got = np.load(out / f"{name}-{p}.npz")
        assert bool(got["sparse"]) == sparse
        assert _relative(got["L"], ref_L) < 1e-10 and _relative(got["R"], ref_R) < 1e-10
        assert _relative(got["R_local"], ref_R) < 1e-10
        assert int(got["best"]) == reference.best
        assert _relative(got["all_L"], reference.all_L) < 1e-10  # every restart's L, gathered too
        assert abs(float(got["objective"]) - reference.objective) <= 1e-10 * reference.objective
        # L stays spread: each process holds its own rows, and reads them without an exchange
        assert not bool(got["L_addressable"]) and int(got["L_devices"]) == processes
        start, rows = int(got["start"]), got["rows"]
        assert rows.shape == (M_ROWS // processes, RANK)
        assert _relative(rows, ref_L[start : start + len(rows)]) < 1e-10
        starts.append(start)
        assert "gathered()" in str(got["save_error"])
    assert starts == [p * M_ROWS // processes for p in range(processes)]


def test_two_processes_load_their_rows_and_fit_as_one(files, tmp_path):
    cases = [
        _case("dense-mu", files["root"] / "dense.npy", "mu", restarts=2),
        _case("sparse-hals", files["root"] / "sparse.mtx", "hals"),
        _case("negative", files["root"] / "dense.npy", "mu", negative_on=1),
    ]
    _launch(2, cases, tmp_path / "out")
    _check_case(tmp_path / "out", "dense-mu", 2, _reference(files["dense"], "mu", restarts=2), sparse=False)
    _check_case(tmp_path / "out", "sparse-hals", 2, _reference(files["sparse"], "hals"), sparse=True)
    # bad rows on process 1: both processes raise (none is left waiting), process 1 names them
    errors = [str(np.load(tmp_path / "out" / f"negative-{p}.npz")["error"]) for p in range(2)]
    assert "non-negative" in errors[1] and "rows 8:16 on process 1" in errors[1]
    assert "process(es) [1]" in errors[0]


def test_four_processes_fit_their_own_blocks_as_one(files, tmp_path):
    _launch(4, [_case("block-hals", files["root"] / "dense.npy", "hals", block=True)], tmp_path / "out")
    _check_case(tmp_path / "out", "block-hals", 4, _reference(files["dense"], "hals"), sparse=False)


# ------------------------------------------------------------------ in-process (one device)
def test_read_rows_reads_exactly_the_range(files, tmp_path):
    root, dense, sparse = files["root"], files["dense"], files["sparse"]
    symmetric = scipy.sparse.random(7, 7, density=0.4, random_state=4)
    symmetric = scipy.sparse.csr_matrix(symmetric + symmetric.T)
    scipy.io.mmwrite(tmp_path / "sym.mtx", symmetric, symmetry="symmetric")
    with open(root / "sparse.mtx", "rb") as src, __import__("gzip").open(tmp_path / "g.mtx.gz", "wb") as dst:
        dst.write(src.read())
    assert matrix_shape(root / "dense.npy") == matrix_shape(tmp_path / "g.mtx.gz") == (M_ROWS, N_COLS)
    np.testing.assert_array_equal(read_rows(root / "dense.npy", 3, 11), dense[3:11])
    for path in (root / "sparse.mtx", tmp_path / "g.mtx.gz"):
        block = read_rows(path, 5, 13)
        assert scipy.sparse.issparse(block) and block.shape == (8, N_COLS)
        np.testing.assert_array_equal(block.toarray(), sparse.toarray()[5:13])
    np.testing.assert_array_equal(read_rows(tmp_path / "sym.mtx", 2, 6).toarray(), symmetric.toarray()[2:6])
    with pytest.raises(MatrixFileError, match="not a range"):
        read_rows(root / "dense.npy", 4, M_ROWS + 1)
    np.save(tmp_path / "y.csv.npy", dense)
    (tmp_path / "y.csv").write_text("1,2\n")
    with pytest.raises(MatrixFileError, match="row ranges are read from"):
        read_rows(tmp_path / "y.csv", 0, 1)


def test_h5ad_rows_without_anndata_say_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "y.h5ad").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "anndata", None)  # import anndata fails
    with pytest.raises(MatrixFileError, match=r"optional package anndata"):
        read_rows(tmp_path / "y.h5ad", 0, 1)


def test_process_rows_on_one_process_equals_the_data(files):
    mesh = Mesh(np.array(jax.devices()[:1]), ("rows",))
    dense = process_rows(files["root"] / "dense.npy", mesh)
    assert isinstance(dense, RowShardedData) and dense.Y.dtype == np.float64
    np.testing.assert_array_equal(np.asarray(dense.Y), files["dense"])
    block = process_rows(files["dense"], mesh)
    np.testing.assert_array_equal(np.asarray(block.Y), files["dense"])
    sparse = process_rows(files["root"] / "sparse.mtx", mesh)
    assert isinstance(sparse, RowShardedSparse) and sparse.shape == (M_ROWS, N_COLS)
    stored = np.zeros((M_ROWS, N_COLS))  # one device: its block's row indices are global
    np.add.at(stored, (np.asarray(sparse.rows), np.asarray(sparse.cols)), np.asarray(sparse.values))
    np.testing.assert_array_equal(stored, files["sparse"].toarray())
    res = _reference(sparse, "mu")
    ref = _reference(files["sparse"], "mu")
    assert _relative(res.L, ref.L) < 1e-10 and _relative(res.R, ref.R) < 1e-10
    start, rows = local_rows(res.L)
    assert start == 0 and _relative(rows, ref.L) < 1e-10
    whole = res.gathered()
    assert isinstance(whole.L, np.ndarray) and _relative(whole.L, ref.L) < 1e-10
    assert gathered(None) is None


def test_process_rows_refuses_bad_input(files):
    mesh = Mesh(np.array(jax.devices()[:1]), ("rows",))
    with pytest.raises(ValueError, match=r"finite"):
        process_rows(np.array([[1.0, np.nan], [0.0, 1.0]]), mesh)
    with pytest.raises(ValueError, match=r"2-d"):
        process_rows(np.ones(3), mesh)
    with pytest.raises(ValueError, match=r"no such file"):
        process_rows(files["root"] / "absent.npy", mesh)
    explicit = jax.make_mesh((1,), ("rows",), axis_types=(jax.sharding.AxisType.Explicit,))
    with pytest.raises(ValueError, match=r"mesh must have an Auto axis"):
        check_mesh("mesh", explicit, M_ROWS)
