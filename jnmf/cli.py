"""Command line: ``jnmf demo``, ``jnmf fit`` and ``jnmf rank`` (also ``python -m jnmf ...``).

``demo`` reproduces the rank selection of Brunet et al. (2004) on the built-in
Golub ALL/AML data; ``rank`` runs the same consensus survey on a data file;
``fit`` factors a data file at one rank.  Results go to stdout and to files in
``--out`` (``fit`` also writes ``result.npz``, the whole result, for
``jnmf.load``); every error is one line on stderr, with exit status 2 for a usage
error (bad option or value) and 1 for a data or file error.

Progress bars go to stderr, only when it is a terminal and without ``--quiet``.
Compiled programs are kept in JAX's persistent compilation cache
(:mod:`jnmf.compile_cache`, default ``~/.cache/jnmf/jax``), so a second run of the
same command skips compiling; ``--no-cache`` or ``JNMF_NO_COMPILE_CACHE=1`` turns it off.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Only what checking the arguments needs is imported here (NumPy, the file readers and
# jnmf.names): JAX and the solvers are imported once the arguments passed, so a usage
# error prints at once (issue 15: it took 1.2-1.4 s when JAX came first).
from .io import (
    SUFFIXES,
    LabeledMatrix,
    MatrixFileError,
    check_matrix_path,
    check_nonnegative,
    read_matrix,
    write_labeled_csv,
)
from .names import DEFAULT_MAX_ITERATIONS, DEFAULT_METHOD, DEFAULT_TOL, METHOD_DESCRIPTIONS

INIT_NAMES = ("random", "sparse", "nndsvd", "nndsvda", "nndsvdar")
PENALTIES = ("lambda_1L", "lambda_1R", "lambda_2L", "lambda_2R", "gamma_2L", "gamma_2R")

# Survey defaults follow R's NMF package (nmf(x, 2:5, nrun=50) with method "brunet"):
# 50 KL restarts per rank, each stopping once its clusters are stable for 40
# iterations (checked every 10), capped at 2000 iterations, no objective tolerance.
# Every rank runs in one compiled program; the demo's wall time is printed at its end
# (see experiments/README.md for today's measurement).
DEMO_RANKS = (2, 3, 4, 5)
RANK_RANKS = tuple(range(2, 9))
DEMO_RESTARTS = 50
DEMO_MAX_ITERATIONS = 2000
PLOT_HINT = "pip install 'jnmf[plot]'"


class UsageError(Exception):
    """A bad command line: option, value or combination (exit status 2)."""


class DataError(Exception):
    """Unusable data or files: input, output directory (exit status 1)."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where the help text states it itself."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump), raised so main() owns the exit."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ----------------------------------------------------------------------------- option types


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def parse_ranks(text: str) -> list[int]:
    """Ranks from ``"2-8"``, ``"2,3,5"``, ``"3"`` or a mix such as ``"2-4,6"``.

    Args:
        text: the specification.

    Returns:
        The ranks, ascending and without duplicates.

    Raises:
        argparse.ArgumentTypeError: malformed text, a rank below 2, or an empty range.
    """
    ranks: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise argparse.ArgumentTypeError(f"malformed ranks {text!r}; use e.g. 2-8 or 2,3,5")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) else low
        if high < low:
            raise argparse.ArgumentTypeError(f"empty rank range {part.strip()!r} in {text!r}")
        if low < 2:
            # at rank 1 every restart puts all samples together: there is no consensus to measure
            raise argparse.ArgumentTypeError(f"ranks must be at least 2, got {text!r}")
        ranks.update(range(low, high + 1))
    return sorted(ranks)


# ----------------------------------------------------------------------------- analysis helpers


def dispersion(C: np.ndarray) -> float:
    """Dispersion coefficient of a consensus matrix (Kim & Park 2007): mean of 4 (C_ij - 1/2)^2.

    1 when every pair is always or never clustered together, 0 when all pairs are 50/50.

    Args:
        C: the ``n x n`` consensus matrix.

    Returns:
        The dispersion in [0, 1].
    """
    C = np.asarray(C, dtype=float)
    return float(np.mean(4.0 * (C - 0.5) ** 2))


def pick_rank(ranks: Sequence[int], cophenetic: Sequence[float]) -> tuple[int, str]:
    """Brunet et al.'s (2004) rule: the largest rank before the cophenetic correlation first drops.

    Values are compared as printed (4 decimals), so a "drop" is one the table shows.

    Args:
        ranks: ascending ranks.
        cophenetic: the cophenetic correlation at each rank.

    Returns:
        The picked rank and a one-sentence reason, phrased to follow "Picked rank k: ".
    """
    shown = [round(float(c), 4) for c in cophenetic]
    if len(ranks) == 1:
        return ranks[0], "it is the only rank surveyed."
    for i in range(len(ranks) - 1):
        if shown[i + 1] < shown[i]:
            return ranks[i], (
                "it is the largest rank before the cophenetic correlation drops "
                f"({shown[i]:.4f} at rank {ranks[i]}, {shown[i + 1]:.4f} at rank {ranks[i + 1]}), "
                "Brunet et al.'s (2004) rule."
            )
    return ranks[-1], (
        "it is the largest rank surveyed and the cophenetic correlation does not drop up to it "
        "(Brunet et al.'s rule looks for the drop: survey larger ranks to see it)."
    )


ANSWER_RULE = (
    "the answer is the consensus pick (Brunet et al.'s cophenetic rule), whose factors are written; "
    "--cv adds cross-validation's pick as a second opinion, reported beside it"
)


def answer_line(consensus_rank: int, cv_rank: int | None) -> str:
    """The last word of ``jnmf rank`` / ``jnmf demo``: which criterion picked which rank, and
    which rank is the answer (:data:`ANSWER_RULE`).

    Args:
        consensus_rank: the rank the cophenetic correlation picks (:func:`pick_rank`).
        cv_rank: the rank cross-validation picks, or None without ``--cv``.

    Returns:
        One line, e.g. ``Consensus (cophenetic) picks 2; cross-validation picks 4; answer: 2 ...``.
    """
    if cv_rank is None:
        return f"Consensus (cophenetic) picks {consensus_rank}; answer: {consensus_rank}"
    agree = "they agree" if cv_rank == consensus_rank else "they disagree: compare the table and cv_error.png"
    return (
        f"Consensus (cophenetic) picks {consensus_rank}; cross-validation picks {cv_rank}; "
        f"answer: {consensus_rank}, the consensus pick ({agree})"
    )


