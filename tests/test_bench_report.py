"""The benchmark report's verdicts: a pass that some rounds failed is said to be noisy."""

from __future__ import annotations

import math

from bench.report import Target, ratio_target


def test_a_pass_within_the_spread_is_noisy():
    steady = ratio_target("steady", [95, 96, 94], [100, 100, 100], 0.9)
    wobbly = ratio_target("wobbly", [60, 95, 130], [100, 100, 100], 0.9)
    assert steady.passed and not steady.noisy and steady.text()[2] == "PASS"
    assert wobbly.passed and wobbly.noisy and wobbly.text()[2] == "PASS (noisy)"


def test_failures_and_at_most_targets():
    failing = ratio_target("failing", [70, 80, 90], [100, 100, 100], 0.9)
    assert not failing.passed and not failing.noisy and failing.text()[2] == "FAIL"
    latency = Target("p99", 0.9, 1.0, "ms", at_least=False, spread=0.2)
    assert latency.passed and latency.noisy  # 0.9 ms + 20 % passes the 1 ms limit
    assert not Target("nan", math.nan, 1.0, "ms").passed


def test_the_chart_of_a_run_without_unary_figures(tmp_path):
    from bench.report import Row, Section, chart

    stream = Section("Streaming", rows=[Row("stream c=16", "(a) grpc.aio", "chunks/s", [40000.0, 41000.0])])
    chart([stream], tmp_path / "chart.png")  # warnings are errors: no legend without labelled bars
    assert (tmp_path / "chart.png").stat().st_size > 0
