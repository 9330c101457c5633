"""Charts: what each figure draws, how suppressed rows read, and the PNG it saves."""

from __future__ import annotations

import io
import math

import pytest
from matplotlib.image import imread
from PIL import Image

from reports.charts import (
    DPI,
    SIGNAL_ORANGE,
    prepost_ci,
    response_rate_bars,
    save_png,
    self_vs_others,
    xmr_chart,
)
from reports.disclosure import SUPPRESSED


def _texts(fig) -> list[str]:
    return [t.get_text().strip() for ax in fig.axes for t in ax.texts]


def _line(ax, gid):
    (line,) = [line for line in ax.get_lines() if line.get_gid() == gid]
    return line


def test_response_rate_bars_draw_percentages_and_hide_suppressed_groups():
    fig = response_rate_bars(
        ["Willow Court", "Elmfield House", "All homes"],
        [0.625, SUPPRESSED, 0.5],
        [False, True, False],
    )
    (ax,) = fig.axes
    assert [bar.get_width() for bar in ax.patches] == [62.5, 50.0]
    assert [bar.get_y() + bar.get_height() / 2 for bar in ax.patches] == [0, 2]
    assert _texts(fig) == ["62%", SUPPRESSED, "50%"]
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "Willow Court",
        "Elmfield House",
        "All homes",
    ]
    assert ax.get_xlim() == (0, 100)
    assert ax.get_title() and ax.get_xlabel()


def test_response_rate_flagged_suppressed_shows_no_bar_even_with_a_rate():
    fig = response_rate_bars(["Harrow Lodge"], [0.75], [True])
    assert len(fig.axes[0].patches) == 0
    assert _texts(fig) == [SUPPRESSED]


def test_response_rate_bars_refuse_percentages():
    with pytest.raises(ValueError, match="fraction"):
        response_rate_bars(["Willow Court"], [62.5], [False])


def test_prepost_ci_draws_points_error_bars_and_a_zero_line():
    fig = prepost_ci(
        ["listens", "develops", "trusts"], [0.4, None, -0.2], [0.1, None, -0.5], [0.7, None, 0.1]
    )
    (ax,) = fig.axes
    (container,) = ax.containers
    data_line, _, (bars,) = container
    assert list(data_line.get_xdata()) == [0.4, -0.2]
    assert list(data_line.get_ydata()) == [0, 2]
    spans = [tuple(round(x, 9) for x in segment[:, 0]) for segment in bars.get_segments()]
    assert spans == [(0.1, 0.7), (-0.5, 0.1)]
    assert list(_line(ax, "zero").get_xdata()) == [0, 0]
    assert SUPPRESSED in _texts(fig)
    assert "+0.40 (+0.10 to +0.70)" in _texts(fig)
    low, high = ax.get_xlim()
    assert low < -0.5 and high > 0.7 and math.isclose(low, -high)


def test_self_vs_others_plots_two_marker_series():
    fig = self_vs_others(
        ["listens", "develops", "trusts"], [4.0, 3.0, 5.0], [3.5, SUPPRESSED, 4.5], scale=(1, 5)
    )
    (ax,) = fig.axes
    series = {
        line.get_label(): line for line in ax.get_lines() if line.get_label() in ("Self", "Others")
    }
    assert list(series["Self"].get_xdata()) == [4.0, 3.0, 5.0]
    assert list(series["Others"].get_xdata()) == [3.5, 4.5]
    assert list(series["Others"].get_ydata()) == [0, 2]
    assert series["Self"].get_marker() != series["Others"].get_marker()
    assert _texts(fig) == ["others: suppressed"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Self", "Others"]


def test_xmr_chart_points_limits_gaps_and_signals():
    values = [3.0, 3.2, None, 3.1, 4.5, 2.9]
    fig = xmr_chart(list("ABCDEF"), values, 3.1, 4.0, 2.2, [4], "Morale")
    (ax,) = fig.axes
    points = _line(ax, "values")
    assert len(points.get_xdata()) == 6
    assert math.isnan(points.get_ydata()[2])  # a gap, not a zero
    assert set(_line(ax, "mean").get_ydata()) == {3.1}
    assert set(_line(ax, "unpl").get_ydata()) == {4.0}
    assert set(_line(ax, "lnpl").get_ydata()) == {2.2}
    signals = _line(ax, "signals")
    assert list(signals.get_xdata()) == [4] and list(signals.get_ydata()) == [4.5]
    assert signals.get_color() == SIGNAL_ORANGE
    assert signals.get_marker() != points.get_marker()
    assert ax.get_title() == "Morale"


def test_xmr_chart_recalculated_limits_and_missing_signal_point():
    fig = xmr_chart(list("ABCD"), [1, 2, None, 3], 2, [3, 3, 4, 4], None, [2], "After a change")
    (ax,) = fig.axes
    assert list(_line(ax, "unpl").get_ydata()) == [3, 3, 4, 4]
    gids = {line.get_gid() for line in ax.get_lines()}
    assert "lnpl" not in gids and "signals" not in gids


def test_xmr_chart_refuses_a_signal_outside_the_series():
    with pytest.raises(ValueError, match="signal_indices"):
        xmr_chart(["A"], [1.0], 1.0, 2.0, 0.0, [3], "Morale")


def test_save_png_writes_a_png_at_the_fixed_dpi(tmp_path):
    path = tmp_path / "rates.png"
    fig = response_rate_bars(["Willow Court"], [0.5], [False])
    width, height = fig.get_size_inches()
    save_png(fig, path)

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    assert pixels.shape[:2] == (round(height * DPI), round(width * DPI))
    assert fig.axes == []  # closed: nothing left to draw on
    with Image.open(path) as image:
        assert image.info["Title"] == "Response rate"
        assert "bar chart" in image.info["Description"]


def test_save_png_writes_to_a_file_object():
    buffer = io.BytesIO()
    save_png(prepost_ci(["listens"], [0.2], [0.0], [0.4]), buffer)
    buffer.seek(0)
    with Image.open(buffer) as image:
        assert image.format == "PNG" and image.info["Title"] == "Change from before to after"