def relative_error(Y: np.ndarray, L: np.ndarray, R: np.ndarray) -> float:
    """``||Y - L R||_F / ||Y||_F`` computed in float64, over the entries present (NaN
    entries of Y, missing values, are left out of both norms).

    Args:
        Y: the data.
        L: left factor.
        R: right factor.

    Returns:
        The relative Frobenius error.
    """
    if hasattr(Y, "tocoo") and not isinstance(Y, np.ndarray):
        return _sparse_relative_error(Y, L, R)
    Y = np.asarray(Y, np.float64)
    present = ~np.isnan(Y)
    residual = (Y - np.asarray(L, np.float64) @ np.asarray(R, np.float64))[present]
    return float(np.linalg.norm(residual) / np.linalg.norm(Y[present]))


def _sparse_relative_error(Y, L, R, chunk: int = 1 << 16) -> float:
    """``||Y - L R||_F / ||Y||_F`` for a scipy.sparse Y without forming ``L R``:
    ``||Y||^2 - 2 <Y, L R> + <L'L, R R'>``, the middle term over the stored entries in chunks."""
    coo = Y.tocoo()
    L, R = np.asarray(L, np.float64), np.asarray(R, np.float64)
    data = coo.data.astype(np.float64)
    cross = 0.0
    for start in range(0, data.size, chunk):
        rows, cols = coo.row[start : start + chunk], coo.col[start : start + chunk]
        cross += float(data[start : start + chunk] @ np.einsum("ek,ke->e", L[rows], R[:, cols]))
    norm2 = float(data @ data)
    residual2 = norm2 - 2.0 * cross + float(np.sum((L.T @ L) * (R @ R.T)))
    return float(np.sqrt(max(residual2, 0.0) / norm2)) if norm2 > 0 else 0.0


def fit_status(result, max_iterations: int) -> str:
    """The stopping reason of a fit: ``status_name`` when the result has one, else derived.

    Args:
        result: a ``jnmf.fit`` result.
        max_iterations: the iteration cap it ran under.

    Returns:
        "converged", "max_iterations", "stuck" or "nonfinite".
    """
    name = getattr(result, "status_name", None)
    if name is not None:
        return str(name)
    if not np.isfinite(float(result.objective)):
        return "nonfinite"
    if bool(result.converged):
        return "converged"
    if int(result.iterations) >= max_iterations:
        return "max_iterations"
    return "stuck"


