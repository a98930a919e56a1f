"""The ``jnmf`` command line, run as users run it: ``python -m jnmf ...`` on real files.

Each subprocess pays the JAX import and, for successful runs, compilation; the
runs share a persistent JAX compilation cache (same shapes, same programs), so
only the first fit of each shape compiles.  The data is a 12 x 8 matrix of
quarter-integers: every file format stores it exactly, so every format must
give the very same fit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jnmf.cli import _jsonable, answer_line, dispersion, main, parse_ranks, pick_rank
from jnmf.io import MatrixFileError, read_matrix
from jnmf.plot import average_linkage_order

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIT_FILES = ("factors.npz", "L.csv", "R.csv", "summary.json", "convergence.png")
FIT_SUMMARY_KEYS = {
    "objective",
    "relative_error",
    "iterations",
    "status",
    "timings",
    "settings",
    "input",
    "versions",
}
FAST = ("--rank", "2", "--max-iterations", "50")

ROWS, COLUMNS = 12, 8
ROW_NAMES = [f"gene{i}" for i in range(ROWS)]
COLUMN_NAMES = [f"sample{j}" for j in range(COLUMNS)]


@pytest.fixture(autouse=True)
def _no_default_compile_cache(monkeypatch):
    # in-process main() calls would otherwise point this pytest process's JAX cache at
    # ~/.cache/jnmf/jax; the subprocesses get theirs from JAX_COMPILATION_CACHE_DIR (env)
    monkeypatch.setenv("JNMF_NO_COMPILE_CACHE", "1")


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    # quarter-integers are exact in decimal text, Matrix Market and float32 alike
    return np.random.default_rng(0).integers(1, 40, (ROWS, COLUMNS)) / 4.0


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    environment = dict(os.environ)
    # this checkout's jnmf, not an installed one
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO), environment.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    environment["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax-cache"))
    environment["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    environment["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    environment.pop("JNMF_TRACEBACK", None)
    return environment


def run_cli(env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jnmf", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def assert_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    """Exit status ``code`` and exactly one stderr line, ``jnmf: error: ...`` naming the fragments."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("jnmf: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.returncode == code, (result.returncode, lines[0])


def write_csv(path: Path, rows: list[list], delimiter: str = ",") -> Path:
    path.write_text("\n".join(delimiter.join(str(c) for c in row) for row in rows) + "\n")
    return path


def labeled_rows(values: np.ndarray, corner: str = "gene") -> list[list]:
    return [[corner, *COLUMN_NAMES]] + [[name, *row] for name, row in zip(ROW_NAMES, values)]


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path


