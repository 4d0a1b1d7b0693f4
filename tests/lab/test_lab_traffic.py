"""The lab's captures show what each censorship rule really did to the traffic.

These checks read the pcaps with dpkt (and tshark for one cross-check) and
know nothing of marsad: they make sure the scenarios are what their names say
before any verdict test relies on them.  Every bound is a range, because
random loss and scheduling differ from run to run.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt
import pytest

from .conftest import LabCaptures
from .netlab import (
    CALLER_IP,
    ISP_CALLER_IP,
    ISP_RELAY_IP,
    PEER_IP,
    RELAY_IP,
    NetLab,
    delete_namespace,
    list_namespaces,
)
from .scenarios import (
    APP_SNI,
    CONTROL_SNI,
    DIRECT_PORT,
    RTP_AUDIO_PORT,
    RTP_VIDEO_PORT,
    SCENARIOS,
    SFU_LAYER_SSRCS,
    SFU_OUT_SSRC,
    SIP_PORT,
    STUN_PORT,
    TLS_PORT,
)

pytestmark = pytest.mark.lab

LAB_ADDRESSES = {CALLER_IP, ISP_CALLER_IP, ISP_RELAY_IP, RELAY_IP, PEER_IP}
STUN_MAGIC_COOKIE = 0x2112A442
STUN_BINDING_REQUEST = 0x0001
STUN_BINDING_SUCCESS = 0x0101
TLS_HANDSHAKE = 0x16
TLS_CLIENT_HELLO = 1
TLS_SERVER_HELLO = 2


@dataclass(frozen=True, slots=True)
class Pkt:
    """One IPv4 TCP/UDP packet of a lab capture."""

    ts: float
    """Capture timestamp (epoch seconds)."""
    src: str
    """IPv4 source."""
    dst: str
    """IPv4 destination."""
    proto: int
    """IP protocol number (6 TCP, 17 UDP)."""
    sport: int
    """Source port."""
    dport: int
    """Destination port."""
    flags: int
    """TCP flags; 0 for UDP."""
    payload: bytes
    """Transport payload."""
    wire_len: int
    """Length of the Ethernet frame on the wire."""


@dataclass(frozen=True, slots=True)
class Frame:
    """Every captured frame, before transport decoding."""

    ts: float
    """Capture timestamp (epoch seconds)."""
    ethertype: int
    """Ethernet type."""
    src: str | None
    """IPv4 source, None for non-IPv4 frames."""
    dst: str | None
    """IPv4 destination, None for non-IPv4 frames."""
    wire_len: int
    """Length of the frame on the wire."""


def read_frames(pcap: Path) -> tuple[list[Frame], list[Pkt]]:
    """All frames of a capture, and its TCP/UDP packets decoded."""
    frames: list[Frame] = []
    pkts: list[Pkt] = []
    with open(pcap, "rb") as fh:
        for ts, buf in dpkt.pcap.Reader(fh):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP):
                frames.append(Frame(ts, eth.type, None, None, len(buf)))
                continue
            src, dst = dpkt.utils.inet_to_str(ip.src), dpkt.utils.inet_to_str(ip.dst)
            frames.append(Frame(ts, eth.type, src, dst, len(buf)))
            l4 = ip.data
            if isinstance(l4, dpkt.udp.UDP):
                pkts.append(Pkt(ts, src, dst, 17, l4.sport, l4.dport, 0, bytes(l4.data),
                                len(buf)))
            elif isinstance(l4, dpkt.tcp.TCP):
                pkts.append(Pkt(ts, src, dst, 6, l4.sport, l4.dport, l4.flags, bytes(l4.data),
                                len(buf)))
    return frames, pkts


_CACHE: dict[Path, tuple[list[Frame], list[Pkt]]] = {}


def packets(pcap: Path) -> list[Pkt]:
    """TCP/UDP packets of a capture (parsed once per session)."""
    if pcap not in _CACHE:
        _CACHE[pcap] = read_frames(pcap)
    return _CACHE[pcap][1]


def frames(pcap: Path) -> list[Frame]:
    """All frames of a capture (parsed once per session)."""
    if pcap not in _CACHE:
        _CACHE[pcap] = read_frames(pcap)
    return _CACHE[pcap][0]


# -- STUN (RFC 8489 section 5) ------------------------------------------------------------


def _stun_type(p: Pkt) -> int | None:
    if p.proto != 17 or len(p.payload) < 20:
        return None
    if int.from_bytes(p.payload[4:8], "big") != STUN_MAGIC_COOKIE:
        return None
    return int.from_bytes(p.payload[0:2], "big")


def stun_requests_and_answers(pkts: list[Pkt]) -> tuple[int, int]:
    """Binding requests the caller sent, and how many got a success response."""
    requests = {p.payload[8:20] for p in pkts
                if p.src == CALLER_IP and p.dport == STUN_PORT
                and _stun_type(p) == STUN_BINDING_REQUEST}
    answers = {p.payload[8:20] for p in pkts
               if p.dst == CALLER_IP and p.sport == STUN_PORT
               and _stun_type(p) == STUN_BINDING_SUCCESS}
    return len(requests), len(requests & answers)


# -- RTP (RFC 3550 section 5.1) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RtpStream:
    """One direction of RTP as the caller's capture saw it."""

    packets: int
    """Packets seen."""
    expected: int
    """Packets the sequence numbers span (highest - lowest + 1, unwrapped)."""
    first_ts: float
    """Time of the first packet."""
    last_ts: float
    """Time of the last packet."""

    @property
    def loss(self) -> float:
        """Fraction of the spanned sequence numbers that never arrived."""
        return 1.0 - self.packets / self.expected if self.expected else 1.0


