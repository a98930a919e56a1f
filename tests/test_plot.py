"""The figures of jnmf.plot: each returns a Figure with the expected axes and artists
and writes a PNG."""

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from jnmf import plot  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def saves_png(fig, tmp_path, name="fig.png") -> bool:
    path = tmp_path / name
    fig.savefig(path, dpi=40)
    return path.read_bytes()[:8] == PNG_SIGNATURE


def blocks(groups) -> np.ndarray:
    groups = np.asarray(groups)
    return (groups[:, None] == groups[None, :]).astype(float)


def test_heatmap_orders_samples_by_the_dendrogram_and_shows_classes(tmp_path):
    groups = np.array([0, 1, 0, 2, 1, 0, 2, 1])
    C = 0.9 * blocks(groups) + 0.05
    np.fill_diagonal(C, 1.0)
    names = [f"s{i}" for i in range(len(groups))]
    fig = plot.consensus_heatmap(C, labels=names, classes=[f"type{g}" for g in groups], dendrogram=True)
    assert isinstance(fig, Figure)
    bar, tree, matrix, colorbar = fig.axes
    # the tick labels follow scipy's dendrogram: each cluster is one contiguous run
    order = [names.index(t.get_text()) for t in matrix.get_xticklabels()]
    assert sorted(order) == list(range(len(groups)))
    runs = groups[order]
    assert np.count_nonzero(np.diff(runs)) == 2
    shown = matrix.get_images()[0].get_array()
    assert np.allclose(shown, C[np.ix_(order, order)])
    # the class bar: one colour code per sample in the same order, a legend of the 3 classes
    codes = np.asarray(bar.get_images()[0].get_array()).ravel()
    assert np.count_nonzero(np.diff(codes)) == 2
    assert [t.get_text() for t in bar.get_legend().get_texts()] == ["type0", "type1", "type2"]
    assert len(tree.get_lines()) == len(groups) - 1  # one bracket per merge
    assert saves_png(fig, tmp_path)


def test_heatmap_without_classes_or_tree(tmp_path):
    fig = plot.consensus_heatmap(blocks([0, 0, 1]))
    assert len(fig.axes) == 2  # matrix and colour bar
    assert saves_png(fig, tmp_path)


def test_average_linkage_order_is_the_scipy_dendrogram_order():
    from scipy.cluster.hierarchy import dendrogram, linkage
    from scipy.spatial.distance import squareform

    rng = np.random.default_rng(0)
    X = rng.random((9, 3))
    D = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    expected = dendrogram(linkage(squareform(D), "average"), no_plot=True)["leaves"]
    assert list(plot.average_linkage_order(D)) == expected


def test_convergence_against_iteration_and_seconds(tmp_path):
    history = np.array([5.0, 3.0, 2.5, np.nan])
    fig = plot.convergence(history, stride=10, seconds=1.5)
    by_iteration, by_seconds = fig.axes
    assert list(by_iteration.get_lines()[0].get_xdata()) == [10, 20, 30]
    assert np.allclose(by_seconds.get_lines()[0].get_xdata(), [0.5, 1.0, 1.5])
    assert by_seconds.get_xlabel() == "seconds"
    assert saves_png(fig, tmp_path)
    # one time per entry, and a result object with history/history_stride
    res = SimpleNamespace(history=history, history_stride=np.int32(5))
    fig = plot.convergence(res, seconds=[0.1, 0.2, 0.4, np.nan])
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [5, 10, 15]
    assert np.allclose(fig.axes[1].get_lines()[0].get_xdata(), [0.1, 0.2, 0.4])
    assert len(plot.convergence(res).axes) == 1
    with pytest.raises(ValueError, match="one time per entry"):
        plot.convergence(history, 10, seconds=[1.0, 2.0])


