"""course_lib.viz.tables: the one table helper every lesson's table goes through."""

from __future__ import annotations

import doctest

import pandas as pd
import pytest

from course_lib.viz import tables
from course_lib.viz.tables import table


def test_docstring_example():
    assert doctest.testmod(tables).failed == 0


def test_columns_choose_order_rename_and_leave_out():
    rows = [{"b": 1, "a": 2.0, "hidden": "x"}, {"b": 3, "a": 4.5, "hidden": "y"}]
    df = table(rows, {"a": "alpha (s)", "b": "beta"})
    assert list(df.columns) == ["alpha (s)", "beta"]
    assert df["alpha (s)"].tolist() == [2.0, 4.5] and df["beta"].tolist() == [1, 3]


def test_rounding_per_column_and_an_index():
    df = table([("conv1", 1.23456, 0.98765)], {"name": "layer", "t": "time (ms)", "r": "ratio"},
               digits={"time (ms)": 1}, index="layer")
    assert df.index.tolist() == ["conv1"]
    assert df.loc["conv1", "time (ms)"] == 1.2 and df.loc["conv1", "ratio"] == 0.98765
    assert "conv1" in df.to_string() and "1.2" in df.to_string()


def test_a_missing_column_is_named():
    with pytest.raises(KeyError, match=r"rows have no \['c'\]"):
        table([{"a": 1}], {"a": "A", "c": "C"})


def test_no_rows_gives_an_empty_table_with_the_headers():
    df = table([], {"a": "A", "b": "B"})
    assert isinstance(df, pd.DataFrame) and list(df.columns) == ["A", "B"] and len(df) == 0
