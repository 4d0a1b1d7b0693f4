"""Statistical media detector: is a flow real-time call media, and of which kind?

Most call media is encrypted (SRTP, relay framings, app protocols) and no inspector
can name it, but the shape of the traffic still gives it away. :func:`media_guess`
reads one :class:`~probe.records.FlowRecord` and answers with a :class:`MediaGuess`:
real-time or not, audio / video / screen share, buffered streaming or not, a
confidence, and a one-sentence reason quoting the figures that decided it.

The rules, in the order they are tried (every threshold is a field of
:class:`MediaRules`):

1. **RTP headers** (``flow.rtp``: the flow's first RTP packets, RFC 3550 §5.1). Packets
   are grouped by SSRC and de-duplicated by sequence number; a stream counts when its
   sequence numbers advance by one (a few losses allowed). A stream is audio when its
   payload type is a static audio type (RFC 3551 §6) or its timestamp advances by one
   audio frame per packet (160, 320, 960... samples) with small packets; it is video
   when the type is a static video type or several packets share one timestamp and the
   marker bit closes frames (RFC 6184 §5.1: the marker is set on the last packet of an
   access unit). A video
   stream with fewer than ``screen_max_fps`` frames per second is screen share.
   Payload types 64-95 are RTCP seen through the RTP header (RFC 5761 §4) and are
   skipped, as are streams that are neither (padding probes, keep-alives).
2. **Too little traffic** to judge: fewer than ``min_packets`` packets.
3. **Buffered streaming** (YouTube, Netflix, HLS): TCP or QUIC, nearly all bytes one
   way in large packets, an ack-only return path, and at least two bulk bursts with
   seconds of silence between them (the player filling its buffer).
4. **Sustained activity**: call media keeps sending every second; a flow needs a run
   of ``min_run_s`` consecutive seconds with ``active_pkts`` packets or more, and from
   that run to its end it must stay active most of the time.
5. **Video**: a heavy direction above ``video_min_kbps`` whose large packets come in
   back-to-back groups (frames) every 15-200 ms, with varied sizes.
6. **Voice**: ``voice_pps`` packets per second in at least one direction, small packets
   (``voice_max_size``), and a steady packet spacing of 10-75 ms.
7. **Screen share**: large-packet bursts on a long-lived flow whose average rate stays
   low and which is idle (or keep-alive only) between bursts.

Anything else is not real-time media. The detector never raises: a record with empty
series simply has too little traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from probe.payload_types import STATIC_PAYLOAD_TYPES
from probe.payload_types import Media as StaticMedia
from probe.records import ORIG, RESP, FlowRecord, RtpSeries
from probe.speed import pickled_by_position

__all__ = [
    "DEFAULT_RULES",
    "MediaGuess",
    "MediaKind",
    "MediaRules",
    "media_guess",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


class MediaKind(StrEnum):
    """What a real-time flow carries (compares equal to its string value)."""

    AUDIO = "audio"
    VIDEO = "video"
    SCREEN = "screen"


@pickled_by_position
@dataclass(frozen=True, slots=True)
class MediaGuess:
    """The detector's answer for one flow."""

    realtime: bool
    """True when the flow carries real-time call media (voice, video or screen share)."""
    media: MediaKind | None
    """What it carries when ``realtime``; a video call's audio does not make it audio."""
    streaming: bool
    """True for buffered one-way bulk media (YouTube, Netflix, HLS); never with realtime."""
    confidence: float
    """How sure the decision is, in [0, 1] (also for negative answers)."""
    reason: str
    """One human-readable sentence with the figures that decided it."""
    from_rtp: bool = False
    """True when RTP structure decided it (validated streams: version, payload type,
    sequence and timestamp steps over several packets), not packet sizes and timing."""


