"""Figures for NMF results: consensus heatmaps, rank surveys, convergence curves,
cross-validated error by rank, basis images, and sparsity along a penalty sweep.

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


def _average_tree(distance: np.ndarray) -> np.ndarray:
    """scipy's average-linkage (UPGMA) tree of a symmetric distance matrix."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    D = np.array(distance, dtype=float)
    D = (D + D.T) / 2
    np.fill_diagonal(D, 0.0)
    return linkage(squareform(np.clip(D, 0.0, None), checks=False), method="average")


def average_linkage_order(distance: np.ndarray) -> np.ndarray:
    """Leaf order of the dendrogram of the average-linkage (UPGMA) tree of a distance matrix.

    The tree is scipy's (:func:`scipy.cluster.hierarchy.linkage`, ``method="average"``,
    the tree :func:`jnmf.consensus` cuts for its labels and cophenetic correlation);
    samples of a cluster end up next to each other, so a consensus matrix shown in
    this order has its clusters as blocks on the diagonal.

    Args:
        distance: ``n x n`` symmetric distances.

    Returns:
        A permutation of ``range(n)``: the dendrogram's leaves from left to right.
    """
    from scipy.cluster.hierarchy import leaves_list

    n = np.shape(distance)[0]
    if n < 2:
        return np.arange(n)
    return np.asarray(leaves_list(_average_tree(distance)), dtype=int)


def _class_colors(classes: np.ndarray):
    """Sorted class names and one tab10 colour each."""
    from matplotlib import colormaps

    names = sorted(set(classes.tolist()))
    return names, colormaps["tab10"](np.arange(len(names)) % 10)