def versions() -> dict:
    """Versions of jnmf, jax, numpy and Python, for summaries."""
    import jax

    from . import __version__

    return {
        "jnmf": __version__,
        "jax": jax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _call_jnmf(function: Callable, *args, **kwargs):
    """Call into jnmf, turning its ValueError (which names the argument) into a CLI error."""
    try:
        return function(*args, **kwargs)
    except ValueError as err:
        message = " ".join(str(err).split())
        # jnmf checks Y itself as "Y must ..."; anything else is about the settings
        if message.startswith("Y "):
            raise DataError(f"the data: {message}") from None
        raise UsageError(message) from None


# ----------------------------------------------------------------------------- output files


@dataclass
class Outputs:
    """The files one command will write into its output directory.

    Everything is checked before any work starts, so a long run never ends in
    "cannot write": a missing directory must be creatable, and existing files
    are only replaced with ``--force``.
    """

    directory: Path
    force: bool
    names: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Raise DataError if the directory cannot hold the files or one exists without --force.

        Writability is tried, not just looked up: a file is created and removed in the
        directory (or in its nearest existing ancestor), which also catches read-only
        file systems and privileges that ``os.access`` does not see."""
        directory = self.directory
        if directory.exists():
            if not directory.is_dir():
                raise DataError(f"output directory {directory} exists and is not a directory")
            problem = _write_problem(directory)
            if problem:
                raise DataError(f"output directory {directory} is not writable ({problem})")
            for name in self.names:
                target = directory / name
                if target.exists() and not target.is_file():
                    raise DataError(f"{target} exists and is not a file; remove it or choose another --out")
                if target.exists() and not self.force:
                    raise DataError(
                        f"{target} already exists; use --force to overwrite it or choose another --out"
                    )
            return
        ancestor = directory.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise DataError(f"cannot create output directory {directory}: {ancestor} is not a directory")
        problem = _write_problem(ancestor)
        if problem:
            raise DataError(
                f"cannot create output directory {directory}: {ancestor} is not writable ({problem})"
            )

    def path(self, name: str) -> Path:
        """The path of one planned file, creating the directory on first use."""
        if name not in self.names:
            raise AssertionError(f"{name} was not planned; the --force check did not see it")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataError(f"cannot create output directory {self.directory}: {err.strerror}") from None
        return self.directory / name


def _write_problem(directory: Path) -> str | None:
    """Why no file can be created in ``directory`` (an OS message), or None when one can."""
    if not os.access(directory, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        return err.strerror or str(err)
    return None


def _jsonable(value):
    """Plain JSON values: NaN and infinities (a diverged fit) become null, which JSON can hold."""
    if isinstance(value, dict):
        return {key: _jsonable(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")


def _save_figure(fig, path: Path) -> None:
    fig.savefig(path, dpi=120)


def _prefetch_plotting() -> threading.Thread:
    """Import what drawing a figure needs (matplotlib's Figure, the Agg canvas, a font) in
    a background thread, started before a fit: XLA compiles the fit's programs with
    Python's lock released, so on a second core these ~1 s of imports overlap the
    compile instead of following the fit.  Join the thread before plotting."""

    def load() -> None:
        try:
            from matplotlib import font_manager
            from matplotlib.backends import backend_agg
            from matplotlib.figure import Figure  # noqa: F401

            backend_agg.get_font(font_manager.findfont(font_manager.FontProperties()))
        except Exception:  # only a head start: the plot itself reports any real failure
            pass

    thread = threading.Thread(target=load, name="jnmf-prefetch-matplotlib", daemon=True)
    thread.start()
    return thread


def _plots_available() -> bool:
    """Whether matplotlib is installed, found without importing it (the import comes after
    the arguments are checked: :func:`_begin_work`)."""
    return importlib.util.find_spec("matplotlib") is not None


def _begin_work(args, plots: bool, outputs: Outputs) -> bool:
    """After every argument check that needs no data, before any work: 64-bit mode with
    ``--float64``, the persistent compilation cache (before anything compiles, so every
    program of this run can come from it; ``args.compile_cache``) and matplotlib's Agg
    backend.  Returns whether figures are drawn (when matplotlib, found installed, does not
    import, the figures are dropped from ``outputs``)."""
    _enable_float64(args)
    args.compile_cache = _enable_compile_cache(args)
    if plots and not _use_agg():
        outputs.names[:] = [name for name in outputs.names if not name.endswith(".png")]
        return False
    return plots


def _use_agg() -> bool:
    """Select matplotlib's file-only Agg backend; False when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    return True


# ----------------------------------------------------------------------------- input


def _check_input_exists(args) -> None:
    """Fail on a missing input, or one of a type jnmf cannot read, before anything else is
    checked (the output directory comes next) or computed."""
    check_matrix_path(args.input, key=args.key)


def _load_input(args, timings: dict) -> LabeledMatrix:
    start = time.perf_counter()
    dtype = np.float64 if getattr(args, "float64", False) else np.float32
    matrix = read_matrix(args.input, key=args.key, header=args.header, row_names=args.row_names, dtype=dtype)
    check_nonnegative(args.input, matrix, allow_nan=getattr(args, "missing", "error") == "nan")
    timings["load"] = time.perf_counter() - start
    return matrix


def _input_summary(args, matrix: LabeledMatrix) -> dict:
    return {
        "path": str(args.input),
        "key": args.key,
        "shape": list(matrix.values.shape),
        "dtype": str(matrix.values.dtype),
        "row_names": matrix.row_names is not None,
        "column_names": matrix.column_names is not None,
    }


def _show_progress(args) -> bool:
    """Progress bars only for a person watching: stderr a terminal, and no --quiet."""
    from .progress import stderr_is_terminal

    return not args.quiet and stderr_is_terminal()


def _enable_compile_cache(args) -> str | None:
    """Turn on the persistent compilation cache unless --no-cache; its directory, or None.

    A cache that cannot be set up (say, a read-only home) costs only speed: one note, and on.
    """
    if args.no_cache:
        return None
    from .compile_cache import enable_compile_cache

    try:
        directory = enable_compile_cache()
    except OSError as err:
        if not args.quiet:
            print(f"jnmf: note: compilation cache off ({err}); use --no-cache to skip it", file=sys.stderr)
        return None
    return None if directory is None else str(directory)


def _enable_float64(args) -> None:
    if getattr(args, "float64", False):
        import jax

        jax.config.update("jax_enable_x64", True)


# ----------------------------------------------------------------------------- fit


def _run_fit(args) -> int:
    import jnmf

    say = (lambda *a: None) if args.quiet else print
    start = time.perf_counter()
    timings: dict = {}
    _check_input_exists(args)
    plots = _plots_available()
    outputs = Outputs(
        Path(args.out), args.force, ["factors.npz", "L.csv", "R.csv", "summary.json", "result.npz"]
    )
    if plots:
        outputs.names.append("convergence.png")
    outputs.check()
    plots = _begin_work(args, plots, outputs)

    matrix = _load_input(args, timings)
    Y = matrix.values
    m, n = Y.shape
    if args.rank > min(m, n):
        raise UsageError(f"--rank must be at most min(rows, columns) = {min(m, n)} for this {m} x {n} data")
    say(f"{args.input}: {m} x {n}, rank {args.rank}, method {args.method}, {args.restarts} restart(s)")

    penalties = {name: getattr(args, name) for name in PENALTIES}
    prefetch = _prefetch_plotting() if plots else None  # after the checks: a usage error exits at once
    fit_start = time.perf_counter()
    res = _call_jnmf(
        jnmf.fit,
        Y,
        args.rank,
        method=args.method,
        init=args.init,
        restarts=args.restarts,
        key=jnmf.fitting.seed_key(args.seed),
        max_iterations=args.max_iterations,
        tol=args.tol,
        progress=_show_progress(args),
        missing=args.missing,
        **penalties,
    )
    L, R = np.asarray(res.L), np.asarray(res.R)  # waits for the computation
    timings["fit"] = time.perf_counter() - fit_start

    objective = float(res.objective)
    error = relative_error(Y, L, R)
    iterations = int(res.iterations)
    status = fit_status(res, args.max_iterations)
    objectives = np.asarray(res.objectives)
    components = [f"c{i + 1}" for i in range(args.rank)]
    row_names = matrix.row_names or [f"row{i + 1}" for i in range(m)]
    column_names = matrix.column_names or [f"col{j + 1}" for j in range(n)]

    np.savez(outputs.path("factors.npz"), L=L, R=R, objectives=objectives)
    res.save(outputs.path("result.npz"))
    write_labeled_csv(outputs.path("L.csv"), L, row_names, components, corner=matrix.corner)
    write_labeled_csv(outputs.path("R.csv"), R, components, column_names)
    if plots:
        from . import plot

        prefetch.join()
        title = f"{Path(args.input).name}: rank {args.rank}, {args.method}"
        fig = plot.convergence(np.asarray(res.history), int(res.history_stride), title=title)
        _save_figure(fig, outputs.path("convergence.png"))
    timings["total"] = time.perf_counter() - start
    settings = {
        "rank": args.rank,
        "method": args.method,
        "init": args.init,
        "restarts": args.restarts,
        "max_iterations": args.max_iterations,
        "tol": args.tol,
        "seed": args.seed,
        "float64": args.float64,
        **penalties,
    }
    summary = {
        "command": "fit",
        "objective": objective,
        "relative_error": error,
        "iterations": iterations,
        "status": status,
        "restart_objectives": objectives.tolist(),
        "timings": timings,
        "settings": settings,
        "input": _input_summary(args, matrix),
        "versions": versions(),
        "compile_cache": args.compile_cache,
    }
    _write_json(outputs.path("summary.json"), summary)

    say(f"objective {objective:.6g}, relative error {error:.4f}, {iterations} iterations ({status})")
    say(f"wrote {', '.join(outputs.names)} to {outputs.directory}")
    if not plots and not args.quiet:
        print(f"jnmf: note: matplotlib is not installed, so no PNG was written; {PLOT_HINT}", file=sys.stderr)
    say(f"{timings['total']:.1f} s (load {timings['load']:.2f} s, fit {timings['fit']:.2f} s)")
    return 0


# ----------------------------------------------------------------------------- rank survey


@dataclass
class RankRow:
    """One rank of a consensus survey."""

    rank: int
    cophenetic: float
    dispersion: float
    silhouette: float
    relative_error: float
    consensus: np.ndarray
    labels: np.ndarray
    entry: object  # the jnmf.consensus.Consensus of this rank (best factors, history)


def survey(
    Y: np.ndarray,
    ranks: Sequence[int],
    *,
    method: str,
    restarts: int,
    max_iterations: int,
    tol: float,
    seed: int,
    say: Callable[..., None],
    progress: bool = False,
    missing: str = "error",
    checkpoint: Path | None = None,
) -> tuple[list[RankRow], object]:
    """Consensus clustering at every rank, all in one compiled program, and its table.

    Args:
        Y: ``m x n`` non-negative data; its columns are the samples clustered.
        ranks: ascending ranks.
        method: the jnmf method of every restart.
        restarts: fits per rank.
        max_iterations: iteration cap per fit.
        tol: relative objective tolerance per fit (0: R's NMF stable-cluster rule only).
        seed: seed of the restarts' initializations.
        say: print function for the table (a no-op when quiet).
        progress: show a bar on stderr while the survey runs.
        missing: ``"nan"`` treats NaN entries as missing values (``jnmf.fit``'s ``missing``).
        checkpoint: a directory where each finished rank is saved, so a rerun of an
            interrupted survey resumes (``jnmf.consensus``'s ``checkpoint``); None: none.

    Returns:
        One row per rank, and the :class:`jnmf.consensus.RankSurvey`.
    """
    import jnmf

    Y64 = np.asarray(Y, np.float64)
    norm = np.linalg.norm(Y64[~np.isnan(Y64)])
    from .progress import progress_bar

    with progress_bar(1, f"rank survey {ranks[0]}-{ranks[-1]}", enabled=progress, unit="survey") as bar:
        result = _call_jnmf(
            jnmf.consensus,
            Y,
            list(ranks),
            restarts=restarts,
            method=method,
            key=seed,
            max_iterations=max_iterations,
            tol=tol,
            missing=missing,
            checkpoint=checkpoint,
        )
        bar.advance_to(1)
    say(f"{'rank':>4}  {'cophenetic':>10}  {'dispersion':>10}  {'silhouette':>10}  {'rel. error':>10}")
    rows = []
    for entry in result:
        row = RankRow(
            entry.rank,
            float(entry.cophenetic),
            float(entry.dispersion),
            float(entry.silhouette),
            float(entry.residual) / norm,
            np.asarray(entry.consensus),
            np.asarray(entry.labels),
            entry,
        )
        rows.append(row)
        cells = (row.cophenetic, row.dispersion, row.silhouette, row.relative_error)
        say(f"{row.rank:>4}  " + "  ".join(f"{v:>10.4f}" for v in cells))
    say(
        f"{len(rows)} ranks x {restarts} restarts in {result.seconds:.1f} s, "
        f"one compiled fit program for every rank ({result.compilations} XLA compilations in all)"
    )
    return rows, result


def cross_table(clusters: np.ndarray, classes: np.ndarray) -> dict[str, dict[str, int]]:
    """How many samples of each known class fall into each cluster.

    Args:
        clusters: cluster index per sample.
        classes: known class per sample.

    Returns:
        ``{cluster: {class: count}}`` with clusters numbered from 1.
    """
    names = sorted(set(np.asarray(classes).astype(str)))
    classes = np.asarray(classes).astype(str)
    return {
        str(int(c) + 1): {name: int(np.sum((clusters == c) & (classes == name))) for name in names}
        for c in np.unique(clusters)
    }


def _print_cross_table(rank: int, table: dict[str, dict[str, int]], say) -> None:
    names = list(next(iter(table.values())))
    say(f"\nrank {rank}: consensus clusters vs. cell type")
    say("cluster  " + "  ".join(f"{name:>6}" for name in names))
    for cluster, counts in table.items():
        say(f"{cluster:>7}  " + "  ".join(f"{counts[name]:>6}" for name in names))


def _survey_outputs(args, ranks: Sequence[int], plots: bool) -> Outputs:
    names = ["factors.npz", "consensus.npz", "summary.json"]
    if plots:
        names += ["rank_survey.png", "convergence.png"] + [f"consensus_rank{k}.png" for k in ranks]
        if getattr(args, "cv", "none") != "none":
            names.append("cv_error.png")
    return Outputs(Path(args.out), args.force, names)


def _cross_validation(args, Y: np.ndarray, ranks: Sequence[int], outputs: Outputs, plots: bool, say) -> dict:
    """``jnmf rank --cv``: cross-validated test error per rank (Frobenius; the fits' method is
    :func:`jnmf.cross_validate_rank`'s default, ANLS)."""
    import jnmf
    from jnmf.cross_validation import DEFAULT_CV_METHOD

    cv = _call_jnmf(
        jnmf.cross_validate_rank,
        Y,
        ranks,
        scheme=args.cv,
        repeats=args.cv_repeats,
        key=args.seed,
        max_iterations=args.max_iterations,
        missing=args.missing,
        checkpoint=_checkpoint(args, "cv"),
    )
    say(f"\ncross-validation ({args.cv}, {args.cv_repeats} repeats, {DEFAULT_CV_METHOD}): test MSE per rank")
    say(cv.table())
    say(
        f"Cross-validation picks rank {cv.selected_rank} (the smallest rank whose test error is within one "
        "standard error of the lowest)"
    )
    if plots:
        from . import plot

        _save_figure(plot.cv_error(cv), outputs.path("cv_error.png"))
    return {
        "scheme": cv.scheme,
        "holdout": cv.holdout,
        "repeats": int(cv.test_error.shape[0]),
        "ranks": [int(r) for r in cv.ranks],
        "mean_test_error": [float(v) for v in cv.mean_test_error],
        "std_test_error": [float(v) for v in cv.std_test_error],
        "selected_rank": cv.selected_rank,
        "seconds": cv.seconds,
    }


def _run_survey(
    args,
    Y: np.ndarray,
    ranks: Sequence[int],
    *,
    command: str,
    outputs: Outputs,
    plots: bool,
    start: float,
    timings: dict,
    input_summary: dict,
    sample_names=None,
    classes=None,
) -> int:
    """The shared body of ``demo`` and ``rank``: survey, pick, write, report."""
    say = (lambda *a: None) if args.quiet else print
    survey_start = time.perf_counter()
    rows, result = survey(
        Y,
        ranks,
        method=args.method,
        restarts=args.restarts,
        max_iterations=args.max_iterations,
        tol=args.tol,
        seed=args.seed,
        say=say,
        progress=_show_progress(args),
        missing=getattr(args, "missing", "error"),
        checkpoint=_checkpoint(args, "consensus"),
    )
    timings["survey"] = time.perf_counter() - survey_start
    picked, reason = pick_rank([r.rank for r in rows], [r.cophenetic for r in rows])
    say(f"\nConsensus (cophenetic correlation) picks rank {picked}: {reason}")

    cross_tables = {}
    if classes is not None:
        for row in rows:
            if row.rank in (2, 3):
                cross_tables[str(row.rank)] = cross_table(row.labels, classes)
                _print_cross_table(row.rank, cross_tables[str(row.rank)], say)

    # The survey kept every rank's best restart: its factors and history are the pick's.
    best = result[picked]
    L, R = np.asarray(best.L), np.asarray(best.R)

    np.savez(outputs.path("factors.npz"), L=L, R=R, objectives=np.asarray(best.objectives), rank=picked)
    consensus_arrays = {f"consensus_rank{r.rank}": r.consensus for r in rows}
    consensus_arrays |= {f"labels_rank{r.rank}": r.labels for r in rows}
    np.savez(outputs.path("consensus.npz"), ranks=np.array([r.rank for r in rows]), **consensus_arrays)
    if plots:
        plot_start = time.perf_counter()
        from . import plot

        ranks_list = [r.rank for r in rows]
        fig = plot.rank_survey(ranks_list, [r.cophenetic for r in rows], [r.dispersion for r in rows], picked)
        _save_figure(fig, outputs.path("rank_survey.png"))
        for row in rows:
            title = f"consensus of {args.restarts} restarts at rank {row.rank}"
            fig = plot.consensus_heatmap(row.consensus, sample_names, classes, title=title)
            _save_figure(fig, outputs.path(f"consensus_rank{row.rank}.png"))
        title = f"best of {args.restarts} restarts at rank {picked}, {args.method}"
        fig = plot.convergence(np.asarray(best.history), int(best.history_stride), title=title)
        _save_figure(fig, outputs.path("convergence.png"))
        timings["plots"] = time.perf_counter() - plot_start
    timings["total"] = time.perf_counter() - start

    summary = {
        "command": command,
        "ranks": [
            {
                "rank": r.rank,
                "cophenetic": r.cophenetic,
                "dispersion": r.dispersion,
                "silhouette": r.silhouette,
                "relative_error": r.relative_error,
            }
            for r in rows
        ],
        "picked_rank": picked,
        "reason": reason,
        "best_fit": {
            "rank": picked,
            "objective": best.best_objective,
            "relative_error": relative_error(Y, L, R),
            "iterations": int(best.iterations[best.best]),
            "status": str(best.status_names[best.best]),
        },
        "survey": {"seconds": result.seconds, "compilations": result.compilations},
        "timings": timings,
        "settings": {
            "ranks": list(ranks),
            "method": args.method,
            "restarts": args.restarts,
            "max_iterations": args.max_iterations,
            "tol": args.tol,
            "seed": args.seed,
        },
        "input": input_summary,
        "versions": versions(),
        "compile_cache": args.compile_cache,
    }
    if cross_tables:
        summary["clusters_vs_class"] = cross_tables
    cv_rank = None
    if getattr(args, "cv", "none") != "none":
        summary["cross_validation"] = _cross_validation(args, Y, ranks, outputs, plots, say)
        cv_rank = summary["cross_validation"]["selected_rank"]
    summary["picks"] = {"consensus": picked, "cross_validation": cv_rank}
    summary["answer_rule"] = ANSWER_RULE
    _write_json(outputs.path("summary.json"), summary)
    say("\n" + answer_line(picked, cv_rank))

    say(f"\nwrote {', '.join(outputs.names)} to {outputs.directory}")
    if not plots and not args.quiet:
        print(
            f"jnmf: note: matplotlib is not installed, so no PNGs were written; {PLOT_HINT}", file=sys.stderr
        )
    say(f"total wall time {timings['total']:.1f} s")
    return 0


def _checkpoint(args, part: str) -> Path | None:
    """``--checkpoint DIR``'s directory for one part of the run (``consensus`` or ``cv``)."""
    directory = getattr(args, "checkpoint", None)
    return None if directory is None else Path(directory) / part


def _requested_ranks(args, default: Sequence[int]) -> list[int]:
    """The ranks of --ranks (given as one or several specifications), or the default."""
    if args.ranks is None:
        return list(default)
    return sorted({k for spec in args.ranks for k in spec})


def _run_rank(args) -> int:
    start = time.perf_counter()
    timings: dict = {}
    ranks = _requested_ranks(args, RANK_RANKS)
    _check_input_exists(args)
    plots = _plots_available()
    outputs = _survey_outputs(args, ranks, plots)
    outputs.check()
    if args.checkpoint is not None and Path(args.checkpoint).exists() and not Path(args.checkpoint).is_dir():
        raise UsageError(f"--checkpoint {args.checkpoint} exists and is not a directory")
    plots = _begin_work(args, plots, outputs)
    matrix = _load_input(args, timings)
    m, n = matrix.values.shape
    if ranks[-1] > min(m, n):
        if args.ranks is not None:
            raise UsageError(
                f"--ranks go up to {ranks[-1]}, above min(rows, columns) = {min(m, n)} of this data"
            )
        # the default range adapts to small data; ranks the user asked for do not
        ranks = [k for k in ranks if k <= min(m, n)]
        if not ranks:
            raise UsageError(f"this {m} x {n} data has no rank >= 2 to survey")
    if not args.quiet:
        print(f"{args.input}: {m} x {n}; consensus of {args.restarts} restarts ({args.method}) per rank")
        if args.checkpoint is not None:
            print(f"each finished rank is saved in {args.checkpoint}: rerun this command to resume it")
        print()
    return _run_survey(
        args,
        matrix.values,
        ranks,
        command="rank",
        outputs=outputs,
        plots=plots,
        start=start,
        timings=timings,
        input_summary=_input_summary(args, matrix),
        sample_names=matrix.column_names,
    )


def _run_demo(args) -> int:
    start = time.perf_counter()
    timings: dict = {}
    ranks = _requested_ranks(args, DEMO_RANKS)
    plots = _plots_available()
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="jnmf-demo-")
        if not args.quiet:
            print(f"writing the results to {args.out} (a new temporary directory; --out DIR to choose)")
    outputs = _survey_outputs(args, ranks, plots)
    outputs.check()
    plots = _begin_work(args, plots, outputs)
    import jax

    import jnmf

    data = jnmf.load_golub()
    Y = np.asarray(data.expression, np.float32)
    timings["load"] = time.perf_counter() - start
    if not args.quiet:
        types, counts = np.unique(data.cell_type, return_counts=True)
        described = ", ".join(f"{c} {t}" for t, c in zip(types, counts))
        print(f"Golub ALL/AML leukaemia data: {Y.shape[0]} genes x {Y.shape[1]} samples ({described})")
        print(
            f"jax {jax.__version__} on {jax.devices()[0].platform}; consensus of {args.restarts} restarts "
            f"({args.method}) per rank, as Brunet et al. (2004)\n"
        )
    input_summary = {"data": "Golub ALL/AML (jnmf.load_golub)", "shape": list(Y.shape)}
    return _run_survey(
        args,
        Y,
        ranks,
        command="demo",
        outputs=outputs,
        plots=plots,
        start=start,
        timings=timings,
        input_summary=input_summary,
        sample_names=list(data.sample),
        classes=np.asarray(data.cell_type),
    )


# ----------------------------------------------------------------------------- parser


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        metavar="FILE",
        help=f"data matrix: {', '.join(SUFFIXES)} or a 10x Genomics directory",
    )
    parser.add_argument("--key", help=".npz only: the array to read (required when it holds several)")
    parser.add_argument(
        "--header",
        action=argparse.BooleanOptionalAction,
        help="text files: the first row holds column names (default: yes when it has a non-numeric cell)",
    )
    parser.add_argument(
        "--row-names",
        action=argparse.BooleanOptionalAction,
        help="text files: the first column holds row names (default: yes when it has a non-numeric cell)",
    )
    parser.add_argument("--float64", action="store_true", help="compute in double precision")
    parser.add_argument(
        "--missing",
        choices=("error", "nan", "unstored"),
        default="error",
        help="NaN entries (and empty or NA cells of text files): an error, or missing values that "
        "are neither fitted nor scored (weight 0 in the loss); 'unstored': the unstored entries "
        "of a sparse file (.mtx, sparse .npz, 10x, .h5ad) are missing (recommender data)",
    )


