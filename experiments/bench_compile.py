"""Compile latency: each method's compile time and the cold / warm ``jnmf fit`` (issue 15, part 5).

Goals (issue 15): a cold ``jnmf fit`` of a 1000 x 500 matrix under 4 s on this machine,
and no single method's compile over 2 s at that shape.

1. Per method, in this process (persistent cache off): the first ``jnmf.fit`` of a
   1000 x 500 float32 matrix at rank 10 (20 iterations), with JAX's monitoring events
   counting every program XLA compiles during it and the seconds spent tracing,
   lowering and compiling.  Printed: the programs compiled, the largest single XLA
   compile (the fit's loop), and the fit's total wall and CPU time (the compile
   durations are wall seconds: under load, compare the CPU column).  The first method also pays
   for the programs every fit shares (the key, the scale, the starts).
2. ``python -m jnmf fit`` on a 1000 x 500 ``.npy`` in fresh processes: ``--no-cache``
   (cold, nothing on disk), then twice with an empty per-run cache directory
   (XDG_CACHE_HOME): the first fills it, the second is warm.  Printed: wall time and
   the child's CPU time (user + system, which a loaded machine inflates less).
3. ``python -c "import jnmf.cli"``: the import alone.
4. The cold CLI fit with and without its background import of matplotlib
   (``cli._prefetch_plotting`` replaced by a no-op in the "off" runs), alternated: wall,
   CPU, and the seconds of the run outside the fit and the input's load (the plot, the
   imports, the writing).
5. The starts program (``fitting.starting_points``) compiled with XLA's default options
   and with ``fitting.DRAW_COMPILER_OPTIONS`` (LLVM level 1), side by side: compile
   seconds (wall and CPU), the draw's run time, and whether the bits drawn are equal
   (float32 and float64; 1 and 4 restarts).

6. ANLS's loop program as on main (XLA's default options, BPP's tail compaction at
   every size) and as now (the rule's ``compiler_options``: fusion emitters off; the
   tail compaction from ``nnls._COMPACT_FROM`` problems), compiled in this process,
   alternated: the XLA compile's CPU seconds and the run's CPU milliseconds per
   iteration (220 minus 20 iterations, best of two; float32 and float64).

Every line prints the load average beside it: other processes on 2 cores stretch every
number here.

7. ``--against CHECKOUT``: only the issue's case, alternated between CHECKOUT (e.g. a
   worktree of main) and this checkout: a cold ``jnmf fit`` of a 1000 x 500 CSV at rank
   10 with an empty compilation cache, and ``jnmf fit`` without ``--rank``; then the
   first and second ``jnmf.NMF(solver="cd")`` fit of a 1000 x 500 float64 matrix in a
   fresh process (the issue's "first jnmf.NMF fit of a shape").  With
   ``--estimator-solver mu`` (or ``cd``) only that estimator part, with that solver, and
   scikit-learn's fit of the same settings after it in the same process.

Run:  python experiments/bench_compile.py [--methods ahals anls ...] [--repeats 1] [--repo CHECKOUT]
      python experiments/bench_compile.py --against /work/main --repeats 3
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
METHODS = ["ahals", "hals", "mu", "au", "anls", "kl", "beta", "pg"]


def load() -> str:
    return open("/proc/loadavg").read().split(" ")[0]


def compile_times(methods: list[str], m: int, n: int, rank: int) -> None:
    """The first fit of each method in this process: programs compiled and seconds."""
    os.environ["JNMF_NO_COMPILE_CACHE"] = "1"
    import warnings

    import jax

    import jnmf

    events: list[tuple[str, float]] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **kw: events.append((event, seconds))
    )
    warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
    Y = np.random.default_rng(0).random((m, n)).astype(np.float32)
    print(f"\n== first fit per method: {m} x {n} float32, rank {rank}, 20 iterations (this process) ==")
    header = ["programs", "largest XLA compile", "all XLA", "trace+lower", "fit wall", "fit cpu"]
    widths = (8, 20, 8, 11, 9, 8)
    print(f"{'method':7s} " + " ".join(f"{h:>{w}s}" for h, w in zip(header, widths)) + "  load")
    for method in methods:
        events.clear()
        start, cpu = time.perf_counter(), time.process_time()
        jnmf.fit(Y, rank, method=method, max_iterations=20, key=0)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        xla = [s for e, s in events if e == "/jax/core/compile/backend_compile_duration"]
        front = sum(
            s
            for e, s in events
            if e
            in ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")
        )
        print(
            f"{method:7s} {len(xla):8d} {max(xla, default=0):19.2f}s {sum(xla):7.2f}s {front:10.2f}s "
            f"{wall:8.2f}s {cpu:7.2f}s  {load()}",
            flush=True,
        )


def starts_options(m: int, n: int, rank: int) -> None:
    """The starts program compiled with XLA's default options and with the draw options."""
    import jax

    from jnmf import fitting

    if not hasattr(fitting, "DRAW_COMPILER_OPTIONS"):
        print("\n(this checkout compiles the starts with the default options only)")
        return
    jax.config.update("jax_enable_compilation_cache", False)
    jax.config.update("jax_enable_x64", True)
    draw_options = fitting.DRAW_COMPILER_OPTIONS
    print(f"\n== starts program, {m} x {n}, rank {rank}: default options vs {draw_options} ==")
    for dtype in (np.float32, np.float64):
        Y = jax.numpy.asarray(np.random.default_rng(0).random((m, n)), dtype)
        for restarts in (1, 4):
            draws, cells = [], []
            for options in (None, draw_options):
                draw = fitting._named_starts_impl
                program = jax.jit(draw, static_argnums=(1, 2, 3), compiler_options=options)
                lowered = program.lower(Y, rank, "random", restarts, jax.random.key(5))
                wall, cpu = time.perf_counter(), time.process_time()
                compiled = lowered.compile()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                jax.block_until_ready(compiled(Y, jax.random.key(5)))
                start = time.perf_counter()
                for _ in range(10):
                    out = compiled(Y, jax.random.key(5))
                jax.block_until_ready(out)
                draws.append([np.asarray(x) for x in out])
                run_ms = (time.perf_counter() - start) * 100
                cells.append(f"{wall:5.2f} s wall {cpu:5.2f} s cpu, run {run_ms:6.2f} ms")
            same = all(np.array_equal(a, b) for a, b in zip(*draws))
            print(
                f"{np.dtype(dtype).name} restarts {restarts}: default {cells[0]} | draw options {cells[1]} | "
                f"same bits {same}  load {load()}",
                flush=True,
            )
    jax.config.update("jax_enable_x64", False)


