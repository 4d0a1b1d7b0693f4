"""Telephony protocols from their specifications: IAX2 (RFC 5456), Megaco/H.248 text
(RFC 3525), BFCP (RFC 8855), TeamSpeak 2/3; each recognised flow is call control."""

from __future__ import annotations

import struct
from pathlib import Path

from classifier.dpi.telephony import (
    IAX2_PORT,
    parse_bfcp,
    parse_iax2,
    parse_megaco,
    parse_teamspeak,
)
from classifier.engine import classify_flows
from classifier.records import Category
from probe import read_capture
from tests.pcapbytes import pcap, tcp_frame, udp_frame

A, B = "10.0.0.1", "10.0.0.2"
T0 = 1_700_000_000.0


def _iax_full(ftype: int, sub: int, oseq: int = 0, iseq: int = 0, ies: bytes = b"") -> bytes:
    return struct.pack(">HHIBBBB", 0x8000 | 5, 0, 1234, oseq, iseq, ftype, sub) + ies


NEW = _iax_full(6, 1, ies=b"\x0b\x02\x00\x02" + b"\x01\x04user")  # NEW: version 2, username


def test_iax2() -> None:
    assert parse_iax2(NEW, on_port=False) is not None
    assert parse_iax2(NEW[:-1], on_port=False) is None  # the IEs must fill the datagram
    voice = _iax_full(2, 4, oseq=3, iseq=2) + bytes(160)  # a voice full frame, ulaw
    assert parse_iax2(voice, on_port=True) is not None
    assert parse_iax2(voice, on_port=False) is None  # off 4569, only a call's opening
    assert parse_iax2(_iax_full(11, 1), on_port=True) is None  # no such frame type
    assert parse_iax2(b"\x00\x05" + NEW[2:], on_port=True) is None  # a mini frame alone


def test_megaco() -> None:
    assert parse_megaco(b"MEGACO/1 [10.0.0.1]:2944\r\nTransaction = 1 {") is not None
    assert parse_megaco(b"!/1 <mg1.example.net>\nP=1{C=-{AV=t/1}}") is not None
    tpkt = b"MEGACO/1 [10.0.0.1]:2945 T=1{}"
    assert parse_megaco(struct.pack(">BBH", 3, 0, 4 + len(tpkt)) + tpkt) is not None
    assert parse_megaco(b"MEGACO/1 hello") is None
    assert parse_megaco(b"!/x [1.2.3.4]") is None


def _bfcp(conf: int, prim: int = 1, body: bytes = b"", version: int = 1) -> bytes:
    return struct.pack(">BBHIHH", version << 5, prim, len(body) // 4, conf, 7, 9) + body


def test_bfcp() -> None:
    assert parse_bfcp([_bfcp(42), _bfcp(42, prim=3, body=bytes(8))], tcp=False) is not None
    assert parse_bfcp([_bfcp(42)], tcp=False) is None  # one message proves little
    assert parse_bfcp([_bfcp(42), _bfcp(43)], tcp=False) is None  # two conferences
    assert parse_bfcp([_bfcp(42), _bfcp(42, prim=18)], tcp=False) is None
    assert parse_bfcp([_bfcp(42) + b"\x00", _bfcp(42)], tcp=False) is None  # length off
    assert parse_bfcp([_bfcp(42) + _bfcp(42), _bfcp(42)], tcp=True) is not None


def test_teamspeak() -> None:
    init = b"TS3INIT1\x00\x65\x88" + bytes(10)
    assert parse_teamspeak(init, udp=True) is not None
    assert parse_teamspeak(init, udp=False) is None
    assert parse_teamspeak(b"\xf4\xbe\x03\x00" + bytes(176), udp=True) is not None
    assert parse_teamspeak(b"\xf4\xbe\x09\x00" + bytes(176), udp=True) is None


def _category(tmp_path: Path, frames: list[bytes]) -> tuple[str | None, str, str | None]:
    path = tmp_path / "t.pcap"
    path.write_bytes(pcap([(T0 + i * 0.1, f) for i, f in enumerate(frames)]))
    [c] = classify_flows(read_capture(path, workers=1).flows)
    return c.app, str(c.category), c.facts.protocol


def test_flows_are_call_control(tmp_path: Path) -> None:
    ack = _iax_full(6, 4, oseq=0, iseq=1)  # ACK
    assert _category(tmp_path, [udp_frame(A, 40000, B, IAX2_PORT, NEW),
                                udp_frame(B, IAX2_PORT, A, 40000, ack)]) == (
        None, Category.CALL_SETUP, "iax2")
    megaco = b"MEGACO/1 [10.0.0.1]:2944\r\nTransaction = 1 {}"
    assert _category(tmp_path, [udp_frame(A, 2944, B, 2944, megaco),
                                udp_frame(B, 2944, A, 2944, b"!/1 [10.0.0.2] P=1{}")]) == (
        None, Category.CALL_SETUP, "megaco")
    assert _category(tmp_path, [tcp_frame(A, 50000, B, 40000, _bfcp(5)),
                                tcp_frame(B, 40000, A, 50000, _bfcp(5, prim=2))]) == (
        None, Category.CALL_SETUP, "bfcp")
    assert _category(tmp_path, [udp_frame(A, 50001, B, 9987, b"TS3INIT1\x00\x65\x88"
                                          + bytes(21)),
                                udp_frame(B, 9987, A, 50001, b"\x00" * 30)]) == (
        None, Category.CALL_SETUP, "teamspeak")


def test_imo_call_packets(tmp_path: Path) -> None:
    """nDPI's IMO shapes, two in a flow: pings ``09 02`` with their ``09 03`` echoes."""
    pkts = []
    for i in range(3):
        body = bytes([0xDC + i, 0x9A, 0x02]) + bytes(5)
        pkts += [udp_frame(A, 49207, B, 57604, b"\x09\x02" + body),
                 udp_frame(B, 57604, A, 49207, b"\x09\x03" + body)]
    app, cat, proto = _category(tmp_path, pkts)
    assert (app, cat, proto) == ("imo", Category.CALL_SETUP, "imo")
    lone = [udp_frame(A, 49207, B, 57604, b"\x09\x02" + bytes(8)),
            udp_frame(B, 57604, A, 49207, bytes(30))]
    assert _category(tmp_path, lone)[0] is None