def _add_output_options(parser: argparse.ArgumentParser, default_out: str | None) -> None:
    help_text = "directory for the result files"
    if default_out is None:
        help_text += " (default: a new temporary directory, printed)"
    parser.add_argument("--out", default=default_out, metavar="DIR", help=help_text)
    parser.add_argument("--force", action="store_true", help="overwrite existing result files")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors (and no progress bar)")
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="do not keep compiled programs on disk for later runs (as JNMF_NO_COMPILE_CACHE=1; "
        "the cache is in $XDG_CACHE_HOME/jnmf/jax or ~/.cache/jnmf/jax)",
    )


def _add_survey_options(
    parser: argparse.ArgumentParser, methods: Sequence[str], ranks: str, restarts: int, max_iterations: int
) -> None:
    parser.add_argument(
        "--ranks",
        type=parse_ranks,
        nargs="+",
        metavar="RANKS",
        help=f"ranks to survey: a range (2-8), a list (2,3,5) or several words (2 3) (default: {ranks})",
    )
    parser.add_argument("--restarts", type=_positive_int, default=restarts, help="fits per rank")
    parser.add_argument(
        "--method",
        default="kl",
        choices=methods,
        metavar="METHOD",
        help=f"update rule of every fit, one of {', '.join(methods)} (kl: KL divergence, as Brunet et al.)",
    )
    parser.add_argument(
        "--max-iterations", type=_nonneg_int, default=max_iterations, help="iteration cap per fit"
    )
    parser.add_argument(
        "--tol",
        type=_nonneg_float,
        default=0.0,
        help="also stop a fit when its objective changes by less than this fraction (0: only the "
        "stable-cluster rule of R's NMF: clusters unchanged at 40 checks in a row, one every 10 iterations)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initializations")


