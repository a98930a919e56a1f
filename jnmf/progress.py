"""Progress of running fits, reported from inside the compiled loop (host side).

The driver's ``lax.while_loop`` calls :func:`report` through an ordered
``jax.debug.callback`` every ``progress_every`` iterations (and once as the loop
starts), with three scalars: the furthest iteration count, the best objective and
the number of finished fits.  The compiled program always calls this one module
function, so it is traced and compiled once and reused by every later call; which
listener receives the reports is chosen on the host, by :func:`listening`, around
each call.

Listeners are :class:`FitMonitor` (scikit-learn style ``verbose`` lines and a tqdm
bar) or any object with an ``update(iteration, objective, finished)`` method.

JAX never writes a program that contains a host callback to its persistent
compilation cache, so a fit with progress reports compiles in every new process;
without them (the default) the program is cached (:mod:`jnmf.compile_cache`).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Protocol, TextIO

import jax
import numpy as np

__all__ = [
    "FitMonitor",
    "Listener",
    "ProgressBar",
    "listening",
    "progress_bar",
    "report",
    "stderr_is_terminal",
]


class Listener(Protocol):
    """Anything that receives the loop's reports."""

    def update(self, iteration: int, objective: float, finished: int) -> None: ...


# The listeners of the calls running now, innermost last: the compiled callback is
# one fixed function (so it never forces a recompile), and this stack tells it
# where the reports of the current call go.  A lock, because JAX runs callbacks on
# its own threads.
_listeners: list[Listener] = []
_lock = threading.Lock()


def report(iteration, objective, finished) -> None:
    """Host side of the loop's progress callback: pass one report to the current listener.

    Args:
        iteration: the furthest iteration count over the fits of the loop (0 as it starts).
        objective: the best objective over them (in the units the loop computes in).
        finished: how many of them have stopped.
    """
    with _lock:
        listener = _listeners[-1] if _listeners else None
    if listener is not None:
        listener.update(int(iteration), float(objective), int(finished))


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[Listener]:
    """Send the progress reports of the computations run inside the block to ``listener``.

    On leaving, waits for every report of the block to be delivered (JAX runs
    computations and their callbacks asynchronously).

    Args:
        listener: the receiver of the reports.

    Yields:
        The listener.
    """
    with _lock:
        _listeners.append(listener)
    try:
        yield listener
    finally:
        jax.effects_barrier()
        with _lock:
            _listeners.remove(listener)


