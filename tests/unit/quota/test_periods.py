"""Quota periods: calendar months and ISO weeks in the site's time zone (DST included),
the endless period 'none', cutting an interval at period boundaries, and ISO 8601 output."""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shangzhuang.quota.periods import FOREVER, Period, iso, period_at, split
from tests.unit.quota.conftest import at

H = 3600.0
DAY = 24 * H
SH = "Asia/Shanghai"
BERLIN = "Europe/Berlin"


def local(t: float, tz: str) -> datetime:
    return datetime.fromtimestamp(t, ZoneInfo(tz))


# --- monthly -----------------------------------------------------------------------------
def test_monthly_in_shanghai_starts_at_local_midnight_of_the_first():
    p = period_at(at(2026, 10, 15, 12, 0), "monthly", SH)
    assert p == Period(at(2026, 10, 1), at(2026, 11, 1))
    # Shanghai is UTC+8: the month starts at 16:00 UTC on the last day of the month before.
    assert p.start == datetime(2026, 9, 30, 16, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    assert p.end - p.start == 31 * DAY
    assert p.resets


def test_monthly_start_inclusive_end_exclusive():
    nov = at(2026, 11, 1)
    assert period_at(nov, "monthly", SH).start == nov
    assert period_at(nov - 0.001, "monthly", SH).end == nov
    assert period_at(nov - 0.001, "monthly", SH).start == at(2026, 10, 1)
    assert not period_at(nov - 0.001, "monthly", SH).contains(nov)
    # The last float before the reset is still October (fromtimestamp rounds to whole
    # microseconds: it used to make this November, a period that does not contain it).
    just_before = math.nextafter(nov, 0)
    assert period_at(just_before, "monthly", SH).end == nov
    assert period_at(just_before, "weekly", SH).contains(just_before)
    assert split(just_before, nov + 1, "monthly", SH)[0][2].end == nov


def test_monthly_december_rolls_into_the_next_year_and_february_has_its_days():
    assert period_at(at(2026, 12, 31, 23, 59), "monthly", SH) == Period(
        at(2026, 12, 1), at(2027, 1, 1)
    )
    feb_leap = period_at(at(2028, 2, 29, 12), "monthly", SH)
    assert feb_leap == Period(at(2028, 2, 1), at(2028, 3, 1))
    assert feb_leap.end - feb_leap.start == 29 * DAY
    feb = period_at(at(2027, 2, 14), "monthly", SH)
    assert feb.end - feb.start == 28 * DAY


def test_monthly_in_berlin_across_the_march_change_is_an_hour_short():
    # 2026-03-29 02:00 CET -> 03:00 CEST.
    p = period_at(at(2026, 3, 29, 12, tz=BERLIN), "monthly", BERLIN)
    assert local(p.start, BERLIN).isoformat() == "2026-03-01T00:00:00+01:00"
    assert local(p.end, BERLIN).isoformat() == "2026-04-01T00:00:00+02:00"
    assert p.end - p.start == 31 * DAY - H
    # Both sides of the change are in March.
    before, after = at(2026, 3, 29, 1, 59, tz=BERLIN), at(2026, 3, 29, 3, 0, tz=BERLIN)
    assert after - before == 60  # 01:59 CET and 03:00 CEST are a minute apart
    assert period_at(before, "monthly", BERLIN) == period_at(after, "monthly", BERLIN) == p


def test_monthly_in_berlin_across_the_october_change_is_an_hour_long():
    # 2026-10-25 03:00 CEST -> 02:00 CET: 02:00-03:00 happens twice.
    first = at(2026, 10, 25, 2, 30, tz=BERLIN, fold=0)
    second = at(2026, 10, 25, 2, 30, tz=BERLIN, fold=1)
    assert second - first == H
    p = period_at(first, "monthly", BERLIN)
    assert period_at(second, "monthly", BERLIN) == p
    assert local(p.start, BERLIN).isoformat() == "2026-10-01T00:00:00+02:00"
    assert local(p.end, BERLIN).isoformat() == "2026-11-01T00:00:00+01:00"
    assert p.end - p.start == 31 * DAY + H


def test_a_midnight_that_happens_twice_starts_one_period():
    """Havana put its clocks back from 01:00 to 00:00 on 2020-11-01: November starts at the
    first midnight, and both 00:30s belong to that one period (regression: the second used
    to start a November of its own, an hour later, splitting the month's totals)."""
    tz = "America/Havana"
    first, second = at(2020, 11, 1, 0, 30, tz=tz, fold=0), at(2020, 11, 1, 0, 30, tz=tz, fold=1)
    assert second - first == H
    p1, p2 = period_at(first, "monthly", tz), period_at(second, "monthly", tz)
    assert p1 == p2
    assert local(p1.start, tz).isoformat() == "2020-11-01T00:00:00-04:00"
    assert period_at(p1.start - 1, "monthly", tz).end == p1.start


# --- weekly ------------------------------------------------------------------------------
def test_weekly_in_shanghai_is_an_iso_week_from_monday_midnight():
    wednesday = at(2026, 10, 14, 15, 30)
    p = period_at(wednesday, "weekly", SH)
    assert p == Period(at(2026, 10, 12), at(2026, 10, 19))
    assert local(p.start, SH).weekday() == 0
    assert p.end - p.start == 7 * DAY
    # Monday 00:00 opens a week; Sunday 23:59:59 is still the week before.
    assert period_at(at(2026, 10, 19), "weekly", SH).start == at(2026, 10, 19)
    assert period_at(at(2026, 10, 18, 23, 59, 59), "weekly", SH) == p


def test_weekly_across_a_month_and_a_year_boundary():
    p = period_at(at(2026, 12, 31, 8), "weekly", SH)  # a Thursday
    assert p == Period(at(2026, 12, 28), at(2027, 1, 4))


def test_weekly_in_berlin_across_both_dst_changes():
    spring = period_at(at(2026, 3, 29, 12, tz=BERLIN), "weekly", BERLIN)  # a Sunday
    assert local(spring.start, BERLIN).isoformat() == "2026-03-23T00:00:00+01:00"
    assert local(spring.end, BERLIN).isoformat() == "2026-03-30T00:00:00+02:00"
    assert spring.end - spring.start == 7 * DAY - H

    autumn = period_at(at(2026, 10, 25, 2, 30, tz=BERLIN, fold=1), "weekly", BERLIN)
    assert autumn == period_at(at(2026, 10, 25, 2, 30, tz=BERLIN, fold=0), "weekly", BERLIN)
    assert local(autumn.start, BERLIN).isoformat() == "2026-10-19T00:00:00+02:00"
    assert local(autumn.end, BERLIN).isoformat() == "2026-10-26T00:00:00+01:00"
    assert autumn.end - autumn.start == 7 * DAY + H


# --- none ---------------------------------------------------------------------------------
def test_period_none_never_resets():
    p = period_at(at(2026, 10, 15), "none", SH)
    assert p == Period(0.0, FOREVER)
    assert not p.resets
    assert p.contains(0.0) and p.contains(4e9)
    assert period_at(at(1999, 1, 1), "none", BERLIN) == p


def test_unknown_period_kind_is_refused():
    with pytest.raises(ValueError, match="unknown quota period 'daily'"):
        period_at(at(2026, 10, 15), "daily", SH)


# --- split --------------------------------------------------------------------------------
def test_split_across_a_month_boundary():
    start, end = at(2026, 10, 31, 23, 0), at(2026, 11, 1, 1, 30)
    oct_, nov = Period(at(2026, 10, 1), at(2026, 11, 1)), Period(at(2026, 11, 1), at(2026, 12, 1))
    assert split(start, end, "monthly", SH) == [
        (start, at(2026, 11, 1), oct_),
        (at(2026, 11, 1), end, nov),
    ]


def test_split_inside_one_period_across_several_and_empty():
    start = at(2026, 10, 3)
    assert split(start, start + H, "monthly", SH) == [
        (start, start + H, period_at(start, "monthly", SH))
    ]
    assert split(start, start, "monthly", SH) == []
    assert split(start, start - 1, "monthly", SH) == []
    assert split(start, at(2027, 2, 1), "none", SH) == [(start, at(2027, 2, 1), Period(0, FOREVER))]
    pieces = split(start, at(2027, 1, 10), "monthly", SH)
    assert [local(a, SH).month for a, _, _ in pieces] == [10, 11, 12, 1]
    assert pieces[-1][1] == at(2027, 1, 10)


def test_split_across_the_berlin_spring_change_weekly():
    start, end = at(2026, 3, 29, 22, tz=BERLIN), at(2026, 3, 30, 2, tz=BERLIN)
    (a0, b0, p0), (a1, b1, p1) = split(start, end, "weekly", BERLIN)
    assert (a0, b1) == (start, end) and b0 == a1 == p1.start == p0.end
    assert b0 - a0 == 2 * H and b1 - a1 == 2 * H


# --- iso -----------------------------------------------------------------------------------
def test_iso_in_the_site_zone():
    assert iso(at(2026, 11, 1), SH) == "2026-11-01T00:00:00+08:00"
    assert iso(at(2026, 7, 1, 9, 5, 7, tz=BERLIN) + 0.75, BERLIN) == "2026-07-01T09:05:07+02:00"
    assert iso(at(2026, 12, 1, tz=BERLIN), BERLIN) == "2026-12-01T00:00:00+01:00"
    assert iso(at(2026, 12, 1, tz=BERLIN), "UTC") == "2026-11-30T23:00:00+00:00"
    assert iso(FOREVER, SH) is None


# --- properties ----------------------------------------------------------------------------
ZONES = [
    "UTC", SH, BERLIN, "America/Havana", "America/Sao_Paulo", "Australia/Lord_Howe",
    "Pacific/Apia", "America/Santiago", "Asia/Kolkata",
]  # fmt: skip
instants = st.floats(at(1995, 1, 1, tz="UTC"), at(2040, 1, 1, tz="UTC"))


@settings(max_examples=300, deadline=None)
@given(t=instants, kind=st.sampled_from(["monthly", "weekly"]), tz=st.sampled_from(ZONES))
def test_periods_tile_time(t, kind, tz):
    """Each instant is in its period; the next period starts where it ends; each starts on a
    first of the month (or a Monday) with no earlier instant of that local date."""
    p = period_at(t, kind, tz)
    assert p.contains(t)
    assert period_at(p.end, kind, tz).start == p.end
    assert period_at(p.start - 0.001, kind, tz).end == p.start
    first = local(p.start, tz)
    assert first.day == 1 if kind == "monthly" else first.weekday() == 0
    assert local(p.start - 0.001, tz).date() < first.date()


@settings(max_examples=100, deadline=None)
@given(
    t=instants,
    length=st.floats(0, 120 * DAY),
    kind=st.sampled_from(["monthly", "weekly", "none"]),
    tz=st.sampled_from(ZONES),
)
def test_split_pieces_cover_the_interval_once(t, length, kind, tz):
    end = t + length
    pieces = split(t, end, kind, tz)
    if end == t:
        assert pieces == []
        return
    assert pieces[0][0] == t and pieces[-1][1] == end
    for (a, b, p), nxt in zip(pieces, pieces[1:] + [None], strict=True):
        assert a < b and p.contains(a) and b <= p.end
        if nxt is not None:
            assert nxt[0] == b == p.end