def read_csv_cells(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- fit: every format


@pytest.fixture(scope="module")
def npy_fit(tmp_path_factory, env, data):
    """One fit of the .npy file, the reference every other format must reproduce."""
    work = tmp_path_factory.mktemp("npy")
    np.save(work / "data.npy", data.astype(np.float32))
    result = run_cli(env, work, "fit", "data.npy", *FAST, "--out", "out")
    assert_ok(result)
    return work / "out", result


def test_fit_npy_writes_every_file(npy_fit, data):
    out, result = npy_fit
    for name in FIT_FILES:
        assert (out / name).is_file(), name
    assert_png(out / "convergence.png")
    summary = json.loads((out / "summary.json").read_text())
    assert FIT_SUMMARY_KEYS <= set(summary)
    assert set(summary["timings"]) >= {"load", "fit", "total"}
    assert set(summary["versions"]) >= {"jnmf", "jax", "numpy"}
    assert summary["input"]["shape"] == [ROWS, COLUMNS]
    assert summary["settings"]["method"] == "ahals"  # the default of jnmf.fit
    assert summary["status"] in ("converged", "max_iterations", "stuck", "nonfinite")
    assert 1 <= summary["iterations"] <= 50
    factors = np.load(out / "factors.npz")
    L, R = factors["L"], factors["R"]
    assert L.shape == (ROWS, 2) and R.shape == (2, COLUMNS)
    assert np.all(L >= 0) and np.all(R >= 0)
    expected = np.linalg.norm(data - L.astype(float) @ R) / np.linalg.norm(data)
    assert summary["relative_error"] == pytest.approx(expected, rel=1e-4)
    assert summary["relative_error"] < 0.5  # fitted: a random start of this data is at ~0.74
    # no names in a .npy file: generated ones, components c1..ck
    assert read_csv_cells(out / "L.csv")[0] == ["", "c1", "c2"]
    assert read_csv_cells(out / "L.csv")[1][0] == "row1"
    assert read_csv_cells(out / "R.csv")[0][1:] == [f"col{j + 1}" for j in range(COLUMNS)]
    assert "objective" in result.stdout


def write_npz_single(work: Path, data: np.ndarray) -> tuple[str, ...]:
    # integer data is converted to float by the reader
    np.savez(work / "data.npz", counts=(data * 4).astype(np.int64))
    return ("data.npz",)


def write_npz_keyed(work: Path, data: np.ndarray) -> tuple[str, ...]:
    np.savez(work / "data.npz", other=np.ones((3, 3)), Y=data)
    return ("data.npz", "--key", "Y")


def write_plain_csv(work: Path, data: np.ndarray) -> tuple[str, ...]:
    write_csv(work / "data.csv", data.tolist())
    return ("data.csv",)


def write_tsv_with_header(work: Path, data: np.ndarray) -> tuple[str, ...]:
    write_csv(work / "data.tsv", [COLUMN_NAMES, *data.tolist()], delimiter="\t")
    return ("data.tsv",)


def write_whitespace_txt(work: Path, data: np.ndarray) -> tuple[str, ...]:
    np.savetxt(work / "data.txt", data, header="whitespace-separated, with a comment line")
    return ("data.txt",)


def write_mtx(work: Path, data: np.ndarray) -> tuple[str, ...]:
    scipy_io = pytest.importorskip("scipy.io")
    sparse = pytest.importorskip("scipy.sparse")
    scipy_io.mmwrite(work / "data.mtx", sparse.coo_matrix(data))
    return ("data.mtx",)


@pytest.mark.parametrize(
    "writer",
    [
        write_npz_single,
        write_npz_keyed,
        write_plain_csv,
        write_tsv_with_header,
        write_whitespace_txt,
        write_mtx,
    ],
    ids=lambda w: w.__name__.removeprefix("write_"),
)
def test_every_format_gives_the_npy_fit(writer, tmp_path, env, data, npy_fit):
    scale = 4.0 if writer is write_npz_single else 1.0  # that one stores the data times 4, as integers
    args = writer(tmp_path, data)
    result = run_cli(env, tmp_path, "fit", *args, *FAST, "--out", "out", "--quiet")
    assert_ok(result)
    assert result.stdout == ""  # --quiet
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    reference = json.loads((npy_fit[0] / "summary.json").read_text())
    assert summary["input"]["shape"] == [ROWS, COLUMNS]
    # the same numbers in another container: the same fit from the same seed
    assert summary["relative_error"] == pytest.approx(reference["relative_error"], rel=1e-5)
    assert summary["objective"] == pytest.approx(reference["objective"] * scale**2, rel=1e-4)


def test_csv_names_are_carried_to_the_factors(tmp_path, env, data):
    write_csv(tmp_path / "data.csv", labeled_rows(data))
    result = run_cli(env, tmp_path, "fit", "data.csv", *FAST, "--out", "out")
    assert_ok(result)
    L_cells = read_csv_cells(tmp_path / "out" / "L.csv")
    R_cells = read_csv_cells(tmp_path / "out" / "R.csv")
    assert L_cells[0] == ["gene", "c1", "c2"]  # the input's corner label is kept
    assert [row[0] for row in L_cells[1:]] == ROW_NAMES
    assert R_cells[0] == ["", *COLUMN_NAMES]
    assert [row[0] for row in R_cells[1:]] == ["c1", "c2"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["input"]["row_names"] and summary["input"]["column_names"]
    # the written factors read back through the same reader, names detected
    L = read_matrix(tmp_path / "out" / "L.csv")
    assert L.row_names == ROW_NAMES and L.column_names == ["c1", "c2"]
    assert np.array_equal(L.values, np.load(tmp_path / "out" / "factors.npz")["L"])


def test_missing_matplotlib_skips_pngs_with_one_hint(tmp_path, env, data):
    # a matplotlib that fails to import, ahead of the real one on the path
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('matplotlib hidden by the test')\n")
    no_plots = dict(env, PYTHONPATH=os.pathsep.join([str(tmp_path / "fake"), env["PYTHONPATH"]]))
    np.save(tmp_path / "data.npy", data)
    result = run_cli(no_plots, tmp_path, "fit", "data.npy", *FAST, "--out", "out")
    assert_ok(result)
    hints = [line for line in result.stderr.splitlines() if "jnmf[plot]" in line]
    assert len(hints) == 1
    assert (tmp_path / "out" / "summary.json").is_file()
    assert not list((tmp_path / "out").glob("*.png"))


# ----------------------------------------------------------------------------- rank and demo


def test_rank_survey(tmp_path, env, data):
    write_csv(tmp_path / "data.csv", labeled_rows(data))
    result = run_cli(
        env, tmp_path, "rank", "data.csv", "--ranks", "2-3", "--restarts", "4", "--max-iterations", "50",
        "--cv", "speckled", "--cv-repeats", "2",
    )  # fmt: skip
    assert_ok(result)
    out = tmp_path / "jnmf-rank"  # the default --out
    assert "Cross-validation picks rank" in result.stdout
    cv = json.loads((out / "summary.json").read_text())["cross_validation"]
    assert cv["ranks"] == [2, 3] and cv["repeats"] == 2 and cv["selected_rank"] in (2, 3)
    assert all(np.isfinite(cv["mean_test_error"]))
    assert_png(out / "cv_error.png")
    summary = json.loads((out / "summary.json").read_text())
    # each criterion's pick, and the answer, on the last line before the file list
    picks = summary["picks"]
    assert picks == {"consensus": summary["picked_rank"], "cross_validation": cv["selected_rank"]}
    assert answer_line(picks["consensus"], picks["cross_validation"]) in result.stdout
    assert f"Consensus (cophenetic correlation) picks rank {summary['picked_rank']}:" in result.stdout
    assert "consensus pick" in summary["answer_rule"]
    assert [r["rank"] for r in summary["ranks"]] == [2, 3]
    for row in summary["ranks"]:
        assert {"cophenetic", "dispersion", "silhouette", "relative_error"} <= set(row)
        assert 0 <= row["dispersion"] <= 1
    assert summary["survey"]["seconds"] > 0 and summary["survey"]["compilations"] >= 0
    assert summary["picked_rank"] in (2, 3) and summary["reason"]
    assert summary["settings"]["method"] == "kl"
    consensus = np.load(out / "consensus.npz")
    C = consensus["consensus_rank2"]
    assert C.shape == (COLUMNS, COLUMNS) and np.allclose(np.diag(C), 1.0)
    assert summary["ranks"][0]["dispersion"] == pytest.approx(dispersion(C))
    factors = np.load(out / "factors.npz")
    assert factors["L"].shape == (ROWS, summary["picked_rank"])
    for name in ("rank_survey.png", "convergence.png", "consensus_rank2.png", "consensus_rank3.png"):
        assert_png(out / name)


def test_demo_reduced(tmp_path, env):
    # without --out the demo writes into a new temporary directory and says where
    work, temporary = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    temporary.mkdir()
    result = run_cli(
        {**env, "TMPDIR": str(temporary)}, work, "demo", "--ranks", "2", "3", "--restarts", "4",
        "--max-iterations", "100",
    )  # fmt: skip
    assert_ok(result)
    assert list(work.iterdir()) == []  # nothing in the working directory
    (out,) = temporary.glob("jnmf-demo-*")
    assert f"writing the results to {out} " in result.stdout
    assert "Golub" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert f"Consensus (cophenetic) picks {summary['picked_rank']}; answer: {summary['picked_rank']}\n" in (
        result.stdout
    )
    assert summary["picks"] == {"consensus": summary["picked_rank"], "cross_validation": None}
    assert "ALL-B" in result.stdout and "AML" in result.stdout  # clusters vs. cell types
    assert "total wall time" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert {"ranks", "picked_rank", "reason", "timings", "versions", "settings"} <= set(summary)
    assert set(summary["clusters_vs_class"]) == {"2", "3"}
    counts = summary["clusters_vs_class"]["2"]
    assert sum(sum(c.values()) for c in counts.values()) == 38  # every sample in one cluster
    assert np.load(out / "factors.npz")["L"].shape == (5000, summary["picked_rank"])
    for name in ("rank_survey.png", "convergence.png", "consensus_rank2.png", "consensus_rank3.png"):
        assert_png(out / name)


# ----------------------------------------------------------------------------- errors
# Each bad input of the list runs as a real process; the variants of a kind run
# main() in this process (same code path after the interpreter starts, no JAX start-up).


def run_in_process(capsys, *args) -> subprocess.CompletedProcess:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


@pytest.fixture()
def good_npy(tmp_path, data, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # in-process runs write their default --out here
    np.save(tmp_path / "data.npy", data)
    return tmp_path / "data.npy"


def test_missing_file(tmp_path, env):
    assert_error(
        run_cli(env, tmp_path, "fit", "nothere.csv", "--rank", "2"), 1, "nothere.csv", "no such file"
    )


def test_non_numeric_csv(tmp_path, env, data):
    rows = labeled_rows(data)
    rows[3][4] = "abc"
    write_csv(tmp_path / "data.csv", rows)
    assert_error(run_cli(env, tmp_path, "fit", "data.csv", "--rank", "2"), 1, "'abc'", "line 4", "column 5")


def test_negative_entry(tmp_path, env, data):
    bad = data.copy()
    bad[2, 5] = -1.0
    np.save(tmp_path / "data.npy", bad)
    assert_error(run_cli(env, tmp_path, "fit", "data.npy", "--rank", "2"), 1, "negative", "row 3, column 6")


def test_nan_entry(tmp_path, env, data):
    rows = data.tolist()
    rows[1][1] = "NaN"
    write_csv(tmp_path / "data.csv", rows)
    assert_error(run_cli(env, tmp_path, "fit", "data.csv", "--rank", "2"), 1, "NaN", "row 2, column 2")
    # --missing nan: the entry is a missing value, neither fitted nor scored
    result = run_cli(env, tmp_path, "fit", "data.csv", "--rank", "2", "--missing", "nan", "--out", "m")
    assert_ok(result)
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert np.isfinite(summary["relative_error"]) and summary["relative_error"] < 1


def test_npz_with_several_arrays_needs_key(tmp_path, env, data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "data.npz", first=data, second=data)
    path = tmp_path / "data.npz"
    assert_error(run_cli(env, tmp_path, "fit", "data.npz", "--rank", "2"), 1, "first, second", "--key")
    assert_error(run_in_process(capsys, "fit", path, "--rank", "2", "--key", "third"), 1, "'third'")


def test_unsupported_and_corrupt_files(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.xlsx").write_bytes(b"PK")
    assert_error(run_in_process(capsys, "fit", tmp_path / "data.xlsx", "--rank", "2"), 1, "unsupported")
    (tmp_path / "data.npy").write_bytes(b"not a numpy file")
    assert_error(run_in_process(capsys, "fit", tmp_path / "data.npy", "--rank", "2"), 1, "cannot read")
    (tmp_path / "ragged.csv").write_text("1,2,3\n4,5\n")
    assert_error(
        run_in_process(capsys, "fit", tmp_path / "ragged.csv", "--rank", "1"), 1, "line 2 has 2 fields"
    )


def test_input_is_checked_before_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "L.csv").write_text("keep me\n")  # would need --force
    (tmp_path / "data.xlsx").write_bytes(b"PK")
    assert_error(run_in_process(capsys, "fit", "data.xlsx", *FAST, "--out", out), 1, "unsupported file type")
    assert_error(run_in_process(capsys, "fit", "gone.csv", *FAST, "--out", out), 1, "gone.csv: no such file")
    assert_error(run_in_process(capsys, "rank", "data.xlsx", "--out", out), 1, "unsupported file type")
    assert_error(run_in_process(capsys, "programs", "data.xlsx", "--out", out), 1, "unsupported file type")
    (tmp_path / "data.npy").write_bytes(b"not a numpy file")
    # a supported input with a bad --key is refused before the output directory, too
    assert_error(run_in_process(capsys, "fit", "data.npy", *FAST, "--key", "Y", "--out", out), 1, "--key")


@pytest.mark.skipif(
    not Path("/proc/self").is_dir(), reason="needs Linux's /proc (a file system nobody writes)"
)
def test_unwritable_out_is_reported_before_reading_the_input(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a corrupt input: were --out checked after reading, the error would be "cannot read"
    (tmp_path / "data.npy").write_bytes(b"not a numpy file")
    # /proc refuses new files even to root, whom os.access calls "writable"
    result = run_in_process(capsys, "fit", "data.npy", *FAST, "--out", "/proc/jnmf-out")
    assert_error(result, 1, "cannot create output directory /proc/jnmf-out", "not writable")
    result = run_in_process(capsys, "fit", "data.npy", *FAST, "--out", "/proc", "--force")
    assert_error(result, 1, "output directory /proc is not writable")


def test_planned_output_that_is_a_directory_is_refused_before_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.npy").write_bytes(b"not a numpy file")
    (tmp_path / "out" / "summary.json").mkdir(parents=True)
    result = run_in_process(capsys, "fit", "data.npy", *FAST, "--out", "out", "--force")
    assert_error(result, 1, str(Path("out") / "summary.json"), "exists and is not a file")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".txt"])
def test_gzipped_text_reads_as_the_plain_text(tmp_path, data, suffix):
    import gzip

    plain = tmp_path / f"data{suffix}"
    if suffix == ".txt":
        np.savetxt(plain, data)
    else:
        write_csv(plain, labeled_rows(data), delimiter="\t" if suffix == ".tsv" else ",")
    packed = tmp_path / f"data{suffix}.GZ"  # the suffix is matched case-insensitively
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    want, got = read_matrix(plain), read_matrix(packed)
    assert np.array_equal(got.values, want.values) and got.values.shape == (ROWS, COLUMNS)
    assert got.row_names == want.row_names and got.column_names == want.column_names
    assert (got.row_names is None) == (suffix == ".txt")


def test_cli_fits_a_csv_gz(tmp_path, data, capsys, monkeypatch):
    import gzip

    monkeypatch.chdir(tmp_path)
    text = "\n".join(",".join(map(str, row)) for row in labeled_rows(data)) + "\n"
    (tmp_path / "data.csv.gz").write_bytes(gzip.compress(text.encode()))
    assert run_in_process(capsys, "fit", "data.csv.gz", *FAST, "--out", "out", "--quiet").returncode == 0
    assert [row[0] for row in read_csv_cells(tmp_path / "out" / "L.csv")[1:]] == ROW_NAMES


def test_bad_rank_and_unknown_method(env, good_npy):
    assert_error(run_cli(env, good_npy.parent, "fit", "data.npy", "--rank", "0"), 2, "--rank", "positive")
    result = run_cli(env, good_npy.parent, "fit", "data.npy", "--rank", "2", "--method", "svd")
    assert_error(result, 2, "--method", "'svd'")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--rank", "9"), ("--rank", "at most", "8")),  # min(12, 8) = 8
        (("--rank", "two"), ("--rank", "'two'")),
        (("--rank", "2", "--init", "ones"), ("--init", "'ones'")),
        (("--rank", "2", "--lambda-1L", "-1"), ("--lambda-1L",)),
        (("--rank", "2", "--tol", "nan"), ("--tol",)),
        (("--rank", "2", "--method", "anls", "--gamma-2R", "1"), ("gamma_2R",)),  # jnmf's own ValueError
        (("--rank", "2", "--colour", "red"), ("--colour",)),
        ((), ("--rank",)),
    ],
    ids=[
        "rank-too-large",
        "rank-text",
        "init",
        "negative-penalty",
        "nan-tol",
        "unsupported-penalty",
        "unknown-option",
        "no-rank",
    ],  # fmt: skip
)
def test_usage_errors(args, fragments, good_npy, capsys):
    assert_error(run_in_process(capsys, "fit", good_npy, *args), 2, *fragments)


