"""bench.rounds: the arithmetic the four benchmarks share, on constructed numbers (no timing)."""

from __future__ import annotations

import json
import math

import pytest

from bench import children
from bench.children import side_by_side, write_report
from bench.rounds import (
    MIN_ROUNDS,
    Aim,
    RoundsError,
    check_rounds,
    compare,
    order,
    ratios,
    spread,
)


def test_at_least_five_rounds_are_needed() -> None:
    assert MIN_ROUNDS == 5
    assert check_rounds(5) == 5
    assert check_rounds(8) == 8
    for too_few in (4, 1, 0, -2):
        with pytest.raises(RoundsError, match=rf"--rounds {too_few}: at least 5 rounds") as error:
            check_rounds(too_few)
        assert "\n" not in str(error.value)


def test_the_sides_alternate_round_by_round() -> None:
    assert order(("a", "b"), 5) == [
        (1, "a"), (1, "b"), (2, "a"), (2, "b"), (3, "a"),
        (3, "b"), (4, "a"), (4, "b"), (5, "a"), (5, "b"),
    ]  # fmt: skip
    assert [side for _, side in order(("x", "y", "z"), 6)] == ["x", "y", "z"] * 6
    with pytest.raises(RoundsError, match="at least 5"):
        order(("a", "b"), 4)


def test_the_median_ratio_pairs_the_rounds_odd() -> None:
    # Round by round 10/2, 12/3, 30/5, 8/4, 21/3: 5, 4, 6, 2, 7 -> median 5, not the ratio of
    # the medians (12 / 3 = 4).
    found = compare("seconds", ("them", [10, 12, 30, 8, 21]), ("us", [2, 3, 5, 4, 3]))
    assert found.round_ratios == (5.0, 4.0, 6.0, 2.0, 7.0)
    assert found.median_ratio == 5.0
    assert found.numerator_spread.median == 12.0
    assert found.denominator_spread.median == 3.0
    assert (found.ratio.low, found.ratio.high) == (2.0, 7.0)
    assert (found.ratio.q1, found.ratio.q3, found.ratio.iqr) == (4.0, 6.0, 2.0)


def test_the_median_ratio_pairs_the_rounds_even() -> None:
    found = compare("seconds", ("them", [1, 2, 3, 4, 5, 6]), ("us", [1, 1, 1, 1, 1, 1]))
    assert found.median_ratio == 3.5  # the mean of the middle two
    assert (found.ratio.low, found.ratio.high) == (1.0, 6.0)
    # Quartiles by linear interpolation, as numpy.percentile: positions 1.25 and 3.75.
    assert found.ratio.q1 == pytest.approx(2.25)
    assert found.ratio.q3 == pytest.approx(4.75)
    assert found.ratio.iqr == pytest.approx(2.5)


def test_spread_and_interquartile_range() -> None:
    found = spread([9.0, 1.0, 5.0, 3.0, 7.0])
    assert (found.median, found.low, found.high) == (5.0, 1.0, 9.0)
    assert (found.q1, found.q3, found.iqr) == (3.0, 7.0, 4.0)
    assert found.as_dict() == {"median": 5.0, "low": 1.0, "high": 9.0, "q1": 3.0, "q3": 7.0,
                               "iqr": 4.0}  # fmt: skip
    same = spread([2.0] * 7)
    assert (same.low, same.high, same.iqr) == (2.0, 2.0, 0.0)


def test_one_outlier_moves_the_spread_not_the_median() -> None:
    steady = compare("s", ("them", [20, 20, 20, 20, 20]), ("us", [1, 1, 1, 1, 1]))
    noisy = compare("s", ("them", [20, 20, 20, 20, 20]), ("us", [1, 1, 1, 1, 4]))
    assert noisy.median_ratio == steady.median_ratio == 20.0
    assert noisy.ratio.low == 5.0


def test_fewer_than_five_measurements_are_refused() -> None:
    with pytest.raises(RoundsError, match=r"seconds: 4 round\(s\) measured, at least 5 needed"):
        spread([1, 2, 3, 4], "seconds")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1, 2, None, 4, 5], "round 3 has no measurement"),
        ([1, 2, 3, 0, 5], "round 4 measured 0, not a positive number"),
        ([1, 2, 3, 4, -1.5], "round 5 measured -1.5, not a positive number"),
        ([math.nan, 2, 3, 4, 5], "round 1 measured nan, not a positive number"),
        ([1, math.inf, 3, 4, 5], "round 2 measured inf, not a positive number"),
    ],
)
def test_a_missing_or_zero_measurement_fails_in_one_line(values: list, message: str) -> None:
    with pytest.raises(RoundsError, match=message) as error:
        compare("seconds", ("evidently", values), ("conveyor", [1] * 5))
    assert "\n" not in str(error.value)
    assert str(error.value).startswith("seconds evidently/conveyor (numerator): ")
    with pytest.raises(RoundsError, match=message) as error:
        compare("seconds", ("evidently", [1] * 5), ("conveyor", values))
    assert "(denominator)" in str(error.value)


