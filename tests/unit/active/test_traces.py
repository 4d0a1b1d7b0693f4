"""The replay traces of ``captures/traces/``: present, reproducible, following the trace
convention, and named by marsad's own classifier as their app's call (while their
bit-inverted copies, the replay test's control, are not)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

from classifier.engine import classify_flows
from classifier.payloads import meter_config
from classifier.records import CALL_CATEGORIES, Category, Classification
from probe import read_capture
from probe.records import FlowRecord
from tests.conftest import ROOT

TRACES = ROOT / "captures" / "traces"
GENERATOR = TRACES / "make_traces.py"
MANIFEST = TRACES / "MANIFEST.json"
APPS = ("whatsapp", "messenger", "teams", "zoom", "signal", "telegram", "viber", "sip")
CLIENT, SERVER = "192.0.2.10", "198.51.100.20"
UP, DOWN = 0, 1

Packet = tuple[int, int, bytes]
"""(time in µs, direction, transport payload)."""


@cache
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_traces", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_traces", module)
    spec.loader.exec_module(module)
    return module


@cache
def manifest() -> dict[str, dict[str, object]]:
    doc: dict[str, dict[str, object]] = json.loads(MANIFEST.read_text())
    return doc


NAMES = sorted(json.loads(MANIFEST.read_text())) if MANIFEST.exists() else []


def read_trace(path: Path) -> tuple[str, tuple[str, int, str, int], list[Packet]]:
    """Transport, 5-tuple (client first) and payload-carrying packets of a trace pcap,
    read here with nothing but the pcap, Ethernet, IPv4, UDP and TCP layouts."""
    data = path.read_bytes()
    magic, _, _, _, _, _, linktype = struct.unpack_from("<IHHiIII", data)
    assert magic == 0xA1B2C3D4 and linktype == 1
    pos = 24
    tuples: set[tuple[str, frozenset[tuple[str, int]]]] = set()
    out: list[Packet] = []
    first_src: str | None = None
    while pos < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, pos)
        frame = data[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        assert incl == orig and frame[12:14] == b"\x08\x00"
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        proto = ip[9]
        src = ".".join(map(str, ip[12:16]))
        dst = ".".join(map(str, ip[16:20]))
        total = int.from_bytes(ip[2:4], "big")
        l4 = ip[ihl:total]
        sport, dport = struct.unpack_from(">HH", l4)
        if proto == 17:
            payload = l4[8:]
            name = "udp"
        else:
            assert proto == 6
            payload = l4[(l4[12] >> 4) * 4:]
            name = "tcp"
        first_src = first_src or src
        tuples.add((name, frozenset({(src, sport), (dst, dport)})))
        assert {src, dst} == {CLIENT, SERVER}
        if payload:
            out.append((sec * 1_000_000 + usec, UP if src == CLIENT else DOWN, payload))
    assert len(tuples) == 1, tuples
    ((transport, pair),) = tuples
    assert first_src == CLIENT
    client = next(e for e in pair if e[0] == CLIENT)
    server = next(e for e in pair if e[0] == SERVER)
    ends = (*client, *server)
    base = out[0][0]
    return transport, ends, [(t - base, d, p) for t, d, p in out]


def rebuild(name: str, packets: list[Packet], transport: str, ends: tuple[str, int, str, int],
            ) -> bytes:
    """A trace pcap of ``packets`` written by the generator's own pcap writer."""
    gen = generator()
    tr = gen.Trace(name, "", transport, ends[1], ends[3], "", "")
    for p in packets:
        tr.add(*p)
    data: bytes = gen.pcap_bytes(tr)
    return data


def classify(path: Path) -> list[tuple[FlowRecord, Classification]]:
    run = read_capture(path, meter_config())
    return list(zip(run.flows, classify_flows(run.flows), strict=True))


def test_every_app_has_a_trace_and_one_tcp_fallback() -> None:
    doc = manifest()
    for app in APPS:
        assert f"{app}.pcap" in doc, app
        assert doc[f"{app}.pcap"]["app"] == app
    tcp = [n for n, e in doc.items() if e["transport"] == "tcp"]
    assert tcp and all(n.endswith("-tcp.pcap") for n in tcp)


@pytest.mark.parametrize("name", NAMES)
def test_trace_matches_manifest(name: str) -> None:
    entry = manifest()[name]
    data = (TRACES / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert len(data) == entry["bytes"]
    transport, _, packets = read_trace(TRACES / name)
    assert transport == entry["transport"]
    assert len(packets) == entry["packets"]
    assert packets[-1][0] / 1e6 == pytest.approx(entry["duration_s"], abs=1e-6)


def test_generator_reproduces_every_trace_byte_for_byte(tmp_path: Path) -> None:
    built = generator().build(tmp_path)
    assert built == manifest()
    assert (tmp_path / "MANIFEST.json").read_bytes() == MANIFEST.read_bytes()
    for name in NAMES:
        assert (tmp_path / name).read_bytes() == (TRACES / name).read_bytes(), name


@pytest.mark.parametrize("name", NAMES)
def test_trace_convention(name: str) -> None:
    """One 5-tuple between the documentation addresses (checked by the reader), the
    client first, payloads unique per direction, 6-10 s, under 300 KB; and the reader
    here agrees with the generator's writer."""
    path = TRACES / name
    transport, ends, packets = read_trace(path)
    assert packets[0][1] == UP
    for d in (UP, DOWN):
        payloads = [p for _, dd, p in packets if dd == d]
        assert len(payloads) > 100
        assert len(set(payloads)) == len(payloads)
    assert 6.0 <= packets[-1][0] / 1e6 <= 10.0
    assert path.stat().st_size < 300_000
    assert rebuild(name, packets, transport, ends) == path.read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_classifier_names_the_trace_as_its_apps_call(name: str) -> None:
    entry = manifest()[name]
    pairs = classify(TRACES / name)
    assert len(pairs) == 1
    flow, c = pairs[0]
    assert c.app == entry["app"], c.reason
    assert c.category in CALL_CATEGORIES, (c.category, c.reason)
    if flow.proto == "udp":
        # the media itself: voice or video, not only its set-up
        assert c.category in (Category.VOICE, Category.VIDEO), (c.category, c.reason)


@pytest.mark.parametrize("name", NAMES)
def test_inverted_copy_is_not_named_as_the_app(name: str, tmp_path: Path) -> None:
    """The replay test's control: every payload bit inverted, same sizes and timing."""
    entry = manifest()[name]
    transport, ends, packets = read_trace(TRACES / name)
    inverted = [(t, d, bytes(b ^ 0xFF for b in p)) for t, d, p in packets]
    path = tmp_path / f"inverted-{name}"
    path.write_bytes(rebuild(name, inverted, transport, ends))
    pairs = classify(path)
    assert len(pairs) == 1
    assert pairs[0][1].app != entry["app"], pairs[0][1].reason