def rtp_packets(pkts: list[Pkt], src: str, port: int) -> list[Pkt]:
    """RTP version-2 packets from `src` on the symmetric media port."""
    return [p for p in pkts if p.proto == 17 and p.src == src and p.sport == port
            and p.dport == port and len(p.payload) >= 12 and p.payload[0] >> 6 == 2]


def rtp_stream(pkts: list[Pkt], src: str, port: int) -> RtpStream:
    """Count, span and timing of one RTP direction."""
    rtp = rtp_packets(pkts, src, port)
    if not rtp:
        return RtpStream(0, 0, 0.0, 0.0)
    seqs: list[int] = []
    last: int | None = None
    base = 0
    for p in sorted(rtp, key=lambda q: q.ts):
        seq = int.from_bytes(p.payload[2:4], "big")
        if last is not None and seq < last and last - seq > 0x8000:
            base += 0x10000
        elif last is not None and seq > last and seq - last > 0x8000:
            seq -= 0x10000  # late packet from before a wrap
        seqs.append(base + seq)
        last = seq % 0x10000
    unique = set(seqs)
    return RtpStream(len(unique), max(unique) - min(unique) + 1, rtp[0].ts, rtp[-1].ts)


def rate_kbps(items: Iterable[Pkt | Frame], t_from: float, t_to: float) -> float:
    """Layer-2 bit rate of the items whose timestamps fall in [t_from, t_to)."""
    total = sum(i.wire_len for i in items if t_from <= i.ts < t_to)
    return total * 8 / (t_to - t_from) / 1000


# -- TCP / TLS ----------------------------------------------------------------------------

_SYN, _RST, _ACK = dpkt.tcp.TH_SYN, dpkt.tcp.TH_RST, dpkt.tcp.TH_ACK


@dataclass(frozen=True, slots=True)
class TcpConn:
    """What one TCP connection from the caller to port 443 looked like."""

    client_port: int
    """Caller's ephemeral port."""
    syn: bool
    """The caller sent a SYN."""
    syn_ack: bool
    """A SYN-ACK came back."""
    rst_from_server: bool
    """A RST came back from the server address."""
    client_hello_sni: str | None
    """SNI found in a ClientHello the caller sent (None: no ClientHello)."""
    server_hello: bool
    """A ServerHello came back."""
    client_hello_ts: float | None
    """When the ClientHello left."""
    rst_ts: float | None
    """When the first RST from the server address arrived."""


def _sni(hello: bytes) -> str | None:
    for name in (APP_SNI, CONTROL_SNI):
        if name.encode() in hello:
            return name
    return "other"