def test_malformed_ranks(env, good_npy, capsys):
    assert_error(run_cli(env, good_npy.parent, "rank", "data.npy", "--ranks", "2-x"), 2, "--ranks", "'2-x'")
    for ranks in ("5-3", "1-3", "0", "", "2,,3"):
        assert_error(run_in_process(capsys, "rank", good_npy, "--ranks", ranks), 2, "--ranks")
    assert_error(run_in_process(capsys, "rank", good_npy, "--ranks", "2-9"), 2, "min(rows, columns)")


def test_no_or_unknown_command(capsys):
    assert_error(run_in_process(capsys), 2, "COMMAND")
    assert_error(run_in_process(capsys, "factorize"), 2, "'factorize'")


def test_unwritable_out(env, good_npy, capsys):
    blocker = good_npy.parent / "a-file"
    blocker.write_text("")
    result = run_cli(env, good_npy.parent, "fit", "data.npy", *FAST, "--out", blocker / "out")
    assert_error(result, 1, "cannot create output directory", "not a directory")
    assert_error(run_in_process(capsys, "fit", good_npy, *FAST, "--out", blocker), 1, "not a directory")
    assert_error(run_in_process(capsys, "demo", "--out", blocker / "a" / "b"), 1, "not a directory")


def test_existing_outputs_need_force(env, good_npy, capsys):
    out = good_npy.parent / "out"
    out.mkdir()
    (out / "L.csv").write_text("keep me\n")
    result = run_cli(env, good_npy.parent, "fit", "data.npy", *FAST, "--out", "out")
    assert_error(result, 1, str(Path("out") / "L.csv"), "--force")
    assert (out / "L.csv").read_text() == "keep me\n"
    assert_ok(run_cli(env, good_npy.parent, "fit", "data.npy", *FAST, "--out", "out", "--force", "--quiet"))
    assert (out / "L.csv").read_text().startswith(",c1,c2")
    # the survey commands check all their files before any work, too
    (out / "consensus.npz").write_text("")
    assert_error(run_in_process(capsys, "rank", good_npy, "--out", out), 1, "factors.npz", "--force")
    assert_error(run_in_process(capsys, "demo", "--out", out), 1, "factors.npz", "--force")


