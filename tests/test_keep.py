"""Results you can keep (save/load), progress reports from the compiled loop, verbose
output, and the persistent compilation cache of the command line."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnmf
from jnmf import compile_cache
from jnmf.batch import run_restarts
from jnmf.fitting import starting_points
from jnmf.problem import build_problem
from jnmf.progress import listening
from jnmf.result_files import FORMAT_VERSION, META_KEY
from jnmf.rules import make_rule

REPO = Path(__file__).resolve().parents[1]
FIT_FIELDS = (
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


def small_data(dtype=np.float32, shape=(30, 20), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((shape[0], 4)) @ rng.random((4, shape[1])) + 0.05).astype(dtype)


def quiet_fit(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
        return jnmf.fit(*args, **kwargs)


def assert_same_arrays(a, b, name):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
    assert np.array_equal(a, b, equal_nan=True), name


# ----------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("return_all", [False, True])
def test_fit_result_round_trip(tmp_path, dtype, return_all):
    res = quiet_fit(
        small_data(dtype), 3, restarts=3, key=7, max_iterations=40, lambda_1L=0.1, return_all=return_all
    )
    written = jnmf.result_files.save(res, tmp_path / "fit")  # suffix added as NumPy does
    assert written == tmp_path / "fit.npz"
    back = jnmf.load(written)
    assert isinstance(back, jnmf.FitResult)
    for name in FIT_FIELDS:
        if getattr(res, name) is None:
            assert getattr(back, name) is None, name
        else:
            assert_same_arrays(getattr(res, name), getattr(back, name), name)
    assert back.best == res.best
    assert back.settings == res.settings
    assert back.status_name == res.status_name
    assert back.settings["penalties"] == {"lambda_1L": 0.1}
    assert back.settings["seed"] == 7 and back.settings["rank"] == 3 and back.settings["restarts"] == 3
    assert back.settings["dtype"] == np.dtype(dtype).name


def test_file_is_one_npz_without_pickle(tmp_path):
    res = quiet_fit(small_data(), 2, max_iterations=20)
    res.save(tmp_path / "r.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.npz"]
    with np.load(tmp_path / "r.npz", allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}  # an object array would raise here
    assert all(a.dtype != object for a in arrays.values())
    meta = json.loads(str(arrays[META_KEY][()]))
    assert meta["format_version"] == FORMAT_VERSION and meta["kind"] == "FitResult"
    assert meta["status_name"] == res.status_name
    assert set(meta["versions"]) >= {"jnmf", "jax", "numpy"}
    assert meta["settings"]["stopping"]["max_iterations"] == 20


def test_newer_format_version_is_refused_naming_both(tmp_path):
    res = quiet_fit(small_data(), 2, max_iterations=10)
    res.save(tmp_path / "r.npz")
    with np.load(tmp_path / "r.npz") as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(str(arrays[META_KEY][()]))
    meta["format_version"] = FORMAT_VERSION + 1
    arrays[META_KEY] = np.array(json.dumps(meta))
    np.savez(tmp_path / "newer.npz", **arrays)
    with pytest.raises(ValueError, match=rf"version {FORMAT_VERSION + 1}\b.*up to {FORMAT_VERSION}\b"):
        jnmf.load(tmp_path / "newer.npz")
    np.savez(tmp_path / "other.npz", L=np.ones(2))
    with pytest.raises(ValueError, match="not a jnmf result file"):
        jnmf.load(tmp_path / "other.npz")


def test_load_takes_the_name_given_to_save(tmp_path, monkeypatch):
    res = quiet_fit(small_data(), 2, max_iterations=10)
    monkeypatch.chdir(tmp_path)
    written = res.save("fit")  # the method returns the path it wrote
    assert written == Path("fit.npz") and written.exists()
    back = jnmf.load("fit")  # the same name: .npz appended because "fit" does not exist
    assert_same_arrays(res.L, back.L, "L")
    assert jnmf.load("fit.npz").best == res.best
    # a file that exists under the given name is read as it is, not name + ".npz"
    Path("fit").write_bytes(b"not a result")
    with pytest.raises(ValueError):
        jnmf.load("fit")
    with pytest.raises(FileNotFoundError, match=r"no saved jnmf result at nothing or nothing\.npz"):
        jnmf.load("nothing")


def test_sweep_result_round_trip(tmp_path):
    sw = jnmf.sweep(small_data(), 2, {"lambda_1L": [0.0, 0.1, 1.0]}, restarts=2, max_iterations=15)
    assert sw.save(tmp_path / "sweep") == tmp_path / "sweep.npz"
    back = jnmf.load(tmp_path / "sweep")
    assert isinstance(back, jnmf.SweepResult)
    assert list(back.settings) == ["lambda_1L"]
    assert_same_arrays(sw.settings["lambda_1L"], back.settings["lambda_1L"], "grid")
    for name in ("objectives", "loss", "iterations", "converged", "status", "sparsity_L", "best", "L", "R"):
        assert_same_arrays(getattr(sw, name), getattr(back, name), name)


def test_settings_are_json_and_keep_the_result_jittable():
    gen = np.random.default_rng(3)
    res = quiet_fit(small_data(), 2, max_iterations=10, key=gen, method="mu", W_1L=np.ones((30, 2)))
    json.dumps(res.settings, allow_nan=False)
    assert res.settings["seed"] is None and len(res.settings["key"]) == 2  # the drawn key is kept
    assert res.settings["penalties"]["W_1L"] == {"array": {"shape": [30, 2], "dtype": "float64"}}
    assert float(eqx.filter_jit(lambda r: jnp.sum(r.L))(res)) == pytest.approx(float(np.sum(res.L)))
    zero = jnmf.fit(np.zeros((5, 4)), 2)
    assert zero.settings["rank"] == 2


# ----------------------------------------------------------------------------- progress and verbose


class Recorder:
    def __init__(self):
        self.reports = []

    def update(self, iteration, objective, finished):
        self.reports.append((iteration, objective, finished))


@pytest.mark.parametrize(("method", "strategy"), [("mu", "vmap"), ("hals", "hybrid"), ("au", "map")])
def test_reports_do_not_change_the_fit(method, strategy, capsys):
    Y = small_data(np.float64)
    kwargs = dict(method=method, restarts=3, key=1, max_iterations=35, tol=1e-6, strategy=strategy)
    silent = quiet_fit(Y, 3, **kwargs)
    loud = quiet_fit(Y, 3, verbose=2, progress_every=5, **kwargs)
    assert "Epoch 05 reached" in capsys.readouterr().out
    for name in ("L", "R", "iterations", "status", "all_iterations", "objectives", "history"):
        assert_same_arrays(getattr(silent, name), getattr(loud, name), name)

    # the batch layer: what the loop reports, and that off means no reports at all
    problem = build_problem(jnp.asarray(Y), 3)
    L0, R0 = starting_points(problem.Y, 3, "random", 3, jax.random.key(1))
    rule = make_rule(method)
    results, recorders = [], []
    for every in (None, 5):
        recorders.append(Recorder())
        with listening(recorders[-1]):
            results.append(
                run_restarts(rule, problem, L0, R0, max_iterations=35, tol=1e-6, strategy=strategy,
                             progress_every=every)
            )  # fmt: skip
    off, on = results
    for name in ("L", "R", "iterations", "status", "objective", "history"):
        assert_same_arrays(getattr(off, name), getattr(on, name), name)
    assert recorders[0].reports == []
    reports = recorders[1].reports
    starts = [r for r in reports if r[0] == 0]
    assert len(starts) == (3 if strategy == "map" else 1)  # "map": each fit runs its own loop
    assert all(r[0] % 5 == 0 for r in reports)
    assert max(r[0] for r in reports) == (5 * (int(np.max(on.iterations)) // 5))
    if strategy != "map":  # one loop: the best objective over the batch, and the finished count
        last = reports[-1]
        assert last[1] == pytest.approx(float(np.min(on.history[:, last[0] - 1])), rel=1e-12)
        assert 0 <= last[2] <= 3


def test_verbose_lines_follow_scikit_learn(capsys):
    Y = small_data(np.float64)
    res = quiet_fit(Y, 3, method="mu", max_iterations=30, tol=0, verbose=1, history_size=30)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("Loop started after ")
    epochs = [
        re.fullmatch(r"Epoch (\d+) reached after ([\d.]+) seconds, objective: (\S+)", line)
        for line in lines[1:4]
    ]
    assert all(epochs), lines
    assert [int(m.group(1)) for m in epochs] == [10, 20, 30]
    # the objective in the user's units: the history entry of that iteration
    for m in epochs:
        assert float(m.group(3)) == pytest.approx(res.history[int(m.group(1)) - 1], rel=1e-5)
    assert lines[-1].startswith("Epoch 30 reached after ") and lines[-1].endswith("(max_iterations)")
    quiet_fit(Y, 3, method="mu", restarts=2, max_iterations=20, tol=0, verbose=2)
    out = capsys.readouterr().out
    assert "(best of 2 restarts, 0 finished)" in out
    assert re.search(r"restart 1: 20 iterations, objective \S+, max_iterations", out)
    assert out.count("<- best") == 1


def test_progress_bar_of_fit_goes_to_stderr(capsys):
    quiet_fit(small_data(), 2, max_iterations=20, tol=0, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "ahals rank 2" in captured.err


# ----------------------------------------------------------------------------- the command line


def cli_env(cache_home: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["XDG_CACHE_HOME"] = str(cache_home)
    for name in ("JNMF_NO_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR", "JNMF_TRACEBACK"):
        env.pop(name, None)
    return env


def test_cli_cache_is_filled_then_hit_and_bar_only_on_a_terminal(tmp_path):
    np.save(tmp_path / "d.npy", small_data(shape=(14, 9)))
    cache_home = tmp_path / "cache"
    command = [sys.executable, "-m", "jnmf", "fit", "d.npy", "--rank", "2", "--max-iterations", "30"]
    env = cli_env(cache_home)

    def piped(out):
        done = subprocess.run([*command, "--out", out], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done

    first = piped("a")
    cache = cache_home / "jnmf" / "jax"
    entries = {p.name for p in cache.iterdir()}
    assert entries, "the first run wrote nothing to the cache"
    second = piped("b")
    assert {p.name for p in cache.iterdir()} == entries  # every program came from the cache
    for done in (first, second):  # stderr is a pipe: no bar
        assert "\r" not in done.stderr and "it/s" not in done.stderr and "█" not in done.stderr
        assert "ahals rank 2" not in done.stderr
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["compile_cache"] == str(cache)
    assert jnmf.load(tmp_path / "b" / "result.npz").settings["rank"] == 2

    # stderr a terminal: the bar shows (the positive control of the test above)
    controller, terminal = pty.openpty()
    # a terminal of 0 columns (a fresh pty) gets no bar: give it a size
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    done = subprocess.run(
        [*command, "--out", "c"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=terminal
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert done.returncode == 0
    assert b"ahals rank 2" in shown and b"\r" in shown


def test_cache_switches(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.default_cache_dir() == tmp_path / "jnmf" / "jax"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert compile_cache.default_cache_dir() == Path.home() / ".cache" / "jnmf" / "jax"
    for value, off in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv("JNMF_NO_COMPILE_CACHE", value)
        assert compile_cache.compile_cache_disabled() is off
    monkeypatch.setenv("JNMF_NO_COMPILE_CACHE", "1")
    assert jnmf.enable_compile_cache(tmp_path / "never") is None
    assert not (tmp_path / "never").exists()


def test_off_compiles_no_callback_on_compiles_one():
    from jnmf import batch

    rule, problem = make_rule("mu"), build_problem(jnp.asarray(small_data()), 2)
    L0, R0 = starting_points(problem.Y, 2, "random", 2, jax.random.key(0))
    states, opts, strategy = batch._prepare(rule, problem, L0, R0, None, {}, 10, None, "vmap")
    args = (rule, problem, states, opts, 10, None, strategy)
    assert "callback" not in batch._restarts.lower(*args, None).as_text()
    assert "callback" in batch._restarts.lower(*args, jnp.asarray(10, jnp.int32)).as_text()


def test_programs_released_near_the_map_limit():
    # the guard before each fit: above the fraction of vm.max_map_count it drops JAX's
    # compiled programs (warning once), below it does nothing; programs recompile after
    if compile_cache.memory_map_count() is None:  # no /proc: nothing to guard
        assert compile_cache.release_programs_near_map_limit(0.0) is False
        return
    double = jax.jit(lambda x: 2 * x)
    assert float(double(1.5)) == 3.0
    assert compile_cache.release_programs_near_map_limit(1.0) is False
    with pytest.warns(RuntimeWarning, match="vm.max_map_count"):
        assert compile_cache.release_programs_near_map_limit(0.0) is True
    assert float(double(2.5)) == 5.0


def _front_door_fits():
    # the surfaces that compile a fit: batch.run_restarts/run_grid (fit, sweep, consensus,
    # cross-validation, NMF), and those that do not go through them
    rng = np.random.default_rng(0)
    Y = rng.uniform(0.1, 1.0, (12, 9))
    L0, R0 = rng.uniform(0.1, 1.0, (12, 2)), rng.uniform(0.1, 1.0, (2, 9))
    return {
        "fit (run_restarts)": lambda: jnmf.fit(Y, 2, max_iterations=3),
        "iterate (rnnmf front doors, NMF's single path)": lambda: jnmf.murnmf(Y, L0, R0, max_iterations=3),
        "differentiable_fit": lambda: jnmf.differentiable_fit(
            jnp.asarray(Y), jnp.asarray(L0), jnp.asarray(R0), method="hals", max_iterations=3
        ),
        "fit_stream": lambda: jnmf.fit_stream(Y, 2, block_rows=6, epochs=1, warn=False),
        "MiniBatchNMF": lambda: jnmf.MiniBatchNMF(2, batch_size=6, max_iter=1, random_state=0).fit(Y),
    }


@pytest.mark.parametrize("surface", list(_front_door_fits()))
def test_every_surface_guards_the_map_limit(surface, monkeypatch):
    # the crash path of issue 15 part 3 (experiments/xla_map_limit_crash.py): each surface
    # that compiles a fit first looks at the process's mappings; with the limit made tiny
    # (any process is over 3/4 of it) the look drops the programs, with the warning
    if compile_cache.memory_map_count() is None:  # no /proc: nothing to guard
        return
    monkeypatch.setattr(compile_cache, "_MAP_LIMIT", 8)
    monkeypatch.setattr(compile_cache, "_looked_at", -1)  # as if JAX compiled since the last look
    with pytest.warns(RuntimeWarning, match="vm.max_map_count"):
        _front_door_fits()[surface]()


def test_map_limit_looked_at_only_after_a_compile_and_never_mid_trace(monkeypatch):
    if compile_cache.memory_map_count() is None:
        return
    monkeypatch.setattr(compile_cache, "_MAP_LIMIT", 8)
    monkeypatch.setattr(compile_cache, "_looked_at", -1)
    rule, problem = make_rule("mu"), build_problem(jnp.ones((4, 3)), 2)
    state = rule.init(problem, jnp.ones((4, 2)), jnp.ones((2, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a drop would warn: none while tracing
        L = jax.jit(lambda s: jnmf.iterate(rule, problem, s, max_iterations=2).L)(state)
    assert L.shape == (4, 2)
    with pytest.warns(RuntimeWarning, match="vm.max_map_count"):
        assert compile_cache.guard_map_limit() is True  # the compile above: a look, a drop
    looked = compile_cache._looked_at
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compile_cache.guard_map_limit() is False  # nothing compiled since: no look
    assert compile_cache._looked_at == looked
    assert float(jax.jit(lambda x: 3 * x)(2.0)) == 6.0  # a new program: counted
    assert compile_cache._compiles > looked
