"""`parse_budget`: the forms it accepts, the ones it refuses, and what its refusals say."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoeff.budget import MAX_SECONDS, MIN_FRACTION, MIN_SECONDS, Budget, BudgetError, format_seconds, parse_budget


@pytest.mark.parametrize("text, seconds", [
    ("200ms", 0.2), ("0.2s", 0.2), ("2s", 2.0), (" 200 ms ", 0.2), ("1e2ms", 0.1), (".5s", 0.5),
    ("1.5e-1s", 0.15), ("86400s", MAX_SECONDS), ("0.1ms", MIN_SECONDS),
])
def test_absolute_budgets(text, seconds):
    b = parse_budget(text)
    assert b.fraction is None and b.seconds == pytest.approx(seconds)
    assert b.resolve(123.0) == pytest.approx(seconds)  # the baseline does not matter
    assert b.text == text.strip()


@pytest.mark.parametrize("text, fraction", [("10%", 0.1), ("80 %", 0.8), ("0.5%", 0.005), ("1000%", 10.0),
                                            ("0.1%", MIN_FRACTION)])
def test_relative_budgets(text, fraction):
    b = parse_budget(text)
    assert b.seconds is None and b.fraction == pytest.approx(fraction)
    assert b.resolve(0.4) == pytest.approx(0.4 * fraction)


@pytest.mark.parametrize("text, words", [
    ("200", ["has no unit", "200ms", "200s"]),
    ("-5ms", ["negative", "200ms"]),
    ("0ms", ["greater than zero"]),
    ("0%", ["greater than zero"]),
    ("fastest", ["not a latency", "200ms", "10%"]),
    ("1e9ms", ["more than a day", "2s"]),
    ("86401s", ["more than a day"]),
    ("1001%", ["at most 1000%"]),
    ("5%%", ["not a latency"]),
    ("nan ms", ["not a latency"]),
    ("inf s", ["not a latency"]),
    ("200us", ["not a latency"]),
    ("", ["not a latency"]),
    ("ms", ["not a latency"]),
    ("1e999ms", ["not a finite number"]),  # overflows to inf: refused, not accepted as an infinite budget
    ("1e-9s", ["less than 0.1 ms", "200ms"]),  # a typo, not a budget any pipeline can meet
    ("0.09ms", ["less than 0.1 ms"]),
    ("0.01%", ["less than 0.1% of the baseline", "10%"]),
])
def test_refused_budgets_name_the_input_and_a_fix(text, words):
    with pytest.raises(BudgetError) as err:
        parse_budget(text)
    msg = str(err.value)
    assert msg.startswith(f"--budget {text!r}")
    assert "\n" not in msg
    for w in words:
        assert w in msg


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20) | st.from_regex(r"\A\s*-?[0-9.eE+-]{1,8}\s*(ms|s|%|MS|us)?\s*\Z"))
def test_any_text_is_a_usable_budget_or_a_budget_error(text):
    try:
        b = parse_budget(text)
    except BudgetError:
        return
    assert isinstance(b, Budget)
    if b.seconds is not None:
        assert math.isfinite(b.seconds) and MIN_SECONDS <= b.seconds <= MAX_SECONDS and b.fraction is None
    else:
        assert b.fraction is not None and MIN_FRACTION <= b.fraction <= 10.0


def test_the_same_budget_however_written():
    assert parse_budget("200ms").same_as(parse_budget("0.2s"))
    assert parse_budget("10%").same_as(parse_budget(" 10.0 %"))
    assert not parse_budget("200ms").same_as(parse_budget("20%"))
    assert not parse_budget("200ms").same_as(parse_budget("201ms"))


def test_format_seconds():
    assert format_seconds(0.0123) == "12.3 ms"
    assert format_seconds(0.25) == "250 ms"
    assert format_seconds(2.5) == "2.50 s"


def test_the_yardstick_is_the_budgets_share_of_the_base_steps_at_most_a_tenth():
    from autoeff.measure import yardstick_steps

    assert [yardstick_steps(f, 50) for f in (0.03, 0.05, 0.10, 0.20, 2.0)] == [2, 2, 5, 5, 5]
    assert [yardstick_steps(f, 1000) for f in (0.001, 0.03, 0.5)] == [1, 30, 100]
    assert yardstick_steps(2.0, 10) == yardstick_steps(0.1, 4) == 1  # never fewer than one step