# A usage error, then whether JAX was imported by the time main() returned (or raised
# SystemExit, as --help does): one line "<exit code> <jax imported>".
_USAGE_PROBE = """
import sys
from jnmf import cli
code = None
try:
    code = cli.main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print(code, "jax" in sys.modules)
"""


def test_usage_errors_are_reported_before_jax_is_imported(env, good_npy):
    """Every check that needs no data runs before JAX (or any solver) is imported: a
    usage error prints at once (issue 15: it took 1.2-1.4 s).  Fails on the code before
    the lazy imports, where ``jnmf.cli`` imported all of jnmf and JAX first."""
    folder = good_npy.parent
    (folder / "out").mkdir()
    (folder / "out" / "summary.json").write_text("{}")
    (folder / "a-file").write_text("")
    cases = {
        ("fit", "missing.csv", "--rank", "3"): 1,
        ("fit", "data.txt", "--rank", "3"): 1,  # missing, and a type jnmf cannot read
        ("fit", "data.npy", "--rank", "x"): 2,
        ("fit", "data.npy", "--rank", "3", "--method", "nope"): 2,
        ("fit", "data.npy", "--rank", "3", "--out", "out"): 1,  # exists, no --force
        ("fit", "data.npy", "--rank", "3", "--out", "a-file/out"): 1,  # unwritable
        ("rank", "missing.csv"): 1,
        ("rank", "data.npy", "--ranks", "5-2"): 2,
        ("demo", "--out", "a-file/x"): 1,
        ("programs", "missing.csv"): 1,
        ("--help",): 0,
        ("fit", "--help"): 0,
    }
    for args, code in cases.items():
        result = subprocess.run(
            [sys.executable, "-c", _USAGE_PROBE, *args], cwd=folder, env=env, capture_output=True, text=True
        )
        assert result.stdout.strip().splitlines()[-1] == f"{code} False", (args, result.stdout, result.stderr)


