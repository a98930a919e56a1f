"""Fast second runs: wall time of the same ``jnmf`` command, cold vs warm compilation cache.

Each command runs twice, each time in a fresh ``python -m jnmf`` process, with a
fresh temporary cache directory (XDG_CACHE_HOME) shared by the two runs: the first
compiles everything and fills the cache, the second reads its programs from disk.
A third run with ``--no-cache`` is the reference without any cache, and a fourth,
warm, has stderr on a pseudo-terminal, where the commands show progress bars: a
``fit``'s bar is fed from inside its compiled loop, and JAX never caches a program
with a callback, so that loop compiles again.  Commands:

* ``jnmf fit`` of a random 500 x 200 matrix at rank 10 (default method, 1000 iterations cap);
* ``jnmf demo --ranks 2 3 --restarts 8`` (Golub data, KL consensus at two ranks).

Then, in this process, the compile time of each method at one shape (500 x 200, rank
10, 4 restarts): the first ``jnmf.fit`` call (trace, compile, run) minus the second
(run only), both with the cache off.

Run:  python experiments/bench_cold_warm.py [--skip-compile-times | --only-compile-times]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def run_command(args: list[str], cwd: Path, cache_home: Path, terminal: bool = False) -> float:
    """Wall time of one ``python -m jnmf ...`` process (which must succeed).

    With ``terminal``, stderr is a pseudo-terminal, as for a person at a shell: the
    command then shows its progress bars.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["XDG_CACHE_HOME"] = str(cache_home)
    for name in ("JNMF_NO_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR"):
        env.pop(name, None)
    controller = stderr = None
    if terminal:
        controller, stderr = pty.openpty()
        fcntl.ioctl(stderr, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
        # drain the terminal so a chatty bar can never block the child
        threading.Thread(target=_drain, args=(controller,), daemon=True).start()
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "jnmf", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr if terminal else subprocess.PIPE,
        text=True,
    )
    seconds = time.perf_counter() - start
    if terminal:
        os.close(stderr)
    if done.returncode != 0:
        raise RuntimeError(f"jnmf {' '.join(args)} failed:\n{done.stderr}")
    return seconds


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:  # the terminal closed
        pass
    finally:
        os.close(fd)


def cold_warm(name: str, args: list[str], work: Path) -> None:
    cache_home = Path(tempfile.mkdtemp(prefix="jnmf-cache-", dir=work))
    args = [*args, "--force"]  # each command's runs write over its own output directories
    cold = run_command([*args, "--out", f"{args[0]}-cold"], work, cache_home)
    warm = run_command([*args, "--out", f"{args[0]}-warm"], work, cache_home)
    entries = list((cache_home / "jnmf" / "jax").glob("*"))
    size = sum(p.stat().st_size for p in entries) / 1e6
    uncached = run_command([*args, "--out", f"{args[0]}-none", "--no-cache"], work, cache_home)
    on_terminal = run_command([*args, "--out", f"{args[0]}-tty"], work, cache_home, terminal=True)
    print(
        f"{name:<36} cold {cold:6.2f} s   warm {warm:6.2f} s   (warm/cold {warm / cold:.2f}); "
        f"--no-cache {uncached:6.2f} s; warm with stderr a terminal (bars) {on_terminal:6.2f} s; "
        f"cache {len(entries)} entries, {size:.1f} MB",
        flush=True,
    )


def compile_times() -> None:
    import warnings

    sys.path.insert(0, str(REPO))  # a plain checkout

    import jax

    import jnmf

    rng = np.random.default_rng(0)
    Y = (rng.random((500, 10)) @ rng.random((10, 200))).astype(np.float32)
    print(
        f"\ncompile time per method (500 x 200, rank 10, 4 restarts, 200 iterations; jax {jax.__version__}):"
    )
    # the programs every method shares (random starts at this shape) compile here, so the
    # first method is not charged for them
    from jnmf.fitting import starting_points

    jax.block_until_ready(starting_points(jax.numpy.asarray(Y / Y.max()), 10, "random", 4, jax.random.key(0)))
    for method in jnmf.METHODS:
        times = []
        for _ in range(2):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = jnmf.fit(Y, 10, method=method, restarts=4, key=0, max_iterations=200)
            jax.block_until_ready(res.L)
            times.append(time.perf_counter() - start)
        print(
            f"  {method:<6} first call {times[0]:6.2f} s, second {times[1]:6.3f} s, "
            f"compile ~{times[0] - times[1]:5.2f} s",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-compile-times", action="store_true")
    parser.add_argument("--only-compile-times", action="store_true")
    args = parser.parse_args()
    if args.only_compile_times:
        compile_times()
        return
    with tempfile.TemporaryDirectory(prefix="jnmf-bench-") as tmp:
        work = Path(tmp)
        rng = np.random.default_rng(0)
        np.save(work / "data.npy", rng.random((500, 200)).astype(np.float32))
        cold_warm("jnmf fit data.npy --rank 10", ["fit", "data.npy", "--rank", "10"], work)
        cold_warm(
            "jnmf demo --ranks 2 3 --restarts 8", ["demo", "--ranks", "2", "3", "--restarts", "8"], work
        )
    if not args.skip_compile_times:
        compile_times()


if __name__ == "__main__":
    main()