_NO_PREFETCH = """
import sys, threading, jnmf.cli as cli
if sys.argv[1] == "off":
    def no_prefetch():
        thread = threading.Thread(target=lambda: None)
        thread.start()
        return thread
    cli._prefetch_plotting = no_prefetch
sys.argv = ["jnmf", "fit", *sys.argv[2:]]
cli.main()
"""


def plot_prefetch(m: int, n: int, rank: int, repeats: int) -> None:
    """The cold CLI fit with the matplotlib imports in a background thread ("on") or not."""
    import json

    print(f"\n== python -m jnmf fit --no-cache, {m} x {n}: matplotlib prefetch off / on (alternated) ==")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "Y.npy", np.random.default_rng(0).random((m, n)))
        env = dict(os.environ, PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(tmp / "xdg"))
        for _ in range(repeats):
            for mode in ("off", "on"):
                out = tmp / mode
                args = [str(tmp / "Y.npy"), "--rank", str(rank), "--quiet", "--force", "--out", str(out)]
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                command = [sys.executable, "-c", _NO_PREFETCH, mode, *args, "--no-cache"]
                subprocess.run(command, env=env, check=True)
                wall = time.perf_counter() - start
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                timings = json.loads((out / "summary.json").read_text())["timings"]
                rest = timings["total"] - timings["fit"] - timings["load"]
                print(
                    f"prefetch {mode:3s}  wall {wall:6.2f} s   cpu {cpu:6.2f} s   "
                    f"outside the fit {rest:5.2f} s   load {load()}",
                    flush=True,
                )