def stderr_is_terminal() -> bool:
    """Whether stderr is an interactive terminal (where progress bars belong)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


class ProgressBar:
    """A tqdm bar on stderr, or nothing when disabled; text written through it keeps the bar intact."""

    def __init__(self, total: int, description: str, *, enabled: bool, unit: str = "it"):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm  # imported only when a bar is shown

            self._bar = tqdm(
                total=total, desc=description, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True
            )

    @property
    def shown(self) -> bool:
        """Whether a bar is on screen."""
        return self._bar is not None

    def advance_to(self, position: int, note: str | None = None) -> None:
        """Move the bar to ``position`` (backwards too), with an optional note after it."""
        if self._bar is None:
            return
        if note is not None:
            # shown at once when the position stays (a new rank starting), else with the move
            self._bar.set_postfix_str(note, refresh=position == self._bar.n)
        if position < self._bar.n:
            self._bar.reset(total=self._bar.total)
        self._bar.update(position - self._bar.n)

    def restart(self, note: str = "") -> None:
        """Back to 0, with the clock (rate, remaining time) restarted from now."""
        if self._bar is not None:
            self._bar.set_postfix_str(note, refresh=False)
            self._bar.reset()

    def write(self, text: str, file: TextIO | None = None) -> None:
        """Print a line (default stdout) without breaking the bar."""
        if self._bar is None:
            print(text, file=file or sys.stdout, flush=True)
        else:
            self._bar.write(text, file=file or sys.stdout)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int, description: str, *, enabled: bool, unit: str = "it") -> ProgressBar:
    """A :class:`ProgressBar` (a no-op one when ``enabled`` is False).

    Args:
        total: the bar's length.
        description: its label.
        enabled: show it.
        unit: the unit of one step.

    Returns:
        The bar, usable as a context manager.
    """
    return ProgressBar(total, description, enabled=enabled, unit=unit)


class FitMonitor:
    """Receives the reports of one ``jnmf.fit`` call: verbose lines and/or a bar.

    The verbose lines follow scikit-learn's ``NMF(verbose=1)`` ("Epoch NN reached after
    S seconds, ..."), but print the objective jnmf minimizes (penalties included), in
    the user's units; seconds count from the start of the compiled loop, so they
    exclude tracing and compiling (reported on their own line).

    Args:
        restarts: number of fits in the call.
        max_iterations: the iteration cap (the bar's length).
        unit: factor from the loop's objective to the user's (``fit`` rescales the data).
        verbose: 0 silent, 1 a line per report and a final line, 2 also one line per restart.
        bar: show a tqdm bar on stderr.
        sequential: the fits run one after another (batching strategy ``"map"``), so
            each reports from 0 again; else they run together in one loop.
        description: the bar's label.
        out: where verbose lines go (default stdout, as scikit-learn's).
    """

    def __init__(
        self,
        *,
        restarts: int,
        max_iterations: int,
        unit: float = 1.0,
        verbose: int = 0,
        bar: bool = False,
        sequential: bool = False,
        description: str = "fit",
        out: TextIO | None = None,
    ):
        self.restarts = restarts
        self.unit = unit
        self.verbose = int(verbose)
        self.sequential = sequential
        self.out = out
        self.created = time.perf_counter()
        self.started: float | None = None
        self.loops_started = 0
        self.reports: list[tuple[int, float, int]] = []
        self._bar = ProgressBar(max(int(max_iterations), 1), description, enabled=bar)
        self._bar.advance_to(0, "compiling")

    def _print(self, text: str) -> None:
        if self.out is not None:
            print(text, file=self.out, flush=True)
        else:
            self._bar.write(text)

    def elapsed(self) -> float:
        """Seconds since the compiled loop started (since creation if it never did)."""
        return time.perf_counter() - (self.started if self.started is not None else self.created)

    def update(self, iteration: int, objective: float, finished: int) -> None:
        """One report of the loop (see :func:`report`)."""
        if iteration == 0:
            self.loops_started += 1
            # the bar's rate and remaining time count from here, not from before compiling
            self._bar.restart(f"restart {self.loops_started}/{self.restarts}" if self.sequential else "")
            if self.started is None:
                self.started = time.perf_counter()
                if self.verbose:
                    self._print(f"Loop started after {self.started - self.created:.3f} seconds (compiling)")
            return
        objective *= self.unit
        self.reports.append((iteration, objective, finished))
        if self.sequential and self.restarts > 1:
            where = f"restart {self.loops_started}/{self.restarts}"
        elif self.restarts > 1:
            where = f"best of {self.restarts} restarts, {finished} finished"
        else:
            where = ""
        if self.verbose:
            suffix = f" ({where})" if where else ""
            self._print(
                f"Epoch {iteration:02d} reached after {self.elapsed():.3f} seconds, "
                f"objective: {objective:.6g}{suffix}"
            )
        note = f"objective {objective:.4g}" + (f", {where}" if where else "")
        self._bar.advance_to(iteration, note)

    def finish(self, result) -> None:
        """Close the bar and print the final lines for a :class:`~jnmf.fitting.FitResult`."""
        self._bar.close()
        if not self.verbose:
            return
        self._print(
            f"Epoch {int(result.iterations):02d} reached after {self.elapsed():.3f} seconds, "
            f"objective: {float(result.objective):.6g} ({result.status_name})"
        )
        if self.verbose >= 2 and self.restarts > 1:
            from .driver import STATUS  # here: the driver imports this module

            codes = np.asarray(result.all_status)
            for i, (iterations, objective, code) in enumerate(
                zip(np.asarray(result.all_iterations), result.objectives, codes)
            ):
                best = "  <- best" if i == result.best else ""
                self._print(
                    f"  restart {i}: {int(iterations)} iterations, objective {float(objective):.6g}, "
                    f"{STATUS[int(code)]}{best}"
                )

    def close(self) -> None:
        """Remove the bar (when the fit failed before :meth:`finish`)."""
        self._bar.close()

    def __enter__(self) -> FitMonitor:
        self._listening = listening(self)
        self._listening.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._listening.__exit__(*exc)
        if exc[0] is not None:
            self.close()
