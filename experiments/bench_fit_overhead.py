"""One ORL fit's cost, before and after a change: two jnmf checkouts alternated in fresh processes.

Times exactly the call ``bench_orl.py --parts hals_rule`` times (``jnmf.fit`` of ORL faces,
10304 x 400 float32 as ``bench_orl.load_orl`` gives it (Fortran-ordered, as scikit-learn
gets it there too), rank 25, ``init=(L0, R0)``, ``tol=0``, ``history_size=1``), warm (after
two calls), at each of ``--iterations``: 0 iterations is the fit's fixed cost (validation,
the problem on the device, settings, starts, the loop program's start and final
objectives, the best restart), 22 is ``"ahals"``'s iterations to relative error 0.1755.

Each ``--trees`` checkout runs in its own process (``PYTHONPATH=TREE``), the trees
alternated ``--rounds`` times, so machine load weighs on both alike; each process reports
the minimum and median of ``--repeats`` fits in process CPU time and wall time, with the
load average.  A speed claim against scikit-learn stays with ``bench_orl.py``.

Run:  python experiments/bench_fit_overhead.py --trees ../main . --iterations 0 22
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(args) -> None:
    import warnings

    import jax
    import numpy as np

    sys.path.insert(0, HERE)
    from bench_orl import load_orl, random_start

    import jnmf

    warnings.simplefilter("ignore")  # ConvergenceWarning: the fits stop at the cap by design
    Y = load_orl(args.data)
    L0, R0 = random_start(Y, 25, args.seed)
    out = {"jnmf": os.path.dirname(os.path.dirname(jnmf.__file__))}
    for n in args.iterations:

        def run(n=n):
            res = jnmf.fit(
                Y, 25, method=args.method, init=(L0, R0), max_iterations=n, tol=0.0, history_size=1
            )
            jax.block_until_ready(res.L)
            return res

        res = run()
        run()
        cpu, wall = [], []
        for _ in range(args.repeats):
            c, w = time.process_time(), time.perf_counter()
            run()
            cpu.append(time.process_time() - c)
            wall.append(time.perf_counter() - w)
        out[str(n)] = {
            "cpu_min": min(cpu),
            "cpu_med": float(np.median(cpu)),
            "wall_min": min(wall),
            "wall_med": float(np.median(wall)),
            "objective": float(res.objective),
            "iterations": int(res.iterations),
        }
    out["load"] = os.getloadavg()
    print(json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", nargs="+", default=[os.path.dirname(HERE)], help="jnmf checkouts to alternate")
    ap.add_argument("--iterations", nargs="+", type=int, default=[0, 22])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--method", default="ahals")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=os.path.join(HERE, "../../shared/data/orl_faces.npz"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC; {args.method}; ms per fit, min / median")
    head = " ".join(f"{f'{n} it CPU':>15} {f'{n} it wall':>15}" for n in args.iterations)
    print(f"{'tree':<24} {head} {'load':>16}")
    flags = ["--iterations", *map(str, args.iterations), "--repeats", str(args.repeats)]
    flags += ["--method", args.method, "--seed", str(args.seed), "--data", args.data, "--worker"]
    for _ in range(args.rounds):
        for tree in args.trees:
            env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
            proc = subprocess.run(
                [sys.executable, __file__, *flags], env=env, capture_output=True, text=True, check=True
            )
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            cells = " ".join(
                f"{r[str(n)]['cpu_min'] * 1e3:7.1f}/{r[str(n)]['cpu_med'] * 1e3:<7.1f}"
                f"{r[str(n)]['wall_min'] * 1e3:7.1f}/{r[str(n)]['wall_med'] * 1e3:<7.1f}"
                for n in args.iterations
            )
            load = " ".join(f"{x:.1f}" for x in r["load"])
            print(f"{os.path.abspath(tree)[-24:]:<24} {cells} {load:>16}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
