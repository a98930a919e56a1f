"""The smallest crash of issue 15 part 3: XLA:CPU segfaults once a process runs out of memory mappings.

Every program XLA compiles for the CPU and JAX keeps alive holds memory mappings of the
process (about 3 per kernel: its code, read-only data and data sections).  Linux caps a
process at ``vm.max_map_count`` mappings (65530 by default).  This script compiles distinct
tiny programs with ``jax.jit``, keeps them all alive, and prints the process's mapping count
(lines of /proc/self/maps) until something happens.  It runs the programs in a child
process under ``python -X faulthandler`` and reports how the child ended: its exit status
(-11 is SIGSEGV), the last mapping count it printed, XLA's last error line and
faulthandler's Python stack.  No jnmf import, except for ``--guard jnmf``.

Knobs, all to reach the limit in minutes on a slow shared machine:

* ``--kernels K``: each program returns K slices of different lengths, K separate kernels
  (about 3 mappings each); K=1 is the tiniest program (``x + c``, about 3 mappings).
* ``--fill-to N``: before compiling, the child occupies mappings up to N with one anonymous
  region whose every other page is made read-only (each such page is its own mapping; no
  memory is used).  They stand in for the programs a long session compiled earlier: the
  limit counts mappings, not where they came from.  ``--fill-to 0`` (the default): none,
  the programs alone reach the limit.
* ``--clear-every N``: ``jax.clear_caches()`` every N programs (drops the compiled programs).
* ``--guard jnmf``: ``jnmf.compile_cache.release_programs_near_map_limit(F)`` before every
  program, as jnmf does before every fit (F: ``--guard-fraction``, jnmf's 0.75 by default;
  a higher one lets a run with ``--fill-to`` near the limit show the drops sooner).

Usage::

    python experiments/xla_map_limit_crash.py --kernels 32            # the programs alone
    python experiments/xla_map_limit_crash.py --kernels 8 --fill-to 40000
    python experiments/xla_map_limit_crash.py --kernels 8 --fill-to 40000 --guard jnmf --programs 1500
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT_FILE = "/proc/sys/vm/max_map_count"


def mappings() -> int:
    """Lines of /proc/self/maps: the process's memory mappings."""
    with open("/proc/self/maps", "rb") as maps:
        return maps.read().count(b"\n")


def fill_mappings(target: int) -> None:
    """Occupy mappings up to ``target``: one anonymous region, every other page read-only.

    Changing one page's protection inside a region splits it (+2 mappings); the pages are
    never touched, so this costs address space, not memory."""
    import ctypes
    import mmap

    need = target - mappings()
    if need <= 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    size, c_int = ctypes.c_size_t, ctypes.c_int
    libc.mmap.argtypes = [ctypes.c_void_p, size, c_int, c_int, c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = mmap.PAGESIZE
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    base = libc.mmap(None, (need + 2) * page, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)
    if base in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap failed")
    for k in range(1, need, 2):
        if libc.mprotect(base + k * page, page, mmap.PROT_READ) != 0:
            raise OSError(ctypes.get_errno(), f"mprotect failed at {mappings()} mappings")


def child(args: argparse.Namespace) -> None:
    """Compile ``args.programs`` distinct programs, all kept alive; print the mapping count."""
    import jax
    import jax.numpy as jnp

    release = None
    if args.guard == "jnmf":
        import functools
        import warnings

        from jnmf.compile_cache import release_programs_near_map_limit

        release = functools.partial(release_programs_near_map_limit, args.guard_fraction)
        warnings.simplefilter("ignore", RuntimeWarning)  # its warning, once per drop
    limit = int(Path(LIMIT_FILE).read_text())
    x = jnp.ones(64, jnp.float32)
    jax.jit(lambda x: x * 2.0)(x).block_until_ready()  # the backend and its threads first
    fill_mappings(args.fill_to)
    print(f"vm.max_map_count {limit}; mappings before the programs {mappings()}", flush=True)
    start, cpu = time.perf_counter(), time.process_time()
    alive, drops = [], 0
    for i in range(1, args.programs + 1):
        if args.clear_every and i % args.clear_every == 0:
            jax.clear_caches()
            drops += 1
        if release is not None and release():
            drops += 1
        # a distinct constant: a distinct program; K outputs of different lengths: K kernels
        program = jax.jit(lambda x, c=i + 0.5: [x[: k + 1] * c + k for k in range(args.kernels)])
        jax.block_until_ready(program(x))
        alive.append(program)
        count = mappings()
        if i % args.every == 0 or count > limit - 300:
            print(
                f"programs {i} mappings {count} ({count / limit:.1%} of the limit) drops {drops} "
                f"wall {time.perf_counter() - start:.0f} s cpu {time.process_time() - cpu:.0f} s",
                flush=True,
            )
    print(f"no crash: {args.programs} programs compiled, {mappings()} mappings, {drops} drops", flush=True)


def parent(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the child under faulthandler; report how it ended."""
    command = [sys.executable, "-X", "faulthandler", __file__, "--child", *argv]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"start {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load average {os.getloadavg()}")
    print("running:", " ".join(command), f"> {args.log}", flush=True)
    start = time.perf_counter()
    lines = []
    with open(args.log, "w") as log:
        out = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        process = subprocess.Popen(command, env=env, **out)
        for line in process.stdout:
            log.write(line)
            lines.append(line.rstrip("\n"))
            if line.startswith(("programs", "vm.", "no crash")):
                print(" ", line.rstrip(), flush=True)
        status = process.wait()
    ended = f"signal {-status} ({_signal_name(-status)})" if status < 0 else f"exit status {status}"
    print(f"child ended: {ended} after {time.perf_counter() - start:.0f} s; load average {os.getloadavg()}")
    progress = [line for line in lines if line.startswith("programs")]
    if progress:
        print("last count:", progress[-1])
    for line in lines:
        if re.match(r"[EF]\d{4} ", line) or "RAW:" in line:
            print("XLA:", line)
    if "Fatal Python error" in "\n".join(lines):
        first = next(i for i, line in enumerate(lines) if "Fatal Python error" in line)
        print("faulthandler:")
        for line in lines[first : first + 14]:
            print("  ", line)
    return status


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--programs", type=int, default=100_000, help="programs to compile (default: until it ends)"
    )
    parser.add_argument("--kernels", type=int, default=1, help="kernels per program (about 3 mappings each)")
    parser.add_argument("--fill-to", type=int, default=0, help="occupy mappings up to this count first")
    parser.add_argument("--clear-every", type=int, default=0, help="jax.clear_caches() every N programs")
    parser.add_argument("--guard", choices=("none", "jnmf"), default="none")
    parser.add_argument("--guard-fraction", type=float, default=0.75, help="for --guard jnmf")
    parser.add_argument("--every", type=int, default=100, help="print the count every N programs")
    parser.add_argument("--log", type=Path, default=Path("/tmp/xla_map_limit_crash.log"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    sys.exit(0 if parent(args, argv) == 0 else 1)


if __name__ == "__main__":
    main()