@dataclass(frozen=True, slots=True)
class MediaRules:
    """Thresholds of the detector; the defaults were checked on the reference captures."""

    min_packets: int = 30
    """Packets (both directions) below which a flow without RTP evidence is not judged."""
    min_rtp_packets: int = 5
    """Packets an RTP stream (one SSRC) needs before its timestamps are read."""
    rtp_seq_ok: float = 0.8
    """Share of an RTP stream's sequence steps that must be +1..+3."""
    audio_steps: frozenset[int] = frozenset({80, 160, 240, 320, 441, 480, 640, 882, 960,
                                             1440, 1920, 2880, 3840, 4800, 5760})
    """RTP timestamp advance of one audio packet: 10-60 ms at 8, 16, 24, 32, 44.1, 48 kHz,
    and the 80, 100 and 120 ms an Opus packet may also hold (RFC 6716 §3.2.5: several
    frames in one packet, up to 120 ms; RFC 7587 §4.1: Opus RTP timestamps count 48 kHz)."""
    audio_max_size: int = 400
    """Median UDP payload of an audio RTP stream is at most this (bytes)."""
    video_min_shared_ts: float = 0.2
    """Share of consecutive video packets carrying the same RTP timestamp (one frame)."""
    video_min_size: int = 500
    """Median payload above which single-packet frames with markers are still video."""
    screen_max_fps: float = 4.0
    """A video stream with fewer frames per second than this is screen share."""
    screen_min_s: float = 2.0
    """Seconds a video stream must last before its frame rate is trusted."""
    active_pkts: int = 5
    """Packets (both ways) that make a second "active"."""
    min_run_s: int = 3
    """Consecutive active seconds a flow without RTP needs to count as real-time."""
    min_active_share: float = 0.6
    """Share of seconds that stay active from the start of that run to the flow's end."""
    voice_pps: tuple[float, float] = (12.0, 70.0)
    """Packets per second of a voice direction (60 ms down to ~14 ms spacing)."""
    voice_max_size: int = 350
    """Payload bytes of a voice packet (Opus, AMR, G.711 plus SRTP or relay framing)."""
    voice_small_share: float = 0.75
    """Share of a voice direction's packets that must be at most ``voice_max_size``."""
    voice_gap_ms: tuple[float, float] = (10.0, 75.0)
    """Median spacing of a voice direction's packets (after merging bunched arrivals)."""
    voice_max_large_share: float = 0.15
    """Share of packets of ``large_size`` or more a voice flow may carry."""
    large_size: int = 500
    """Payload bytes from which a packet counts as large (video, bulk data)."""
    burst_gap_ms: float = 5.0
    """Packets closer than this belong to one burst (a video frame, a bunched arrival)."""
    video_min_kbps: float = 150.0
    """Median kbit/s (wire) of the heavy direction of a video flow over its active run."""
    video_min_large_share: float = 0.25
    """Share of the heavy direction's packets that must be large."""
    video_grouped_share: float = 0.3
    """Share of large packets that must arrive inside multi-packet bursts (frames)."""
    video_frame_gap_ms: tuple[float, float] = (15.0, 200.0)
    """Median spacing between frames (bursts) of a video direction."""
    video_min_size_spread: float = 20.0
    """Standard deviation (bytes) the large packets need: frames are not all one size."""
    screen_min_life_s: int = 10
    """Seconds a flow must live before it can be screen share."""
    screen_max_kbps: float = 300.0
    """Average kbit/s of a screen-share flow's heavy direction over its life."""
    screen_min_idle_share: float = 0.3
    """Share of its life a screen-share flow spends without large-packet bursts."""
    stream_min_share: float = 0.9
    """Share of payload bytes the heavy direction of a streaming flow carries."""
    stream_min_size: int = 900
    """Median payload of the heavy direction of a streaming flow."""
    stream_max_ack_size: int = 80
    """Payload bytes up to which a return packet of a streaming flow counts as an ack."""
    stream_min_ack_share: float = 0.7
    """Share of the return path's packets that must be acks."""
    stream_burst_bytes: int = 25_000
    """Wire bytes in one second that make it part of a bulk burst."""
    stream_min_silence_s: int = 2
    """Seconds without bulk between two bursts of a streaming flow."""
    stream_ports: frozenset[int] = frozenset({80, 443, 1935, 8080, 8443})
    """Server ports of web media delivery (HTTP, HTTPS/QUIC, RTMP)."""


