"""Messenger and WhatsApp run their calls on Meta's one call stack: the same STUN message
types (0x0800-0x0805) and attributes, the same STUN servers and relays. Which app a call
is comes from the host's own signalling (Messenger's MQTT edges or its TURN realm;
WhatsApp's chat prologue or names), and reaches the peer-to-peer media through the local
socket that asked Meta's STUN server for its address."""

from __future__ import annotations

import struct
from pathlib import Path

from classifier.engine import classify_flows
from classifier.records import CALL_CATEGORIES
from probe import read_capture
from tests.pcapbytes import pcap, udp_frame

HOST, PEER, META = "192.168.1.10", "198.51.100.20", "157.240.1.50"
T0 = 1_700_000_000.0


def _dns_query(name: str) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + q + struct.pack(">HH", 1, 1)


def _stun(kind: int, i: int, attrs: bytes = b"") -> bytes:
    return struct.pack(">HHI", kind, len(attrs), 0x2112A442) + bytes([i]) * 12 + attrs


def _rtp(i: int) -> bytes:
    return struct.pack(">BBHII", 0x80, 96, i, 2880 * i, 0xCAFE) + bytes(120)


def _capture(tmp_path: Path, signalling: str) -> dict[tuple[int, str], tuple[str | None, str]]:
    pkts: list[tuple[float, bytes]] = [
        (T0, udp_frame(HOST, 53000, "192.168.1.1", 53, _dns_query(signalling)))]
    for i in range(4):  # WhatsApp-typed STUN to a Meta relay; a binding to Meta's server
        pkts.append((T0 + 1 + i, udp_frame(HOST, 41000, META, 3478, _stun(0x0801, i))))
        pkts.append((T0 + 1.05 + i, udp_frame(META, 3478, HOST, 41000, _stun(0x0802, i))))
        pkts.append((T0 + 1 + i, udp_frame(HOST, 42000, META, 3478, _stun(0x0001, i))))
        pkts.append((T0 + 1.05 + i, udp_frame(META, 3478, HOST, 42000, _stun(0x0101, i))))
    for i in range(300):  # then media straight to the peer from the same socket
        pkts.append((T0 + 5 + i * 0.06, udp_frame(HOST, 42000, PEER, 50000, _rtp(i))))
        pkts.append((T0 + 5.01 + i * 0.06, udp_frame(PEER, 50000, HOST, 42000, _rtp(i))))
    path = tmp_path / "meta.pcap"
    path.write_bytes(pcap(sorted(pkts, key=lambda p: p[0])))
    flows = read_capture(path, workers=1).flows
    out = {}
    for f, c in zip(flows, classify_flows(flows), strict=True):
        out[(f.orig_p, f.resp_h)] = (c.app, str(c.category))
    return out


def test_a_messenger_host_makes_meta_call_flows_messenger(tmp_path: Path) -> None:
    got = _capture(tmp_path, "edge-mqtt.facebook.com")
    assert got[(41000, META)][0] == "messenger"
    assert got[(42000, META)][0] == "messenger"
    app, cat = got[(42000, PEER)]
    assert app == "messenger" and cat in CALL_CATEGORIES


def test_a_whatsapp_host_keeps_them_whatsapp(tmp_path: Path) -> None:
    got = _capture(tmp_path, "g.whatsapp.net")
    assert got[(41000, META)][0] == "whatsapp"
    assert got[(42000, META)][0] == "whatsapp"
    assert got[(42000, PEER)][0] == "whatsapp"