# ----------------------------------------------------------------------------- programs (cNMF)
# ``jnmf programs``: consensus gene-expression programs (Kotliar et al. 2019) of a cells x
# genes count matrix.  Self-contained: its parser is added by _add_programs_command.

PROGRAMS_RANKS = tuple(range(7, 13))


def _run_programs(args) -> int:
    say = (lambda *a: None) if args.quiet else print
    start = time.perf_counter()
    timings: dict = {}
    ranks = _requested_ranks(args, PROGRAMS_RANKS)
    _check_input_exists(args)
    plots = _plots_available()
    names = ["programs.npz", "k_selection.tsv", "summary.json"]
    for k in ranks:
        names += [f"spectra_k{k}.csv", f"spectra_tpm_k{k}.csv", f"usages_k{k}.csv"]
    if plots:
        names += ["k_selection.png"] + [f"clustergram_k{k}.png" for k in ranks]
    outputs = Outputs(Path(args.out), args.force, names)
    outputs.check()
    plots = _begin_work(args, plots, outputs)
    import scipy.sparse

    import jnmf
    import jnmf.plot
    from jnmf.programs import prepare
    from jnmf.rules.fixed import nnls_fixed

    matrix = _load_input(args, timings)
    counts = matrix.values
    cell_names, gene_names = matrix.row_names, matrix.column_names
    if Path(args.input).is_dir():  # a 10x Genomics directory holds genes x cells
        counts, cell_names, gene_names = counts.T, gene_names, cell_names
    sparse = scipy.sparse.issparse(counts)
    if sparse:
        counts = scipy.sparse.csr_matrix(counts)
    cells, n_genes = counts.shape
    try:
        X, selected, _ = prepare(counts, args.genes)
    except ValueError as err:
        raise DataError(f"{args.input}: {err}") from None
    if ranks[-1] > min(X.shape):
        raise UsageError(
            f"--ranks go up to {ranks[-1]}, above min(cells, selected genes) = {min(X.shape)} of this data"
        )
    gene_names = list(gene_names) if gene_names is not None else [f"gene{j}" for j in range(n_genes)]
    cell_names = list(cell_names) if cell_names is not None else [f"cell{i}" for i in range(cells)]
    say(
        f"{args.input}: {cells} cells x {n_genes} genes; {X.shape[1]} most variable genes kept; "
        f"{args.replicates} replicates ({args.method}) per rank {ranks[0]}-{ranks[-1]}"
    )
    fit_start = time.perf_counter()
    result = _call_jnmf(
        jnmf.programs,
        X.astype(np.float64 if args.float64 else np.float32),
        ranks,
        args.replicates,
        method=args.method,
        tol=args.tol,
        rel_tol=args.rel_tol,
        max_iterations=args.max_iterations,
        density_threshold=args.density_threshold,
        key=args.seed,
    )
    timings["programs"] = time.perf_counter() - fit_start
    library = np.asarray(counts.sum(axis=1), np.float64).ravel()
    per_million = np.divide(1e6, library, out=np.zeros_like(library), where=library > 0)
    tpm = scipy.sparse.diags(per_million) @ counts if sparse else counts * per_million[:, None]
    say(f"{'rank':>4}  {'stability':>9}  {'error':>12}  {'kept':>6}")
    hvg_names = [gene_names[j] for j in selected]
    for entry in result:
        k = entry.rank
        say(f"{k:>4}  {entry.stability:>9.4f}  {entry.error:>12.6g}  {np.mean(entry.kept):>6.1%}")
        programs_names = [f"program{j + 1}" for j in range(k)]
        write_labeled_csv(
            outputs.path(f"spectra_k{k}.csv"), entry.spectra.T, hvg_names, programs_names, "gene"
        )
        spectra_tpm = nnls_fixed(tpm.T, entry.usages.T).T
        write_labeled_csv(
            outputs.path(f"spectra_tpm_k{k}.csv"), spectra_tpm.T, gene_names, programs_names, "gene"
        )
        write_labeled_csv(outputs.path(f"usages_k{k}.csv"), entry.usages, cell_names, programs_names, "cell")
        if plots:
            _save_figure(jnmf.plot.clustergram(entry), outputs.path(f"clustergram_k{k}.png"))
    outputs.path("k_selection.tsv").write_text(result.table())
    if plots:
        _save_figure(jnmf.plot.k_selection(result, picked=result.best_rank), outputs.path("k_selection.png"))
    result.save(outputs.path("programs.npz"))
    timings["total"] = time.perf_counter() - start
    summary = {
        "command": "programs",
        "input": _input_summary(args, matrix),
        "genes_selected": int(X.shape[1]),
        "gene_rule": "top --genes by Fano factor of library-normalised counts; raw counts / std, not centred",
        "ranks": ranks,
        "stability": result.stability.tolist(),
        "error": result.error.tolist(),
        "most_stable_rank": result.best_rank,
        "settings": result.settings,
        "seconds": {**timings, **result.seconds},
        "versions": versions(),
    }
    _write_json(outputs.path("summary.json"), summary)
    say(f"most stable rank: {result.best_rank}; wrote {len(outputs.names)} files to {outputs.directory}")
    if not plots and not args.quiet:
        print(f"jnmf: note: matplotlib is not installed, so no PNG was written; {PLOT_HINT}", file=sys.stderr)
    say(f"{timings['total']:.1f} s")
    return 0


