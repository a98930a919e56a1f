"""Execute every notebook in this folder top to bottom; exit 1 if any cell fails.

    python notebooks/run_all.py                 # CI: run copies in a temporary folder
    python notebooks/run_all.py --in-place      # refresh the committed outputs
    python notebooks/run_all.py golub_rank_survey.ipynb --timeout 120
    python notebooks/run_all.py --jobs 1        # one notebook at a time

Every ``notebooks/*.ipynb`` is run in a fresh ``python3`` kernel with nbclient, each
cell under a time limit, two notebooks at a time (``--jobs``; one with ``--in-place``).
By default the executed copies go to a temporary folder (working directory of the kernel
too), so the committed notebooks and the repository stay untouched; ``--in-place``
writes the outputs back into the notebooks, which is how the committed outputs are made.
The kernels import the jnmf of this checkout (its root is put first on ``PYTHONPATH``).
The wall time and the kernel's CPU time of each notebook are printed as it finishes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def execute(path: Path, out: Path, timeout: int, kernel: str) -> tuple[float, float]:
    """Run one notebook top to bottom and write the executed notebook.

    Args:
        path: the notebook to run.
        out: where to write the executed notebook (may be ``path``); its folder is
            the kernel's working directory.
        timeout: seconds allowed per cell.
        kernel: the Jupyter kernel name.

    Returns:
        The wall time and the kernel's CPU time in seconds (kernel start-up included;
        the CPU time is that of the finished child processes, the kernel's).

    Raises:
        nbclient.exceptions.CellExecutionError: a cell raised; the message names it.
        nbclient.exceptions.CellTimeoutError: a cell ran past ``timeout``.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel,
        # no per-cell timestamps in the metadata: re-running changes only outputs
        record_timing=False,
        resources={"metadata": {"path": str(out.parent)}},
    )
    start, cpu = time.perf_counter(), _children_cpu()
    try:
        client.execute()
    finally:
        seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu
        nbformat.write(nb, out)
    return seconds, cpu


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished (waited-for) children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_one(path: Path, out: Path, timeout: int, kernel: str) -> tuple[float, float, str | None]:
    """Run one notebook (:func:`execute`), reporting a failure instead of raising it.

    Args:
        path: the notebook to run.
        out: where to write the executed notebook.
        timeout: seconds allowed per cell.
        kernel: the Jupyter kernel name.

    Returns:
        The wall and kernel CPU seconds, and the error's text (None when every cell ran).
    """
    start, cpu = time.perf_counter(), _children_cpu()
    try:
        seconds, cpu = execute(path, out, timeout, kernel)
        return seconds, cpu, None
    except Exception as e:  # any failure: report it, run the rest, exit 1
        return time.perf_counter() - start, _children_cpu() - cpu, str(e) or repr(e)


def main(argv: list[str] | None = None) -> int:
    """Run the notebooks named on the command line, or every ``notebooks/*.ipynb``.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        0 when every notebook ran without error, 1 otherwise.
    """
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("notebooks", nargs="*", help="notebooks to run (default: every notebooks/*.ipynb)")
    parser.add_argument("--in-place", action="store_true", help="write the outputs back into the notebooks")
    parser.add_argument("--timeout", type=int, default=300, help="seconds allowed per cell (default 300)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    parser.add_argument(
        "--jobs",
        type=int,
        help="notebooks run at once, each in its own kernel (default 2; 1 with --in-place, so "
        "that the timings the notebooks print and keep are those of a kernel on its own)",
    )
    args = parser.parse_args(argv)
    if args.jobs is None:
        args.jobs = 1 if args.in_place else 2
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")

    paths = [Path(p).resolve() for p in args.notebooks] or sorted(HERE.glob("*.ipynb"))
    # the kernels (which inherit this environment) import this checkout's jnmf, whatever
    # their working directory and whichever jnmf is installed
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    if not paths:
        print("no notebooks found", file=sys.stderr)
        return 1
    failures = []
    total_cpu = 0.0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jnmf-notebooks-") as scratch:
        outs = [path if args.in_place else Path(scratch) / path.name for path in paths]
        if not args.in_place:
            for path, out in zip(paths, outs):
                shutil.copy(path, out)
        jobs = [(path, out, args.timeout, args.kernel) for path, out in zip(paths, outs)]
        if args.jobs == 1:
            done = ((job[0], _run_one(*job)) for job in jobs)
        else:
            # whole notebooks side by side: one kernel's single-threaded stretches (start-up,
            # imports, XLA compiling, Python) leave a core idle (experiments/README.md, "CI time")
            pool = ProcessPoolExecutor(
                min(args.jobs, len(jobs)), mp_context=multiprocessing.get_context("spawn")
            )
            futures = {pool.submit(_run_one, *job): job[0] for job in jobs}
            done = ((futures[f], f.result()) for f in as_completed(futures))
        for path, (seconds, cpu, error) in done:
            total_cpu += cpu
            if error is not None:
                failures.append((path.name, error))
            status = "ok" if error is None else "FAILED"
            print(f"{path.name:36s} {seconds:7.1f} s  {cpu:7.1f} s CPU  {status}", flush=True)
        if args.jobs > 1:
            pool.shutdown()
    print(f"{'total (wall, kernels CPU)':36s} {time.perf_counter() - start:7.1f} s  {total_cpu:7.1f} s CPU")
    for name, error in failures:
        print(f"\n{name} failed:\n{error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
