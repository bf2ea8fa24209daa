"""difflab.utils.charts.log_x_chart: each series drawn in its own colour at log-spaced x, and the
input it cannot draw refused."""

import numpy as np
import pytest

from difflab.utils.charts import COLORS, log_x_chart


def test_series_are_drawn_in_their_colours_at_log_spaced_x():
    """One dot per series at x = 1, 10, 1000: the dots' centres sit 1 : 2 apart, as log10 x does."""
    series = {"a": [(1, 1.0)], "b": [(10, 2.0)], "c": [(1000, 3.0)]}
    image = np.asarray(log_x_chart(series, x_label="steps", y_label="distance"))
    assert image.shape == (480, 760, 3)
    plot = image[:, :560]  # the legend's swatches sit right of the plot
    centres = [np.flatnonzero((plot == c).all(-1).any(0)).mean() for c in COLORS[:3]]
    assert not (image == COLORS[3]).all(-1).any()
    assert (centres[2] - centres[1]) / (centres[1] - centres[0]) == pytest.approx(2, abs=0.02)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no points to plot"):
        log_x_chart({}, x_label="x", y_label="y")
    with pytest.raises(ValueError, match="needs every x > 0"):
        log_x_chart({"a": [(0, 1.0), (1, 2.0)]}, x_label="x", y_label="y")


def test_a_narrow_log_range_still_gets_ticks():
    """y in [0.86, 0.93] holds no 1, 2, 5 x 10^k: round values evenly apart mark it instead."""
    image = np.asarray(
        log_x_chart({"a": [(1, 0.93), (5, 0.86)]}, x_label="x", y_label="y", log_y=True)
    )
    grid = (image[:, 100:540] == (225, 225, 225)).all(-1).mean(1) > 0.5  # rows of grid lines
    assert int(np.diff(grid.astype(int)).clip(0).sum()) >= 2