def consensus_heatmap(
    C: np.ndarray,
    labels: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    title: str | None = None,
    dendrogram: bool = False,
) -> Figure:
    """Heatmap of a consensus matrix, samples in the order of its dendrogram's leaves.

    The order is that of scipy's average-linkage tree of ``1 - C``
    (:func:`average_linkage_order`), so clusters show as blocks on the diagonal.

    Args:
        C: ``n x n`` consensus matrix (fraction of restarts clustering i with j).
        labels: sample names for the axis ticks (shown when n <= 60); None names
            samples by their index in ``C``.
        classes: a known class per sample (e.g. cell type), drawn as a colour bar
            along the top with a legend; None for no bar.
        title: figure title; None for "consensus matrix".
        dendrogram: also draw the tree, left of the matrix.

    Returns:
        The figure.  Its axes, in order: the class bar (when ``classes``), the
        dendrogram (when ``dendrogram``), the matrix, the colour bar.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    C = np.asarray(C, dtype=float)
    n = C.shape[0]
    order = average_linkage_order(1.0 - C)
    width = 6.4 + (1.2 if dendrogram else 0.0)
    fig = _new_figure((width, 5.6) if classes is None else (width, 6.0))
    grid = fig.add_gridspec(
        2 if classes is not None else 1,
        2 if dendrogram else 1,
        height_ratios=[1, 14] if classes is not None else None,
        width_ratios=[1.2, 6.4] if dendrogram else None,
    )
    row = 1 if classes is not None else 0
    col = 1 if dendrogram else 0
    bar_ax = fig.add_subplot(grid[0, col]) if classes is not None else None
    tree_ax = fig.add_subplot(grid[row, 0]) if dendrogram else None
    ax = fig.add_subplot(grid[row, col], sharex=bar_ax)
    if bar_ax is not None:
        classes = np.asarray(classes).astype(str)
        if classes.shape != (n,):
            raise ValueError(f"classes must give one class per sample ({n}), got shape {classes.shape}")
        names, colors = _class_colors(classes)
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
    if tree_ax is not None and n >= 2:
        from scipy.cluster.hierarchy import dendrogram as tree_layout

        # the layout only (no_plot): scipy's own drawing goes through pyplot
        layout = tree_layout(_average_tree(1.0 - C), no_plot=True)
        for xs, ys in zip(layout["icoord"], layout["dcoord"], strict=True):
            # leaves sit at 5, 15, 25, ...: leaf i of the order on matrix row i
            tree_ax.plot(ys, (np.asarray(xs) - 5.0) / 10.0, color="0.3", linewidth=0.8)
        tree_ax.set_ylim(n - 0.5, -0.5)
        tree_ax.invert_xaxis()
        tree_ax.set_yticks([])
        tree_ax.set_xlabel("1 - consensus", fontsize="small")
        for side in ("top", "right", "left"):
            tree_ax.spines[side].set_visible(False)
    image = ax.imshow(
        C[np.ix_(order, order)],
        vmin=0,
        vmax=1,
        cmap="viridis",
        interpolation="nearest",
        # square cells, except beside a tree: there the matrix fills its grid cell, so
        # its rows line up with the tree's leaves
        aspect="auto" if dendrogram else "equal",
    )
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


def convergence(
    history,
    stride: int | None = None,
    title: str | None = None,
    seconds: float | Sequence[float] | np.ndarray | None = None,
) -> Figure:
    """Objective against iteration (and against seconds), from a fit's history.

    A fit records its objective every ``history_stride`` iterations, not the time of
    each; pass ``seconds`` (e.g. the measured wall time of a warm fit) for a second
    panel of objective against time.

    Args:
        history: objective after iterations ``stride, 2 stride, ...``; NaN entries
            (the unused tail of the buffer) are dropped.  Or an object with
            ``history`` and ``history_stride`` attributes (a :class:`jnmf.FitResult`,
            a :class:`jnmf.consensus.Consensus`, a :class:`jnmf.Result`).
        stride: iterations between history entries; None takes ``history_stride``
            from a result object.
        title: figure title; None for "convergence".
        seconds: None for the iteration panel only; a number, the fit's wall time,
            spread evenly over its recorded iterations (constant cost per iteration);
            or one time per history entry (seconds since the start).

    Returns:
        The figure: one axes (objective vs iteration), or two (vs iteration, vs seconds).
    """
    if hasattr(history, "history"):
        if stride is None:
            stride = int(np.asarray(history.history_stride).ravel()[0])
        history = history.history
    if stride is None:
        raise ValueError("stride is needed with a plain history array")
    history = np.asarray(history, dtype=float).ravel()
    iterations = int(stride) * np.arange(1, history.size + 1)
    keep = np.isfinite(history)
    times = None
    if seconds is not None:
        if np.ndim(seconds) == 0:
            last = iterations[keep][-1] if keep.any() else 1
            times = float(seconds) * iterations / last
        else:
            times = np.asarray(seconds, dtype=float).ravel()
            if times.size != history.size:
                raise ValueError(
                    f"seconds gives {times.size} times for {history.size} history entries; "
                    "pass one time per entry or the total as a number"
                )
    fig = _new_figure((5.6, 3.8) if times is None else (9.6, 3.8))
    axes = [fig.subplots()] if times is None else list(fig.subplots(1, 2, sharey=True))
    log = keep.any() and np.all(history[keep] > 0)
    for ax, x, label in zip(axes, (iterations, times), ("iteration", "seconds"), strict=False):
        ax.plot(x[keep], history[keep], "-")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(label)
    axes[0].set_ylabel("objective")
    if times is None:
        axes[0].set_title(title or "convergence")
    else:
        fig.suptitle(title or "convergence")
    return fig


def _mean_and_spread(errors) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-rank mean and standard deviation of a (repeats x ranks) array; a 1-D array
    is already the mean."""
    errors = np.asarray(errors, dtype=float)
    if errors.ndim == 1:
        return errors, None
    if errors.ndim != 2:
        raise ValueError(f"errors must be per rank or repeats x ranks, got shape {errors.shape}")
    spread = np.nanstd(errors, axis=0) if errors.shape[0] > 1 else None
    return np.nanmean(errors, axis=0), spread


