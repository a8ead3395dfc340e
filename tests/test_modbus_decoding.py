"""Decoding, the request planner and profile files: plain data, no sockets."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from energyd.config.loader import parse_config
from energyd.config.profiles import (
    RegisterSpec,
    builtin_names,
    device_profile,
    load_profile,
)
from energyd.drivers.modbus.decode import ORDERS, TYPES, decode, encode
from energyd.drivers.modbus.planner import Block, plan
from energyd.errors import ConfigError
from energyd.model import QUANTITIES

BUILTINS = ["eastron_sdm630", "schneider_pm5xxx", "janitza_umg96", "siemens_pac3200",
            "carlo_gavazzi_em24", "acrel_adl400"]


# --- decoding --------------------------------------------------------------------------------


def test_orders_of_a_known_float() -> None:
    # 230.5 as IEEE 754 float32 is 0x43 0x66 0x80 0x00
    assert struct.pack(">f", 230.5) == bytes([0x43, 0x66, 0x80, 0x00])
    assert decode([0x4366, 0x8000], "float32", "ABCD") == 230.5
    assert decode([0x8000, 0x4366], "float32", "CDAB") == 230.5
    assert decode([0x6643, 0x0080], "float32", "BADC") == 230.5
    assert decode([0x0080, 0x6643], "float32", "DCBA") == 230.5


def test_em24_low_word_first_int32() -> None:
    # 2301 (230.1 V x10) = 0x000008FD; the EM24 sends the low word first
    assert decode([0x08FD, 0x0000], "int32", "CDAB", 0.1) == 230.1
    assert decode([0xFFFF, 0xFFFF], "int32", "CDAB") == -1.0


@pytest.mark.parametrize("type_", sorted(TYPES))
@pytest.mark.parametrize("order", ORDERS)
def test_encode_decode_round_trip(type_: str, order: str) -> None:
    signed = not type_.startswith("u")
    for value in (0.0, 1.0, 123.0, -7.0 if signed else 7.0, 30000.0):
        words = encode(value, type_, order)
        assert all(0 <= w <= 0xFFFF for w in words)
        assert decode(words, type_, order) == value
    # and the order matters for every multi-register type (or bytes within one register)
    words = encode(258.0, type_, "ABCD")
    if order != "ABCD" and not (TYPES[type_][0] == 1 and order == "CDAB"):
        assert decode(words, type_, order) != 258.0


def test_scale_offset_and_int64_wh() -> None:
    words = encode(1234567.891, "int64", "ABCD", scale=0.001)  # kWh held as Wh
    assert decode(words, "int64", "ABCD", scale=0.001) == 1234567.891
    assert decode(encode(20.5, "int16", "ABCD", 0.5, -10), "int16", "ABCD", 0.5, -10) == 20.5


def test_integer_encode_clamps_instead_of_wrapping() -> None:
    assert decode(encode(70000, "uint16"), "uint16") == 65535
    assert decode(encode(-5, "uint32"), "uint32") == 0


# --- planner ---------------------------------------------------------------------------------


def spec(q: str, address: int, type_: str = "float32", function: int = 4) -> RegisterSpec:
    return RegisterSpec(q, function, address, type_)


def test_planner_merges_within_gap_and_splits_beyond() -> None:
    specs = [spec("voltage_l1_v", 0), spec("voltage_l2_v", 2), spec("voltage_l3_v", 4),
             spec("active_power_kw", 52), spec("frequency_hz", 70)]
    blocks = plan(specs, max_gap=10)
    assert [(b.address, b.count) for b in blocks] == [(0, 6), (52, 2), (70, 2)]
    blocks = plan(specs, max_gap=20)
    assert [(b.address, b.count) for b in blocks] == [(0, 6), (52, 20)]


def test_planner_respects_max_registers_and_never_splits_a_value() -> None:
    specs = [spec(q, i * 2) for i, q in enumerate(
        ["voltage_l1_v", "voltage_l2_v", "voltage_l3_v", "current_l1_a", "current_l2_a"])]
    blocks = plan(specs, max_registers=5)
    assert [(b.address, b.count) for b in blocks] == [(0, 4), (4, 4), (8, 2)]
    assert all(b.count <= 5 for b in blocks)
    big = [spec(f"q{i}", i * 4, "float64") for i in range(100)]  # 400 registers
    assert all(b.count <= 125 for b in plan(big))
    assert sum(len(b.specs) for b in plan(big)) == 100


def test_planner_separates_function_codes_single_and_isolated() -> None:
    specs = [spec("voltage_l1_v", 0, function=3), spec("voltage_l2_v", 2, function=4),
             spec("voltage_l3_v", 4, function=4)]
    assert [(b.function, b.address, b.count) for b in plan(specs)] == [(3, 0, 2), (4, 2, 4)]
    assert len(plan(specs, single=True)) == 3
    blocks = plan(specs, isolated={(4, 2)})
    assert [(b.function, b.address, b.count) for b in blocks] == [(3, 0, 2), (4, 2, 2),
                                                                  (4, 4, 2)]


def test_block_decodes_each_value_at_its_offset() -> None:
    specs = (spec("voltage_l1_v", 10), spec("active_power_kw", 14))
    block = Block(4, 10, 6, specs)
    words = encode(231.0, "float32") + [0, 0] + encode(12.5, "float32")
    assert block.decode(words) == {"voltage_l1_v": 231.0, "active_power_kw": 12.5}


def test_four_quadrant_power_factor() -> None:
    s = RegisterSpec("power_factor", 3, 0, "float32", transform="four_quadrant_pf")
    block = Block(3, 0, 2, (s,))
    assert block.decode(encode(0.9, "float32")) == {"power_factor": pytest.approx(0.9)}
    assert block.decode(encode(1.2, "float32")) == {"power_factor": pytest.approx(0.8)}
    assert block.decode(encode(-1.1, "float32")) == {"power_factor": pytest.approx(-0.9)}


# --- profiles --------------------------------------------------------------------------------


def test_builtin_profiles_are_complete_data() -> None:
    assert set(BUILTINS) <= set(builtin_names())
    for name in BUILTINS:
        p = load_profile(name)
        assert p.source and p.base in (0, 1) and p.function in (1, 2, 3, 4)
        assert all(s.quantity in QUANTITIES for s in p.registers)
        assert "active_energy_import_kwh" in {s.quantity for s in p.registers}
        # no two values of one function code overlap
        for a in p.registers:
            for b in p.registers:
                if a is not b and a.function == b.function:
                    assert a.address + a.count <= b.address or b.address + b.count <= a.address


def test_one_based_profile_is_shifted_to_wire_addresses() -> None:
    p = load_profile("schneider_pm5xxx")
    assert p.base == 1
    assert p.register("current_l1_a").address == 2999  # "register 3000"
    assert p.register("active_energy_import_kwh").type == "int64"
    assert load_profile("eastron_sdm630").register("frequency_hz").address == 70


def test_user_profile_file_by_relative_path(tmp_path: Path) -> None:
    (tmp_path / "meters").mkdir()
    (tmp_path / "meters" / "dtsu666.yaml").write_text(
        "source: Chint DTSU666 manual\nfunction: 3\n"
        "registers:\n  voltage_l1_v: {address: 0x2006, scale: 0.1}\n"
        "  active_energy_import_kwh: {address: 0x101E}\n", encoding="utf-8")
    config = parse_config(
        "devices:\n  - name: m1\n    driver: modbus\n    profile: meters/dtsu666.yaml\n"
        "    modbus: {host: 127.0.0.1}\n", "plant.yaml", base_dir=tmp_path)
    device = config.devices[0]
    assert Path(device.profile).is_absolute()
    profile = device_profile(device)
    assert profile.name == "dtsu666"
    assert profile.register("voltage_l1_v").address == 0x2006


def test_unknown_profile_names_the_builtins() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config("devices:\n  - name: m1\n    driver: modbus\n    profile: sdm630\n"
                     "    modbus: {host: 127.0.0.1}\n", "plant.yaml")
    text = str(exc.value)
    assert text.startswith("plant.yaml:4: devices[0].profile:")
    assert "'sdm630'" in text
    for name in BUILTINS:
        assert name in text


def test_broken_profile_file_is_refused_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "source: somewhere\nregisters:\n  voltage_l1_v: {address: 0}\n"
        "  volts_l2: {address: 2}\n  current_l1_a: {adress: 6}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_profile(str(tmp_path / "bad.yaml"))
    lines = str(exc.value).splitlines()
    assert any(":4: registers.volts_l2" in ln or "unknown quantity 'volts_l2'" in ln
               for ln in lines)
    assert any(":5: registers.current_l1_a.adress: unknown key" in ln for ln in lines)
    with pytest.raises(ConfigError) as exc2:
        parse_config("devices:\n  - name: m1\n    driver: modbus\n    profile: bad.yaml\n"
                     "    modbus: {host: 127.0.0.1}\n", "plant.yaml", base_dir=tmp_path)
    assert "plant.yaml:4: devices[0].profile: profile file has errors" in str(exc2.value)


def test_inline_registers_add_to_a_profile() -> None:
    config = parse_config(
        "devices:\n  - name: m1\n    driver: modbus\n    profile: eastron_sdm630\n"
        "    registers:\n      - {quantity: voltage_l12_v, address: 200, function: 4}\n"
        "      - {quantity: frequency_hz, address: 900, function: 4}\n"
        "    modbus: {host: 127.0.0.1}\n"
        "  - name: g1\n    driver: modbus\n"
        "    registers:\n      - {quantity: active_power_kw, address: 10, type: int32,"
        " order: CDAB, scale: 0.01}\n"
        "    modbus: {host: 127.0.0.1}\n", "plant.yaml")
    p = device_profile(config.devices[0])
    assert p.register("voltage_l12_v").address == 200
    assert p.register("frequency_hz").address == 900  # inline wins
    assert len(p.registers) == len(load_profile("eastron_sdm630").registers) + 1
    g = device_profile(config.devices[1])
    assert g.name == "generic"
    assert g.register("active_power_kw").order == "CDAB"


@pytest.mark.parametrize("order", ORDERS)
def test_block_decoding_matches_value_by_value_decoding(order: str) -> None:
    specs = []
    words: list[int] = []
    values = {"int16": -1234, "uint16": 65000, "int32": -123456, "uint32": 4000000000,
              "int64": -(2**40) - 3, "uint64": 2**50 + 7, "float32": 229.87654,
              "float64": 123456.789012345}
    for i, (type_, value) in enumerate(values.items()):
        s = RegisterSpec(sorted(QUANTITIES)[i], 3, 100 + len(words), type_, order,
                         scale=0.1 if i % 2 else 1.0, offset=5.0 if i == 3 else 0.0)
        specs.append(s)
        words += encode(value * (1 / s.scale if s.scale != 1 else 1) + 0, type_, order)
    (block,) = plan(specs, max_gap=0)
    got = block.decode(words)
    for s in specs:
        start = s.address - block.address
        assert got[s.quantity] == decode(words[start:start + s.count], s.type, s.order,
                                         s.scale, s.offset), s


def test_planner_reads_a_readable_range_whole_and_never_across_its_edge() -> None:
    specs = [spec("voltage_l1_v", 0), spec("voltage_l2_v", 2), spec("active_power_kw", 52),
             spec("frequency_hz", 70), spec("active_energy_import_kwh", 130),
             spec("active_energy_export_kwh", 134), spec("current_l1_a", 300),
             spec("current_l2_a", 304)]
    readable = {4: ((0, 75), (76, 200))}
    blocks = plan(specs, readable=readable)
    # 0..75 in one read whatever the gaps; 130..135 is in the next range, so not merged with
    # 70 although they are as close as the gap allows elsewhere; 300.. outside: the gap rule
    assert [(b.address, b.count) for b in blocks] == [(0, 72), (130, 6), (300, 6)]
    # the protocol's limit still holds inside a range, with the fewest reads it allows
    wide = [spec(f"q{i}", i * 10) for i in range(20)]  # values at 0, 10, .. 190
    blocks = plan(wide, readable={4: ((0, 199),)})
    assert [(b.address, b.count) for b in blocks] == [(0, 122), (130, 62)]
    # isolated values and single-register devices still read alone
    assert len(plan(specs[:4], readable=readable, single=True)) == 4
    assert [(b.address, b.count) for b in plan(specs[:4], readable=readable,
                                                isolated={(4, 52)})] == [
        (0, 4), (52, 2), (70, 2)]


def test_builtin_profiles_state_ranges_the_planner_reads_whole() -> None:
    sdm = load_profile("eastron_sdm630")
    assert sdm.readable == {4: ((0, 75),)}
    assert [(b.address, b.count) for b in plan(sdm.registers, readable=sdm.readable)] == [
        (0, 76)]
    umg = load_profile("janitza_umg96")
    assert [(b.address, b.count) for b in plan(umg.registers, readable=umg.readable)] == [
        (19000, 78)]


def test_readable_ranges_are_checked_with_their_line(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(
        "source: a manual\nbase: 1\nregisters:\n  voltage_l1_v: {address: 1}\n"
        "readable:\n  - {from: 1, to: 40}\n  - {from: 30, to: 50}\n  - {from: 9, to: 3}\n"
        "  - {from: 60, upto: 70}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_profile(str(tmp_path / "m.yaml"))
    text = str(exc.value)
    assert ":9: readable[3].upto: unknown key" in text, text
    (tmp_path / "m.yaml").write_text(
        "source: a manual\nbase: 1\nregisters:\n  voltage_l1_v: {address: 1}\n"
        "readable:\n  - {from: 1, to: 40}\n  - {from: 30, to: 50}\n  - {from: 9, to: 3}\n",
        encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_profile(str(tmp_path / "m.yaml"))
    text = str(exc.value)
    assert "readable range from 9 to 3 with base 1 is empty" in text, text
    assert "overlap at wire address 29" in text, text
    (tmp_path / "m.yaml").write_text(
        "source: a manual\nbase: 1\nfunction: 4\nregisters:\n  voltage_l1_v: {address: 1}\n"
        "readable:\n  - {from: 1, to: 40}\n  - {from: 100, to: 120, function: 3}\n",
        encoding="utf-8")
    assert load_profile(str(tmp_path / "m.yaml")).readable == {4: ((0, 39),),
                                                               3: ((99, 119),)}