DEFAULT_RULES = MediaRules()
"""The rules :func:`media_guess` uses unless told otherwise."""


# -- RTP streams -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _RtpStream:
    ssrc: int
    pt: int
    n: int
    kind: MediaKind | None
    step: int
    shared_ts: float
    markers: int
    size: int
    fps: float
    duration: float


def _signed32(d: I64) -> I64:
    d = d % (1 << 32)
    return np.where(d >= 1 << 31, d - (1 << 32), d)


def _mode(values: I64) -> int:
    if values.size == 0:
        return 0
    if (values == values[0]).all():  # one value throughout (an audio stream's step)
        return int(values[0])
    uniq, counts = np.unique(values, return_counts=True)
    return int(uniq[int(np.argmax(counts))])


def _median_int(values: npt.NDArray[np.uint16]) -> int:
    """``int(np.median(values))`` of a non-empty array, without the generic machinery."""
    s = np.sort(values)
    n = s.size
    return int((int(s[(n - 1) // 2]) + int(s[n // 2])) / 2)


def _first_copies(idx: I64, seq: I64) -> I64:
    """``idx`` without the later copies of a sequence number seen before (a packet
    mirrored both ways or retransmitted), in arrival order."""
    steps = np.diff(seq) % 65536
    if (steps > 0).all() and int(steps.sum()) < 65536:
        return idx  # every step forward and less than one lap in all: no number twice
    _, first = np.unique(seq, return_index=True)
    return idx[np.sort(first)]


def _distinct_ts(ts: I64, dts: I64) -> int:
    """How many distinct RTP timestamps ``ts`` holds; ``dts`` its signed steps."""
    if (dts >= 0).all():  # never back: each step forward starts a new value
        return 1 + int(np.count_nonzero(dts))
    return int(np.unique(ts).size)


def _rtp_stream(rtp: RtpSeries, mask: npt.NDArray[np.bool_], rules: MediaRules
                ) -> _RtpStream | None:
    idx = np.flatnonzero(mask)
    idx = _first_copies(idx, rtp.seq[idx].astype(np.int64))
    n = int(idx.size)
    if n < rules.min_rtp_packets:
        return None
    pt = _mode(rtp.pt[idx].astype(np.int64))
    if 64 <= pt <= 95:  # RTCP packet types 192-223 read as RTP (RFC 5761 §4)
        return None
    seq_kept: I64 = rtp.seq[idx].astype(np.int64)
    dseq = np.diff(seq_kept) % 65536
    if float(np.mean((dseq >= 1) & (dseq <= 3))) < rules.rtp_seq_ok:
        return None
    ts_kept: I64 = rtp.rtp_ts[idx].astype(np.int64)
    dts = _signed32(np.diff(ts_kept))
    shared = float(np.mean(dts == 0))
    step = _mode(dts[dts > 0])
    markers = int(rtp.marker[idx].sum())
    size = _median_int(rtp.size[idx])
    times = rtp.ts[idx]
    duration = float(times[-1] - times[0])
    frames = _distinct_ts(ts_kept, dts)
    fps = (frames - 1) / duration if duration > 0 else 0.0
    static = STATIC_PAYLOAD_TYPES.get(pt)
    kind: MediaKind | None = None
    if static is not None and static.media is StaticMedia.AUDIO:
        kind = MediaKind.AUDIO
    elif static is not None and static.media is StaticMedia.VIDEO:
        kind = MediaKind.VIDEO
    elif step in rules.audio_steps and shared < 0.1 and size <= rules.audio_max_size:
        kind = MediaKind.AUDIO
    elif markers >= 2 and (shared >= rules.video_min_shared_ts or size >= rules.video_min_size):
        kind = MediaKind.VIDEO
    if kind is MediaKind.VIDEO and duration >= rules.screen_min_s and fps < rules.screen_max_fps:
        kind = MediaKind.SCREEN
    return _RtpStream(int(rtp.ssrc[idx[0]]), pt, n, kind, step, shared, markers, size, fps,
                      duration)


def _rtp_streams(rtp: RtpSeries, rules: MediaRules) -> list[_RtpStream]:
    out = []
    for ssrc in np.unique(rtp.ssrc):
        s = _rtp_stream(rtp, rtp.ssrc == ssrc, rules)
        if s is not None and s.kind is not None:
            out.append(s)
    return sorted(out, key=lambda s: -s.n)


def _describe(s: _RtpStream) -> str:
    if s.kind is MediaKind.AUDIO:
        return f"PT {s.pt} audio ({s.n} pkts, +{s.step}/pkt, median {s.size} B)"
    return (f"PT {s.pt} {s.kind} ({s.n} pkts, {s.fps:.1f} frames/s, "
            f"{s.shared_ts:.0%} share a timestamp, {s.markers} markers)")


def _from_rtp(streams: list[_RtpStream]) -> MediaGuess:
    visual = [s for s in streams if s.kind in (MediaKind.VIDEO, MediaKind.SCREEN)]
    audio = [s for s in streams if s.kind is MediaKind.AUDIO]
    total = sum(s.n for s in streams)
    if visual:
        kind = visual[0].kind  # the stream with most packets decides video vs screen
        verdict = "video call" if kind is MediaKind.VIDEO else "screen share"
        if audio:
            verdict += " with audio"
    else:
        kind = MediaKind.AUDIO
        verdict = "voice"
    conf = min(0.99, 0.75 + 0.01 * total)
    shown = "; ".join(_describe(s) for s in streams[:2])
    more = f" (+{len(streams) - 2} more)" if len(streams) > 2 else ""
    return MediaGuess(True, kind, False, round(conf, 2),
                      f"RTP, {len(streams)} media stream(s): {shown}{more}: {verdict}",
                      from_rtp=True)


# -- per-flow features -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Dir:
    """Timing-series figures of one direction (payload-carrying packets only)."""

    n: int
    sizes: I64
    small_share: float  # packets of at most voice_max_size
    large_share: float  # packets of at least large_size
    gap_ms: float  # median gap between bursts (bunched arrivals merged)
    frame_gap_ms: float  # median start-to-start spacing of bursts of large packets
    grouped_share: float  # large packets that arrive inside multi-packet bursts
    large_spread: float  # standard deviation of the large packets' sizes


def _share(mask: npt.NDArray[np.bool_]) -> float:
    return float(mask.mean()) if mask.size else 0.0


def _dir(sizes: I64, times: F64, rules: MediaRules) -> _Dir:
    gaps = np.diff(times) * 1000.0
    burst_gaps = gaps[gaps >= rules.burst_gap_ms]
    large = sizes >= rules.large_size
    near = np.zeros(sizes.size, dtype=bool)
    close = gaps < rules.burst_gap_ms
    near[1:] |= close
    near[:-1] |= close
    # Frame spacing: from the start of one burst of large packets to the start of the next.
    large_t = times[large] * 1000.0
    if large_t.size:
        large_t = large_t[np.r_[True, np.diff(large_t) >= rules.burst_gap_ms]]
    frame_gaps = np.diff(large_t)
    return _Dir(
        n=int(sizes.size), sizes=sizes,
        small_share=_share(sizes <= rules.voice_max_size), large_share=_share(large),
        gap_ms=float(np.median(burst_gaps)) if burst_gaps.size else 0.0,
        frame_gap_ms=float(np.median(frame_gaps)) if frame_gaps.size else 0.0,
        grouped_share=_share(near[large]),
        large_spread=float(sizes[large].std()) if large.sum() > 1 else 0.0)


class _LazyDirs:
    """Both directions' timing figures, computed the first time a rule needs them (most
    flows are settled by cheaper whole-life figures first)."""

    __slots__ = ("_flow", "_rules", "_v")

    def __init__(self, flow: FlowRecord, rules: MediaRules) -> None:
        self._flow = flow
        self._rules = rules
        self._v: tuple[_Dir, _Dir] | None = None

    def __getitem__(self, d: int) -> _Dir:
        if self._v is None:
            self._v = _dirs(self._flow, self._rules)
        return self._v[d]


def _dirs(flow: FlowRecord, rules: MediaRules) -> tuple[_Dir, _Dir]:
    keep = flow.pkt_len > 0  # pure TCP acks say nothing about the media
    orig = keep & (flow.pkt_dir == ORIG)
    resp = keep & (flow.pkt_dir == RESP)
    return (_dir(flow.pkt_len[orig].astype(np.int64), flow.pkt_ts[orig], rules),
            _dir(flow.pkt_len[resp].astype(np.int64), flow.pkt_ts[resp], rules))


@dataclass(frozen=True, slots=True)
class _Life:
    """Whole-life per-second figures from the rate rows, one row per second that carried
    packets. Seconds without packets are not stored: the memory this takes follows the
    flow's packets, not the time between its first and last packet, which one wrong
    timestamp can make any size."""

    sec: I64  # each row's second, counted from the flow's first (sorted, unique)
    pkts: I64  # shape (rows, 2)
    wire: I64  # shape (rows, 2)
    span: int  # seconds from the first row to the last, both included
    run: tuple[int, int]  # [start, end) rows of the longest run of active seconds
    active_share: float  # active seconds from run start to the end of life

    @property
    def run_s(self) -> int:
        return self.run[1] - self.run[0]  # the rows of a run are consecutive seconds


def _life(flow: FlowRecord, rules: MediaRules) -> _Life:
    rate = flow.rate
    if rate.shape[0] == 0:
        z = np.zeros((0, 2), np.int64)
        return _Life(np.zeros(0, np.int64), z, z, 0, (0, 0), 0.0)
    secs, row = np.unique(rate[:, 0], return_inverse=True)  # sorted, merged per second
    row = row.reshape(-1)
    rows = int(secs.size)
    pkts = np.zeros((rows, 2), np.int64)
    wire = np.zeros((rows, 2), np.int64)
    for d in (ORIG, RESP):
        np.add.at(pkts[:, d], row, rate[:, 1 + 2 * d])
        np.add.at(wire[:, d], row, rate[:, 2 + 2 * d])
    sec: I64 = (secs - secs[0]).astype(np.int64)
    span = int(sec[-1]) + 1
    active = pkts.sum(axis=1) >= rules.active_pkts
    # A run goes on while the next row is active and the very next second.
    link = np.zeros(rows, dtype=bool)
    link[1:] = active[1:] & active[:-1] & (np.diff(sec) == 1)
    starts = np.flatnonzero(active & ~link)
    last = np.ones(rows, dtype=bool)
    last[:-1] = ~link[1:]
    ends = np.flatnonzero(active & last) + 1
    best = (0, 0)
    share = 0.0
    if starts.size:
        k = int(np.argmax(ends - starts))  # the first of the longest runs
        best = (int(starts[k]), int(ends[k]))
        share = float(active[best[0]:].sum()) / (span - int(sec[best[0]]))
    return _Life(sec, pkts, wire, span, best, share)


def _proto_name(flow: FlowRecord) -> str:
    return flow.proto.upper()


# -- the rules ---------------------------------------------------------------------------------


def _streaming(flow: FlowRecord, dirs: _LazyDirs, life: _Life, rules: MediaRules
               ) -> MediaGuess | None:
    quic = flow.proto == "udp" and 443 in (flow.orig_p, flow.resp_p)
    if not (flow.proto == "tcp" or quic):
        return None
    if flow.resp_p not in rules.stream_ports and flow.orig_p not in rules.stream_ports:
        return None
    nbytes = (flow.orig_bytes, flow.resp_bytes)
    h = RESP if nbytes[RESP] >= nbytes[ORIG] else ORIG
    total = nbytes[0] + nbytes[1]
    if total == 0 or nbytes[h] / total < rules.stream_min_share:
        return None
    bulk = life.sec[life.wire[:, h] >= rules.stream_burst_bytes]
    if bulk.size < 2:
        return None
    silences = np.diff(bulk) - 1
    longest = int(silences.max())
    if longest < rules.stream_min_silence_s:
        return None
    heavy = dirs[h]
    if heavy.n == 0 or float(np.median(heavy.sizes)) < rules.stream_min_size:
        return None
    # The return path is acks: bare TCP acks (no payload) or small QUIC ack packets.
    back = flow.pkt_len[flow.pkt_dir == 1 - h]
    ack_share = _share(back <= rules.stream_max_ack_size)
    if back.size and ack_share < rules.stream_min_ack_share:
        return None
    bursts = int((silences >= rules.stream_min_silence_s).sum()) + 1
    share = nbytes[h] / total
    what = "TCP" if flow.proto == "tcp" else "QUIC"
    conf = min(0.9, 0.6 + 0.1 * bursts)
    return MediaGuess(False, None, True, round(conf, 2),
                      f"{what}, {share:.0%} of bytes one way in {np.median(heavy.sizes):.0f} B "
                      f"packets, ack-only return, {bursts} bulk bursts with up to {longest} s "
                      "of silence between: buffered streaming")


def _video(flow: FlowRecord, dirs: _LazyDirs, life: _Life, rules: MediaRules
           ) -> MediaGuess | None:
    a, b = life.run
    kbps = np.median(life.wire[a:b] * 8 / 1000.0, axis=0)
    h = int(np.argmax(kbps))
    if kbps[h] < rules.video_min_kbps:
        return None
    d = dirs[h]
    if d.n < 10:
        return None
    if d.large_share < rules.video_min_large_share or d.grouped_share < rules.video_grouped_share:
        return None
    lo, hi = rules.video_frame_gap_ms
    if not lo <= d.frame_gap_ms <= hi or d.large_spread < rules.video_min_size_spread:
        return None
    mixed = d.small_share >= 0.1 or dirs[1 - h].n > 0
    conf = 0.6 + 0.25 * min(1.0, life.run_s / 10) + (0.05 if mixed else 0.0)
    if flow.proto != "udp":
        conf -= 0.15
    side = "orig" if h == ORIG else "resp"
    return MediaGuess(True, MediaKind.VIDEO, False, round(conf, 2),
                      f"{_proto_name(flow)}, {kbps[h]:.0f} kbit/s {side} over {life.run_s} s, "
                      f"{d.large_share:.0%} of packets >= {rules.large_size} B, "
                      f"{d.grouped_share:.0%} of them in bursts every {d.frame_gap_ms:.0f} ms: "
                      "video")


def _voice(flow: FlowRecord, dirs: _LazyDirs, life: _Life, rules: MediaRules
           ) -> tuple[MediaGuess | None, str]:
    a, b = life.run
    pps = np.median(life.pkts[a:b], axis=0).astype(np.float64)
    for d in (ORIG, RESP):  # pure acks are not media: scale by the payload share seen
        seen = int((flow.pkt_dir == d).sum())
        if seen:
            pps[d] *= dirs[d].n / seen
    lo, hi = rules.voice_pps
    media = [d for d in (ORIG, RESP) if pps[d] >= lo / 2 and dirs[d].n >= 5]
    figures = f"{pps[0]:.0f}/{pps[1]:.0f} pkt/s orig/resp over {life.run_s} s"
    if not media or max(pps[d] for d in media) < lo:
        return None, f"{figures}, below {lo:.0f} pkt/s"
    if any(pps[d] > hi for d in media):
        return None, f"{figures}, above {hi:.0f} pkt/s"
    small = min(dirs[d].small_share for d in media)
    large = max(dirs[d].large_share for d in media)
    if small < rules.voice_small_share or large > rules.voice_max_large_share:
        return None, f"{figures}, only {small:.0%} of packets <= {rules.voice_max_size} B"
    gaps = [dirs[d].gap_ms for d in media]
    glo, ghi = rules.voice_gap_ms
    if not any(glo <= g <= ghi for g in gaps):
        shown = "/".join(f"{g:.0f}" for g in gaps)
        return None, f"{figures}, median gap {shown} ms"
    gap = min(gaps, key=lambda g: abs(g - 20.0))
    conf = 0.55 + 0.3 * min(1.0, life.run_s / 10) + (0.05 if len(media) == 2 else 0.0)
    if flow.proto != "udp":
        conf -= 0.15
    way = "both ways" if len(media) == 2 else "one way"
    return MediaGuess(True, MediaKind.AUDIO, False, round(conf, 2),
                      f"{_proto_name(flow)}, {figures} ({way}), {small:.0%} of packets "
                      f"<= {rules.voice_max_size} B, median gap {gap:.0f} ms: voice"), ""


def _screen(flow: FlowRecord, dirs: _LazyDirs, life: _Life, rules: MediaRules
            ) -> MediaGuess | None:
    if flow.proto != "udp" or life.span < rules.screen_min_life_s:
        return None
    h = int(np.argmax(life.wire.sum(axis=0)))
    kbps = life.wire[:, h].sum() * 8 / 1000.0 / life.span
    if kbps > rules.screen_max_kbps:
        return None
    d = dirs[h]
    if d.large_share < rules.video_min_large_share:
        return None
    if d.grouped_share < rules.video_grouped_share:
        return None
    # A second with a burst carries at least a few large packets' worth of bytes.
    burst = life.wire[:, h] >= 3 * rules.large_size
    burst_share = float(burst.sum()) / life.span
    idle = 1.0 - burst_share
    alive = float((life.pkts.sum(axis=1) > 0).sum()) / life.span
    if idle < rules.screen_min_idle_share or burst.sum() < 2 or alive < 0.5:
        return None
    conf = 0.5 + 0.2 * min(1.0, life.span / 60)
    return MediaGuess(True, MediaKind.SCREEN, False, round(conf, 2),
                      f"UDP, {kbps:.0f} kbit/s average over {life.span} s, bursts of "
                      f"large packets in {burst_share:.0%} of seconds, idle or small-only "
                      f"in {idle:.0%}: screen share")


def media_guess(flow: FlowRecord, rules: MediaRules = DEFAULT_RULES) -> MediaGuess:
    """Decide whether ``flow`` carries real-time call media, and which kind."""
    if flow.proto not in ("udp", "tcp"):
        return MediaGuess(False, None, False, 0.9,
                          f"{_proto_name(flow)}: only UDP and TCP carry call media")
    if flow.rtp is not None and len(flow.rtp):
        streams = _rtp_streams(flow.rtp, rules)
        if streams:
            return _from_rtp(streams)
    total = flow.orig_pkts + flow.resp_pkts
    if total < rules.min_packets:
        return MediaGuess(False, None, False, 0.5,
                          f"{_proto_name(flow)}, {total} packets: too few to judge")
    dirs = _LazyDirs(flow, rules)
    life = _life(flow, rules)
    found = _streaming(flow, dirs, life, rules)
    if found is not None:
        return found
    if life.run_s < max(1, rules.min_run_s) or life.active_share < rules.min_active_share:
        found = _screen(flow, dirs, life, rules)
        if found is not None:
            return found
        return MediaGuess(False, None, False, 0.75,
                          f"{_proto_name(flow)}, longest run of seconds with "
                          f">= {rules.active_pkts} packets is {life.run_s} s and "
                          f"{life.active_share:.0%} of the rest is active: not sustained media")
    found = _video(flow, dirs, life, rules)
    if found is not None:
        return found
    voice, why = _voice(flow, dirs, life, rules)
    if voice is not None:
        return voice
    found = _screen(flow, dirs, life, rules)
    if found is not None:
        return found
    return MediaGuess(False, None, False, 0.7,
                      f"{_proto_name(flow)}, {why}: neither voice nor video")