def test_cv_error_from_arrays(tmp_path):
    fig = plot.cv_error([2, 3, 4], [0.5, 0.3, 0.35], [0.02, 0.01, 0.03], selected=3)
    (ax,) = fig.axes
    assert len(ax.containers) == 1  # one errorbar series
    line = ax.containers[0].lines[0]
    assert list(line.get_xdata()) == [2, 3, 4]
    assert ax.get_lines()[-1].get_xdata()[0] == 3  # the selected rank's vertical line
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "test MSE (log scale)"
    assert saves_png(fig, tmp_path)
    # an exact zero error cannot go on a log axis: linear, labelled without "log"
    ax = plot.cv_error([2, 3], [0.5, 0.0]).axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylabel() == "test MSE"


def test_cv_error_from_a_duck_typed_result(tmp_path):
    errors = np.array([[0.5, 0.3, 0.4], [0.7, 0.5, 0.6]])  # repeats x ranks
    result = SimpleNamespace(
        ranks=np.array([2, 3, 4]), test_error=errors, train_error=errors * 0.5, selected_rank=3
    )
    fig = plot.cv_error(result)
    (ax,) = fig.axes
    assert len(ax.containers) == 2  # test and training error
    assert np.allclose(ax.containers[0].lines[0].get_ydata(), [0.6, 0.4, 0.5])  # mean over repeats
    assert "selected rank 3" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "MSE (log scale)"  # test and training
    assert saves_png(fig, tmp_path)
    with pytest.raises(ValueError, match="3 ranks but 2 errors"):
        plot.cv_error([2, 3, 4], [1.0, 2.0])


def test_basis_images(tmp_path):
    L = np.random.default_rng(1).random((6 * 4, 5))
    fig = plot.basis_images(L, (6, 4), ncols=3)
    assert len(fig.axes) == 5
    first = np.asarray(fig.axes[0].get_images()[0].get_array())
    assert first.shape == (6, 4) and np.allclose(first, L[:, 0].reshape(6, 4))
    assert saves_png(fig, tmp_path)
    assert len(plot.basis_images(SimpleNamespace(L=L), (6, 4)).axes) == 5
    with pytest.raises(ValueError, match="pixels"):
        plot.basis_images(L, (5, 5))


def test_sparsity_vs_penalty_on_a_real_sweep(tmp_path):
    import jnmf

    Y = np.random.default_rng(2).random((12, 10)).astype(np.float32)
    grid = {"lambda_1R": [0.0, 0.1, 1.0, 10.0]}
    sw = jnmf.sweep(Y, 3, grid, restarts=2, max_iterations=30, factors="none")
    fig = plot.sparsity_vs_penalty(sw, "lambda_1R")
    zeros, loss = fig.axes
    line_L, line_R = zeros.get_lines()
    assert list(line_L.get_xdata()) == grid["lambda_1R"]
    best = np.asarray(sw.best)
    assert np.allclose(line_R.get_ydata(), np.asarray(sw.sparsity_R)[np.arange(4), best])
    assert np.allclose(loss.get_lines()[0].get_ydata(), sw.loss[np.arange(4), best])
    assert line_R.get_ydata()[-1] >= line_R.get_ydata()[0]  # a larger L1 penalty: sparser R
    assert saves_png(fig, tmp_path)
    with pytest.raises(ValueError, match="was not swept"):
        plot.sparsity_vs_penalty(sw, "lambda_1L")


def test_sparsity_vs_penalty_draws_one_line_per_other_setting():
    sw = SimpleNamespace(
        settings={"lambda_1L": np.array([0.0, 1.0, 0.0, 1.0]), "gamma_2L": np.array([0.0, 0.0, 5.0, 5.0])},
        sparsity_L=np.array([0.0, 0.2, 0.1, 0.3]),
        sparsity_R=np.zeros(4),
        loss=np.array([1.0, 2.0, 1.5, 2.5]),
        best=np.zeros(4, int),
    )
    fig = plot.sparsity_vs_penalty(sw, "lambda_1L")
    assert len(fig.axes[0].get_lines()) == 4  # L and R for each gamma_2L
    assert len(fig.axes[1].get_lines()) == 2
