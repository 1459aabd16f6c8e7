"""report.format_table: alignment, the header rule, and rows of the wrong width refused."""
import pytest

from relational_rnn.report import format_table


def test_columns_are_aligned_left_then_right_under_a_rule():
    table = format_table(["model", "acc"], [["rmc", 0.5], ["lstm", "0.25"]], left=1)
    assert table.splitlines() == ["model   acc",
                                  "-----  ----",
                                  "rmc     0.5",
                                  "lstm   0.25"]
    assert format_table(["a", "b"], [["xyz", "1"]], left=2).splitlines()[2] == "xyz  1"


def test_a_row_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match="rows: every row needs 2 cells"):
        format_table(["a", "b"], [["1", "2"], ["3"]])
