"""The Why page's charts (issue 14.10): axis titles in words, scatter labels inside the plot."""

from __future__ import annotations

from fairprune.present import plots


def test_dense_vs_level_axis_says_the_figure_in_words():
    dense = {"a": {"grad_norm_mean": 1.0}, "b": {"grad_norm_mean": 2.0}}
    fig = plots.diagnostic_dense_vs_level(dense, dense, "grad_norm_mean", level_name="90%")
    assert fig.layout.xaxis.title.text == "mean per-sample gradient norm"
    assert "grad_norm_mean" not in fig.layout.title.text
    assert all("grad_norm_mean" not in h for tr in fig.data for h in tr.hovertext)


def test_scatter_leaves_room_for_every_label():
    points = {"standard": (750, 0.29), "inverted": (175, 0.83), "missing": (None, 1.0)}
    fig = plots.group_scatter(points, x_title="training samples of the group", y_title="mean gradient norm")
    assert [tr.name for tr in fig.data] == ["standard", "inverted"]
    assert all(tr.cliponaxis is False for tr in fig.data)
    (x0, x1), (y0, y1) = fig.layout.xaxis.range, fig.layout.yaxis.range
    span_x, span_y = 750 - 175, 0.83 - 0.29
    assert x0 <= 175 - 0.2 * span_x and x1 >= 750 + 0.2 * span_x
    assert y0 <= 0.29 - 0.2 * span_y and y1 >= 0.83 + 0.35 * span_y      # the top label sits above its point
    one = plots.group_scatter({"only": (10, 5.0)}, x_title="x", y_title="y")
    assert one.layout.xaxis.range[0] < 10 < one.layout.xaxis.range[1]
    assert one.layout.yaxis.range[0] < 5.0 < one.layout.yaxis.range[1]
