"""Scope 2 by the hour, the pure rules: constructed data with answers worked out by hand, and
properties over random data (hourly-matched <= annual-matched, a certificate never counted
twice nor beyond its volume, never outside its hour or market, self-consumption never
negative)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from energyd.accounting.scope2 import (
    HOUR_MS,
    GranularCertificate,
    Instrument,
    Load,
    cfe,
    cfe_total,
    gap_by_hour_of_day,
    interval_problem,
    market_tco2,
    match_annual,
    match_hourly,
    self_consumption,
)

DAY = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)
YEAR = (int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000),
        int(datetime(2027, 1, 1, tzinfo=UTC).timestamp() * 1000))


def h(n: int) -> int:
    return DAY + n * HOUR_MS


def cert(cid: str, hour: int, mwh: float, market: str = "CN", minutes: int = 60,
         offset: int = 0) -> GranularCertificate:
    start = h(hour) + offset * 60_000
    return GranularCertificate(cid, start, start + minutes * 60_000, mwh * 1e6, market,
                               device="pv-roof", technology="solar")


def as_annual(c: GranularCertificate) -> Instrument:
    return Instrument(c.id, c.mwh, c.market, *YEAR, kind="granular")


# --- a PV day: the two modes differ by an amount worked out by hand ---------------------------

PV = {9: 0.5, 10: 1.5, 11: 2.0, 12: 2.5, 13: 2.0, 14: 1.5, 15: 0.5}  # MWh produced per hour


def test_a_pv_day_annual_and_hourly_matching_differ_by_the_computed_amount():
    load = [Load("incomer", h(i), 1.0) for i in range(24)]  # 1 MWh every hour, 24 MWh
    certs = [cert(f"pv-{i}", i, mwh) for i, mwh in PV.items()]  # 10.5 MWh
    hourly = match_hourly(load, certs, "CN")
    annual = match_annual(load, [as_annual(c) for c in certs], "CN")
    # hourly: min(load, production) per hour = 0.5 + 1 x 5 + 0.5
    assert hourly.total == pytest.approx(6.0)
    # annual: the whole volume, anywhere in its vintage
    assert annual.total == pytest.approx(10.5)
    assert annual.total - hourly.total == pytest.approx(4.5)
    # what each hour's certificates hold beyond its load is excess, not banked
    assert hourly.unused == pytest.approx({"pv-10": 0.5, "pv-11": 1.0, "pv-12": 1.5,
                                           "pv-13": 1.0, "pv-14": 0.5})
    residual = 0.6
    t_hourly = sum(market_tco2(ld.mwh, hourly.covered(ld.device, ld.hour), residual)
                   for ld in load)
    t_annual = sum(market_tco2(ld.mwh, annual.covered(ld.device, ld.hour), residual)
                   for ld in load)
    assert t_hourly == pytest.approx(18.0 * 0.6)
    assert t_annual == pytest.approx(13.5 * 0.6)
    gap = gap_by_hour_of_day(annual.covered_by_hour(), hourly.covered_by_hour(),
                             ZoneInfo("UTC"))
    # annual covers hours 0..8 whole and 9 by 1.0 where hourly has 0.5: 9 + 0.5 uncovered
    # hourly; hourly covers 5 MWh annual left uncovered (10:30 to 15:00): net 9.5 - 5 = 4.5
    assert sum(g["gap_mwh"] for g in gap) == pytest.approx(9.5)
    assert sum(g["annual_mwh"] - g["hourly_mwh"] for g in gap) == pytest.approx(4.5)
    # annual matching took the volume in time order: hours 0..9 and half of 10
    assert [g["annual_mwh"] for g in gap[:11]] == pytest.approx([1.0] * 10 + [0.5])
    assert gap[9]["gap_mwh"] == pytest.approx(0.5)  # annual 1.0, hourly 0.5
    assert gap[12]["gap_mwh"] == 0.0  # hourly covers it, annual had nothing left
    assert gap[12]["hourly_mwh"] == pytest.approx(1.0)


def test_the_gap_is_counted_by_local_hour_of_day():
    tz = ZoneInfo("Asia/Shanghai")  # UTC+8: UTC 05:00 is 13:00 local
    gap = gap_by_hour_of_day({h(5): 2.0}, {h(5): 0.5}, tz)
    assert gap[13] == {"hour_of_day": 13, "annual_mwh": 2.0, "hourly_mwh": 0.5,
                       "gap_mwh": 1.5}
    assert sum(g["gap_mwh"] for g in gap) == 1.5


# --- a granular certificate covers its own hour and market only -------------------------------


def test_a_certificate_for_13h_never_covers_14h():
    load = [Load("incomer", h(14), 1.0)]
    got = match_hourly(load, [cert("c13", 13, 1.0)], "CN")
    assert got.allocations == {}
    assert got.total == 0.0
    assert got.unused == {"c13": 1.0}
    both = [Load("incomer", h(13), 0.25), Load("incomer", h(14), 1.0)]
    got = match_hourly(both, [cert("c13", 13, 1.0)], "CN")
    assert got.allocations == {("incomer", h(13)): [("c13", 0.25)]}
    assert got.unused == {"c13": 0.75}


def test_a_quarter_hour_certificate_covers_its_hour():
    got = match_hourly([Load("incomer", h(13), 1.0)],
                       [cert("q", 13, 0.2, minutes=15, offset=45)], "CN")
    assert got.allocations == {("incomer", h(13)): [("q", 0.2)]}


def test_a_certificate_of_another_market_covers_nothing():
    load = [Load("incomer", h(13), 1.0)]
    got = match_hourly(load, [cert("jp", 13, 1.0, market="JP")], "CN")
    assert got.allocations == {}
    assert "market JP" in got.refused["jp"]
    annual = match_annual(load, [as_annual(cert("jp", 13, 1.0, market="JP"))], "CN")
    assert annual.allocations == {} and "jp" in annual.refused


def test_an_interval_longer_than_an_hour_or_empty_is_no_granular_certificate():
    assert interval_problem(h(13), h(14) + 1) is not None
    assert interval_problem(h(13), h(13)) is not None
    assert interval_problem(h(13), h(14)) is None
    assert interval_problem(h(13) + 1_800_000, h(14) + 1_800_000) is None


def test_a_certificate_across_an_hours_start_covers_each_hour_with_its_share_only():
    """13:00-14:00 in India is 07:30-08:30 UTC: a quarter of it in one hour and three
    quarters in the next when it starts at :15, never the whole in either."""
    c = cert("x", 13, 1.0, offset=15)
    assert c.parts() == [(h(13), pytest.approx(0.75)), (h(14), pytest.approx(0.25))]
    both = match_hourly([Load("incomer", h(13), 1.0), Load("incomer", h(14), 1.0)], [c], "CN")
    assert both.allocations == {("incomer", h(13)): [("x", 0.75)],
                                ("incomer", h(14)): [("x", 0.25)]}
    assert both.used == {"x": 1.0} and both.unused == {} and both.refused == {}
    # the 14:00 share cannot serve 13:00's load: no banking within a certificate either
    only_13 = match_hourly([Load("incomer", h(13), 1.0)], [c], "CN")
    assert only_13.allocations == {("incomer", h(13)): [("x", 0.75)]}
    assert only_13.used == {"x": 0.75} and only_13.unused == {"x": 0.25}
    # a quarter-hour certificate inside one hour is not split
    assert cert("q", 13, 0.2, minutes=15, offset=30).parts() == [(h(13), pytest.approx(0.2))]


def test_the_same_certificate_twice_is_refused():
    with pytest.raises(ValueError, match="counted once"):
        match_hourly([], [cert("a", 13, 1.0), cert("a", 14, 1.0)], "CN")
    with pytest.raises(ValueError, match="counted once"):
        match_annual([], [as_annual(cert("a", 13, 1.0))] * 2, "CN")


def test_several_devices_in_one_hour_share_its_certificates_devices_by_name():
    load = [Load("b-incomer", h(13), 0.7), Load("a-incomer", h(13), 0.5)]
    got = match_hourly(load, [cert("c", 13, 1.0)], "CN")
    assert got.allocations == {("a-incomer", h(13)): [("c", 0.5)],
                               ("b-incomer", h(13)): [("c", 0.5)]}
    assert got.used == {"c": 1.0} and got.unused == {}


def test_annual_instruments_keep_their_window_devices_and_what_was_used_before():
    load = [Load("incomer", h(i), 1.0) for i in range(4)] + [Load("other", h(0), 1.0)]
    ins = [Instrument("gec", 2.5, "CN", h(1), h(10), devices=("incomer",))]
    got = match_annual(load, ins, "CN", used_before={"gec": 1.0})
    # 1.5 MWh left, from hour 1 on, incomer only
    assert got.allocations == {("incomer", h(1)): [("gec", 1.0)],
                               ("incomer", h(2)): [("gec", 0.5)]}
    assert got.used == {"gec": 1.5} and got.unused == {}


def test_residual_without_a_factor_is_null_not_zero():
    assert market_tco2(1.0, 0.25, None) is None
    assert market_tco2(1.0, 0.25, 0.5) == 0.375
    assert market_tco2(1.0, 2.0, 0.5) == 0.0


# --- on-site generation -----------------------------------------------------------------------


def test_self_consumption_is_generation_minus_export_per_hour():
    gen = {h(10): 0.8, h(11): 1.2, h(12): 0.3, h(13): 0.5}
    exp = {h(10): 0.1, h(11): 0.7, h(12): 0.5}  # hour 12: more export than generation
    got = {o.hour: o for o in self_consumption(gen, exp)}
    assert got[h(10)].self_consumed_mwh == pytest.approx(0.7)
    assert got[h(11)].self_consumed_mwh == pytest.approx(0.5)
    assert got[h(12)].self_consumed_mwh == 0.0
    assert got[h(12)].export_above_generation_mwh == pytest.approx(0.2)
    assert got[h(12)].export_mwh == 0.5  # listed whole, not netted off
    assert got[h(13)].self_consumed_mwh is None and got[h(13)].export_mwh is None
    no_export_meter = {o.hour: o for o in self_consumption(gen, None)}
    assert no_export_meter[h(13)].self_consumed_mwh == 0.5


# --- CFE% by hand for three hours -------------------------------------------------------------


def test_cfe_by_hand_for_three_hours():
    purchased = {h(12): 2.0, h(13): 1.0, h(14): 3.0}
    self_consumed = {h(12): 1.0, h(13): 0.0, h(14): 0.0}
    matched = {h(12): 0.5, h(13): 1.0, h(14): 0.0}
    share = {h(12): 0.4, h(13): 0.3, h(14): 0.2}
    got = {c.hour: c for c in cfe(purchased, self_consumed, matched, share)}
    # 12:00 load 3; clean contracted 1 + 0.5 = 1.5; grid 0.4 x 1.5 = 0.6; (1.5+0.6)/3 = 0.7
    assert got[h(12)].load_mwh == 3.0
    assert got[h(12)].clean_contracted_mwh == 1.5
    assert got[h(12)].grid_clean_mwh == pytest.approx(0.6)
    assert got[h(12)].cfe == pytest.approx(0.7)
    # 13:00 load 1, all matched: 1.0 whatever the grid
    assert got[h(13)].cfe == pytest.approx(1.0)
    # 14:00 load 3, grid only: 0.2
    assert got[h(14)].cfe == pytest.approx(0.2)
    # the three hours: (2.1 + 1.0 + 0.6) / 7
    assert cfe_total(got.values()) == pytest.approx(3.7 / 7)
    without = {c.hour: c for c in cfe(purchased, self_consumed, matched)}
    assert without[h(12)].cfe == pytest.approx(0.5) and without[h(12)].grid_clean_mwh is None


def test_matched_clean_energy_is_capped_at_the_load():
    got = cfe({h(1): 1.0}, {h(1): 0.5}, {h(1): 5.0}, {h(1): 0.5})[0]
    assert got.clean_contracted_mwh == 1.5 and got.cfe == 1.0
    assert cfe({h(2): 0.0}, {}, {}, None)[0].cfe is None


def test_a_grid_share_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="within 0..1"):
        cfe({h(1): 1.0}, {}, {}, {h(1): 1.5})


# --- properties -------------------------------------------------------------------------------

DEVICES = ["a", "b", "c"]
loads = st.lists(st.tuples(st.sampled_from(DEVICES), st.integers(0, 47),
                           st.floats(0, 5, allow_nan=False)), max_size=60)
certs = st.lists(st.tuples(st.integers(0, 47), st.integers(1, 60), st.integers(0, 59),
                           st.floats(0.001, 5, allow_nan=False), st.sampled_from(["CN", "JP"])),
                 max_size=40)


def _data(ls, cs):
    load = [Load(d, h(i), m) for d, i, m in ls]
    gcs = []
    for n, (i, minutes, offset, mwh, market) in enumerate(cs):
        offset = min(offset, 60 - minutes)
        gcs.append(cert(f"g{n}", i, mwh, market, minutes, offset))
    return load, gcs


@settings(max_examples=150, deadline=None)
@given(loads, certs)
def test_properties_of_the_two_matchings(ls, cs):
    load, gcs = _data(ls, cs)
    hourly = match_hourly(load, gcs, "CN")
    annual = match_annual(load, [as_annual(c) for c in gcs], "CN")
    assert hourly.total <= annual.total + 1e-6
    per_cert: dict[str, float] = {}
    by_id = {c.id: c for c in gcs}
    load_at: dict[tuple[str, int], float] = {}
    for ld in load:
        load_at[(ld.device, ld.hour)] = load_at.get((ld.device, ld.hour), 0.0) + ld.mwh
    for (device, hour), got in hourly.allocations.items():
        assert sum(m for _, m in got) <= load_at[(device, hour)] + 1e-6
        for cid, m in got:
            c = by_id[cid]
            assert c.hour == hour and c.market == "CN"  # its own hour, its own market
            per_cert[cid] = per_cert.get(cid, 0.0) + m
    for c in gcs:  # never beyond its volume, and every MWh accounted for
        assert per_cert.get(c.id, 0.0) <= c.mwh + 1e-6
        if c.market == "CN":
            assert hourly.used[c.id] + hourly.unused.get(c.id, 0.0) == pytest.approx(c.mwh)
        else:
            assert c.id in hourly.refused and c.id not in hourly.used
    for (device, hour), got in annual.allocations.items():
        assert sum(m for _, m in got) <= load_at[(device, hour)] + 1e-6
    # the gap is what annual covers beyond hourly, hour by hour, never negative
    gap = gap_by_hour_of_day(annual.covered_by_hour(), hourly.covered_by_hour(),
                             ZoneInfo("UTC"))
    assert all(g["gap_mwh"] >= 0 for g in gap)
    assert sum(g["gap_mwh"] for g in gap) >= annual.total - hourly.total - 1e-5


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.integers(0, 47), st.floats(0, 10, allow_nan=False)),
       st.dictionaries(st.integers(0, 47), st.floats(0, 10, allow_nan=False)))
def test_self_consumption_never_negative_and_never_beyond_generation(gen, exp):
    got = self_consumption({h(k): v for k, v in gen.items()}, {h(k): v for k, v in exp.items()})
    for o in got:
        if o.self_consumed_mwh is None:
            assert o.export_mwh is None
            continue
        assert 0.0 <= o.self_consumed_mwh <= o.generation_mwh + 1e-9
        assert o.self_consumed_mwh == pytest.approx(max(o.generation_mwh - o.export_mwh, 0.0))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.integers(0, 23), st.tuples(
    st.floats(0, 5, allow_nan=False), st.floats(0, 5, allow_nan=False),
    st.floats(0, 5, allow_nan=False), st.floats(0, 1, allow_nan=False))))
def test_cfe_stays_within_zero_and_one(hours):
    got = cfe({h(k): v[0] for k, v in hours.items()}, {h(k): v[1] for k, v in hours.items()},
              {h(k): v[2] for k, v in hours.items()}, {h(k): v[3] for k, v in hours.items()})
    for c in got:
        assert c.cfe is None or -1e-9 <= c.cfe <= 1 + 1e-9
    total = cfe_total(got)
    assert total is None or -1e-9 <= total <= 1 + 1e-9


def test_a_site_known_by_country_and_grid_region_takes_either_but_no_other_region():
    load = [Load("incomer", h(13), 1.0)]
    markets = {"CN", "CN-East"}
    got = match_hourly(load, [cert("east", 13, 0.5, market="CN-East"),
                              cert("north", 13, 0.5, market="CN-North"),
                              cert("cn", 13, 0.25)], markets)
    assert got.covered("incomer", h(13)) == pytest.approx(0.75)
    assert set(got.refused) == {"north"} and "CN-North" in got.refused["north"]


@settings(max_examples=100, deadline=None)
@given(loads, certs, st.integers(1, 47))
def test_annual_matching_split_in_two_periods_equals_one_run(ls, cs, cut):
    """What a month's report computes with what earlier months took (`used_before`) is what
    one run over the whole vintage gives: no certificate is spent twice across periods."""
    load, gcs = _data(ls, cs)
    ins = [as_annual(c) for c in gcs]
    whole = match_annual(load, ins, "CN")
    first = match_annual([ld for ld in load if ld.hour < h(cut)], ins, "CN")
    second = match_annual([ld for ld in load if ld.hour >= h(cut)], ins, "CN", first.used)
    merged = {**first.allocations, **second.allocations}
    assert merged.keys() == whole.allocations.keys()
    for key, got in whole.allocations.items():
        assert [c for c, _ in merged[key]] == [c for c, _ in got]
        assert [m for _, m in merged[key]] == pytest.approx([m for _, m in got], abs=1e-6)
    for c in ins:
        assert first.used.get(c.id, 0) + second.used.get(c.id, 0) <= c.mwh + 1e-6


def test_a_certificate_limited_to_some_meters_covers_only_those():
    load = [Load("a-incomer", h(13), 1.0), Load("b-incomer", h(13), 1.0)]
    c = GranularCertificate("p", h(13), h(14), 1.5e6, "CN", backs="PPA-1",
                            devices=("b-incomer",))
    got = match_hourly(load, [c], "CN")
    assert got.allocations == {("b-incomer", h(13)): [("p", 1.0)]}
    assert got.unused == {"p": 0.5}
