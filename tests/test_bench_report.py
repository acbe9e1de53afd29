"""The benchmark report's verdicts: a median whose confidence interval reaches past the
limit is said to be noisy, whichever side of the limit it fell on. And where it is
written: only a full run replaces the tracked docs/benchmarks.md."""

from __future__ import annotations

import math

import pytest

from bench.cli import DEFAULT_OUT, build_parser, report_path
from bench.report import Target, ratio_target
from bench.stats import median_interval


def test_a_pass_whose_interval_reaches_past_the_limit_is_noisy():
    steady = ratio_target("steady", [95, 96, 94], [100, 100, 100], 0.9)
    wobbly = ratio_target("wobbly", [60, 95, 130], [100, 100, 100], 0.9)
    assert steady.passed and not steady.noisy and steady.text()[2] == "PASS"
    assert steady.text()[0] == "95.0 % (95 % CI 94.0-96.0)"
    assert wobbly.passed and wobbly.noisy and wobbly.text()[2] == "PASS (noisy)"


def test_failures_and_at_most_targets():
    failing = ratio_target("failing", [70, 80, 85], [100, 100, 100], 0.9)
    assert not failing.passed and not failing.noisy and failing.text()[2] == "FAIL"
    close = ratio_target("close", [80, 85, 95], [100, 100, 100], 0.9)
    assert not close.passed and close.noisy and close.text()[2] == "FAIL (noisy)"
    latency = Target("p99", 0.9, 1.0, "ms", at_least=False, interval=(0.8, 1.1))
    assert latency.passed and latency.noisy  # its interval reaches past the 1 ms limit
    assert not Target("p99", 0.9, 1.0, "ms", at_least=False, interval=(0.8, 0.95)).noisy
    assert not Target("nan", math.nan, 1.0, "ms").passed


def test_the_median_interval_holds_95_percent_of_order_statistics():
    assert median_interval(range(30)) == (9, 20)  # P(9 or fewer of 30 below the median) = 2.1 %
    assert median_interval(range(15)) == (3, 11)
    assert median_interval([3, 1, 2, 5, 4]) == (1, 5)  # five rounds: only the whole range (93.75 %)
    assert median_interval([7.0]) == (7.0, 7.0)
    assert all(math.isnan(x) for x in median_interval([]))


def test_the_chart_of_a_run_without_unary_figures(tmp_path):
    from bench.report import Row, Section, chart

    stream = Section("Streaming", rows=[Row("stream c=16", "(a) grpc.aio", "chunks/s", [40000.0, 41000.0])])
    chart([stream], tmp_path / "chart.png")  # warnings are errors: no legend without labelled bars
    assert (tmp_path / "chart.png").stat().st_size > 0


@pytest.mark.parametrize("argv", [["--smoke"], ["--sections", "unary"], ["--smoke", "--sections", "memory"]])
def test_smoke_and_partial_runs_leave_the_tracked_report_alone(argv):
    out = report_path(build_parser().parse_args(argv))
    assert out.name == "benchmarks.md" and out.parent != DEFAULT_OUT.parent and out.parent.is_dir()
    out.parent.rmdir()


def test_a_full_run_writes_the_docs_and_out_wins(tmp_path):
    assert report_path(build_parser().parse_args([])) == DEFAULT_OUT
    assert report_path(build_parser().parse_args(["--rounds", "3"])) == DEFAULT_OUT
    assert report_path(build_parser().parse_args(["--smoke", "--out", str(tmp_path / "r.md")])) == tmp_path / "r.md"