def test_a_round_missing_on_one_side_fails_in_one_line() -> None:
    with pytest.raises(RoundsError, match="5 round\\(s\\) on one side, 6 on the other") as error:
        ratios([1] * 5, [1] * 6, "seconds")
    assert "\n" not in str(error.value)


def test_the_report_holds_every_round() -> None:
    found = compare("seconds", ("conveyor", [3, 3, 3, 3, 6]), ("pandas", [2, 2, 2, 2, 2]))
    report = found.as_dict()
    assert report["conveyor"]["per_round"] == [3.0, 3.0, 3.0, 3.0, 6.0]
    assert report["pandas"]["median"] == 2.0
    assert report["round_ratios"] == [1.5, 1.5, 1.5, 1.5, 3.0]
    assert report["median_ratio"] == 1.5
    assert report["ratio_spread"]["high"] == 3.0
    first, second = found.lines("s")
    assert first == "seconds: median conveyor 3.00 s, pandas 2.00 s"
    assert (
        second == "  conveyor/pandas: median 1.50x (min-max 1.50-3.00x, IQR 1.50-1.50x, 5 rounds)"
    )


def test_aims_judge_the_median_ratio() -> None:
    faster = Aim("at least 50x faster", ">=", 50)
    assert faster.met(50.0) and faster.met(61.2) and not faster.met(49.9)
    at_most = Aim("at most 1.5x the read", "<=", 1.5)
    assert at_most.met(1.5) and not at_most.met(1.51)
    lower = Aim("a lower p99", "<", 1.0)
    assert lower.met(0.99) and not lower.met(1.0)
    verdict = faster.verdict(23.7)
    assert verdict["met"] is False
    assert verdict["line"].endswith("-> aim not met")
    assert at_most.verdict(1.2)["line"].endswith("-> aim met")
    with pytest.raises(RoundsError, match="unknown comparison"):
        Aim("?", "~", 1)


def _rounds(side_figures: dict[str, list[float | None]]) -> list[dict]:
    """Children's results in the benches' alternating order, from per-side figures."""
    sides = list(side_figures)
    return [
        {"round": number, "side": side, "seconds": side_figures[side][number - 1], "peak_mib": 9}
        for number, side in order(sides, len(side_figures[sides[0]]))
    ]


def test_side_by_side_compares_seconds_then_memory_first_over_second() -> None:
    results = _rounds({"conveyor": [2, 2, 2, 2, 4], "pandas": [1, 1, 1, 1, 1]})
    seconds, memory = side_by_side("validation", results, ("conveyor", "pandas"))
    assert seconds.median_ratio == 2.0 and seconds.round_ratios[-1] == 4.0
    assert memory.metric == "peak MiB" and memory.median_ratio == 1.0


def test_a_round_without_its_figure_ends_the_bench_in_one_line() -> None:
    results = _rounds({"conveyor": [2, 2, None, 2, 2], "pandas": [1] * 5})
    with pytest.raises(SystemExit) as stopped:
        side_by_side("validation", results, ("conveyor", "pandas"))
    assert str(stopped.value).startswith("bench validation: ")
    assert "\n" not in str(stopped.value)


def test_the_written_report_holds_every_round_and_each_aim(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(children, "OUT", tmp_path)
    monkeypatch.setattr(children, "ROOT", tmp_path.parent)
    results = _rounds({"conveyor": [3] * 5, "read": [1] * 5})
    seconds, _ = side_by_side("quality", results, ("conveyor", "read"))
    aims = [Aim("below 10x a read", "<", 10).verdict(seconds.median_ratio)]
    machines = {"end": {"cpu_count": 2, "affinity": 2, "loadavg": [1.0, 1.0, 1.0]}}
    profile = {"profiled": "x", "seconds_under_profiler": 1.0}
    profile |= {"top_cumulative_in_conveyor": [], "top_self": []}
    write_report("quality", results, {"rows": 10}, aims, profile, machines, ("numpy",))
    written = json.loads((tmp_path / "quality.json").read_text())
    assert written["rows"] == 10 and written["aims"][0]["met"] is True
    assert written["order"] == [f"{n}:{side}" for n in range(1, 6) for side in ("conveyor", "read")]
    assert [run["seconds"] for run in written["runs"]] == [3, 1] * 5
    assert set(written["versions"]) == {"python", "numpy", "conveyor"}
    assert "aim met" in capsys.readouterr().out
