"""Loading a replay trace: directions, ports, STUN messages, controls, and bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from probe.active.records import ReplayKind
from probe.active.trace import DOWN, UP, TraceError, invert, is_stun, load_trace
from tests.pcapbytes import pcap, udp_frame

from .tracebytes import CLIENT, SERVER, trace_packets, write_trace


def test_a_trace_keeps_each_packet_its_time_direction_and_bytes(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "whatsapp.pcap", seconds=1.0)
    t = load_trace(path)
    want = trace_packets(1.0)
    assert (t.name, t.app, t.transport) == ("whatsapp", "whatsapp", "udp")
    assert (t.client_port, t.server_port) == (CLIENT[1], SERVER[1])
    assert [(round(p.t_s, 6), p.direction, p.payload) for p in t.packets] == \
        [(round(w[0], 6), w[1], w[2]) for w in want]
    assert t.stun(UP) == (0, 1) and t.stun(DOWN) == (0, 1)
    assert len(t.sha256) == 64 and t.ident == f"whatsapp@{t.sha256}"
    assert t.bytes_in() == sum(len(w[2]) for w in want)


def test_each_packet_is_found_by_its_bytes_in_either_control(tmp_path: Path) -> None:
    t = load_trace(write_trace(tmp_path / "x.pcap", seconds=1.0))
    for kind in ReplayKind:
        for d in (UP, DOWN):
            sent = t.payloads(d, kind)
            index = t.index(d, kind)
            assert len(index) == len(sent)
            assert all(index[p] == i for i, _, p in sent)
    inv = t.payloads(UP, ReplayKind.INVERTED)
    orig = t.payloads(UP, ReplayKind.ORIGINAL)
    assert all(a[2] == invert(b[2]) and len(a[2]) == len(b[2])
               for a, b in zip(inv, orig, strict=True))
    # Nothing of the inverted control is a STUN message any more.
    assert not any(is_stun(p) for _, _, p in inv)
    assert set(t.index(UP, ReplayKind.INVERTED)).isdisjoint(t.index(UP, ReplayKind.ORIGINAL))


def test_cutting_a_trace_keeps_its_first_seconds(tmp_path: Path) -> None:
    t = load_trace(write_trace(tmp_path / "x.pcap", seconds=3.0))
    c = t.cut(1.0)
    assert c.sha256 == t.sha256 and c.duration_s <= 1.0
    assert c.packets == tuple(p for p in t.packets if p.t_s <= 1.0)


def _write(path: Path, frames: list[tuple[float, bytes]]) -> Path:
    path.write_bytes(pcap(frames))
    return path


def test_bad_traces_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read"):
        load_trace(tmp_path / "missing.pcap")
    (tmp_path / "text.pcap").write_text("hello")
    with pytest.raises(TraceError, match="not a pcap"):
        load_trace(tmp_path / "text.pcap")
    c, s = CLIENT, SERVER
    two_flows = [(0.0, udp_frame(c[0], c[1], s[0], s[1], b"a")),
                 (0.1, udp_frame(c[0], c[1] + 1, s[0], s[1], b"b"))]
    with pytest.raises(TraceError, match="one flow"):
        load_trace(_write(tmp_path / "two.pcap", two_flows))
    repeated = [(0.0, udp_frame(c[0], c[1], s[0], s[1], b"same")),
                (0.1, udp_frame(c[0], c[1], s[0], s[1], b"same"))]
    with pytest.raises(TraceError, match="repeated up payloads"):
        load_trace(_write(tmp_path / "rep.pcap", repeated))
    with pytest.raises(TraceError, match="no packets"):
        load_trace(_write(tmp_path / "empty.pcap", []))