def _add_programs_command(sub, methods: Sequence[str]) -> None:
    from .names import PROGRAMS_MAX_ITERATIONS as DEFAULT_MAX_ITERATIONS
    from .names import PROGRAMS_METHOD as DEFAULT_METHOD
    from .names import PROGRAMS_REL_TOL as DEFAULT_REL_TOL
    from .names import PROGRAMS_TOL as DEFAULT_TOL

    cmd = sub.add_parser(
        "programs",
        help="consensus gene-expression programs of a cells x genes count matrix (cNMF)",
        description=_wrap(
            "Consensus NMF (Kotliar et al. 2019) of a cells x genes count matrix: keeps the --genes most "
            "variable genes (largest Fano factor of library-normalised counts), scales each to unit variance "
            "without centring, fits --replicates NMFs per rank in one compiled program, filters outlier "
            "spectra by local density, clusters them with k-means and writes per rank the consensus spectra "
            "(variance-normalised and TPM units), the usages (summing to 1 per cell), the K-selection table "
            "and plot, the clustergrams and a JSON summary to --out."
        ),
        formatter_class=_HelpFormatter,
    )
    _add_input_options(cmd)
    cmd.add_argument(
        "--ranks",
        type=parse_ranks,
        nargs="+",
        metavar="RANKS",
        help="ranks K to try: a range (7-12), a list (7,9) or several words (default: 7-12)",
    )
    cmd.add_argument("--replicates", type=_positive_int, default=100, help="NMF fits per rank")
    cmd.add_argument("--genes", type=_positive_int, default=2000, help="most variable genes to keep")
    cmd.add_argument("--method", default=DEFAULT_METHOD, choices=methods, metavar="METHOD", help="NMF method")
    cmd.add_argument(
        "--tol",
        type=_nonneg_float,
        default=DEFAULT_TOL,
        help="relative objective change that stops a replicate (0: off; not scikit-learn's tol)",
    )
    cmd.add_argument(
        "--rel-tol",
        type=_nonneg_float,
        default=DEFAULT_REL_TOL,
        help="relative change of the factors that stops a replicate (1e-4: as converged as cNMF's fits)",
    )
    cmd.add_argument(
        "--max-iterations", type=_positive_int, default=DEFAULT_MAX_ITERATIONS, help="cap per replicate"
    )
    cmd.add_argument(
        "--density-threshold",
        type=_nonneg_float,
        default=0.5,
        help="drop replicate spectra whose mean distance to their nearest 30%% of spectra exceeds this",
    )
    cmd.add_argument("--seed", type=int, default=0, help="seed of the random initializations")
    _add_output_options(cmd, "jnmf-programs")
    cmd.set_defaults(run=_run_programs)