def cli_latency(m: int, n: int, rank: int, repeats: int) -> None:
    """Wall and CPU seconds of ``python -m jnmf fit`` in fresh processes: cold, cache fill, warm."""
    print(f"\n== python -m jnmf fit, {m} x {n} .npy, rank {rank} (fresh processes) ==")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "Y.npy"
        np.save(data, np.random.default_rng(0).random((m, n)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        for name in ("JNMF_NO_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR"):
            env.pop(name, None)

        def run(label: str, args: list[str], cache: Path) -> None:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            done = subprocess.run(
                args, cwd=tmp, env=dict(env, XDG_CACHE_HOME=str(cache)), capture_output=True, text=True
            )
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr}")
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            print(f"{label:34s} wall {wall:6.2f} s   cpu {cpu:6.2f} s   load {load()}", flush=True)

        fit = [sys.executable, "-m", "jnmf", "fit", str(data), "--rank", str(rank), "--quiet", "--force"]
        for r in range(repeats):
            run("import jnmf.cli", [sys.executable, "-c", "import jnmf.cli"], tmp / "unused")
            run("cold (--no-cache)", [*fit, "--out", str(tmp / "a"), "--no-cache"], tmp / "unused")
            cache = tmp / f"cache{r}"
            run("first with an empty cache (fills it)", [*fit, "--out", str(tmp / "b")], cache)
            run("warm (programs read from the cache)", [*fit, "--out", str(tmp / "c")], cache)


def cold_against(baseline: Path, m: int, n: int, rank: int, repeats: int) -> None:
    """The issue's case, alternated between ``baseline`` and this checkout: ``jnmf fit`` of a
    ``m x n`` CSV of |N(0, 1)| entries (seed 0) at ``rank`` with the default method, in a
    fresh process with an empty compilation cache (XDG_CACHE_HOME; the run fills it), and
    ``jnmf fit`` without ``--rank`` (a usage error): wall, the child's CPU, and the fit's
    own "load" / "fit" seconds from summary.json."""
    import json

    print(f"\n== cold jnmf fit, {m} x {n} .csv, rank {rank}, empty cache: {baseline} vs {REPO} ==")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "Y.csv"
        np.savetxt(data, np.abs(np.random.default_rng(0).standard_normal((m, n))), delimiter=",")
        dropped = ("JNMF_NO_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR")
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        for r in range(repeats):
            for label, repo in (("before", baseline), ("after", REPO)):
                for usage in (False, True):
                    out = tmp / f"{label}{r}"
                    args = [sys.executable, "-m", "jnmf", "fit", str(data), "--quiet", "--out", str(out)]
                    args += [] if usage else ["--rank", str(rank)]
                    cache = tmp / f"xdg-{label}{r}{usage}"
                    run_env = dict(env, PYTHONPATH=str(repo), XDG_CACHE_HOME=str(cache))
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    start = time.perf_counter()
                    done = subprocess.run(args, cwd=tmp, env=run_env, capture_output=True, text=True)
                    wall = time.perf_counter() - start
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                    if usage:
                        code = done.returncode
                        print(f"{label:6s} usage error ({code}) wall {wall:5.2f} s cpu {cpu:5.2f} s", end=" ")
                        print(f" load {load()}")
                        continue
                    if done.returncode != 0:
                        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr}")
                    t = json.loads((out / "summary.json").read_text())["timings"]
                    print(
                        f"{label:6s} cold fit wall {wall:5.2f} s cpu {cpu:5.2f} s (load {t['load']:.2f} s, "
                        f"fit {t['fit']:.2f} s, total in-process {t['total']:.2f} s)  load {load()}",
                        flush=True,
                    )


_ESTIMATOR = """
import os, sys, time, warnings
os.environ["JNMF_NO_COMPILE_CACHE"] = "1"
import numpy as np, jax
seconds = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, s, **kw: seconds.append(s) if event.endswith("backend_compile_duration") else None
)
import jnmf
warnings.simplefilter("ignore")
m, n, rank = map(int, sys.argv[1:4])
solver = sys.argv[4] if len(sys.argv) > 4 else "cd"
X = np.abs(np.random.default_rng(0).standard_normal((m, n)))
for run in ("first", "second"):
    wall, cpu = time.perf_counter(), time.process_time()
    model = jnmf.NMF(n_components=rank, solver=solver, random_state=0, max_iter=200)
    model.fit_transform(X)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{run} fit wall {wall:5.2f} s cpu {cpu:5.2f} s, largest compile {max(seconds):.2f} s", end="; ")
print(f"{model.n_iter_} it", end="; ")
if len(sys.argv) > 5:  # the peer, in the same process, after jnmf's fits
    from sklearn.decomposition import NMF
    wall, cpu = time.perf_counter(), time.process_time()
    peer = NMF(n_components=rank, solver=solver, random_state=0, max_iter=200).fit(X)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"scikit-learn {peer.n_iter_} it wall {wall:5.2f} s cpu {cpu:5.2f} s", end="; ")
"""


def estimator_against(
    baseline: Path, m: int, n: int, rank: int, repeats: int, solver: str = "cd", peer: bool = False
) -> None:
    """The first and second ``jnmf.NMF(solver=solver, max_iter=200)`` fit of a ``m x n`` float64
    matrix in a fresh process (persistent cache off), ``baseline`` and this checkout alternated;
    with ``peer``, scikit-learn's fit of the same settings after them, in the same process."""
    print(f"\n== first jnmf.NMF {solver} fit, {m} x {n} float64, rank {rank}: {baseline} vs {REPO} ==")
    for _ in range(repeats):
        for label, repo in (("before", baseline), ("after", REPO)):
            env = dict(os.environ, PYTHONPATH=str(repo))
            command = [sys.executable, "-c", _ESTIMATOR, str(m), str(n), str(rank), solver]
            command += ["peer"] if peer else []
            # not from this checkout's directory: "python -c" would import its jnmf first
            done = subprocess.run(
                command, env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True
            )
            print(f"{label:6s} {done.stdout.strip()} load {load()}", flush=True)


