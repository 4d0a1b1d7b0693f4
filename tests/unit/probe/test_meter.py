"""Flow metering: the key and orig/resp decision, timeouts, TCP reuse, the two-process path."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP  # type: ignore[attr-defined]
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from probe import FlowReader, FlowRecord, MeterConfig, read_capture
from tests.pcapbytes import pcap

ROOT = Path(__file__).resolve().parents[3]


def _udp(t: float, src: str, sport: int, dst: str, dport: int, payload: bytes = b"x" * 20
         ) -> tuple[float, bytes]:
    return t, bytes(Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) /
                    Raw(payload))


def _tcp(t: float, src: str, sport: int, dst: str, dport: int, flags: str, seq: int = 1000,
         payload: bytes = b"") -> tuple[float, bytes]:
    pkt = Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq)
    if payload:
        pkt = pkt / Raw(payload)
    return t, bytes(pkt)


def _flows(packets: list[tuple[float, bytes]], tmp_path: Path, **cfg: float) -> list[FlowRecord]:
    path = tmp_path / "t.pcap"
    path.write_bytes(pcap(packets))
    return read_capture(path, MeterConfig(**cfg)).flows  # type: ignore[arg-type]


@pytest.mark.parametrize("swap", [False, True])
def test_originator_is_first_sender_whatever_address_order(tmp_path: Path, swap: bool) -> None:
    a, b = ("10.0.0.1", "10.0.0.9") if not swap else ("10.0.0.9", "10.0.0.1")
    flows = _flows([_udp(1.0, a, 5000, b, 53), _udp(1.1, b, 53, a, 5000),
                    _udp(1.2, a, 5000, b, 53)], tmp_path)
    assert len(flows) == 1
    f = flows[0]
    assert (f.orig_h, f.orig_p, f.resp_h, f.resp_p) == (a, 5000, b, 53)
    assert (f.orig_pkts, f.resp_pkts) == (2, 1)
    assert f.orig_bytes == 40 and f.resp_bytes == 20
    assert f.orig_wire_bytes == 2 * 62


def test_syn_sender_is_originator_even_if_synack_seen_first(tmp_path: Path) -> None:
    flows = _flows([_tcp(1.0, "10.0.0.9", 443, "10.0.0.1", 40000, "SA"),
                    _tcp(1.1, "10.0.0.1", 40000, "10.0.0.9", 443, "A")], tmp_path)
    assert (flows[0].orig_h, flows[0].orig_p) == ("10.0.0.1", 40000)


def test_udp_idle_gap_splits_and_config_changes_it(tmp_path: Path) -> None:
    pkts = [_udp(1.0, "10.0.0.1", 5000, "10.0.0.2", 6000),
            _udp(200.0, "10.0.0.1", 5000, "10.0.0.2", 6000)]
    flows = _flows(pkts, tmp_path)
    assert [f.end_reason for f in flows] == ["idle", "eof"]
    assert len({f.uid for f in flows}) == 2
    assert len(_flows(pkts, tmp_path, udp_idle_s=300.0)) == 1


def test_tcp_port_reuse_after_close_is_a_new_flow(tmp_path: Path) -> None:
    c, s = "10.0.0.1", "10.0.0.2"
    pkts = [_tcp(1.0, c, 40000, s, 80, "S", 100), _tcp(1.1, s, 80, c, 40000, "SA", 500),
            _tcp(1.2, c, 40000, s, 80, "A", 101), _tcp(1.3, c, 40000, s, 80, "FA", 101),
            _tcp(1.4, s, 80, c, 40000, "FA", 501), _tcp(1.5, c, 40000, s, 80, "A", 102),
            _tcp(2.0, c, 40000, s, 80, "S", 9000), _tcp(2.1, s, 80, c, 40000, "SA", 7000),
            _tcp(2.2, c, 40000, s, 80, "R", 9001)]
    flows = _flows(pkts, tmp_path)
    assert [(f.orig_pkts, f.resp_pkts) for f in flows] == [(4, 2), (2, 1)]
    assert flows[0].end_reason == "tcp-close"
    assert flows[0].conn_state == "SF"
    assert flows[1].conn_state == "RSTO"


@pytest.mark.parametrize("copies", [1, 4])
def test_syns_after_a_reset_start_one_flow(tmp_path: Path, copies: int) -> None:
    # Refused, then tried again half a second later and answered. The new SYN and its
    # retransmission (or a mirror port's copies of every packet) are one new flow, not a
    # flow each: split one by one, each SYN was a connection nobody answered.
    c, s = "10.0.0.1", "10.0.0.2"
    once = [_tcp(1.0, c, 40000, s, 554, "S", 100), _tcp(1.01, s, 554, c, 40000, "RA", 0),
            _tcp(1.5, c, 40000, s, 554, "S", 100), _tcp(2.5, c, 40000, s, 554, "S", 100),
            _tcp(2.51, s, 554, c, 40000, "SA", 500), _tcp(2.52, c, 40000, s, 554, "A", 101)]
    pkts = [(t + k * 1e-6, b) for t, b in once for k in range(copies)]
    flows = _flows(pkts, tmp_path)
    assert [(f.orig_pkts, f.resp_pkts) for f in flows] == [
        (copies, copies), (3 * copies, copies)]
    assert [f.conn_state for f in flows] == ["REJ", "S1"]


def test_syn_answered_by_rst_is_rej(tmp_path: Path) -> None:
    flows = _flows([_tcp(1.0, "10.0.0.1", 40000, "10.0.0.2", 443, "S"),
                    _tcp(1.01, "10.0.0.2", 443, "10.0.0.1", 40000, "RA")], tmp_path)
    assert flows[0].conn_state == "REJ"


def test_retransmission_counted_once(tmp_path: Path) -> None:
    c, s = "10.0.0.1", "10.0.0.2"
    pkts = [_tcp(1.0, c, 40000, s, 80, "S", 100), _tcp(1.1, s, 80, c, 40000, "SA", 500),
            _tcp(1.2, c, 40000, s, 80, "PA", 101, b"a" * 100),
            _tcp(1.3, c, 40000, s, 80, "PA", 101, b"a" * 100),
            _tcp(1.4, c, 40000, s, 80, "PA", 201, b"b" * 100)]
    f = _flows(pkts, tmp_path)[0]
    assert (f.orig_retrans, f.resp_retrans) == (1, 0)


def test_payload_samples_timing_and_rate_series(tmp_path: Path) -> None:
    pkts = [_udp(10.0 + i * 0.5, "10.0.0.1", 5000, "10.0.0.2", 6000, bytes([i]) * (10 + i))
            for i in range(12)]
    f = _flows(pkts, tmp_path, payload_samples=8)[0]
    assert [p.data for p in f.payloads] == [bytes([i]) * (10 + i) for i in range(8)]
    assert [p.frame for p in f.payloads] == list(range(1, 9))
    assert list(f.pkt_len) == [10 + i for i in range(12)]
    assert list(f.rate[:, 0]) == [10, 11, 12, 13, 14, 15]
    assert int(f.rate[:, 1].sum()) == 12


def test_lightened_record_keeps_what_later_stages_cite(tmp_path: Path) -> None:
    pkts = [_udp(10.0 + i * 0.5, "10.0.0.1", 5000, "10.0.0.2", 6000, bytes([i]) * (10 + i))
            for i in range(12)]
    f = _flows(pkts, tmp_path, payload_samples=8)[0]
    light = f.lightened()
    assert light.conn_dict() == f.conn_dict()
    assert [(p.frame, p.ts, p.direction) for p in light.payloads] == [
        (p.frame, p.ts, p.direction) for p in f.payloads]
    assert all(p.data == b"" for p in light.payloads)
    assert len(light.pkt_ts) == len(light.pkt_len) == len(light.pkt_dir) == 0
    assert (light.rate == f.rate).all() and light.rtp_streams == f.rtp_streams
    assert len(f.pkt_ts) == 12 and f.payloads[0].data == b"\x00" * 10  # the original is intact


def test_rtp_series_kept_over_whole_life(tmp_path: Path) -> None:
    pkts = []
    for i in range(300):
        rtp = struct.pack("!BBHII", 0x80, 0, i, i * 160, 0x1234) + b"\xff" * 160
        pkts.append(_udp(1.0 + i * 0.02, "10.0.0.1", 4000, "10.0.0.2", 4002, rtp))
    f = _flows(pkts, tmp_path)[0]
    assert f.rtp is not None and len(f.rtp) == 300
    assert list(f.rtp.seq[:3]) == [0, 1, 2]
    assert int(f.rtp.ssrc[0]) == 0x1234
    assert int(f.rtp.rtp_ts[-1]) == 299 * 160
    # once observed, the series goes (only the media guess reads it); the stream stays
    light = f.lightened()
    assert light.rtp is None and f.rtp is not None
    assert light.rtp_streams == f.rtp_streams and light.rtp_streams[0].packets == 300
    assert light.lightened() is light


def test_random_udp_is_not_taken_for_rtp(tmp_path: Path) -> None:
    import random
    rnd = random.Random(5)
    pkts = [_udp(1.0 + i * 0.02, "10.0.0.1", 4000, "10.0.0.2", 4002,
                 bytes(rnd.getrandbits(8) for _ in range(100))) for i in range(200)]
    assert _flows(pkts, tmp_path)[0].rtp is None


def test_uids_are_deterministic() -> None:
    sample = ROOT / "captures" / "sample-call.pcap"
    a = [f.uid for f in read_capture(sample).flows]
    b = [f.uid for f in read_capture(sample).flows]
    assert a == b and len(set(a)) == len(a)


@pytest.mark.parametrize("name", ["sample-call.pcap", "ipv4-frag-ooo.pcap", "icmp-errors.pcap",
                                  "flow-tcp-reuse.pcap", "malformed-packets.pcap",
                                  "pcapng-multi.pcapng"])
def test_two_processes_give_the_same_flows(name: str) -> None:
    path = ROOT / "captures" / name
    one = read_capture(path, workers=1)
    two = read_capture(path, workers=2)
    assert [f.conn_dict() for f in one.flows] == [f.conn_dict() for f in two.flows]
    assert [f.payloads for f in one.flows] == [f.payloads for f in two.flows]
    assert one.status.complete == two.status.complete
    assert one.status.packets == two.status.packets
    assert len(one.all_weirds()) == len(two.all_weirds())


def test_small_batches_give_the_same_flows() -> None:
    """Flows spanning many batches are metered exactly as in one batch."""
    path = ROOT / "captures" / "sample-call.pcap"
    whole = read_capture(path)
    tiny = read_capture(path, MeterConfig(chunk_size=4096))
    assert [f.conn_dict() for f in whole.flows] == [f.conn_dict() for f in tiny.flows]
    for a, b in zip(whole.flows, tiny.flows, strict=True):
        assert a.payloads == b.payloads
        assert (a.rate == b.rate).all()
        assert list(a.pkt_ts) == list(b.pkt_ts)
        assert (a.rtp is None) == (b.rtp is None)
        if a.rtp is not None and b.rtp is not None:
            assert list(a.rtp.seq) == list(b.rtp.seq)


def test_rtp_streams_loss_reorder_wrap_and_jitter(tmp_path: Path) -> None:
    """A stream across a 16-bit wrap with 3 losses, one reordered pair and constant
    2 ms extra delay on every 10th packet: whole-life counters and RFC 3550 jitter."""
    seqs = [(65500 + i) & 0xFFFF for i in range(200)]
    order = list(range(200))
    for lost in (50, 51, 120):
        order.remove(lost)
    a, b = order.index(80), order.index(81)
    order[a], order[b] = order[b], order[a]
    pkts = []
    arrivals = []
    for i in order:
        t = 1.0 + i * 0.02 + (0.002 if i % 10 == 0 else 0.0)
        arrivals.append((t, i))
    # arrival order follows `order` (the reordered pair arrives swapped)
    for t, i in arrivals:
        rtp = struct.pack("!BBHII", 0x80, 0, seqs[i], i * 160, 0xABCD) + b"\x00" * 160
        pkts.append(_udp(t, "10.0.0.1", 4000, "10.0.0.2", 4002, rtp))
    f = _flows(pkts, tmp_path)[0]
    (s,) = f.rtp_streams
    assert s.packets == 197 and s.expected == 200 and s.lost == 3
    assert s.reordered == 1
    assert s.clock_hz == 8000
    # Reference: the RFC 3550 A.8 recursion computed packet by packet.
    j = 0.0
    prev = None
    for t, i in arrivals:
        transit = t - i * 160 / 8000
        if prev is not None:
            j += (abs(transit - prev) - j) / 16
        prev = transit
    assert abs(s.jitter_s - j) < 1e-9
    assert int(s.seconds[:, 1].sum()) == 197


_EVERY_CAPTURE = sorted(p.name for p in (ROOT / "captures").iterdir()
                        if p.suffix in (".pcap", ".pcapng", ".gz")
                        and not p.name.startswith("bad-"))


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("name", _EVERY_CAPTURE)
def test_conn_rows_are_the_records_conn_dicts(name: str, workers: int) -> None:
    """``FlowReader.conn_rows`` (what ``marsad flows`` prints, made from the table's columns
    without records) gives each record's conn_dict: same values, keys and key order."""
    path = ROOT / "captures" / name
    want = [f.conn_dict() for f in FlowReader(path, workers=workers)]
    got = list(FlowReader(path, MeterConfig(payload_samples=0, timing_packets=0),
                          workers=workers).conn_rows())
    assert got == want
    assert [list(r) for r in got] == [list(r) for r in want]
    assert any(r["conn_state"] for r in got) or all(r["proto"] != "tcp" for r in got)