def _wrap(text: str) -> str:
    # the raw-description formatter keeps the epilog's table; paragraphs are wrapped here instead
    return textwrap.fill(text, 79)


def build_parser() -> argparse.ArgumentParser:
    """The ``jnmf`` argument parser with its ``demo``, ``fit`` and ``rank`` subcommands.

    Returns:
        The parser; each subcommand sets ``args.run`` to its function.
    """
    from . import __version__

    # the names jnmf.fit validates against (jnmf.rules.METHODS), read without importing JAX
    methods = list(METHOD_DESCRIPTIONS)
    method_lines = "\n".join(f"  {name:<6} {text}" for name, text in METHOD_DESCRIPTIONS.items())
    parser = _Parser(prog="jnmf", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"jnmf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="rank selection on the built-in Golub ALL/AML data (Brunet et al. 2004)",
        description=_wrap(
            "Consensus clustering of the Golub ALL/AML data at several ranks: prints the "
            "cophenetic correlation and dispersion per rank, picks a rank by Brunet et al.'s rule, compares "
            "the rank-2 and rank-3 clusters with the known cell types, and writes factors, a JSON summary "
            "and figures to --out."
        ),
        formatter_class=_HelpFormatter,
    )
    _add_survey_options(demo, methods, "2-5", DEMO_RESTARTS, DEMO_MAX_ITERATIONS)
    _add_output_options(demo, None)  # a demo leaves the working directory alone
    demo.set_defaults(run=_run_demo)

    fit = sub.add_parser(
        "fit",
        help="factor a data matrix at one rank",
        description=_wrap(
            "Factor a non-negative data matrix Y ~ L R at rank K and write L, R, a JSON summary "
            "and a convergence plot to --out."
        ),
        epilog="methods:\n" + method_lines,
        formatter_class=_HelpFormatter,
    )
    _add_input_options(fit)
    fit.add_argument("--rank", type=_positive_int, required=True, metavar="K", help="the inner dimension k")
    fit.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        choices=methods,
        metavar="METHOD",
        help=f"update rule, one of {', '.join(methods)} (see below)",
    )
    fit.add_argument(
        "--init",
        default="random",
        choices=INIT_NAMES,
        metavar="INIT",
        help=f"initialization, one of {', '.join(INIT_NAMES)}",
    )
    fit.add_argument(
        "--restarts",
        type=_positive_int,
        default=1,
        help="fits from different random starts, run together; the best is kept",
    )
    for name in PENALTIES:
        fit.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=_nonneg_float,
            default=0.0,
            help=f"penalty {name} of the regularized objective (jnmf.objective)",
        )
    fit.add_argument(
        "--max-iterations", type=_nonneg_int, default=DEFAULT_MAX_ITERATIONS, help="iteration cap"
    )
    fit.add_argument(
        "--tol",
        type=_nonneg_float,
        default=DEFAULT_TOL,
        help="stop when the objective changes by less than this fraction (0: never)",
    )
    fit.add_argument("--seed", type=int, default=0, help="seed of the random initialization")
    _add_output_options(fit, "jnmf-fit")
    fit.set_defaults(run=_run_fit)

    rank = sub.add_parser(
        "rank",
        help="survey ranks of a data matrix by consensus clustering",
        description=_wrap(
            "Consensus clustering of the columns of a data matrix at several ranks (Brunet et al. "
            "2004): prints the cophenetic correlation and dispersion per rank, picks a rank, and writes the "
            "picked rank's factors, the consensus matrices, a JSON summary and figures to --out.  Which "
            f"rank is the answer: {ANSWER_RULE}."
        ),
        formatter_class=_HelpFormatter,
    )
    _add_input_options(rank)
    _add_survey_options(
        rank, methods, "2-8, capped at the data's smaller dimension", DEMO_RESTARTS, DEMO_MAX_ITERATIONS
    )
    rank.add_argument(
        "--cv",
        choices=("none", "speckled", "bicv"),
        default="none",
        help="also cross-validate the rank: speckled hold-out of 5%% of the entries, or bi-cross-validation "
        "(Owen & Perry 2009); prints the test error per rank and its pick beside the consensus pick (which "
        "stays the answer) and writes cv_error.png",
    )
    rank.add_argument("--cv-repeats", type=_positive_int, default=3, help="independent hold-outs for --cv")
    rank.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="save each finished rank in DIR (created when missing), and skip the ranks already "
        "there: a rerun of an interrupted survey with the same arguments resumes it and gives the "
        "same result (the ranks then run one after the other)",
    )
    _add_output_options(rank, "jnmf-rank")
    rank.set_defaults(run=_run_rank)
    _add_programs_command(sub, methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``jnmf`` command line.

    Args:
        argv: the arguments after the program name; None for ``sys.argv[1:]``.

    Returns:
        The exit status: 0 success, 1 data or file error, 2 usage error.
    """
    try:
        args = build_parser().parse_args(argv)
        # each command checks its arguments, then turns the compilation cache on (_begin_work)
        args.compile_cache = None
        return args.run(args)
    except UsageError as err:
        print(f"jnmf: error: {err}", file=sys.stderr)
        return 2
    except (DataError, MatrixFileError) as err:
        print(f"jnmf: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        # writing results can still fail late (disk full, permissions changed)
        print(f"jnmf: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("jnmf: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        # a bug, not a user error: still one line, with the way to get the traceback for a report
        if os.environ.get("JNMF_TRACEBACK"):
            raise
        message = " ".join(str(err).split())
        print(
            f"jnmf: internal error: {type(err).__name__}: {message} (set JNMF_TRACEBACK=1 for details)",
            file=sys.stderr,
        )
        return 1


def console_main() -> None:
    """The ``jnmf`` command (and ``python -m jnmf``): :func:`main`, then the process ends
    at once with its status.

    Every output is written and closed before ``main`` returns; what interpreter exit adds
    after that is tearing down JAX's CPU client, its thread pools and every module, 0.2-0.9 s
    of a cold ``jnmf fit`` (experiments/README.md, "Cold jnmf fit").  The standard streams
    are flushed first.  In-process callers (tests, notebooks) call :func:`main`.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
