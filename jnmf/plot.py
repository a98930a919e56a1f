"""Figures for NMF results: consensus heatmaps, rank surveys, convergence curves.

matplotlib is an optional dependency (``pip install jnmf[plot]``); it is imported
inside each function, so importing this module never needs it.  Each function
returns a ``matplotlib.figure.Figure`` built without pyplot's global state, so it
displays in a notebook and saves with ``fig.savefig`` from scripts alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported (the ``plot`` extra is installed)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _new_figure(figsize: tuple[float, float]) -> Figure:
    # Figure() rather than pyplot.figure(): no global figure list to leak into, and
    # no GUI backend needed to write files.  Notebooks still display a returned Figure.
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def average_linkage_order(distance: np.ndarray) -> np.ndarray:
    """Leaf order of the average-linkage (UPGMA) tree of a symmetric distance matrix.

    Samples of a cluster end up next to each other, so a consensus matrix shown in
    this order has its clusters as blocks on the diagonal.

    Args:
        distance: ``n x n`` symmetric distances.

    Returns:
        A permutation of ``range(n)``.
    """
    D = np.array(distance, dtype=float)
    n = D.shape[0]
    np.fill_diagonal(D, np.inf)
    members: list[list[int] | None] = [[i] for i in range(n)]
    sizes = np.ones(n)
    for _ in range(n - 1):
        a, b = np.unravel_index(np.argmin(D), D.shape)
        a, b = min(a, b), max(a, b)
        # UPGMA: the merged cluster's distance is the size-weighted mean of its parts'
        merged = (sizes[a] * D[a] + sizes[b] * D[b]) / (sizes[a] + sizes[b])
        D[a], D[:, a] = merged, merged
        D[a, a] = np.inf
        D[b], D[:, b] = np.inf, np.inf
        sizes[a] += sizes[b]
        members[a] = members[a] + members[b]
        members[b] = None
    roots = [m for m in members if m is not None]
    return np.array([i for m in roots for i in m], dtype=int)


def consensus_heatmap(
    C: np.ndarray,
    labels: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Heatmap of a consensus matrix, samples ordered by average-linkage clustering.

    Args:
        C: ``n x n`` consensus matrix (fraction of restarts clustering i with j).
        labels: sample names for the axis ticks (shown when n <= 60); None names
            samples by their index in ``C``.
        classes: a known class per sample (e.g. cell type), drawn as a colour bar
            along the top with a legend; None for no bar.
        title: figure title; None for "consensus matrix".

    Returns:
        The figure.
    """
    C = np.asarray(C, dtype=float)
    n = C.shape[0]
    order = average_linkage_order(1.0 - C)
    fig = _new_figure((6.4, 5.6) if classes is None else (6.4, 6.0))
    if classes is not None:
        classes = np.asarray(classes).astype(str)
        bar_ax, ax = fig.subplots(2, 1, height_ratios=[1, 14], sharex=True)
        names = sorted(set(classes))
        from matplotlib import colormaps
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch

        colors = colormaps["tab10"](np.arange(len(names)) % 10)
        codes = np.array([names.index(c) for c in classes[order]])
        bar_ax.imshow(
            codes[None, :],
            aspect="auto",
            cmap=ListedColormap(colors),
            vmin=-0.5,
            vmax=len(names) - 0.5,
            interpolation="nearest",
        )
        bar_ax.set_yticks([])
        bar_ax.tick_params(labelbottom=False, bottom=False)
        bar_ax.legend(
            handles=[Patch(color=colors[i], label=name) for i, name in enumerate(names)],
            loc="lower center",
            bbox_to_anchor=(0.5, 1.05),
            ncol=min(len(names), 6),
            frameon=False,
            fontsize="small",
        )
    else:
        ax = fig.subplots()
    image = ax.imshow(C[np.ix_(order, order)], vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="fraction of restarts clustering the pair together", shrink=0.8)
    if n <= 60:
        # name every sample; without names, its index in C (the axis is reordered, so
        # matplotlib's default 0..n-1 ticks would name the wrong samples)
        names = (np.arange(n) if labels is None else np.asarray(labels)).astype(str)[order]
        ax.set_xticks(range(n), names, rotation=90, fontsize="x-small")
        ax.set_yticks(range(n), names, fontsize="x-small")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("samples (clustered order)")
    fig.suptitle(title or "consensus matrix")
    return fig


def rank_survey(
    ranks: Sequence[int],
    cophenetic: Sequence[float],
    dispersion: Sequence[float] | None = None,
    picked: int | None = None,
) -> Figure:
    """Cophenetic correlation (and dispersion) of the consensus matrix against rank.

    Args:
        ranks: the ranks surveyed.
        cophenetic: the cophenetic correlation at each rank (Brunet et al. 2004).
        dispersion: the dispersion coefficient at each rank (Kim & Park 2007), or None.
        picked: a rank to mark with a vertical line, or None.

    Returns:
        The figure.
    """
    fig = _new_figure((5.6, 3.8))
    ax = fig.subplots()
    ax.plot(ranks, cophenetic, "o-", label="cophenetic correlation")
    if dispersion is not None:
        ax.plot(ranks, dispersion, "s--", label="dispersion")
    if picked is not None:
        ax.axvline(picked, color="gray", linestyle=":", label=f"picked rank {picked}")
    ax.set_xticks(list(ranks))
    ax.set_xlabel("rank")
    ax.set_ylabel("stability (1 = every restart agrees)")
    ax.legend(fontsize="small")
    ax.set_title("consensus stability by rank")
    return fig


def convergence(history: np.ndarray, stride: int, title: str | None = None) -> Figure:
    """Objective against iteration, from a fit's ``history`` and ``history_stride``.

    Args:
        history: objective after iterations ``stride, 2 stride, ...``; NaN entries
            (the unused tail of the buffer) are dropped.
        stride: iterations between history entries.
        title: figure title; None for "convergence".

    Returns:
        The figure.
    """
    history = np.asarray(history, dtype=float).ravel()
    iterations = int(stride) * np.arange(1, history.size + 1)
    keep = np.isfinite(history)
    fig = _new_figure((5.6, 3.8))
    ax = fig.subplots()
    ax.plot(iterations[keep], history[keep], "-")
    if keep.any() and np.all(history[keep] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective")
    ax.set_title(title or "convergence")
    return fig
