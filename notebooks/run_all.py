"""Execute every notebook in this folder top to bottom; exit 1 if any cell fails.

    python notebooks/run_all.py                 # CI: run copies in a temporary folder
    python notebooks/run_all.py --in-place      # refresh the committed outputs
    python notebooks/run_all.py golub_rank_survey.ipynb --timeout 120

Every ``notebooks/*.ipynb`` is run (sorted by name) in a fresh ``python3`` kernel with
nbclient, each cell under a time limit.  By default the executed copies go to a
temporary folder (working directory of the kernel too), so the committed notebooks and
the repository stay untouched; ``--in-place`` writes the outputs back into the
notebooks, which is how the committed outputs are made.  The kernels import the jnmf
of this checkout (its root is put first on ``PYTHONPATH``).  The wall time of each
notebook is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def execute(path: Path, out: Path, timeout: int, kernel: str) -> float:
    """Run one notebook top to bottom and write the executed notebook.

    Args:
        path: the notebook to run.
        out: where to write the executed notebook (may be ``path``); its folder is
            the kernel's working directory.
        timeout: seconds allowed per cell.
        kernel: the Jupyter kernel name.

    Returns:
        The wall time in seconds (kernel start-up included).

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
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        seconds = time.perf_counter() - start
        nbformat.write(nb, out)
    return seconds


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
    args = parser.parse_args(argv)

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
    total = 0.0
    with tempfile.TemporaryDirectory(prefix="jnmf-notebooks-") as scratch:
        for path in paths:
            out = path if args.in_place else Path(scratch) / path.name
            if not args.in_place:
                shutil.copy(path, out)
            start = time.perf_counter()
            try:
                seconds = execute(path, out, args.timeout, args.kernel)
                status = "ok"
            except Exception as e:  # any failure: report it, run the rest, exit 1
                seconds = time.perf_counter() - start
                status = "FAILED"
                failures.append((path.name, e))
            total += seconds
            print(f"{path.name:32s} {seconds:7.1f} s  {status}", flush=True)
    print(f"{'total':32s} {total:7.1f} s")
    for name, error in failures:
        print(f"\n{name} failed:\n{error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