def test_conn_rows_of_a_truncated_capture_stop_where_records_stop() -> None:
    path = ROOT / "captures" / "bad-truncated.pcap"
    reader = FlowReader(path, workers=2)
    want = [f.conn_dict() for f in reader]
    rows_reader = FlowReader(path, workers=2)
    got = list(rows_reader.conn_rows())
    assert got == want and got
    assert not rows_reader.status.complete
    assert rows_reader.status.stopped_at == reader.status.stopped_at


@pytest.mark.parametrize("chunk_size", [8 << 20, 4096])
def test_rtp_stream_counts_its_comfort_noise_packets(tmp_path: Path, chunk_size: int) -> None:
    """Silence suppression: speech (PCMU, type 0) and comfort noise (type 13, RFC 3389)
    alternate under one SSRC; every CN packet is counted over the stream's whole life,
    across batches, whatever type the last packet had. Type 19, only reserved by RFC 3551
    (an earlier CN format's number in drafts), is not comfort noise."""
    pts = [0] * 60 + [13] * 7 + [0] * 40 + [19] * 5 + [13] * 3 + [0] * 30 + [13] * 2
    pkts = []
    for i, pt in enumerate(pts):
        payload = b"\x40\x11\x22" if pt in (13, 19) else b"\x00" * 160
        rtp = struct.pack("!BBHII", 0x80, pt, i, i * 160, 0xC0FFEE) + payload
        pkts.append(_udp(1.0 + i * 0.02, "10.0.0.1", 4000, "10.0.0.2", 4002, rtp))
    (f,) = _flows(pkts, tmp_path, chunk_size=chunk_size)
    (s,) = f.rtp_streams
    assert s.packets == len(pts)
    assert s.cn_packets == 12 and s.pt == 13
    assert s.to_dict()["cn_packets"] == 12
