"""Bytes the capture missed, read from the other side's acknowledgements (RFC 9293 §3.4):
what a one-sided tap or a capture that dropped packets leaves out, per direction."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP  # type: ignore[attr-defined]
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from probe import FlowRecord, MeterConfig, read_capture
from tests.pcapbytes import pcap

C, S = "10.0.0.1", "203.0.113.80"
ETHER = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
"""Addresses given: scapy would otherwise look the destination's up."""


def _seg(t: float, to_server: bool, flags: str, seq: int, ack: int = 0, data: bytes = b""
         ) -> tuple[float, bytes]:
    src, dst, sport, dport = (C, S, 40000, 443) if to_server else (S, C, 443, 40000)
    pkt = ETHER / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags,
                                               seq=seq % 2**32, ack=ack % 2**32)
    return t, bytes(pkt / Raw(data) if data else pkt)


def _exchange(isn_c: int = 1000, isn_s: int = 5000, replies: int = 4, size: int = 1000
              ) -> list[tuple[float, bytes]]:
    """A handshake, a 300-byte request, ``replies`` segments of ``size`` bytes each acked
    by the client, and both FINs."""
    c, s = isn_c + 1, isn_s + 1
    out = [_seg(0.0, True, "S", isn_c), _seg(0.01, False, "SA", isn_s, c),
           _seg(0.02, True, "A", c, s), _seg(0.03, True, "PA", c, s, b"q" * 300)]
    c += 300
    t = 0.04
    for _ in range(replies):
        out.append(_seg(t, False, "PA", s, c, b"r" * size))
        s += size
        out.append(_seg(t + 0.001, True, "A", c, s))
        t += 0.01
    out += [_seg(t, False, "FA", s, c), _seg(t + 0.001, True, "FA", c, s + 1),
            _seg(t + 0.002, False, "A", s + 1, c + 1)]
    return out


def _flow(packets: list[tuple[float, bytes]], tmp_path: Path) -> FlowRecord:
    path = tmp_path / "t.pcap"
    path.write_bytes(pcap(packets))
    flows = read_capture(path, MeterConfig()).flows
    assert len(flows) == 1
    return flows[0]  # type: ignore[no-any-return]


def test_a_whole_connection_misses_nothing(tmp_path: Path) -> None:
    f = _flow(_exchange(), tmp_path)
    assert (f.orig_bytes, f.resp_bytes) == (300, 4000)
    assert (f.orig_missed_bytes, f.resp_missed_bytes) == (0, 0)
    assert f.conn_dict()["resp_missed_bytes"] == 0


def test_a_reply_segment_the_capture_lost_is_missed(tmp_path: Path) -> None:
    pkts = _exchange()
    del pkts[6]  # the second reply segment; the client acknowledged it
    f = _flow(pkts, tmp_path)
    assert (f.orig_missed_bytes, f.resp_missed_bytes) == (0, 1000)


def test_the_count_starts_at_the_first_byte_seen(tmp_path: Path) -> None:
    # As Zeek counts: bytes before the first seen (lost with the first reply segment, or
    # sent before the capture began and acknowledged after) are not counted.
    pkts = _exchange()
    del pkts[4]
    assert _flow(pkts, tmp_path).resp_missed_bytes == 0
    del pkts[7]  # the third reply segment, acknowledged: that one is
    assert _flow(pkts, tmp_path).resp_missed_bytes == 1000


def test_a_tap_that_sees_only_the_clients_packets(tmp_path: Path) -> None:
    sent = [p for p in _exchange() if bytes(Ether(p[1])[IP].src, "ascii") == C.encode()]
    f = _flow(sent, tmp_path)
    assert f.resp_pkts == 0
    assert f.resp_missed_bytes == 4000  # every reply byte; the FIN is no payload
    assert f.orig_missed_bytes == 0


def test_a_tap_that_sees_only_the_servers_packets(tmp_path: Path) -> None:
    got = [p for p in _exchange() if bytes(Ether(p[1])[IP].src, "ascii") == S.encode()]
    f = _flow(got, tmp_path)
    assert (f.orig_h, f.resp_bytes) == (C, 4000)  # a SYN-ACK names the client originator
    assert f.orig_missed_bytes == 300  # the request, which the server acknowledged
    assert f.resp_missed_bytes == 0


@pytest.mark.parametrize("isn", [2**32 - 150, 2**32 - 1])
def test_sequence_numbers_that_wrap(tmp_path: Path, isn: int) -> None:
    pkts = _exchange(isn_c=isn, isn_s=isn - 1000)
    del pkts[8]
    f = _flow(pkts, tmp_path)
    assert (f.orig_missed_bytes, f.resp_missed_bytes) == (0, 1000)


def test_an_acknowledgement_that_went_back_counts_for_nothing(tmp_path: Path) -> None:
    pkts = _exchange()
    pkts.insert(9, _seg(0.061, True, "A", 1301, 5001))  # a reordered, older ACK
    f = _flow(pkts, tmp_path)
    assert (f.orig_missed_bytes, f.resp_missed_bytes) == (0, 0)


def test_udp_has_none(tmp_path: Path) -> None:
    from scapy.layers.inet import UDP  # type: ignore[attr-defined]
    pkts = [(0.0, bytes(ETHER / IP(src=C, dst=S) / UDP(sport=5, dport=6) / Raw(b"x")))]
    f = _flow(pkts, tmp_path)
    assert (f.orig_missed_bytes, f.resp_missed_bytes) == (0, 0)


def test_a_forged_reset_with_any_acknowledgement_counts_for_nothing(tmp_path: Path) -> None:
    pkts = _exchange()
    pkts.insert(9, _seg(0.061, True, "RA", 1301, 5001 + 2**30))  # another box's reset
    f = _flow(pkts, tmp_path)
    assert (f.orig_missed_bytes, f.resp_missed_bytes) == (0, 0)


def test_an_acknowledgement_that_jumped_counts_no_more_than_its_packets_carry(
        tmp_path: Path) -> None:
    # The capture lost a new connection's SYNs on the same ports: its first ACK jumps
    # ahead by a random amount; two packets of the client acknowledge at most 2 x 128 KiB.
    pkts = [_seg(0.0, True, "A", 1000, 5000), _seg(0.1, True, "A", 1000, 5000 + 2**30)]
    f = _flow(pkts, tmp_path)
    assert f.resp_missed_bytes <= 2 * 2 * 65535


def test_later_fragments_of_a_segment_carry_no_sequence_number(tmp_path: Path) -> None:
    # A reply segment split into IP fragments arriving last fragment first: the
    # fragments after the first carry no TCP header, so no sequence number to count from.
    pkts = _exchange(replies=2, size=1400)
    reply = Ether(pkts[4][1])
    frags = [bytes(ETHER / fr) for fr in
             __import__("scapy.layers.inet", fromlist=["fragment"]).fragment(reply[IP],
                                                                           fragsize=512)]
    pkts[4:5] = [(pkts[4][0] + i * 1e-4, fr) for i, fr in enumerate(reversed(frags))]
    f = _flow(pkts, tmp_path)
    assert (f.orig_missed_bytes, f.resp_missed_bytes) == (0, 0)
    assert f.resp_retrans == 0
