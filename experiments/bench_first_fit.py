"""A new user's first contact (issue 15, parts 4 and 5): the first ``jnmf.NMF`` fit of a new
shape and a CLI usage error, in fresh processes, alternating an old checkout and this one.

1. The first fit of a new shape, exactly as ``new_user_edges.py`` measures it: in a fresh
   process, ``import jnmf``, one warm-up ``jnmf.NMF(8).fit`` of a 200 x 120 matrix, then
   the timed first ``jnmf.NMF(10, random_state=0, max_iter=200).fit`` of a 500 x 300
   float64 matrix (wall and CPU seconds), the programs XLA compiled during it and the
   seconds JAX spent tracing, lowering to MLIR and compiling them (JAX's monitoring
   events), the same fit again (its run time), and scikit-learn's fit of the same
   settings in the same process.
2. CLI usage errors (a missing input, an unwritable ``--out``, a bad ``--rank``, ``--help``):
   the wall and CPU time of the process and whether JAX was imported by then (a
   small wrapper runs ``jnmf.cli.main`` and reports ``"jax" in
   sys.modules`` at the end).
3. ``python -c "import jnmf"``: the import alone.

Every line prints the load average beside it: on a shared 2-core machine compare the CPU
columns and the ratios within one run.

Run:  python experiments/bench_first_fit.py --against /work/wt-base [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
THIS = HERE.parent
# children run here, so that ``-c`` (which puts the working directory first on sys.path)
# imports jnmf from PYTHONPATH, not from the checkout the script is run in
NEUTRAL = tempfile.gettempdir()

FIRST_FIT = r"""
import json, os, sys, time
import numpy as np
import jax.monitoring as monitoring
import jnmf

events = {}
monitoring.register_event_duration_secs_listener(
    lambda name, secs, **kw: events.setdefault(name, []).append(secs)
)

def low_rank(m, n, k, noise, seed):
    rng = np.random.default_rng(seed)
    Y = rng.random((m, k)) @ rng.random((k, n))
    return Y + noise * Y.std() * np.abs(rng.standard_normal((m, n)))

import warnings
warnings.simplefilter("ignore")
jnmf.NMF(8, random_state=0, max_iter=400).fit(low_rank(200, 120, 8, 0.3, 4))
X = low_rank(500, 300, 10, 0.3, 5)
events.clear()
t, c = time.perf_counter(), time.process_time()
jnmf.NMF(10, random_state=0, max_iter=200).fit(X)
first, first_cpu = time.perf_counter() - t, time.process_time() - c
got = {k: (len(v), sum(v)) for k, v in events.items()}
t = time.perf_counter()
jnmf.NMF(10, random_state=0, max_iter=200).fit(X)
second = time.perf_counter() - t
from sklearn.decomposition import NMF
t = time.perf_counter()
NMF(10, random_state=0, max_iter=200).fit(X)
sk = time.perf_counter() - t
result = dict(first=first, first_cpu=first_cpu, second=second, sklearn=sk, events=got)
print(json.dumps(dict(module=jnmf.__file__, **result)))
"""

WRAPPED_CLI = r"""
import sys
from jnmf import cli
try:
    code = cli.main(sys.argv[1:])
finally:
    print("JAX_IMPORTED" if "jax" in sys.modules else "JAX_NOT_IMPORTED", file=sys.stderr)
sys.exit(code)
"""


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def env_for(checkout: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout), JNMF_NO_COMPILE_CACHE="1")
    env.pop("XLA_FLAGS", None)
    return env


def first_fit(checkout: Path) -> dict:
    command = [sys.executable, "-c", FIRST_FIT]
    env = env_for(checkout)
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True, cwd=NEUTRAL)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["module"].startswith(str(checkout)), (result["module"], checkout)
    return result


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def usage_error(checkout: Path, args: list[str], cwd: str) -> tuple[float, float, int, str, str]:
    cpu = children_cpu()
    start = time.perf_counter()
    command = [sys.executable, "-c", WRAPPED_CLI, *args]
    p = subprocess.run(command, env=env_for(checkout), capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - start
    cpu = children_cpu() - cpu
    lines = p.stderr.strip().splitlines()
    jax_state = lines[-1] if lines else ""
    message = (lines[-2] if len(lines) > 1 else "") or (p.stdout.strip().splitlines() or [""])[-1]
    return wall, cpu, p.returncode, jax_state, message


def import_time(checkout: Path) -> float:
    start = time.perf_counter()
    code = f"import jnmf; assert jnmf.__file__.startswith({str(checkout)!r})"
    subprocess.run([sys.executable, "-c", code], env=env_for(checkout), check=True, cwd=NEUTRAL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, type=Path, help="the old checkout (a worktree of main)")
    parser.add_argument("--repeats", type=int, default=3)
    parts = ["fit", "cli", "import"]
    parser.add_argument("--parts", nargs="+", default=parts, choices=parts)
    args = parser.parse_args()
    sides = {"old": args.against.resolve(), "new": THIS}
    print(f"old = {sides['old']}, new = {sides['new']}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")

    if "fit" in args.parts:
        print("\n1. first jnmf.NMF(10).fit of a new 500 x 300 shape (fresh process, after a warm-up fit)")
        for rep in range(args.repeats):
            for side, checkout in sides.items():
                r = first_fit(checkout)
                ev = r["events"]

                def total(name):
                    return ev.get(f"/jax/core/compile/{name}", (0, 0.0))

                n_programs, compile_s = total("backend_compile_duration")
                print(
                    f"  {side} #{rep}: first {r['first']:.3f} s (CPU {r['first_cpu']:.3f}), second "
                    f"{r['second']:.3f} s, scikit-learn {r['sklearn']:.3f} s; {n_programs} programs compiled "
                    f"in {compile_s:.3f} s, tracing {total('jaxpr_trace_duration')[1]:.3f} s, lowering "
                    f"{total('jaxpr_to_mlir_module_duration')[1]:.3f} s; {load()}",
                    flush=True,
                )

    if "cli" in args.parts:
        print("\n2. CLI usage errors (wall seconds of the whole process; JAX imported by then?)")
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "y.csv").write_text("1,2\n3,4\n")
            Path(tmp, "res").mkdir()
            Path(tmp, "res", "summary.json").write_text("{}")
            cases = [
                ["fit", "missing.csv", "--rank", "3", "--out", "res2"],
                ["fit", "y.txt", "--rank", "3", "--out", "res"],
                ["fit", "y.csv", "--rank", "3", "--out", "/proc/nope"],
                ["fit", "y.csv", "--rank", "3", "--out", "res"],
                ["fit", "y.csv", "--rank", "x"],
                ["rank", "missing.csv"],
                ["--help"],
            ]
            for rep in range(args.repeats):
                for case in cases:
                    for side, checkout in sides.items():
                        wall, cpu, code, jax_state, message = usage_error(checkout, case, tmp)
                        print(
                            f"  {side} #{rep} jnmf {' '.join(case)}: {wall:.2f} s (CPU {cpu:.2f}), "
                            f"exit {code}, {jax_state}; "
                            f"{message[:90]}; {load()}",
                            flush=True,
                        )

    if "import" in args.parts:
        print('\n3. python -c "import jnmf"')
        for rep in range(args.repeats):
            for side, checkout in sides.items():
                print(f"  {side} #{rep}: {import_time(checkout):.2f} s; {load()}", flush=True)


if __name__ == "__main__":
    main()
