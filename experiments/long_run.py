"""Long runs in one process: many fits of varied shapes, and the whole test suite (issue 15, part 3).

Two checks that a long notebook session (or one pytest process) neither crashes nor
grows without bound:

* default: ``--fits`` (1,000) ``jnmf.fit`` calls in this process, cycling through
  ``--distinct`` different programs (shape m x n, rank k, method, dtype; each fit
  draws fresh data, so every call runs, and the first ``--distinct`` calls compile).
  Prints the resident memory (VmRSS from /proc/self/status) and the number of
  programs XLA compiled so far (JAX's backend-compile events) after 10, 100 and
  1,000 fits, and the largest resident memory (VmHWM).  Bounded means: after the
  distinct programs are compiled, more fits of those shapes add nothing.
* ``--suite``: the whole test suite in ONE pytest process (``-p no:xdist``) under
  ``python -X faulthandler`` (a crash prints the Python stack of every thread),
  reporting its exit status, wall time and maximum resident memory (``/usr/bin/time
  -v``, or the child's rusage when /usr/bin/time is missing).  About 36 minutes on
  2 cores: it is not a CI job.

The crash itself (XLA:CPU past vm.max_map_count) has its own script:
``experiments/xla_map_limit_crash.py``.

Run:  python experiments/long_run.py [--fits 1000] [--distinct 48]
      python experiments/long_run.py --suite [--suite-log /tmp/suite.log]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def proc_status_kb(field: str) -> int:
    """A memory field (``VmRSS``, ``VmHWM``) of this process, in kB, from /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_maps() -> int:
    """The number of memory mappings of this process (lines of /proc/self/maps); the kernel
    caps it at vm.max_map_count (65530 by default), and every compiled CPU program maps
    its code."""
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


def configurations(count: int, seed: int = 0) -> list[dict]:
    """``count`` distinct fit configurations: varied shapes, ranks, methods and dtypes.

    Small shapes (m, n <= 120) so that compiling dominates and 1,000 fits take minutes.
    """
    import numpy as np

    methods = ["ahals", "hals", "mu", "au", "anls", "kl", "beta", "pg"]
    rng = np.random.default_rng(seed)
    seen, out = set(), []
    while len(out) < count:
        m, n = (int(v) for v in rng.integers(8, 121, size=2))
        k = int(rng.integers(2, min(m, n, 9)))
        method = methods[len(out) % len(methods)]
        dtype = ("float32", "float64")[int(rng.integers(0, 2))]
        restarts = int(rng.choice([1, 1, 2, 4]))
        config = (m, n, k, method, dtype, restarts)
        if config not in seen:
            seen.add(config)
            out.append(dict(m=m, n=n, k=k, method=method, dtype=dtype, restarts=restarts))
    return out


def many_fits(fits: int, distinct: int) -> None:
    """``fits`` fits cycling through ``distinct`` configurations; memory and compile counts."""
    import warnings

    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import jnmf

    compiles = [0]

    def count(event: str, *args, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles[0] += 1

    jax.monitoring.register_event_duration_secs_listener(count)
    warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
    configs = configurations(distinct)
    rng = np.random.default_rng(1)
    marks = {10, 100, 1000, fits}
    print(f"jax {jax.__version__}, jaxlib {__import__('jaxlib').__version__}")
    print(f"load average: {open('/proc/loadavg').read().strip()}")
    print(
        f"{fits} fits over {distinct} distinct programs; RSS before: {proc_status_kb('VmRSS') / 1024:.0f} MB"
    )
    start = time.perf_counter()
    for i in range(1, fits + 1):
        c = configs[(i - 1) % distinct]
        Y = rng.random((c["m"], c["n"])).astype(c["dtype"])
        res = jnmf.fit(Y, c["k"], method=c["method"], restarts=c["restarts"], max_iterations=30, key=i)
        if not np.isfinite(res.objective):
            raise RuntimeError(f"fit {i} ({c}) gave a non-finite objective")
        if i in marks:
            print(
                f"after {i:5d} fits: RSS {proc_status_kb('VmRSS') / 1024:7.0f} MB, "
                f"max RSS {proc_status_kb('VmHWM') / 1024:7.0f} MB, {memory_maps():6d} memory maps, "
                f"{compiles[0]:5d} programs compiled, {time.perf_counter() - start:7.1f} s",
                flush=True,
            )
    print(f"load average: {open('/proc/loadavg').read().strip()}")


def whole_suite(log: Path) -> int:
    """The test suite in one pytest process under faulthandler; prints status, time and max RSS."""
    command = [sys.executable, "-X", "faulthandler", "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider"]
    command += ["-p", "no:xdist"]
    timer = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    if timer:
        command = [timer, "-v", *command]
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONFAULTHANDLER="1")
    print(f"load average: {open('/proc/loadavg').read().strip()}")
    print("running:", " ".join(command), f"> {log}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    text = log.read_text(errors="replace")
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    max_rss_kb = int(found.group(1)) if found else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    crashed = "Fatal Python error" in text or done.returncode < 0 or "Segmentation fault" in text
    print(f"exit status {done.returncode}{' (CRASH: see the log)' if crashed else ''}")
    print(f"wall time {seconds / 60:.1f} min, max RSS {max_rss_kb / 1024**2:.2f} GB")
    print("pytest:", summary[-1] if summary else "(no summary line)")
    print(f"load average: {open('/proc/loadavg').read().strip()}")
    return done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=48, help="distinct programs the fits cycle through")
    parser.add_argument(
        "--suite", action="store_true", help="run the whole test suite in one process instead"
    )
    parser.add_argument("--suite-log", type=Path, default=Path("/tmp/jnmf_one_process_suite.log"))
    args = parser.parse_args()
    if args.suite:
        sys.exit(whole_suite(args.suite_log))
    many_fits(args.fits, args.distinct)


if __name__ == "__main__":
    main()
