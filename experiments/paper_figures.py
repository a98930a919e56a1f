"""Reproduce Figures 1 and 2 of Pav (2024), section 4 "Simulations", with jnmf.

Figure 1: Y = L R exactly with L 30 x 2 and R 2 x 8 uniform random; factor Y to
rank 3 with ``jnmf.murnmf`` (MU, Algorithm 1) and ``jnmf.aurnmf`` (AU,
Algorithm 3) from one random strictly positive start shared by both methods, and
plot the Frobenius norm of the error sqrt(tr((Y - LR)'(Y - LR))) against the step.

Figure 2: L 40 x 3, R 3 x 10, factor to rank 4 from (a) a sparse start, about a
third of the elements of L0 and R0 exactly zero, and (b) a dense strictly
positive start; both methods from each start (four curves).

Everything runs in float64.  The driver's ``Result.history`` holds the objective
of eq. 3 after each iteration; with no penalties and no weights it is
1/2 ||Y - LR||_F^2, so the error is sqrt(2 history).  Step 0 is the start.

Usage::

    pip install -e .[bench]
    python experiments/paper_figures.py [--out docs/figures] [--iterations 2000] [--seed 2024]
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

# Exactness: the figures follow the error down to ~1e-13, which needs float64.
jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import jnmf  # noqa: E402
from jnmf.rules import AURNMF, MURNMF  # noqa: E402

THRESHOLDS = (1e-1, 1e-3, 1e-6, 1e-9)
COLORS = {"MU": "tab:red", "AU": "tab:blue"}


def _direct_errors(rule, problem, state, iterations: int):
    """||Y - L_k R_k||_F for k = 1..iterations, computed from the residual of each iterate."""

    def body(state, _):
        state, _info = rule.step(problem, state)
        # state.L / state.R: the public orientation, whatever layout the rule keeps internally.
        return state, jnp.sqrt(jnp.sum((problem.Y - state.L @ state.R) ** 2))

    final, errs = jax.lax.scan(body, state, None, length=iterations)
    return (final.L, final.R), errs


_direct_errors_jit = eqx.filter_jit(_direct_errors)


def error_curve(Y: np.ndarray, L0: np.ndarray, R0: np.ndarray, method: str, iterations: int) -> dict:
    """Fit with the front door and return the error at steps 0, 1, ..., n_done.

    ``history`` is the driver's record, error = sqrt(2 history).  The driver computes the
    objective cheaply from the R half problem (``objective_after_R_step``), which cancels
    ~eps ||Y||_F^2 in the objective, so sqrt(2 history) is noise once the error falls below
    ~sqrt(eps) ||Y||_F (~1e-7 here).  ``direct`` replays the same rule (same settings as the
    front door's defaults) in a ``lax.scan`` and takes the error from the residual of each
    iterate, which is what the paper plots; the figures use it.
    """
    fit, rule = (jnmf.murnmf, MURNMF()) if method == "MU" else (jnmf.aurnmf, AURNMF())
    # min_xstep=0: never stop on a small step, so the curve runs to the cap (or until MU is stuck).
    res = fit(Y, L0, R0, max_iterations=iterations, min_xstep=0.0, history_size=iterations)
    stride = int(res.history_stride)
    if stride != 1:
        raise RuntimeError(f"history stride is {stride}, expected 1 (history_size >= max_iterations)")
    n_done = int(res.iterations)
    f0 = float(jnmf.objective(Y, L0, R0))
    hist = np.concatenate([[f0], np.asarray(res.history)[:n_done]])
    from_history = np.sqrt(2.0 * np.maximum(hist, 0.0))

    problem = jnmf.build_problem(jnp.asarray(Y), L0.shape[1])
    state = rule.init(problem, jnp.asarray(L0), jnp.asarray(R0))
    (L, R), errs = _direct_errors_jit(rule, problem, state, n_done)
    direct = np.concatenate([[np.sqrt(2.0 * f0)], np.asarray(errs)])
    same_L = np.array_equal(np.asarray(L), np.asarray(res.L))
    if not (same_L and np.array_equal(np.asarray(R), np.asarray(res.R))):
        print(f"  warning: {method}: replayed iterates differ from the front door's result")
    return {"direct": direct, "history": from_history, "raw_history": hist, "iterations": n_done}


def history_agreement(curve: dict, floor: float) -> tuple[float, int | None]:
    """Largest relative gap between sqrt(2 history) and the direct error while the latter is
    above ``floor``, and the first step at which the history is off by more than 1%."""
    d, h = curve["direct"], curve["history"]
    above = d > floor
    rel = np.abs(h - d) / np.where(d > 0, d, 1.0)
    bad = np.nonzero(rel > 0.01)[0]
    return float(rel[above].max()) if above.any() else 0.0, (int(bad[0]) if bad.size else None)


def first_crossing(err: np.ndarray, threshold: float) -> int | None:
    below = np.nonzero(err < threshold)[0]
    return int(below[0]) if below.size else None


def positive_uniform(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Uniform on (0, 1], so strictly positive."""
    return 1.0 - rng.random(shape)


def sparse_start(rng: np.random.Generator, shape: tuple[int, int], frac: float = 1 / 3) -> np.ndarray:
    X = positive_uniform(rng, shape)
    X[rng.random(shape) < frac] = 0.0
    return X


def run_figure1(rng, iterations):
    L, R = rng.random((30, 2)), rng.random((2, 8))
    Y = L @ R
    L0, R0 = positive_uniform(rng, (30, 3)), positive_uniform(rng, (3, 8))
    curves = {m: error_curve(Y, L0, R0, m, iterations) for m in ("MU", "AU")}
    return Y, curves


def run_figure2(rng, iterations):
    L, R = rng.random((40, 3)), rng.random((3, 10))
    Y = L @ R
    starts = {
        "sparse": (sparse_start(rng, (40, 4)), sparse_start(rng, (4, 10))),
        "dense": (positive_uniform(rng, (40, 4)), positive_uniform(rng, (4, 10))),
    }
    zero_frac = np.mean(np.concatenate([x.ravel() == 0 for x in starts["sparse"]]))
    curves = {}
    for start, (L0, R0) in starts.items():
        for m in ("MU", "AU"):
            curves[(m, start)] = error_curve(Y, L0, R0, m, iterations)
    return Y, curves, zero_frac


def summarize(title: str, curves: dict, Y: np.ndarray) -> None:
    ynorm = float(np.linalg.norm(Y))
    floor = 1e-6 * ynorm
    print(f"\n{title}   (||Y||_F = {ynorm:.4g})")
    head = f"{'curve':<12}{'steps':>6}{'error@0':>10}{'final error':>13}"
    head += "".join(f"{'<' + format(t, '.0e'):>8}" for t in THRESHOLDS)
    head += f"{'hist. final':>13}{'hist. gap':>11}{'hist. off':>10}"
    print(head)
    print("-" * len(head))
    for name, c in curves.items():
        err = c["direct"]
        label = name if isinstance(name, str) else f"{name[0]}, {name[1]}"
        row = f"{label:<12}{len(err) - 1:>6}{err[0]:>10.2e}{err[-1]:>13.3e}"
        for t in THRESHOLDS:
            k = first_crossing(err, t)
            row += f"{'-' if k is None else k:>8}"
        gap, off = history_agreement(c, floor)
        row += f"{c['history'][-1]:>13.3e}{gap:>11.1e}{'-' if off is None else off:>10}"
        print(row)
    print(
        "  error = ||Y - L_k R_k||_F from the residual of each iterate (what the figures plot);\n"
        "  '<t': first step with error below t ('-': never);\n"
        "  hist. final = sqrt(2 Result.history) at the last step; hist. gap = largest relative gap\n"
        f"  between it and the error while the error > 1e-6 ||Y||_F = {floor:.1e}; hist. off = first\n"
        "  step where they differ by > 1% (cancellation in the driver's cheap objective)."
    )


def plot(ax, err, label, color, style="-"):
    # Errors of exactly 0 cannot be drawn on a log axis; floor them at the smallest positive double.
    ax.semilogy(np.arange(len(err)), np.maximum(err, np.finfo(float).tiny), style, color=color, label=label,
                lw=1.6)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join("docs", "figures"), help="output folder for the PNGs")
    parser.add_argument("--iterations", type=int, default=2000, help="steps per fit (default 2000)")
    parser.add_argument("--seed", type=int, default=2024, help="numpy random seed (default 2024)")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    print(f"jnmf {jnmf.__version__}, jax {jax.__version__}, float64, seed {args.seed}, "
          f"{args.iterations} iterations")  # fmt: skip

    # Figure 1
    Y1, c1 = run_figure1(rng, args.iterations)
    summarize("Figure 1: 30 x 8, rank-2 Y, factored to rank 3", c1, Y1)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in ("MU", "AU"):
        plot(ax, c1[m]["direct"], {"MU": "multiplicative (murnmf)", "AU": "additive (aurnmf)"}[m], COLORS[m])
    ax.set_title("Factoring 30 x 8 matrix down to 3 dimensions. Y matrix has rank 2.", fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel(r"Frobenius norm of error $\|Y - LR\|_F$")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(title="method")
    fig.tight_layout()
    path1 = os.path.join(args.out, "figure1.png")
    fig.savefig(path1, dpi=120)
    plt.close(fig)

    # Figure 2
    Y2, c2, zero_frac = run_figure2(rng, args.iterations)
    title2 = f"Figure 2: 40 x 10, rank-3 Y, factored to rank 4 (sparse start: {zero_frac:.0%} zeros)"
    summarize(title2, c2, Y2)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = {"MU": "multiplicative", "AU": "additive"}
    for (m, start), c in c2.items():
        plot(ax, c["direct"], f"{names[m]}, {start} start", COLORS[m], "-" if start == "dense" else "--")
    ax.set_title("Factoring 40 x 10 matrix down to 4 dimensions. Y matrix has rank 3.", fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel(r"Frobenius norm of error $\|Y - LR\|_F$")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(title="method, starting iterates")
    fig.tight_layout()
    path2 = os.path.join(args.out, "figure2.png")
    fig.savefig(path2, dpi=120)
    plt.close(fig)
    print(f"\nwrote {path1}\nwrote {path2}")


if __name__ == "__main__":
    main()