def cv_error(
    ranks,
    errors_mean=None,
    errors_spread=None,
    selected: int | None = None,
    title: str | None = None,
) -> Figure:
    """Cross-validated test error (MSE) against rank, with error bars, on a log axis
    (linear when an error is zero).

    Takes plain arrays or a rank cross-validation result (duck-typed): any object
    with ``ranks`` and ``test_error`` (per rank, or repeats x ranks) and optionally
    ``test_error_std`` (or ``test_error_spread``), ``train_error`` (drawn dashed)
    and ``selected_rank``.

    Args:
        ranks: the ranks, or a result object as above.
        errors_mean: the test error per rank, or ``repeats x ranks`` errors (mean and
            standard deviation over the repeats are drawn); None with a result object.
        errors_spread: the half-height of each error bar (e.g. a standard deviation)
            per rank; None for none, or for the spread over repeats of a 2-D ``errors_mean``.
        selected: a rank to mark (the one picked), or None.
        title: axes title; None for "cross-validated error by rank".

    Returns:
        The figure (one axes).
    """
    train = train_spread = None
    if hasattr(ranks, "ranks") and hasattr(ranks, "test_error"):
        result = ranks
        ranks = result.ranks
        errors_mean = result.test_error if errors_mean is None else errors_mean
        for name in ("test_error_std", "test_error_spread"):
            if errors_spread is None and getattr(result, name, None) is not None:
                errors_spread = getattr(result, name)
        if selected is None:
            selected = getattr(result, "selected_rank", None)
        if getattr(result, "train_error", None) is not None:
            train, train_spread = _mean_and_spread(result.train_error)
    if errors_mean is None:
        raise ValueError("cv_error needs the errors: errors_mean, or a result with test_error")
    ranks = np.asarray(ranks).ravel()
    mean, spread = _mean_and_spread(errors_mean)
    if errors_spread is not None:
        spread = np.asarray(errors_spread, dtype=float).ravel()
    if mean.shape != ranks.shape:
        raise ValueError(f"{ranks.size} ranks but {mean.size} errors")
    fig = _new_figure((5.6, 3.8))
    ax = fig.subplots()
    ax.errorbar(ranks, mean, yerr=spread, fmt="o-", capsize=3, label="test error (held-out entries)")
    if train is not None and train.shape == ranks.shape:
        ax.errorbar(ranks, train, yerr=train_spread, fmt="s--", capsize=3, alpha=0.7, label="training error")
    if selected is not None:
        ax.axvline(int(selected), color="gray", linestyle=":", label=f"selected rank {int(selected)}")
    ax.set_xticks([int(r) for r in ranks])
    ax.set_xlabel("rank")
    what = "MSE" if train is not None else "test MSE"
    # past the true rank the error flattens by orders of magnitude less than before it:
    # a log axis keeps both parts readable (a zero error leaves the axis linear)
    values = np.concatenate([mean, train if train is not None else []])
    if np.all(values[np.isfinite(values)] > 0):
        ax.set_yscale("log")
        ax.set_ylabel(f"{what} (log scale)")
    else:
        ax.set_ylabel(what)
    ax.legend(fontsize="small")
    ax.set_title(title or "cross-validated error by rank")
    return fig