def anls_loop(m: int, n: int, rank: int, repeats: int) -> None:
    """ANLS's loop program compiled as on main and as now: compile CPU seconds and run
    CPU ms per iteration, in this process, alternated."""
    import jax
    import jax.numpy as jnp

    from jnmf import batch, nnls
    from jnmf.problem import Problem
    from jnmf.rules.anls import ANLS

    class MainANLS(ANLS):  # main's program: XLA's default options (and the tail, below)
        compiler_options = None

    jax.config.update("jax_enable_compilation_cache", False)
    print(f"\n== ANLS loop program, {m} x {n}, rank {rank}: as on main vs now (alternated) ==")
    for dtype in (np.float32, np.float64):
        jax.config.update("jax_enable_x64", dtype == np.float64)
        rng = np.random.default_rng(0)
        problem = Problem.from_scalars(jnp.asarray(rng.random((m, n)), dtype))
        L0 = jnp.asarray(rng.uniform(0.1, 1.0, (1, m, rank)), dtype)
        R0 = jnp.asarray(rng.uniform(0.1, 1.0, (1, rank, n)), dtype)
        for _ in range(repeats):
            for label, rule, compact_from in (("main", MainANLS(), 0), ("now", ANLS(), nnls._COMPACT_FROM)):

                def opts_for(iterations):
                    overrides = dict(max_iterations=iterations, tol=0.0, min_xstep=0.0)
                    return batch._prepare(rule, problem, L0, R0, None, overrides, 1000, None, None)

                states, opts, strategy = opts_for(20)
                slots = batch._slots_for(None, strategy, rule, R0, 1)
                args = (rule, problem, states, opts, 1000, None, strategy, None, slots)
                jax.clear_caches()
                saved, nnls._COMPACT_FROM = nnls._COMPACT_FROM, compact_from
                try:
                    program = batch._for_rule(batch._restarts_programs, rule, problem)
                    lowered = program.lower(*args)
                    cpu = time.process_time()
                    compiled = lowered.compile()
                    cpu = time.process_time() - cpu
                finally:
                    nnls._COMPACT_FROM = saved

                def run_cpu(iterations):
                    states, opts, _ = opts_for(iterations)
                    best = np.inf
                    for _ in range(2):
                        start = time.process_time()
                        jax.block_until_ready(compiled(rule, problem, states, opts, *args[4:]))
                        best = min(best, time.process_time() - start)
                    return best

                run_cpu(20)
                per_iteration = (run_cpu(220) - run_cpu(20)) / 200 * 1e3
                print(
                    f"{np.dtype(dtype).name} {label:4s}  compile cpu {cpu:6.2f} s   "
                    f"run {per_iteration:6.3f} ms/iteration cpu  load {load()}",
                    flush=True,
                )
    jax.config.update("jax_enable_x64", False)


def main() -> None:
    global REPO
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--shape", nargs=2, type=int, default=(1000, 500))
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1, help="CLI runs of each kind")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-methods", action="store_true")
    parser.add_argument("--skip-starts", action="store_true")
    parser.add_argument("--anls-repeats", type=int, default=1, help="main/now pairs of ANLS's loop (0: skip)")
    parser.add_argument("--prefetch-repeats", type=int, default=2, help="off/on pairs (0: skip)")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout to measure (before / after)")
    parser.add_argument(
        "--against", type=Path, help="only the cold CLI fit of a CSV, alternated with this checkout (a main)"
    )
    parser.add_argument(
        "--estimator-solver",
        choices=("cd", "mu"),
        help="with --against: only jnmf.NMF's first and second fit with this solver, and scikit-learn's",
    )
    args = parser.parse_args()
    REPO = args.repo.resolve()
    sys.path.insert(0, str(REPO))
    print(f"load average at start: {open('/proc/loadavg').read().strip()}")
    m, n = args.shape
    if args.against and args.estimator_solver:
        estimator_against(
            args.against.resolve(), m, n, args.rank, args.repeats, args.estimator_solver, peer=True
        )
        return
    if args.against:
        cold_against(args.against.resolve(), m, n, args.rank, args.repeats)
        estimator_against(args.against.resolve(), m, n, args.rank, args.repeats)
        return
    if not args.skip_cli:  # first: its child processes must not share this one's CPU with a compile
        cli_latency(m, n, args.rank, args.repeats)
    if not args.skip_methods:
        compile_times(args.methods, m, n, args.rank)
    if args.prefetch_repeats and hasattr(importlib.import_module("jnmf.cli"), "_prefetch_plotting"):
        plot_prefetch(m, n, args.rank, args.prefetch_repeats)
    if not args.skip_starts:
        starts_options(m, n, args.rank)
    if args.anls_repeats and hasattr(importlib.import_module("jnmf.batch"), "_restarts_programs"):
        anls_loop(m, n, args.rank, args.anls_repeats)
    print(f"\nload average at end: {open('/proc/loadavg').read().strip()}")


if __name__ == "__main__":
    main()