def tls_connections(pkts: list[Pkt]) -> list[TcpConn]:
    """Connections from the caller to the relay's TLS port, in order of their SYN."""
    by_port: dict[int, list[Pkt]] = defaultdict(list)
    for p in pkts:
        if p.proto != 6:
            continue
        if p.src == CALLER_IP and p.dport == TLS_PORT:
            by_port[p.sport].append(p)
        elif p.dst == CALLER_IP and p.sport == TLS_PORT:
            by_port[p.dport].append(p)
    conns: list[tuple[float, TcpConn]] = []
    for port, seg in by_port.items():
        out = [p for p in seg if p.src == CALLER_IP]
        back = [p for p in seg if p.src == RELAY_IP]
        hello = next((p for p in out if len(p.payload) > 5 and p.payload[0] == TLS_HANDSHAKE
                      and p.payload[5] == TLS_CLIENT_HELLO), None)
        rst = next((p for p in back if p.flags & _RST), None)
        conns.append((seg[0].ts, TcpConn(
            client_port=port,
            syn=any(p.flags & _SYN and not p.flags & _ACK for p in out),
            syn_ack=any(p.flags & _SYN and p.flags & _ACK for p in back),
            rst_from_server=rst is not None,
            client_hello_sni=_sni(hello.payload) if hello else None,
            server_hello=any(len(p.payload) > 5 and p.payload[0] == TLS_HANDSHAKE
                             and p.payload[5] == TLS_SERVER_HELLO for p in back),
            client_hello_ts=hello.ts if hello else None,
            rst_ts=rst.ts if rst else None,
        )))
    return [c for _, c in sorted(conns, key=lambda x: x[0])]


# -- SIP (RFC 3261 section 7) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SipMsg:
    """First line and dialog keys of one SIP message."""

    ts: float
    """Capture timestamp."""
    from_caller: bool
    """Sent by the caller."""
    method: str | None
    """Request method, None for responses."""
    status: int | None
    """Response status code, None for requests."""
    cseq_method: str
    """Method named in the CSeq header."""
    call_id: str
    """Call-ID header value."""


def sip_messages(pkts: list[Pkt]) -> list[SipMsg]:
    """SIP messages on UDP 5060 between caller and callee, in capture order."""
    out: list[SipMsg] = []
    for p in pkts:
        if p.proto != 17 or SIP_PORT not in (p.sport, p.dport) or not p.payload:
            continue
        text = p.payload.decode("utf-8", "replace")
        first = text.split("\r\n", 1)[0]
        cseq = re.search(r"^CSeq:\s*\d+\s+(\w+)", text, re.M | re.I)
        call_id = re.search(r"^Call-ID:\s*(\S+)", text, re.M | re.I)
        assert cseq is not None and call_id is not None, first
        status = re.match(r"SIP/2\.0 (\d{3}) ", first)
        out.append(SipMsg(
            ts=p.ts,
            from_caller=p.src == CALLER_IP,
            method=None if status else first.split(" ", 1)[0],
            status=int(status.group(1)) if status else None,
            cseq_method=cseq.group(1).upper(),
            call_id=call_id.group(1),
        ))
    return out


def by_call(msgs: list[SipMsg]) -> dict[str, list[SipMsg]]:
    """SIP messages grouped by Call-ID, each group in capture order."""
    calls: dict[str, list[SipMsg]] = defaultdict(list)
    for m in msgs:
        calls[m.call_id].append(m)
    return dict(calls)


def events(msgs: list[SipMsg]) -> list[str]:
    """Compact ladder of a call: 'INVITE', '180/INVITE', 'CANCEL', '487/INVITE', ..."""
    return [m.method if m.method else f"{m.status}/{m.cseq_method}" for m in msgs]


# -- helpers on metadata -------------------------------------------------------------------


def media_window(meta: dict[str, Any], kind: str = "audio") -> tuple[float, float]:
    """Wall-clock start and stop of the scenario's media of one kind."""
    t0 = float(meta["capture"]["start_epoch"])
    m = next(m for m in meta["media"] if m["kind"] == kind)
    return t0 + float(m["start_s"]), t0 + float(m["stop_s"])


def nominal_l2_kbps(meta: dict[str, Any]) -> float:
    m = next(m for m in meta["media"] if m["kind"] == "audio")
    return float(m["nominal"]["l2_kbps"])


def get(lab: LabCaptures, name: str) -> tuple[list[Pkt], dict[str, Any], Path]:
    pcap, meta = lab[name]
    return packets(pcap), meta, pcap


# -- the lab itself ---------------------------------------------------------------------------