def basis_images(
    L,
    image_shape: tuple[int, int],
    ncols: int | None = None,
    title: str | None = None,
    cmap: str = "gray",
    panel_size: float = 1.2,
) -> Figure:
    """Each column of ``L`` (one basis vector, a "part") shown as an image.

    Args:
        L: ``pixels x k`` basis (or a result object with an ``L`` attribute);
            column j is reshaped, row-major, to ``image_shape``.
        image_shape: ``(height, width)`` with ``height * width`` = the number of rows of L.
        ncols: images per row; None for about a square grid.
        title: figure title; None for "basis images (k = ...)".
        cmap: a matplotlib colour map; each image spans it from 0 to its own largest entry.
        panel_size: inches per image.

    Returns:
        The figure: one axes (no ticks) per column of L, in order.
    """
    if hasattr(L, "L"):
        L = L.L
    L = np.asarray(L, dtype=float)
    if L.ndim != 2:
        raise ValueError(f"L must be pixels x k, got shape {L.shape}")
    height, width = (int(v) for v in image_shape)
    if height * width != L.shape[0]:
        raise ValueError(f"image_shape {image_shape} has {height * width} pixels, L has {L.shape[0]} rows")
    k = L.shape[1]
    ncols = max(1, min(k, int(ncols) if ncols else int(np.ceil(np.sqrt(k)))))
    nrows = max(1, -(-k // ncols))
    aspect = height / width
    fig = _new_figure((ncols * panel_size, nrows * panel_size * aspect + 0.5))
    grid = fig.add_gridspec(nrows, ncols)
    for j in range(k):
        ax = fig.add_subplot(grid[j // ncols, j % ncols])
        top = np.max(L[:, j])
        ax.imshow(
            L[:, j].reshape(height, width),
            cmap=cmap,
            vmin=0.0,
            vmax=top if top > 0 else 1.0,
            interpolation="nearest",
        )
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or f"basis images (k = {k})")
    return fig


def sparsity_vs_penalty(sweep_result, name: str, title: str | None = None) -> Figure:
    """Sparsity of the factors and the loss against a swept penalty (a :func:`jnmf.sweep`).

    For each setting, the best restart's fraction of exactly-zero entries of L and of
    R (``sparsity_L``, ``sparsity_R``) and its loss ``1/2 ||Y - L R||_F^2``.  When the
    sweep varied other settings too, each combination of them is its own line.

    Args:
        sweep_result: a :class:`jnmf.SweepResult` (anything with ``settings``,
            ``sparsity_L``, ``sparsity_R``, ``loss`` and ``best``).
        name: the swept scalar to put on the x axis (e.g. ``"lambda_1R"``).
        title: figure title; None for "sparsity and loss vs <name>".

    Returns:
        The figure: two axes, zero fraction vs penalty and loss vs penalty.
    """
    settings = {k: np.asarray(v) for k, v in sweep_result.settings.items()}
    if name not in settings:
        raise ValueError(f"{name!r} was not swept; swept: {sorted(settings)}")
    x = settings[name]
    if x.ndim != 1:
        raise ValueError(f"{name!r} is not a scalar per setting (shape {x.shape[1:]}); plot a scalar penalty")
    G = x.shape[0]
    best = np.asarray(sweep_result.best).reshape(G)

    def at_best(values) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        return values if values.ndim == 1 else values[np.arange(G), best]

    zeros_L, zeros_R, loss = (at_best(getattr(sweep_result, a)) for a in ("sparsity_L", "sparsity_R", "loss"))
    others = [k for k in settings if k != name]
    keys = [tuple(settings[k][g].tobytes() for k in others) for g in range(G)]
    groups: dict[tuple, list[int]] = {}
    for g, key in enumerate(keys):
        groups.setdefault(key, []).append(g)

    def describe(g: int) -> str:
        parts = [f"{k}={settings[k][g]:g}" for k in others if settings[k].ndim == 1]
        return ", ".join(parts)

    fig = _new_figure((9.6, 3.8))
    ax_zero, ax_loss = fig.subplots(1, 2, sharex=True)
    for i, members in enumerate(groups.values()):
        members = sorted(members, key=lambda g: x[g])
        label = describe(members[0]) if len(groups) > 1 else ""
        color = f"C{i % 10}"
        suffix = f" ({label})" if label else ""
        ax_zero.plot(x[members], zeros_L[members], "o-", color=color, label="L" + suffix)
        ax_zero.plot(x[members], zeros_R[members], "s--", color=color, label="R" + suffix)
        ax_loss.plot(x[members], loss[members], "o-", color=color, label=label or None)
    positive = x[x > 0]
    if positive.size and positive.max() / positive.min() > 50:
        # penalties are swept over decades; symlog keeps a zero penalty on the axis
        ax_zero.set_xscale("symlog", linthresh=float(positive.min()))
    ax_zero.set_ylim(-0.02, 1.02)
    ax_zero.set_xlabel(name)
    ax_zero.set_ylabel("fraction of zero entries")
    ax_zero.legend(fontsize="small")
    ax_loss.set_xlabel(name)
    ax_loss.set_ylabel("loss  1/2 ||Y - LR||²")
    if len(groups) > 1:
        ax_loss.legend(fontsize="small")
    fig.suptitle(title or f"sparsity and loss vs {name}")
    return fig


def k_selection(result, picked: int | None = None) -> Figure:
    """Stability and error of consensus programs against K (cNMF's K-selection plot).

    Kotliar et al. (2019) choose K where the stability (the silhouette of the clustering
    of replicate spectra; Rousseeuw 1987) is high and the error stops falling fast.

    Args:
        result: a :class:`jnmf.Programs`.
        picked: a K to mark with a vertical line (default none).

    Returns:
        The figure: stability on the left axis, the Frobenius error on the right.
    """
    ranks = np.asarray(result.ranks)
    fig = _new_figure((5.6, 3.8))
    ax = fig.subplots()
    ax.plot(ranks, result.stability, "o-", color="C0", label="stability")
    ax.set_xlabel("K (number of programs)")
    ax.set_ylabel("stability (silhouette)", color="C0")
    ax.set_xticks(list(ranks))
    twin = ax.twinx()
    twin.plot(ranks, result.error, "s--", color="C3", label="error")
    twin.set_ylabel("error ||X - W H||_F", color="C3")
    if picked is not None:
        ax.axvline(picked, color="gray", linestyle=":")
    ax.set_title("consensus programs: K selection")
    return fig


def clustergram(entry, *, kept_only: bool = True, max_spectra: int = 2000) -> Figure:
    """Distances between replicate spectra, grouped by their k-means cluster (cNMF's diagnostic).

    Args:
        entry: one rank of a :class:`jnmf.Programs` (``result[K]``), fitted with
            ``keep_replicates=True``.
        kept_only: show only the spectra that passed the density filter (default), else
            all, the filtered ones last.
        max_spectra: show at most this many (an even subsample beyond it).

    Returns:
        The figure: the Euclidean distance matrix of the L2-normalised replicate
        spectra, ordered by cluster (and by average linkage within a cluster), beside a
        histogram of the local densities.

    Raises:
        ValueError: the entry kept no replicate spectra.
    """
    from .programs import _pairwise_distances

    if entry.replicate_spectra is None:
        raise ValueError("entry has no replicate spectra: run programs(..., keep_replicates=True)")
    labels = np.asarray(entry.labels)
    idx = np.flatnonzero(labels >= 0) if kept_only else np.arange(labels.size)
    if idx.size > max_spectra:
        idx = idx[np.linspace(0, idx.size - 1, max_spectra).astype(int)]
    S = np.asarray(entry.replicate_spectra)[idx]
    D = _pairwise_distances(S)
    order = []
    for c in sorted(set(labels[idx].tolist()), key=lambda c: (c < 0, c)):
        members = np.flatnonzero(labels[idx] == c)
        sub = D[np.ix_(members, members)]
        order.extend(members[average_linkage_order(sub)].tolist())
    order = np.asarray(order, dtype=int)
    fig = _new_figure((9.0, 4.2))
    ax, hist = fig.subplots(1, 2, width_ratios=[1.3, 1])
    image = ax.imshow(D[np.ix_(order, order)], cmap="viridis_r", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="distance")
    ax.set_title(f"K = {entry.rank}: replicate spectra by cluster")
    ax.set_xticks([])
    ax.set_yticks([])
    hist.hist(np.asarray(entry.density), bins=40, color="C0")
    hist.set_xlabel("local density (mean distance to nearest neighbours)")
    hist.set_ylabel("spectra")
    hist.set_title(f"{int(np.sum(entry.kept))} of {len(entry.kept)} kept")
    return fig