def test_import_jnmf_is_lazy_and_complete(env, tmp_path):
    """``import jnmf`` imports no JAX; the first public name used imports every one, as an
    eager import did; a submodule named like a public function leaves the function in
    place, whichever is imported first."""
    probe = """
import sys, types
import jnmf
assert "jax" not in sys.modules
from jnmf.programs import prepare  # the submodule first: jnmf.programs stays the function
import jnmf.consensus
assert callable(jnmf.programs) and not isinstance(jnmf.programs, types.ModuleType)
assert callable(jnmf.consensus) and not isinstance(jnmf.consensus, types.ModuleType)
assert not isinstance(jnmf.giqpm, types.ModuleType)
for name in jnmf.__all__:
    assert getattr(jnmf, name) is not None, name
assert jnmf.rules.HALS is jnmf.HALS and jnmf.fitting.fit is jnmf.fit
assert set(jnmf.__all__) <= set(dir(jnmf))
from jnmf import *  # noqa
assert fit is jnmf.fit
try:
    jnmf.no_such_name
except AttributeError as e:
    assert "no_such_name" in str(e)
else:
    raise AssertionError("no AttributeError")
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_cli_method_names_are_the_registry():
    """The names and descriptions the CLI reads without JAX (jnmf.names) are the method
    registry's, and the defaults it shows are the solvers'."""
    import importlib

    import jnmf
    from jnmf import names
    from jnmf.driver import DEFAULT_STOPPING
    from jnmf.rules import DEFAULT_METHOD

    assert list(names.METHOD_DESCRIPTIONS) == list(jnmf.METHODS)
    assert all(jnmf.METHODS[name][0] == text for name, text in names.METHOD_DESCRIPTIONS.items())
    assert names.DEFAULT_METHOD == DEFAULT_METHOD
    assert (names.DEFAULT_MAX_ITERATIONS, names.DEFAULT_TOL) == (
        DEFAULT_STOPPING.max_iterations,
        DEFAULT_STOPPING.tol,
    )
    programs = importlib.import_module("jnmf.programs")  # jnmf.programs is the function
    assert (programs.DEFAULT_METHOD, programs.DEFAULT_TOL, programs.DEFAULT_REL_TOL) == (
        names.PROGRAMS_METHOD,
        names.PROGRAMS_TOL,
        names.PROGRAMS_REL_TOL,
    )


# ----------------------------------------------------------------------------- help


def test_help_lists_every_option_with_its_default(env, tmp_path, capsys):
    top = run_cli(env, tmp_path, "--help")
    assert_ok(top)
    for command in ("demo", "fit", "rank"):
        assert command in top.stdout
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--method", "--init", "--restarts", "--lambda-1L", "--gamma-2R", "--max-iterations",
                   "--tol", "--seed", "--float64", "--out", "--force", "--quiet", "--key", "--header",
                   "--row-names"):  # fmt: skip
        assert option in text, option
    assert "(default: ahals)" in text and "(default: random)" in text and "(default: jnmf-fit)" in text
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "(default: 2-5)" in text and "(default: kl)" in text
    assert "(default: a new temporary directory, printed)" in " ".join(text.split())


# ----------------------------------------------------------------------------- helpers, in process


def test_parse_ranks():
    assert parse_ranks("2-5") == [2, 3, 4, 5]
    assert parse_ranks("2,3,5") == [2, 3, 5]
    assert parse_ranks("6,2-3, 3") == [2, 3, 6]


def test_pick_rank_is_the_last_before_the_first_drop():
    assert pick_rank([2, 3, 4, 5], [0.99, 0.995, 0.97, 0.98])[0] == 3
    assert pick_rank([2, 3, 4], [0.99, 0.98, 0.999])[0] == 2
    rank, reason = pick_rank([2, 3, 4], [0.9, 0.95, 0.99])
    assert rank == 4 and "larger ranks" in reason
    # a difference the 4-decimal table does not show is not a drop
    assert pick_rank([2, 3, 4], [0.99991, 0.99989, 0.9])[0] == 3


def test_answer_line_names_each_criterion_and_the_answer():
    assert answer_line(2, 4) == (
        "Consensus (cophenetic) picks 2; cross-validation picks 4; answer: 2, the consensus pick "
        "(they disagree: compare the table and cv_error.png)"
    )
    assert answer_line(3, 3).endswith("answer: 3, the consensus pick (they agree)")
    assert answer_line(5, None) == "Consensus (cophenetic) picks 5; answer: 5"


def test_rank_help_documents_which_pick_is_the_answer(capsys):
    with pytest.raises(SystemExit):
        main(["rank", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the answer is the consensus pick" in text and "second opinion" in text


def test_dispersion_extremes():
    crisp = np.kron(np.eye(2), np.ones((3, 3)))  # two clusters every restart agrees on
    assert dispersion(crisp) == 1.0
    assert dispersion(np.full((4, 4), 0.5)) == 0.0


def test_average_linkage_order_makes_clusters_contiguous():
    groups = np.array([0, 1, 0, 2, 1, 0, 2])
    C = (groups[:, None] == groups[None, :]).astype(float)
    order = average_linkage_order(1.0 - C)
    assert sorted(order) == list(range(len(groups)))
    ordered = groups[order]
    # each group appears as one run
    assert len([i for i in range(1, len(ordered)) if ordered[i] != ordered[i - 1]]) == 2


def test_reader_header_and_row_name_detection(tmp_path):
    # R's write.table: the header has no cell above the row names
    path = write_csv(tmp_path / "r.csv", [["a", "b"], ["x", 1, 2], ["y", 3, 4]])
    m = read_matrix(path)
    assert m.column_names == ["a", "b"] and m.row_names == ["x", "y"]
    assert np.array_equal(m.values, [[1, 2], [3, 4]])
    # numeric column names need --header; a numeric first column stays data
    path = write_csv(tmp_path / "n.csv", [[10, 20], [1, 2], [3, 4]])
    assert read_matrix(path).values.shape == (3, 2)
    forced = read_matrix(path, header=True)
    assert forced.column_names == ["10", "20"] and forced.values.shape == (2, 2)
    assert read_matrix(path, row_names=True).row_names == ["10", "1", "3"]
    # quoted names may hold the delimiter; semicolons are detected in a .txt
    (tmp_path / "q.csv").write_text('gene,"s, 1",s2\n"a, x",1,2\nb,3,4\n')
    quoted = read_matrix(tmp_path / "q.csv")
    assert quoted.column_names == ["s, 1", "s2"] and quoted.row_names == ["a, x", "b"]
    assert read_matrix(write_csv(tmp_path / "s.txt", [[1, 2], [3, 4]], delimiter=";")).values.shape == (2, 2)
    with pytest.raises(MatrixFileError, match="holds no data"):
        read_matrix(write_csv(tmp_path / "empty.csv", [["# only a comment"]]))


def test_summaries_hold_strict_json():
    # a diverged fit's NaN objective must not make summary.json unreadable to strict parsers
    converted = _jsonable(
        {"objective": float("nan"), "objectives": [np.float32(2.5), np.inf], "n": np.int64(3)}
    )
    assert converted == {"objective": None, "objectives": [2.5, None], "n": 3}


def test_plot_functions_return_figures_for_notebooks():
    pytest.importorskip("matplotlib")
    from jnmf import plot

    history = np.array([5.0, 3.0, 2.5, np.nan, np.nan])
    fig = plot.convergence(history, stride=10)
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [10, 20, 30]  # iterations stride, 2 stride, ...; NaN tail dropped
    groups = np.array([0, 0, 1, 1])
    C = (groups[:, None] == groups[None, :]).astype(float)
    heatmap = plot.consensus_heatmap(C, labels=list("abcd"), classes=["x", "x", "y", "y"])
    assert len(heatmap.axes) == 3  # class bar, matrix, colour bar
    survey_fig = plot.rank_survey([2, 3], [0.99, 0.9], [0.8, 0.7], picked=2)
    assert len(survey_fig.axes[0].get_lines()) == 3


# ----------------------------------------------------------------------------- sparse files
def _write_10x(directory: Path, X) -> tuple[list[str], list[str]]:
    """A Cell Ranger v3 directory: matrix.mtx.gz (features x barcodes), features, barcodes."""
    import gzip

    import scipy.io
    import scipy.sparse

    directory.mkdir()
    with gzip.open(directory / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, scipy.sparse.coo_matrix(X))
    genes = [f"gene{i}" for i in range(X.shape[0])]
    cells = [f"AAAC{j:04d}-1" for j in range(X.shape[1])]
    with gzip.open(directory / "features.tsv.gz", "wt") as fh:
        fh.writelines(f"ENSG{i:05d}\t{g}\tGene Expression\n" for i, g in enumerate(genes))
    with gzip.open(directory / "barcodes.tsv.gz", "wt") as fh:
        fh.writelines(f"{c}\n" for c in cells)
    return genes, cells


def test_sparse_files_are_read_sparse(tmp_path, data):
    """.mtx.gz, a scipy-sparse .npz and a 10x directory come back as CSR (never densified),
    with the 10x names."""
    import gzip

    import scipy.io
    import scipy.sparse

    X = scipy.sparse.random(30, 20, density=0.2, format="csr", random_state=0)
    with gzip.open(tmp_path / "m.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, X)
    scipy.sparse.save_npz(tmp_path / "m.npz", X)
    genes, cells = _write_10x(tmp_path / "tenx", X)
    for path in (tmp_path / "m.mtx.gz", tmp_path / "m.npz", tmp_path / "tenx"):
        got = read_matrix(path)
        assert scipy.sparse.issparse(got.values), path
        np.testing.assert_allclose(got.values.toarray(), X.toarray(), rtol=1e-6)
    tenx = read_matrix(tmp_path / "tenx")
    assert tenx.row_names == genes and tenx.column_names == cells
    with pytest.raises(MatrixFileError, match="10x"):
        read_matrix(tmp_path)  # a directory without matrix.mtx


def test_cli_fits_a_10x_directory_and_mtx_gz(tmp_path, capsys, monkeypatch):
    """The CLI fits a 10x directory (names carried to L.csv / R.csv) and a .mtx.gz, sparse end
    to end (also with --missing unstored)."""
    import gzip

    import scipy.io
    import scipy.sparse

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    X = scipy.sparse.csr_matrix((rng.random((40, 3)) @ rng.random((3, 25))) * (rng.random((40, 25)) < 0.4))
    genes, cells = _write_10x(tmp_path / "tenx", X)
    result = run_in_process(
        capsys, "fit", tmp_path / "tenx", "--rank", "3", "--out", tmp_path / "o1", "--quiet"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "o1" / "summary.json").read_text())
    assert summary["relative_error"] < 0.9
    L_rows = (tmp_path / "o1" / "L.csv").read_text().splitlines()
    assert L_rows[1].split(",")[0] == genes[0]
    assert (tmp_path / "o1" / "R.csv").read_text().splitlines()[0].split(",")[1] == cells[0]
    with gzip.open(tmp_path / "m.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, X)
    out2 = tmp_path / "o2"
    result = run_in_process(
        capsys, "fit", tmp_path / "m.mtx.gz", "--rank", "3", "--out", out2, "--quiet", "--missing", "unstored"
    )
    assert result.returncode == 0, result.stderr
    assert np.load(out2 / "factors.npz")["L"].shape == (40, 3)