@pytest.mark.usefixtures("lab_available")
def test_netlab_tears_everything_down_on_error(tmp_path: Path) -> None:
    prefix = f"mlab{os.getpid()}-td-"
    with pytest.raises(RuntimeError, match="scenario broke"), NetLab(tmp_path, prefix) as lab:
        assert {lab.caller, lab.isp, lab.relay} <= set(list_namespaces())
        sleeper = lab.spawn(lab.relay, ["sleep", "60"], "sleeper")
        raise RuntimeError("scenario broke")
    assert not [ns for ns in list_namespaces() if ns.startswith(prefix)]
    assert sleeper.proc.poll() is not None


@pytest.mark.usefixtures("lab_available")
def test_netlab_replaces_stale_namespaces(tmp_path: Path) -> None:
    prefix = f"mlab{os.getpid()}-st-"
    subprocess.run(["ip", "netns", "add", f"{prefix}caller"], check=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = f"mlab{dead.pid}-orphan"
    subprocess.run(["ip", "netns", "add", orphan], check=True)
    try:
        with NetLab(tmp_path, prefix) as lab:
            names = set(list_namespaces())
            assert orphan not in names
            assert {lab.caller, lab.isp, lab.relay} <= names
            # Only the lab's own addresses: nothing routes anywhere else.
            for ns in (lab.caller, lab.isp, lab.relay):
                out = lab.run(ns, ["ip", "route", "get", "192.0.2.1"], check=False)
                assert out.returncode != 0
            addrs = lab.run(lab.caller, ["ip", "-o", "addr", "show"]).stdout
            assert "inet6" not in addrs and f"inet {CALLER_IP}/24" in addrs
            ok = lab.run(lab.caller, ["ip", "route", "get", RELAY_IP]).stdout
            assert f"via {ISP_CALLER_IP}" in ok
    finally:
        delete_namespace(orphan)
    assert not [ns for ns in list_namespaces() if ns.startswith(prefix)]


# -- every capture ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_capture_is_complete_and_stays_in_the_lab(lab_captures: LabCaptures, name: str) -> None:
    pcap, meta = lab_captures[name]
    cap = meta["capture"]
    all_frames = frames(pcap)
    assert cap["packets_dropped_by_kernel"] == 0
    assert len(all_frames) == cap["packets_captured"] > 0
    assert meta["local"] == {"role": "caller", "ip": CALLER_IP, "interface": "c0"}
    assert meta["remote"]["ip"] == RELAY_IP
    # IPv4 only (no ARP, no IPv6), between lab addresses, inside the capture window.
    assert {f.ethertype for f in all_frames} == {dpkt.ethernet.ETH_TYPE_IP}
    assert {f.src for f in all_frames} | {f.dst for f in all_frames} <= LAB_ADDRESSES
    assert cap["start_epoch"] - 0.01 <= all_frames[0].ts
    assert all_frames[-1].ts <= cap["stop_epoch"] + 0.01
    assert 7.0 <= cap["duration_s"] <= 16.0
    _checksums_are_real(pcap)


def _checksums_are_real(pcap: Path) -> None:
    # Transmit checksum offload is off in the lab: every checksum on the wire is real. A
    # TCP checksum of 0xFFFF where tshark computes 0x0000 is the same sum (one's-complement
    # negative zero, RFC 1624 section 3): the kernel writes it on a RST that iptables'
    # REJECT sends, once in 65,536 segments.
    bad = subprocess.run(
        ["tshark", "-r", str(pcap), "-o", "ip.check_checksum:TRUE",
         "-o", "udp.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
         "-Y", "ip.checksum.status == 0 || udp.checksum.status == 0 "
               f"|| ({TCP_BAD_CHECKSUM})", "-T", "fields", "-e", "frame.number"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()
    assert bad == []


TCP_BAD_CHECKSUM = "tcp.checksum.status == 0 && tcp.checksum != 0xffff"
"""tshark's bad TCP checksum, less the negative zero (0xFFFF for a sum of 0x0000)."""


# -- the call scenarios -----------------------------------------------------------------------


def test_clean_call_goes_through(lab_captures: LabCaptures) -> None:
    pkts, meta, _ = get(lab_captures, "clean")
    sent, answered = stun_requests_and_answers(pkts)
    assert sent >= 3 and answered == sent
    start, stop = media_window(meta)
    for src in (CALLER_IP, RELAY_IP):
        s = rtp_stream(pkts, src, RTP_AUDIO_PORT)
        assert 480 <= s.packets <= 505 and s.loss < 0.01
    inbound = rtp_packets(pkts, RELAY_IP, RTP_AUDIO_PORT)
    assert rate_kbps(inbound, start + 1, stop - 0.5) == pytest.approx(
        nominal_l2_kbps(meta), rel=0.1)
    conns = tls_connections(pkts)
    assert len(conns) == len(meta["tls"]["connections"]) == 5
    assert all(c.syn_ack and c.server_hello and not c.rst_from_server for c in conns)
    assert [c.client_hello_sni for c in conns] == [c["sni"] for c in meta["tls"]["connections"]]
    calls = by_call(sip_messages(pkts))
    assert len(calls) == 1
    ladder = events(next(iter(calls.values())))
    assert ladder[0] == "INVITE" and "200/INVITE" in ladder and "ACK" in ladder
    assert ladder[-2:] == ["BYE", "200/BYE"]
    sip_rtp = [p for p in pkts if p.proto == 17 and p.sport == p.dport == meta["ports"]["sip_rtp"]]
    assert {p.src for p in sip_rtp} == {CALLER_IP, RELAY_IP}


def test_block_udp_leaves_stun_unanswered_and_no_media_back(lab_captures: LabCaptures) -> None:
    pkts, meta, _ = get(lab_captures, "block_udp")
    sent, answered = stun_requests_and_answers(pkts)
    assert sent >= 3 and answered == 0
    assert 480 <= rtp_stream(pkts, CALLER_IP, RTP_AUDIO_PORT).packets <= 505
    assert rtp_stream(pkts, RELAY_IP, RTP_AUDIO_PORT).packets == 0
    assert not [p for p in pkts if p.proto == 17 and p.src == RELAY_IP]
    # TCP is untouched: the TLS connections complete.
    assert all(c.server_hello for c in tls_connections(pkts))
    assert all(r["purpose"].startswith("drop call UDP") for r in meta["rules"])


def test_block_stun_leaves_media_flowing(lab_captures: LabCaptures) -> None:
    pkts, _, _ = get(lab_captures, "block_stun")
    sent, answered = stun_requests_and_answers(pkts)
    assert sent >= 3 and answered == 0
    for src in (CALLER_IP, RELAY_IP):
        s = rtp_stream(pkts, src, RTP_AUDIO_PORT)
        assert 480 <= s.packets <= 505 and s.loss < 0.01


@pytest.mark.parametrize(("name", "rate_kbit", "port", "min_loss"), [
    ("throttle_voice_64k", 64, RTP_AUDIO_PORT, 0.1),
    ("throttle_voice_32k", 32, RTP_AUDIO_PORT, 0.4),
    # tbf drops what does not fit its queue: mostly the large video packets.
    ("throttle_video_500k", 500, RTP_VIDEO_PORT, 0.4),
])
def test_throttle_caps_the_received_rate(lab_captures: LabCaptures, name: str,
                                         rate_kbit: int, port: int, min_loss: float) -> None:
    pkts, meta, pcap = get(lab_captures, name)
    assert meta["impairment"]["rate_kbit"] == rate_kbit
    assert {r["argv"][4] for r in meta["rules"]} == {"ic", "ir"}
    assert all(r["applied_at_s"] < 0.2 for r in meta["rules"])
    start, stop = media_window(meta)
    # Everything the caller receives crossed the ISP's tbf toward it; once its
    # queue is full, the received layer-2 rate is the token rate.
    inbound = [f for f in frames(pcap) if f.dst == CALLER_IP]
    assert rate_kbps(inbound, start + 2.5, stop) == pytest.approx(rate_kbit, rel=0.2)
    # What the caller sends is not shaped before the capture point.
    outbound = [p for p in pkts if p.src == CALLER_IP and p.proto == 17
                and p.sport in (RTP_AUDIO_PORT, RTP_VIDEO_PORT)]
    assert rate_kbps(outbound, start + 1, stop - 0.5) > 1.25 * rate_kbit
    assert rtp_stream(pkts, RELAY_IP, port).loss > min_loss
    assert rtp_stream(pkts, CALLER_IP, port).loss < 0.01


def test_video_call_sends_about_its_nominal_rate(lab_captures: LabCaptures) -> None:
    pkts, meta, _ = get(lab_captures, "throttle_video_500k")
    start, stop = media_window(meta, "video")
    video = next(m for m in meta["media"] if m["kind"] == "video")
    sent = [p for p in rtp_packets(pkts, CALLER_IP, RTP_VIDEO_PORT)]
    # The caller's own video leaves unshaped: around the encoder's 1.5 Mbit/s target.
    assert rate_kbps(sent, start + 1, stop - 0.5) == pytest.approx(
        video["nominal"]["codec_kbps"], rel=0.25)
    assert all(p.payload[1] & 0x7F == video["nominal"]["payload_type"] for p in sent)


def test_delayed_throttle_starts_mid_call(lab_captures: LabCaptures) -> None:
    pkts, meta, pcap = get(lab_captures, "delayed_throttle")
    t0 = float(meta["capture"]["start_epoch"])
    start, stop = media_window(meta)
    applied = [float(r["applied_at_s"]) for r in meta["rules"]]
    assert len(applied) == 2
    assert all(4.5 <= t <= 5.8 for t in applied)
    rule_ts = t0 + max(float(r["active_from_s"]) for r in meta["rules"])
    inbound_rtp = rtp_packets(pkts, RELAY_IP, RTP_AUDIO_PORT)
    before = rate_kbps(inbound_rtp, start + 0.5, rule_ts - 0.2)
    assert before == pytest.approx(nominal_l2_kbps(meta), rel=0.2)
    inbound = [f for f in frames(pcap) if f.dst == CALLER_IP]
    after = rate_kbps(inbound, rule_ts + 1.5, stop)
    assert after == pytest.approx(meta["impairment"]["rate_kbit"], rel=0.2)
    # No loss before the rule; packets start missing only once it is active.
    seq_time = sorted((p.ts, int.from_bytes(p.payload[2:4], "big")) for p in inbound_rtp)
    early = [s for ts, s in seq_time if ts < rule_ts]
    assert len(early) >= 150
    assert all((b - a) % 0x10000 == 1 for a, b in itertools.pairwise(early))
    assert rtp_stream(pkts, RELAY_IP, RTP_AUDIO_PORT).loss > 0.2


@pytest.mark.parametrize(("name", "low", "high"), [
    ("loss_5", 0.04, 0.065),    # every 20th packet of each direction (STUN shares the count)
    ("loss_15", 0.08, 0.24),    # random
])
def test_loss_is_in_range(lab_captures: LabCaptures, name: str,
                                 low: float, high: float) -> None:
    pkts, meta, _ = get(lab_captures, name)
    s = rtp_stream(pkts, RELAY_IP, RTP_AUDIO_PORT)
    assert low <= s.loss <= high
    assert 480 <= s.expected <= 505
    # The caller sends everything; its losses happen behind the capture point.
    assert 480 <= rtp_stream(pkts, CALLER_IP, RTP_AUDIO_PORT).packets <= 505
    assert meta["impairment"]["probability"] * 0.3 <= s.loss


def test_tshark_agrees_on_rtp_loss(lab_captures: LabCaptures) -> None:
    pkts, _, pcap = get(lab_captures, "loss_15")
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-q", "-d", f"udp.port=={RTP_AUDIO_PORT},rtp",
         "-z", "rtp,streams"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    # Row: start, end, src addr, src port, dst addr, dst port, SSRC, payload, packets,
    # lost (pct), deltas and jitter.
    rows = [re.match(r"\s*[\d.]+\s+[\d.]+\s+(\S+)\s+(\d+)\s+\S+\s+\d+\s+0x[0-9A-Fa-f]+"
                     r"\s+\S+\s+(\d+)\s+(-?\d+) \(", line) for line in out.splitlines()]
    ours = [m for m in rows if m and m.group(1) == RELAY_IP and m.group(2) == str(RTP_AUDIO_PORT)]
    assert len(ours) == 1, out
    received, lost = int(ours[0].group(3)), int(ours[0].group(4))
    s = rtp_stream(pkts, RELAY_IP, RTP_AUDIO_PORT)
    assert received == s.packets
    assert lost == s.expected - s.packets


def test_tcp_reset_answers_syn_with_rst(lab_captures: LabCaptures) -> None:
    pkts, _, _ = get(lab_captures, "tcp_reset_443")
    conns = tls_connections(pkts)
    assert len(conns) == 5
    assert all(c.syn and c.rst_from_server and not c.syn_ack for c in conns)
    assert all(c.client_hello_sni is None for c in conns)
    for src in (CALLER_IP, RELAY_IP):  # UDP untouched
        assert rtp_stream(pkts, src, RTP_AUDIO_PORT).loss < 0.01


def test_sni_reset_hits_only_the_app_sni(lab_captures: LabCaptures) -> None:
    pkts, meta, _ = get(lab_captures, "sni_reset")
    conns = tls_connections(pkts)
    app = [c for c in conns if c.client_hello_sni == APP_SNI]
    control = [c for c in conns if c.client_hello_sni == CONTROL_SNI]
    assert len(app) == 3 and len(control) == 2
    for c in app:
        assert c.syn_ack and c.rst_from_server and not c.server_hello
        assert c.client_hello_ts is not None and c.rst_ts is not None
        assert 0 <= c.rst_ts - c.client_hello_ts < 0.5
    assert all(c.server_hello and not c.rst_from_server for c in control)
    # The server never saw the app's ClientHello: no handshake logged with its SNI.
    seen = {e["sni"] for e in meta["tls"]["server_log"] if e["handshake"]}
    assert seen == {CONTROL_SNI}


# -- SIP ------------------------------------------------------------------------------------


def test_sip_rejected_ends_with_a_final_decline(lab_captures: LabCaptures) -> None:
    pkts, meta, _ = get(lab_captures, "sip_rejected")
    status = meta["sip"]["expected_final_status"]
    assert 400 <= status < 700
    calls = by_call(sip_messages(pkts))
    assert len(calls) == meta["sip"]["calls"] == 3
    for msgs in calls.values():
        ladder = events(msgs)
        assert ladder[0] == "INVITE"
        assert f"{status}/INVITE" in ladder and ladder[-1] == "ACK"
        assert "200/INVITE" not in ladder
        assert ladder.index("180/INVITE") < ladder.index(f"{status}/INVITE")
    assert not rtp_packets(pkts, CALLER_IP, meta["ports"]["sip_rtp_offered"])


def test_sip_no_answer_rings_then_cancels(lab_captures: LabCaptures) -> None:
    pkts, meta, _ = get(lab_captures, "sip_no_answer")
    calls = by_call(sip_messages(pkts))
    assert len(calls) == meta["sip"]["calls"] == 2
    for msgs in calls.values():
        ladder = events(msgs)
        assert ladder[0] == "INVITE" and "200/INVITE" not in ladder
        ring = msgs[ladder.index("180/INVITE")]
        cancel = msgs[ladder.index("CANCEL")]
        assert cancel.from_caller and 3.0 <= cancel.ts - ring.ts <= 6.0
        assert ladder.index("CANCEL") < ladder.index("200/CANCEL")
        assert ladder.index("CANCEL") < ladder.index("487/INVITE") < ladder.index("ACK")



# -- the other vantage points -------------------------------------------------------------


_VANTAGES = [(name, v) for name, v in (
    ("clean", "relay"), ("clean", "isp_caller_side"), ("clean", "caller_in_only"),
    ("throttle_video_500k", "relay"), ("throttle_video_500k", "isp_caller_side"),
    ("throttle_video_500k", "isp_relay_side"), ("throttle_video_500k", "caller_in_only"),
    ("relay_fallback", "relay"), ("sender_adapts", "relay"), ("mobile_loss", "relay"))]


def _vantage(lab: LabCaptures, name: str, vantage: str) -> tuple[list[Pkt], dict[str, Any], Path]:
    pcap, meta = lab[name]
    v = meta["vantages"][vantage]
    path = pcap.parent / v["file"]
    return packets(path), v, path


@pytest.mark.parametrize(("name", "vantage"), _VANTAGES)
def test_vantage_capture_is_complete_and_stays_in_the_lab(lab_captures: LabCaptures, name: str,
                                                          vantage: str) -> None:
    _, v, path = _vantage(lab_captures, name, vantage)
    assert v["packets_dropped_by_kernel"] == 0
    all_frames = frames(path)
    assert len(all_frames) == v["packets_captured"] > 100
    assert {f.src for f in all_frames} | {f.dst for f in all_frames} <= LAB_ADDRESSES
    _checksums_are_real(path)
    if v["direction"] == "in":
        assert {f.dst for f in all_frames} == {CALLER_IP}


def test_vantages_see_the_shaper_from_both_sides(lab_captures: LabCaptures) -> None:
    """Each stream is whole before the ISP's token bucket and thinned after it."""
    caller_side, _, _ = _vantage(lab_captures, "throttle_video_500k", "isp_caller_side")
    relay_side, _, _ = _vantage(lab_captures, "throttle_video_500k", "relay")
    for whole, shaped, src in ((relay_side, caller_side, RELAY_IP),
                               (caller_side, relay_side, CALLER_IP)):
        assert rtp_stream(whole, src, RTP_VIDEO_PORT).loss < 0.01
        assert rtp_stream(shaped, src, RTP_VIDEO_PORT).loss > 0.3


# -- the benign scenarios -----------------------------------------------------------------


def test_relay_fallback_direct_pair_gets_nothing_relay_pair_both_ways(
        lab_captures: LabCaptures) -> None:
    pkts, _, _ = get(lab_captures, "relay_fallback")
    direct = [p for p in pkts if PEER_IP in (p.src, p.dst)]
    assert direct and all(p.src == CALLER_IP for p in direct)
    media = [p for p in direct if p.dport == DIRECT_PORT and p.sport == RTP_AUDIO_PORT]
    assert len(media) >= 150
    # The relayed pair uses the same local socket, after the direct one was given up.
    for src in (CALLER_IP, RELAY_IP):
        s = rtp_stream(pkts, src, RTP_AUDIO_PORT)
        assert 480 <= s.packets <= 505 and s.loss < 0.01
        assert s.first_ts > max(p.ts for p in media)
    relay_pkts, _, _ = _vantage(lab_captures, "relay_fallback", "relay")
    assert not [p for p in relay_pkts if PEER_IP in (p.src, p.dst)]


def test_sender_adapts_without_loss(lab_captures: LabCaptures) -> None:
    pkts, meta, _ = get(lab_captures, "sender_adapts")
    change = meta["impairment"]["sender_rate_change"]
    for src in (CALLER_IP, RELAY_IP):
        video = rtp_packets(pkts, src, RTP_VIDEO_PORT)
        assert rtp_stream(pkts, src, RTP_VIDEO_PORT).loss == 0
        t0 = video[0].ts
        before = rate_kbps(video, t0 + 1, t0 + change["after_s"])
        after = rate_kbps(video, t0 + change["after_s"] + 2, video[-1].ts)
        assert before > 1000 and after < 0.5 * before, (before, after)


def test_sfu_forwards_one_rewritten_stream(lab_captures: LabCaptures) -> None:
    pkts, meta, _ = get(lab_captures, "sfu_forwarding")
    video = rtp_packets(pkts, RELAY_IP, RTP_VIDEO_PORT)
    assert {int.from_bytes(p.payload[8:12], "big") for p in video} == {SFU_OUT_SSRC}
    s = rtp_stream(pkts, RELAY_IP, RTP_VIDEO_PORT)
    assert s.packets == meta["forwarder"]["forwarded"] and s.loss == 0
    stamps = [int.from_bytes(p.payload[4:8], "big") for p in video]
    assert all(b >= a for a, b in itertools.pairwise(stamps))  # no jump at the switch


def test_sfu_switch_passes_each_layer_untouched(lab_captures: LabCaptures) -> None:
    pkts, meta, _ = get(lab_captures, "sfu_ssrc_switch")
    video = rtp_packets(pkts, RELAY_IP, RTP_VIDEO_PORT)
    ssrcs = [int.from_bytes(p.payload[8:12], "big") for p in video]
    assert set(ssrcs) == set(SFU_LAYER_SSRCS)
    # One switch: every high-layer packet comes before every low-layer one.
    switch = ssrcs.index(SFU_LAYER_SSRCS[1])
    assert set(ssrcs[:switch]) == {SFU_LAYER_SSRCS[0]} and set(ssrcs[switch:]) == {
        SFU_LAYER_SSRCS[1]}
    assert len(video) == meta["forwarder"]["forwarded"]


def test_mobile_loss_comes_in_bursts(lab_captures: LabCaptures) -> None:
    pkts, meta, _ = get(lab_captures, "mobile_loss")
    s = rtp_stream(pkts, RELAY_IP, RTP_AUDIO_PORT)
    assert 0.04 <= s.loss <= 0.16
    seqs = sorted(int.from_bytes(p.payload[2:4], "big")
                  for p in rtp_packets(pkts, RELAY_IP, RTP_AUDIO_PORT))
    runs = [b - a - 1 for a, b in itertools.pairwise(seqs) if b - a > 1]
    assert max(runs) >= 3  # a burst, not scattered single losses
    queues = meta["radio_link"]["queues"]
    assert all(q["bursts"] >= 2 and q["handover_packets"] > 50 for q in queues.values())
