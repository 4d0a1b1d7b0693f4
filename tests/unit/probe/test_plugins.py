"""The payload policy: the probe keeps whole and finds RTP only where its user declares."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt

from probe import FlowRecord, MeterConfig, read_capture
from probe.plugins import NEUTRAL, Framing, PayloadPolicy, PayloadView, Prefix
from tests.pcapbytes import pcap, udp_frame


def _flow(tmp_path: Path, payloads: list[bytes], policy: PayloadPolicy) -> FlowRecord:
    path = tmp_path / "p.pcap"
    path.write_bytes(pcap((100 + i * 0.02, udp_frame("10.0.0.1", 5062, "10.0.0.2", 5062, p))
                          for i, p in enumerate(payloads)))
    (flow,) = read_capture(path, MeterConfig(payloads=policy)).flows
    return flow


def test_prefixes_match_as_startswith() -> None:
    rules = (Prefix.of("a", b"OPTI"), Prefix.of("b", b"AC"), Prefix("rtcp", 0x80C80000, 0xC0FF0000))
    policy = PayloadPolicy(keep_whole=rules)
    rng = random.Random(3)
    words = [rng.choice([b"OPTI", b"ACK ", b"ACzz", b"\x80\xc8\x00\x06", b"\xbf\xc8\x01\x02",
                         b"\x40\xc8\x00\x00", b"OPTX"]) for _ in range(200)]
    words += [rng.randbytes(4) for _ in range(200)]
    first4 = np.asarray([int.from_bytes(w, "big") for w in words], dtype=np.uint32)
    want = [w.startswith((b"OPTI", b"AC")) or (w[0] & 0xC0 == 0x80 and w[1] == 200)
            for w in words]
    assert policy.keeps_whole(first4).tolist() == want
    assert not NEUTRAL.keeps_whole(first4).any()


def test_whole_payloads_only_where_declared(tmp_path: Path) -> None:
    messages = [b"OPTIONS sip:a@b SIP/2.0\r\n" + bytes([i]) * 300 for i in range(20)]
    neutral = _flow(tmp_path, messages, NEUTRAL)
    assert len(neutral.payloads) == MeterConfig().payload_samples
    sip = _flow(tmp_path, messages, PayloadPolicy(keep_whole=(Prefix.of("sip", b"OPTI"),)))
    assert len(sip.payloads) == 20
    assert all(len(p.data) == len(messages[0]) for p in sip.payloads)


def test_whole_payloads_stop_at_the_cap_within_one_batch(tmp_path: Path) -> None:
    """Payloads kept whole beyond a flow's first samples stop at ``signal_samples`` more,
    however many of them one batch holds, and whatever the other payloads between them."""
    cfg = MeterConfig()
    cap = cfg.payload_samples + cfg.signal_samples
    sip = PayloadPolicy(keep_whole=(Prefix.of("sip", b"OPTI"),))
    messages = [b"OPTIONS sip:a@b SIP/2.0\r\n" + i.to_bytes(2, "big") * 100 for i in range(300)]
    flow = _flow(tmp_path, messages, sip)
    assert [p.data for p in flow.payloads] == messages[:cap]
    mixed = [b"X" * 50] * 3 + [m if i % 3 else b"Y" * 60 for i, m in enumerate(messages)]
    flow = _flow(tmp_path, mixed, sip)
    first = mixed[:cfg.payload_samples]
    later = [m for m in mixed[cfg.payload_samples:] if m.startswith(b"OPTI")]
    assert [p.data for p in flow.payloads] == first + later[:cap - len(first)]


def _rtp(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x5151) + b"\xd5" * 160


def _behind_header(view: PayloadView) -> tuple[int, npt.NDArray[np.bool_]]:
    claimed: npt.NDArray[np.bool_] = view.byte(0) == 0xEE
    return 6, claimed


def test_rtp_inside_a_framing_only_where_declared(tmp_path: Path) -> None:
    wrapped = [b"\xee" + b"\x00" * 5 + _rtp(i) for i in range(30)]
    assert _flow(tmp_path, wrapped, NEUTRAL).rtp_streams == ()
    policy = PayloadPolicy(rtp_framings=(Framing("test", _behind_header),))
    (s,) = _flow(tmp_path, wrapped, policy).rtp_streams
    assert (s.ssrc, s.packets, s.expected) == (0x5151, 30, 30)
    # Plain RTP is found by the neutral policy, and not by one that leaves it out.
    plain = [_rtp(i) for i in range(30)]
    assert _flow(tmp_path, plain, NEUTRAL).rtp_streams[0].packets == 30
    assert _flow(tmp_path, plain, policy).rtp_streams == ()
