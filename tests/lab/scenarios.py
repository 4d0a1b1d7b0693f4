"""Lab scenarios: real call traffic through a censoring ISP namespace.

Every scenario builds its own `NetLab`, starts the far-side servers, starts a
capture on the caller's interface, applies its censorship rules in the ISP
namespace (at the start, or in the middle of the call), runs about ten
seconds of real traffic and returns ``(pcap_path, metadata)``.

The OTT-style call (every scenario except the two SIP ones):

* STUN binding requests to coturn (``turnserver --stun-only``) on the relay,
  from ``turnutils_stunclient`` (RFC 8489), at call set-up and every few seconds;
* two-way RTP on one 5-tuple (symmetric RTP, caller 30000 <-> relay 30000):
  PCMU, 160-byte payloads every 20 ms, from GStreamer (RFC 3551 section 4.5.14);
  the video call adds VP8 (RFC 7741) at a 1.5 Mbit/s target on port 30002;
* TLS connections to port 443 on the relay from ``openssl s_client``, with the
  app's SNI and, alternately, an unrelated "control" SNI.

The benign scenarios, where nothing interferes with the call and a careless
rule would say something does:

* ``relay_fallback``: the direct candidate pair to the callee's own address
  (``PEER_IP``) is dropped by the ISP; after seconds of one-way media on it the
  call runs over the relay, from the same local socket;
* ``sender_adapts``: each side's VP8 encoder lowers its own target rate mid-call
  (``peer.py gst-adapt`` sets the property on the running encoder);
* ``sfu_forwarding``: the relay forwards one of two simulcast layers at a time and
  drops every other frame of the low one, rewriting SSRC, sequence numbers and
  timestamps (``peer.py forward``); ``sfu_ssrc_switch``: the same switch with each
  layer's packets untouched, so the forwarded stream changes SSRC mid-call;
* ``mobile_loss``: a radio-like link in the ISP (``peer.py nfqueue``: Gilbert-Elliott
  bursts of loss and delay, a handover's delay spike that recedes; the kernel has no
  netem, so NFQUEUE hands the packets to a user-space model).

Some scenarios are captured at several points at once (`Vantage`): the relay's
interface, the ISP router's two interfaces (mid-path) and the caller's received
packets only; each writes ``<scenario>@<vantage>.pcap`` and is described under
``vantages`` in the metadata.

The SIP scenarios drive ``sipp`` (uac in the caller, uas in the callee) with the
scenario files in ``sipp/``; the clean call also carries one full SIP call
with G.711 RTP.

The metadata is JSON-serialisable and says what was done, never what was
measured: addresses and which side is local, ports, SSRCs, the nominal media
rates, every censorship rule with its capture-relative and wall-clock time,
and when each STUN/TLS/SIP action ran and how the tool itself ended.
Capture-relative times count from ``capture.start_epoch`` (tcpdump reported
it was listening); pcap timestamps are wall-clock, so ``start_epoch + t_s``
lines them up.
"""

from __future__ import annotations

import functools
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .netlab import (
    CALLER_IF,
    CALLER_IP,
    ISP_CALLER_IF,
    ISP_CALLER_IP,
    ISP_RELAY_IF,
    ISP_RELAY_IP,
    PEER_IP,
    RELAY_IF,
    RELAY_IP,
    Background,
    Capture,
    LabError,
    NetLab,
)

ScenarioResult = tuple[Path, dict[str, Any]]
"""What every scenario returns: the pcap it wrote and its metadata."""

HERE: Final = Path(__file__).resolve().parent
SIPP_DIR: Final = HERE / "sipp"
SIPP_PCAP_DIR: Final = Path("/usr/share/sip-tester")

STUN_PORT: Final = 3478
RTP_AUDIO_PORT: Final = 30000
RTP_VIDEO_PORT: Final = 30002
TLS_PORT: Final = 443
SIP_PORT: Final = 5060
SIP_RTP_PORT: Final = 6000
CALL_UDP_PORTS: Final = f"{STUN_PORT},30000:30999"
"""The UDP ports of the OTT call (STUN and the media range), iptables multiport syntax."""

APP_SNI: Final = "call.lab-messenger.example"
"""SNI of the calling app's TLS connections (the one a DPI censor targets)."""
CONTROL_SNI: Final = "news.lab-portal.example"
"""SNI of unrelated TLS connections in the same capture."""

# Timeline of the OTT call, seconds after the capture started.
MEDIA_START_S: Final = 1.0
MEDIA_DURATION_S: Final = 10.0
STUN_TIMES_S: Final = (0.4, 3.5, 6.5, 9.5)
TLS_TIMES_S: Final = ((0.2, APP_SNI), (2.5, CONTROL_SNI), (4.5, APP_SNI),
                      (6.5, CONTROL_SNI), (8.5, APP_SNI))
TAIL_S: Final = 0.8
"""Time after the media stops before the capture ends (tbf queues drain)."""

# PCMU: 8000 samples/s, 1 byte each, 20 ms per packet (RFC 3551 section 4.5.14).
AUDIO_PTIME_MS: Final = 20
AUDIO_PAYLOAD_BYTES: Final = 160
AUDIO_PPS: Final = 1000 // AUDIO_PTIME_MS
RTP_HEADER_BYTES: Final = 12
UDP_IP_BYTES: Final = 8 + 20
ETHERNET_BYTES: Final = 14
VIDEO_TARGET_BPS: Final = 1_500_000
VIDEO_FPS: Final = 25
VIDEO_MTU: Final = 1200

SSRC: Final = {
    ("audio", "caller"): 0x1A2B0001,
    ("audio", "relay"): 0x1A2B0002,
    ("video", "caller"): 0x1A2B0003,
    ("video", "relay"): 0x1A2B0004,
}

TBF_LATENCY_MS: Final = 300

DIRECT_PORT: Final = 30010
"""Local and remote port of the caller's direct candidate pair toward the callee's host
candidate (``PEER_IP``), beside the relayed pair on ``RTP_AUDIO_PORT``."""
DIRECT_MEDIA_S: Final = 3.2
"""How long the caller sends audio on the direct pair before giving it up (the relayed
media starts after it)."""
ADAPT_AFTER_S: Final = 4.0
"""Seconds into its video when the adaptive sender lowers its encoder's target rate."""
ADAPTED_BPS: Final = 300_000
"""The target bit rate it lowers to."""
SFU_HIGH_BPS: Final = 1_200_000
SFU_LOW_BPS: Final = 300_000
SFU_SWITCH_AFTER_S: Final = 5.0
"""Seconds into the forwarded video when the forwarder switches to the low layer."""
SFU_HIGH_PORT: Final = 40000
SFU_LOW_PORT: Final = 40002
SFU_OUT_SSRC: Final = 0x5F000001
SFU_LAYER_SSRCS: Final = (0x5F0000A1, 0x5F0000A2)
"""SSRCs of the high and the low simulcast layer, as the encoders send them."""
NFQUEUE_NUMS: Final = {ISP_CALLER_IF: 0, ISP_RELAY_IF: 1}
"""NFQUEUE queue per ISP ingress interface: one radio-link model per direction."""


@dataclass(frozen=True, slots=True)
class Vantage:
    """One more capture point of a scenario, besides the caller's interface."""

    name: str
    """Suffix of its pcap (``<scenario>@<name>.pcap``) and key in the metadata."""
    role: str
    """Namespace it is taken in: caller, isp or relay."""
    interface: str
    """Interface tcpdump listens on."""
    direction: str | None = None
    """``in``/``out`` for a one-sided capture (tcpdump -Q), None for both directions."""
    description: str = ""
    """Where this is on the path, in words."""


RELAY_END = Vantage("relay", "relay", RELAY_IF, None,
                    "at the relay/callee end of the path, its own interface")
MID_PATH_CALLER_SIDE = Vantage("isp_caller_side", "isp", ISP_CALLER_IF, None,
                               "mid-path, the ISP router's interface toward the caller")
MID_PATH_RELAY_SIDE = Vantage("isp_relay_side", "isp", ISP_RELAY_IF, None,
                              "mid-path, the ISP router's interface toward the relay")
CALLER_INBOUND_ONLY = Vantage("caller_in_only", "caller", CALLER_IF, "in",
                              "the caller's interface, received packets only")


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One censorship command for the ISP namespace."""

    argv: tuple[str, ...]
    """The command (iptables / tc) as run in the ISP namespace."""
    purpose: str
    """What the rule does, in words."""


@dataclass(frozen=True, slots=True)
class CallPlan:
    """What a scenario's OTT call consists of and what the censor does to it."""

    name: str
    """Scenario name; also the pcap/json file stem."""
    description: str
    """One sentence on what the ISP does."""
    impairment: dict[str, Any]
    """Machine-readable summary of the impairment (kind, rate, probability, ...)."""
    rules_at_start: tuple[RuleSpec, ...] = ()
    """Rules applied right after the capture started, before any traffic."""
    rules_later: tuple[tuple[float, RuleSpec], ...] = ()
    """Rules applied mid-call, with their capture-relative time."""
    video: bool = False
    """Whether the call carries VP8 video besides the audio."""
    sip_call: bool = False
    """Whether a full SIP call (sipp uac_pcap -> uas with RTP echo) runs alongside."""
    video_mode: str = "plain"
    """How the relay side's video is made: ``plain`` (the VP8 encoder at its target),
    ``adaptive`` (each side's encoder lowers its target rate mid-call), ``sfu`` (the
    relay forwards one of two simulcast layers, rewritten; see peer.py forward) or
    ``sfu_switch`` (the same, each layer's packets untouched: an SSRC switch)."""
    vantages: tuple[Vantage, ...] = ()
    """Captures taken besides the caller's, at the same time."""
    direct_path: bool = False
    """Whether the caller also tries a direct candidate pair to the callee's host address
    ``PEER_IP`` (connectivity checks and seconds of media) beside the relayed call."""
    radio_link: tuple[str, ...] = ()
    """Arguments of ``peer.py nfqueue`` run in the ISP namespace (with NFQUEUE rules)."""


def audio_nominal() -> dict[str, Any]:
    """Nominal rates of one PCMU direction, per layer."""
    ip_bytes = AUDIO_PAYLOAD_BYTES + RTP_HEADER_BYTES + UDP_IP_BYTES
    return {
        "codec": "PCMU",
        "payload_type": 0,
        "clock_rate": 8000,
        "ptime_ms": AUDIO_PTIME_MS,
        "payload_bytes": AUDIO_PAYLOAD_BYTES,
        "pps": AUDIO_PPS,
        "codec_kbps": AUDIO_PAYLOAD_BYTES * 8 * AUDIO_PPS / 1000,
        "ip_kbps": ip_bytes * 8 * AUDIO_PPS / 1000,
        "l2_kbps": (ip_bytes + ETHERNET_BYTES) * 8 * AUDIO_PPS / 1000,
        "frame_bytes": ip_bytes + ETHERNET_BYTES,
    }


def video_nominal() -> dict[str, Any]:
    """Nominal rate of one VP8 direction (the encoder's target; packets vary in size)."""
    return {
        "codec": "VP8",
        "payload_type": 96,
        "clock_rate": 90000,
        "fps": VIDEO_FPS,
        "codec_kbps": VIDEO_TARGET_BPS / 1000,
        "max_rtp_packet_bytes": VIDEO_MTU,
    }


def _gst_audio(src: str, dst: str, ssrc: int, port: int = RTP_AUDIO_PORT,
               duration_s: float = MEDIA_DURATION_S, dst_port: int | None = None
               ) -> list[str]:
    buffers = int(duration_s * AUDIO_PPS)
    return [
        "gst-launch-1.0", "-q",
        "audiotestsrc", "is-live=true", "wave=sine", "freq=440",
        f"samplesperbuffer={AUDIO_PAYLOAD_BYTES}", f"num-buffers={buffers}",
        "!", "audio/x-raw,rate=8000,channels=1",
        "!", "mulawenc",
        "!", "rtppcmupay", f"min-ptime={AUDIO_PTIME_MS * 1_000_000}",
        f"max-ptime={AUDIO_PTIME_MS * 1_000_000}", f"ssrc={ssrc}",
        "!", "udpsink", f"host={dst}", f"port={port if dst_port is None else dst_port}",
        f"bind-address={src}", f"bind-port={port}",
    ]


def _gst_video(src: str, dst: str, ssrc: int) -> list[str]:
    frames = int(MEDIA_DURATION_S * VIDEO_FPS)
    # Noise at 240x180 is hard enough to compress that VP8 in CBR mode
    # actually spends its 1.5 Mbit/s target.
    return [
        "gst-launch-1.0", "-q",
        "videotestsrc", "is-live=true", "pattern=snow", f"num-buffers={frames}",
        "!", f"video/x-raw,width=240,height=180,framerate={VIDEO_FPS}/1",
        "!", "vp8enc", f"target-bitrate={VIDEO_TARGET_BPS}", "end-usage=cbr",
        "deadline=1", "cpu-used=16", f"keyframe-max-dist={2 * VIDEO_FPS}",
        "!", "rtpvp8pay", f"mtu={VIDEO_MTU}", f"ssrc={ssrc}",
        "!", "udpsink", f"host={dst}", f"port={RTP_VIDEO_PORT}",
        f"bind-address={src}", f"bind-port={RTP_VIDEO_PORT}",
    ]


def _vp8_source(frames: int, bps: int, name: str = "", size: tuple[int, int] = (240, 180)
                ) -> str:
    return (f"videotestsrc is-live=true pattern=snow num-buffers={frames} "
            f"! video/x-raw,width={size[0]},height={size[1]},framerate={VIDEO_FPS}/1 "
            f"! vp8enc {name} target-bitrate={bps} end-usage=cbr deadline=1 cpu-used=16 "
            f"keyframe-max-dist={2 * VIDEO_FPS}")


def _gst_video_adaptive(src: str, dst: str, ssrc: int) -> list[str]:
    """VP8 at the usual target whose encoder is told to spend only ``ADAPTED_BPS`` from
    ``ADAPT_AFTER_S`` on: the sender's own rate control backing off, on an open path."""
    frames = int(MEDIA_DURATION_S * VIDEO_FPS)
    # A real-time encoder's rate control: a one-second client buffer (the default of six
    # seconds would let it overshoot the new target for seconds), and frames dropped when
    # the buffer runs low, as WebRTC senders lower the frame rate (noise cannot be
    # compressed to the new target at any quantizer).
    options = ("name=enc buffer-size=1000 buffer-initial-size=500 buffer-optimal-size=600 "
               "dropframe-threshold=30")
    pipeline = (f"{_vp8_source(frames, VIDEO_TARGET_BPS, options)} "
                f"! rtpvp8pay mtu={VIDEO_MTU} ssrc={ssrc} "
                f"! udpsink host={dst} port={RTP_VIDEO_PORT} bind-address={src} "
                f"bind-port={RTP_VIDEO_PORT}")
    return [sys.executable, str(HERE / "peer.py"), "gst-adapt", "--pipeline", pipeline,
            "--element", "enc", "--property", "target-bitrate", "--value", str(ADAPTED_BPS),
            "--after", str(ADAPT_AFTER_S)]


def _gst_video_layer(port: int, ssrc: int, bps: int, size: tuple[int, int]) -> list[str]:
    """One simulcast layer, sent to the forwarder on loopback (never on the wire)."""
    frames = int(MEDIA_DURATION_S * VIDEO_FPS)
    return ["gst-launch-1.0", "-q", *_vp8_source(frames, bps, size=size).split(),
            "!", "rtpvp8pay", f"mtu={VIDEO_MTU}", f"ssrc={ssrc}",
            "!", "udpsink", "host=127.0.0.1", f"port={port}"]


def tbf_rules(rate_kbit: int, burst_bytes: int) -> tuple[RuleSpec, ...]:
    """A token bucket on the ISP's egress toward each side."""
    return tuple(
        RuleSpec(
            ("tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{rate_kbit}kbit",
             "burst", str(burst_bytes), "latency", f"{TBF_LATENCY_MS}ms"),
            f"shape everything toward the {side} to {rate_kbit} kbit/s",
        )
        for dev, side in ((ISP_CALLER_IF, "caller"), (ISP_RELAY_IF, "relay"))
    )


class _Schedule:
    """Runs actions at capture-relative times on threads; re-raises their errors."""

    def __init__(self, t0: float) -> None:
        self._t0 = t0
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def at(self, t_s: float, fn: Callable[[], None]) -> None:
        def body() -> None:
            delay = self._t0 + t_s - time.time()
            if delay > 0:
                time.sleep(delay)
            try:
                fn()
            except BaseException as exc:  # handed to join()
                self._errors.append(exc)

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            raise LabError("scheduled lab actions did not finish in time")
        if self._errors:
            raise self._errors[0]


class _Run:
    """One scenario run: lab, servers, capture, rules and the metadata being written."""

    def __init__(self, lab: NetLab, name: str, pcap: Path, workdir: Path) -> None:
        self.lab = lab
        self.name = name
        self.pcap = pcap
        self.workdir = workdir
        self.capture: Capture | None = None
        self._lock = threading.Lock()
        self.rules: list[dict[str, Any]] = []
        self.stun: list[dict[str, Any]] = []
        self.tls: list[dict[str, Any]] = []
        self.tls_server: Background | None = None

    @property
    def t0(self) -> float:
        if self.capture is None:
            raise LabError("capture not started")
        return self.capture.start_epoch

    def rel(self, epoch: float) -> float:
        return round(epoch - self.t0, 6)

    # -- servers on the relay --------------------------------------------------------

    def start_stun_server(self) -> None:
        self.lab.spawn(
            self.lab.relay,
            ["turnserver", "--stun-only", "-n", "--no-cli", "--no-tls", "--no-dtls",
             "-L", RELAY_IP, "--listening-port", str(STUN_PORT), "--log-file", "stdout",
             "--simple-log", "--pidfile", str(self.workdir / "turnserver.pid"),
             "--userdb", str(self.workdir / "turndb")],
            "turnserver",
        )
        self.lab.wait_for_udp_listener(self.lab.relay, STUN_PORT)

    def start_tls_server(self) -> None:
        cert, key = self.workdir / "relay.crt", self.workdir / "relay.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
             f"/CN={APP_SNI}", "-addext", f"subjectAltName=DNS:{APP_SNI},DNS:{CONTROL_SNI}",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=20,
        )
        self.tls_server = self.lab.spawn(
            self.lab.relay,
            [sys.executable, str(HERE / "peer.py"), "tls-server", "--bind", RELAY_IP,
             "--port", str(TLS_PORT), "--cert", str(cert), "--key", str(key)],
            "tls-server",
        )
        self.lab.wait_for_tcp_listener(self.lab.relay, TLS_PORT)

    # -- the censor -----------------------------------------------------------------

    def apply(self, rule: RuleSpec) -> None:
        epoch = time.time()
        self.lab.isp_run(rule.argv)
        done = time.time()
        with self._lock:
            self.rules.append({
                "namespace": "isp",
                "argv": list(rule.argv),
                "purpose": rule.purpose,
                "applied_at_s": self.rel(epoch),
                "applied_at_epoch": epoch,
                "active_from_s": self.rel(done),
            })

    # -- actions --------------------------------------------------------------------

    def stun_probe(self) -> None:
        start = time.time()
        res = self.lab.run(
            self.lab.caller,
            ["timeout", "2", "turnutils_stunclient", "-p", str(STUN_PORT), RELAY_IP],
            timeout=5, check=False,
        )
        with self._lock:
            self.stun.append({
                "t_s": self.rel(start),
                "server": RELAY_IP,
                "port": STUN_PORT,
                "exit_code": res.returncode,
                "client_reported_answer": "reflexive addr" in res.stdout,
            })

    def tls_connect(self, sni: str) -> None:
        start = time.time()
        res = self.lab.run(
            self.lab.caller,
            ["timeout", "4", "openssl", "s_client", "-connect", f"{RELAY_IP}:{TLS_PORT}",
             "-servername", sni, "-quiet"],
            timeout=8, check=False, stdin_data=f"GET / HTTP/1.0\r\nHost: {sni}\r\n\r\n",
        )
        with self._lock:
            self.tls.append({
                "t_s": self.rel(start),
                "sni": sni,
                "server": RELAY_IP,
                "port": TLS_PORT,
                "exit_code": res.returncode,
                "client_got_response": "HTTP/1.0 200 OK" in res.stdout,
            })


def _base_metadata(name: str, description: str, impairment: dict[str, Any]) -> dict[str, Any]:
    return {
        "scenario": name,
        "description": description,
        "impairment": impairment,
        "local": {"role": "caller", "ip": CALLER_IP, "interface": CALLER_IF},
        "remote": {"role": "relay/callee", "ip": RELAY_IP, "interface": RELAY_IF},
        "isp": {"caller_side_ip": ISP_CALLER_IP, "relay_side_ip": ISP_RELAY_IP,
                "caller_side_interface": ISP_CALLER_IF, "relay_side_interface": ISP_RELAY_IF},
    }


def _capture_metadata(run: _Run) -> dict[str, Any]:
    assert run.capture is not None and run.capture.stats is not None
    st = run.capture.stats
    return {
        "file": run.pcap.name,
        "namespace_role": "caller",
        "interface": st.interface,
        "linktype": "EN10MB",
        "start_epoch": st.start_epoch,
        "stop_epoch": st.stop_epoch,
        "duration_s": round(st.stop_epoch - st.start_epoch, 6),
        "packets_captured": st.packets_captured,
        "packets_dropped_by_kernel": st.packets_dropped,
    }


def _sipp_workdir(workdir: Path) -> Path:
    """sipp finds its RTP recordings at pcap/<file> relative to its working directory."""
    link = workdir / "pcap"
    if not link.exists():
        link.symlink_to(SIPP_PCAP_DIR)
    return workdir


def _ott_call(plan: CallPlan, outdir: Path, workdir: Path) -> ScenarioResult:
    pcap = outdir / f"{plan.name}.pcap"
    meta = _base_metadata(plan.name, plan.description, plan.impairment)
    with NetLab(workdir) as lab:
        run = _Run(lab, plan.name, pcap, workdir)
        run.start_stun_server()
        run.start_tls_server()
        sip_info: dict[str, Any] | None = None
        if plan.sip_call:
            _sipp_workdir(workdir)
            lab.spawn(
                lab.relay,
                ["sipp", "-sn", "uas", "-i", RELAY_IP, "-p", str(SIP_PORT), "-mi", RELAY_IP,
                 "-mp", str(SIP_RTP_PORT), "-rtp_echo", "-m", "1", "-nostdin",
                 "-timeout", "30s"],
                "sipp-uas", cwd=workdir,
            )
            lab.wait_for_udp_listener(lab.relay, SIP_PORT)
        if plan.radio_link:
            radio = lab.spawn(lab.isp, [sys.executable, str(HERE / "peer.py"), "nfqueue",
                                        *plan.radio_link], "nfqueue")
            time.sleep(0.3)
            if not radio.running():
                raise LabError(f"nfqueue did not start: {radio.log()[-400:]}")
        ns_of = {"caller": lab.caller, "isp": lab.isp, "relay": lab.relay}
        extra_caps = [(v, lab.capture(outdir / f"{plan.name}@{v.name}.pcap", ns=ns_of[v.role],
                                      interface=v.interface, direction=v.direction))
                      for v in plan.vantages]
        run.capture = lab.capture(pcap)
        for rule in plan.rules_at_start:
            run.apply(rule)
        sched = _Schedule(run.t0)
        for t_s, sni in TLS_TIMES_S:
            sched.at(t_s, functools.partial(run.tls_connect, sni))
        for t_s in STUN_TIMES_S:
            sched.at(t_s, run.stun_probe)
        for t_s, rule in plan.rules_later:
            sched.at(t_s, functools.partial(run.apply, rule))
        direct: dict[str, Any] | None = None
        if plan.direct_path:
            direct = {"peer_ip": PEER_IP, "port": DIRECT_PORT, "stun": []}

            def direct_check(info: dict[str, Any] = direct) -> None:
                start = time.time()
                res = lab.run(lab.caller, ["timeout", "2", "turnutils_stunclient", "-p",
                                           str(DIRECT_PORT), PEER_IP], timeout=5, check=False)
                info["stun"].append({"t_s": run.rel(start), "exit_code": res.returncode,
                                     "client_reported_answer": "reflexive addr" in res.stdout})

            for t_s in (0.5, 3.0):
                sched.at(t_s, direct_check)
        if plan.sip_call:
            sip_info = {}

            def sip_call(info: dict[str, Any] = sip_info) -> None:
                start = time.time()
                res = lab.run(
                    lab.caller,
                    ["sipp", "-sn", "uac_pcap", f"{RELAY_IP}:{SIP_PORT}", "-i", CALLER_IP,
                     "-p", str(SIP_PORT), "-mi", CALLER_IP, "-mp", str(SIP_RTP_PORT),
                     "-m", "1", "-l", "1", "-nostdin", "-timeout", "25s"],
                    cwd=workdir, timeout=30, check=False,
                )
                info.update({"t_s": run.rel(start), "sipp_exit_code": res.returncode,
                             "duration_s": round(time.time() - start, 3)})

            sched.at(0.6, sip_call)

        media: list[dict[str, Any]] = []
        kinds = ["audio", "video"] if plan.video else ["audio"]
        procs = []
        delay = run.t0 + MEDIA_START_S - time.time()
        if delay > 0:
            time.sleep(delay)
        sfu = plan.video_mode in ("sfu", "sfu_switch")
        if sfu:
            # The forwarder first, then the two layers it picks from.
            forwarder = lab.spawn(lab.relay, [
                sys.executable, str(HERE / "peer.py"), "forward",
                "--high-port", str(SFU_HIGH_PORT), "--low-port", str(SFU_LOW_PORT),
                "--bind", RELAY_IP, "--port", str(RTP_VIDEO_PORT), "--dst", CALLER_IP,
                "--dst-port", str(RTP_VIDEO_PORT), "--ssrc", hex(SFU_OUT_SSRC),
                "--switch-after", str(SFU_SWITCH_AFTER_S),
                *(["--no-rewrite"] if plan.video_mode == "sfu_switch" else [])], "forwarder")
            lab.wait_for_udp_listener(lab.relay, SFU_LOW_PORT)
            # Simulcast layers differ in resolution: a quarter of the pixels for the low one
            # (noise at full size cannot be coded at its rate).
            for port, ssrc, bps, size in (
                    (SFU_HIGH_PORT, SFU_LAYER_SSRCS[0], SFU_HIGH_BPS, (240, 180)),
                    (SFU_LOW_PORT, SFU_LAYER_SSRCS[1], SFU_LOW_BPS, (120, 90))):
                procs.append(lab.spawn(lab.relay, _gst_video_layer(port, ssrc, bps, size),
                                       f"gst-layer-{port}"))
        if direct is not None:
            # The direct pair first, from the same local socket as the relayed pair that
            # follows (ICE pairs one local candidate with each remote one); the call
            # moves to the relay once it is given up.
            bg = lab.spawn(lab.caller, _gst_audio(CALLER_IP, PEER_IP, 0x1A2B00D1,
                                                  RTP_AUDIO_PORT, DIRECT_MEDIA_S, DIRECT_PORT),
                           "gst-audio-direct")
            if bg.wait(DIRECT_MEDIA_S + 10) != 0:
                raise LabError(f"{bg.name} failed: {bg.log()[-400:]}")
            direct["media"] = {"src_port": RTP_AUDIO_PORT, "dst_port": DIRECT_PORT,
                               "ssrc": 0x1A2B00D1, "start_s": run.rel(bg.started_epoch),
                               "stop_s": run.rel(time.time()),
                               "nominal_duration_s": DIRECT_MEDIA_S}
        for kind in kinds:
            port = RTP_AUDIO_PORT if kind == "audio" else RTP_VIDEO_PORT
            make = _gst_audio if kind == "audio" else _gst_video
            nominal = audio_nominal() if kind == "audio" else video_nominal()
            for side, ns, src, dst in (("relay", lab.relay, RELAY_IP, CALLER_IP),
                                       ("caller", lab.caller, CALLER_IP, RELAY_IP)):
                if kind == "video" and sfu and side == "relay":
                    rewrite = plan.video_mode == "sfu"
                    media.append({"kind": kind, "direction": "relay_to_caller",
                                  "src_ip": src, "src_port": port, "dst_ip": dst,
                                  "dst_port": port,
                                  "ssrc": SFU_OUT_SSRC if rewrite else list(SFU_LAYER_SSRCS),
                                  "forwarded": {"layers_bps": [SFU_HIGH_BPS, SFU_LOW_BPS],
                                                "switch_after_s": SFU_SWITCH_AFTER_S,
                                                "rewritten": rewrite,
                                                "low_layer_frames_forwarded":
                                                    "every other" if rewrite else "all"},
                                  "nominal_duration_s": MEDIA_DURATION_S})
                    continue
                if kind == "video" and plan.video_mode == "adaptive":
                    make = _gst_video_adaptive
                bg = lab.spawn(ns, make(src, dst, SSRC[(kind, side)]), f"gst-{kind}-{side}")
                procs.append(bg)
                media.append({
                    "kind": kind,
                    "direction": "caller_to_relay" if side == "caller" else "relay_to_caller",
                    "src_ip": src, "src_port": port, "dst_ip": dst, "dst_port": port,
                    "ssrc": SSRC[(kind, side)],
                    "start_s": run.rel(bg.started_epoch),
                    "nominal_duration_s": MEDIA_DURATION_S,
                    "nominal": nominal,
                })
        for bg in procs:
            if bg.wait(MEDIA_DURATION_S + 10) != 0:
                raise LabError(f"{bg.name} failed: {bg.log()[-400:]}")
        media_stop = time.time()
        for m in media:
            m["stop_s"] = run.rel(media_stop)
        sched.join(timeout=30)
        time.sleep(TAIL_S)
        run.capture.stop()
        meta["vantages"] = {}
        for v, cap in extra_caps:
            st = cap.stop()
            meta["vantages"][v.name] = {
                "file": st.pcap_path.name, "namespace_role": v.role, "interface": v.interface,
                "direction": v.direction or "both", "description": v.description,
                "packets_captured": st.packets_captured,
                "packets_dropped_by_kernel": st.packets_dropped}
        if sfu:
            forwarder.stop()
            meta["forwarder"] = json.loads(forwarder.log().strip().splitlines()[-1])
        if plan.radio_link:
            radio.stop(signal.SIGTERM, grace_s=5.0)
            meta["radio_link"] = {"argv": list(plan.radio_link),
                                  **json.loads(radio.log().strip().splitlines()[-1])}
        if direct is not None:
            meta["direct_path"] = direct
        assert run.tls_server is not None
        run.tls_server.stop()
        server_log = [json.loads(line) for line in run.tls_server.log().splitlines()
                      if line.startswith("{")]
        meta["capture"] = _capture_metadata(run)
        meta["rules"] = sorted(run.rules, key=lambda r: float(r["applied_at_s"]))
        meta["media"] = media
        meta["stun"] = {"server": RELAY_IP, "port": STUN_PORT, "tool": "turnutils_stunclient",
                        "requests": sorted(run.stun, key=lambda s: float(s["t_s"]))}
        meta["tls"] = {
            "server": RELAY_IP, "port": TLS_PORT, "app_sni": APP_SNI,
            "control_sni": CONTROL_SNI, "tool": "openssl s_client",
            "connections": sorted(run.tls, key=lambda s: float(s["t_s"])),
            "server_log": [{"t_s": run.rel(float(e["t"])), **{k: v for k, v in e.items()
                                                                 if k != "t"}}
                           for e in server_log],
        }
        meta["ports"] = {"stun": STUN_PORT, "rtp_audio": RTP_AUDIO_PORT, "tls": TLS_PORT}
        if plan.video:
            meta["ports"]["rtp_video"] = RTP_VIDEO_PORT
        if sip_info is not None:
            meta["ports"].update({"sip": SIP_PORT, "sip_rtp": SIP_RTP_PORT})
            meta["sip"] = {"tool": "sipp", "uac_scenario": "uac_pcap", "uas_scenario": "uas",
                           "uas_rtp_echo": True, "calls": 1,
                           "expected_final_status": 200, **sip_info}
    return pcap, meta


def _sip_only(name: str, description: str, uac_xml: str, uas_xml: str, calls: int,
              period_ms: int, final_status: int, outdir: Path,
              workdir: Path) -> ScenarioResult:
    pcap = outdir / f"{name}.pcap"
    meta = _base_metadata(name, description, {"kind": "sip_final_response",
                                               "status": final_status})
    with NetLab(workdir) as lab:
        run = _Run(lab, name, pcap, workdir)
        uas = lab.spawn(
            lab.relay,
            ["sipp", "-sf", str(SIPP_DIR / uas_xml), "-i", RELAY_IP, "-p", str(SIP_PORT),
             "-m", str(calls), "-nostdin", "-timeout", "30s"],
            "sipp-uas", cwd=workdir,
        )
        lab.wait_for_udp_listener(lab.relay, SIP_PORT)
        run.capture = lab.capture(pcap)
        time.sleep(0.3)
        start = time.time()
        res = lab.run(
            lab.caller,
            ["sipp", "-sf", str(SIPP_DIR / uac_xml), f"{RELAY_IP}:{SIP_PORT}", "-i", CALLER_IP,
             "-p", str(SIP_PORT), "-mi", CALLER_IP, "-mp", str(SIP_RTP_PORT),
             "-m", str(calls), "-r", "1", "-rp", str(period_ms), "-nostdin",
             "-timeout", "30s"],
            cwd=workdir, timeout=40, check=False,
        )
        uas_rc = uas.wait(5)
        time.sleep(0.3)
        run.capture.stop()
        if res.returncode != 0 or uas_rc != 0:
            raise LabError(f"{name}: sipp uac rc={res.returncode} uas rc={uas_rc}: "
                           f"{res.stderr[-400:]} {uas.log()[-400:]}")
        meta["capture"] = _capture_metadata(run)
        meta["rules"] = []
        meta["media"] = []
        meta["ports"] = {"sip": SIP_PORT, "sip_rtp_offered": SIP_RTP_PORT}
        meta["sip"] = {
            "tool": "sipp", "transport": "udp", "uac_scenario": uac_xml,
            "uas_scenario": uas_xml, "calls": calls, "call_period_ms": period_ms,
            "t_s": run.rel(start), "duration_s": round(time.time() - start, 3),
            "expected_final_status": final_status, "sipp_exit_code": res.returncode,
        }
    return pcap, meta


# -- the scenarios ---------------------------------------------------------------------


def _plan_runner(plan: CallPlan) -> Callable[[Path, Path], ScenarioResult]:
    def runner(outdir: Path, workdir: Path) -> ScenarioResult:
        return _ott_call(plan, outdir, workdir)

    runner.__name__ = plan.name
    runner.__doc__ = plan.description
    return runner


_BLOCK_UDP = (
    RuleSpec(("iptables", "-A", "FORWARD", "-p", "udp", "-d", RELAY_IP, "-m", "multiport",
              "--dports", CALL_UDP_PORTS, "-j", "DROP"),
             "drop call UDP (STUN and media ports) toward the relay"),
    RuleSpec(("iptables", "-A", "FORWARD", "-p", "udp", "-s", RELAY_IP, "-m", "multiport",
              "--sports", CALL_UDP_PORTS, "-j", "DROP"),
             "drop call UDP (STUN and media ports) from the relay"),
)
# STUN message type 0x0001 (Binding request) in the first 16 bits of the UDP
# payload and the magic cookie 0x2112A442 at payload offset 4 (RFC 8489 section 5).
# u32: "0>>22&0x3C" is the IP header length; "@8" skips the UDP header.
_BLOCK_STUN = (
    RuleSpec(("iptables", "-A", "FORWARD", "-p", "udp", "-m", "u32", "--u32",
              "0>>22&0x3C@8>>16=0x0001&&0>>22&0x3C@12=0x2112A442", "-j", "DROP"),
             "drop STUN Binding requests (type 0x0001 with the magic cookie)"),
)


def _loss_rule(probability: float) -> RuleSpec:
    return RuleSpec(
        ("iptables", "-A", "FORWARD", "-p", "udp", "-m", "multiport", "--ports",
         CALL_UDP_PORTS, "-m", "statistic", "--mode", "random", "--probability",
         f"{probability}", "-j", "DROP"),
        f"drop {probability:.0%} of call UDP at random, both directions",
    )


def _every_nth_rules(every: int) -> tuple[RuleSpec, ...]:
    """Drop every `every`-th call UDP packet arriving on each ISP interface.

    Loss that does not depend on the offered rate, like random loss, but with an exact
    ratio: at 5 % random loss, 500 packets fall under a 3 % threshold about once in 50
    runs, which would make the verdict test flaky.  The 1st packet of each direction
    is never the one dropped (``--packet every-1``), so set-up is not what is hit.
    """
    return tuple(
        RuleSpec(("iptables", "-A", "FORWARD", "-i", dev, "-p", "udp", "-m", "multiport",
                  "--ports", CALL_UDP_PORTS, "-m", "statistic", "--mode", "nth",
                  "--every", str(every), "--packet", str(every - 1), "-j", "DROP"),
                 f"drop every {every}th call UDP packet coming from the {side}")
        for dev, side in ((ISP_CALLER_IF, "caller"), (ISP_RELAY_IF, "relay")))


_RADIO: Final = {"p_good_bad": 0.02, "p_bad_good": 0.12, "loss_good": 0.003,
                 "loss_bad": 0.6, "delay_good_ms": 15, "jitter_good_ms": 25,
                 "delay_bad_ms": 60, "jitter_bad_ms": 80, "seed": 7,
                 "handover_at": 4.0, "handover_s": 3.5, "handover_delay_ms": 160,
                 "handover_loss": 0.15}
"""The radio link of ``mobile_loss``: per packet, good -> bad with 2 %, bad -> good with
12 % (bursts of about 8 packets, a seventh of the time), losing 60 % in a burst and
0.3 % otherwise; one-way delay 15-40 ms, 60-140 ms in a burst. Four seconds in, a 3.5 s
handover: 15 % lost and 160 ms more delay, which then recedes. About 9 % lost in all and
a delay rise well above the throttle rule's 80 ms, but no rate ceiling and no standing
queue (ANCHORS section 7, mobile access)."""

_PLANS: Final = (
    CallPlan("clean", "no interference: the call, STUN, TLS and a SIP call all go through",
             {"kind": "none"}, sip_call=True,
             vantages=(RELAY_END, MID_PATH_CALLER_SIDE, CALLER_INBOUND_ONLY)),
    CallPlan("block_udp", "all call UDP (STUN 3478 and media 30000-30999) dropped both ways",
             {"kind": "block", "protocol": "udp", "ports": CALL_UDP_PORTS}, _BLOCK_UDP),
    CallPlan("block_stun", "only STUN Binding requests dropped (u32 match on type and cookie)",
             {"kind": "block", "protocol": "stun", "message_type": 0x0001}, _BLOCK_STUN),
    CallPlan("throttle_voice_64k", "token bucket of 64 kbit/s toward each side",
             {"kind": "throttle", "rate_kbit": 64, "burst_bytes": 3200,
              "latency_ms": TBF_LATENCY_MS, "directions": ["to_caller", "to_relay"]},
             tbf_rules(64, 3200)),
    CallPlan("throttle_voice_32k", "token bucket of 32 kbit/s toward each side",
             {"kind": "throttle", "rate_kbit": 32, "burst_bytes": 3200,
              "latency_ms": TBF_LATENCY_MS, "directions": ["to_caller", "to_relay"]},
             tbf_rules(32, 3200)),
    CallPlan("throttle_video_500k", "video call through a 500 kbit/s token bucket each way",
             {"kind": "throttle", "rate_kbit": 500, "burst_bytes": 6000,
              "latency_ms": TBF_LATENCY_MS, "directions": ["to_caller", "to_relay"]},
             tbf_rules(500, 6000), video=True,
             vantages=(RELAY_END, MID_PATH_CALLER_SIDE, MID_PATH_RELAY_SIDE,
                       CALLER_INBOUND_ONLY)),
    CallPlan("delayed_throttle", "call starts clean; 32 kbit/s token buckets 4 s into the call",
             {"kind": "throttle", "rate_kbit": 32, "burst_bytes": 3200,
              "latency_ms": TBF_LATENCY_MS, "directions": ["to_caller", "to_relay"],
              "starts_after_media_s": 4.0},
             rules_later=tuple((MEDIA_START_S + 4.0, r) for r in tbf_rules(32, 3200))),
    CallPlan("loss_5", "every 20th call UDP packet (5 %) dropped, in each direction",
             {"kind": "loss", "probability": 0.05, "pattern": "every-nth"},
             _every_nth_rules(20)),
    CallPlan("loss_15", "15 % of call UDP dropped at random, both directions",
             {"kind": "loss", "probability": 0.15}, (_loss_rule(0.15),)),
    CallPlan("relay_fallback",
             "the direct path to the callee's host address is dropped both ways; the call "
             "runs through the relay, which the ISP leaves alone",
             {"kind": "block_direct_path_only", "blocked_host": PEER_IP,
              "relay": RELAY_IP},
             tuple(RuleSpec(("iptables", "-A", "FORWARD", "-p", "udp", flag, PEER_IP,
                             "-j", "DROP"), f"drop all UDP {word} the callee's host address")
                   for flag, word in (("-d", "to"), ("-s", "from"))),
             direct_path=True, vantages=(RELAY_END,)),
    CallPlan("sender_adapts",
             f"no interference; each side's VP8 encoder lowers its own target from "
             f"{VIDEO_TARGET_BPS // 1000} to {ADAPTED_BPS // 1000} kbit/s "
             f"{ADAPT_AFTER_S:.0f} s into the call",
             {"kind": "none", "sender_rate_change": {
                 "from_bps": VIDEO_TARGET_BPS, "to_bps": ADAPTED_BPS,
                 "after_s": ADAPT_AFTER_S}},
             video=True, video_mode="adaptive", vantages=(RELAY_END,)),
    CallPlan("sfu_forwarding",
             "no interference; the relay forwards one of two simulcast video layers "
             "(high, then the low one at half its frame rate), rewritten into one stream",
             {"kind": "none", "forwarding": {
                 "layers_bps": [SFU_HIGH_BPS, SFU_LOW_BPS],
                 "switch_after_s": SFU_SWITCH_AFTER_S}},
             video=True, video_mode="sfu"),
    CallPlan("sfu_ssrc_switch",
             "no interference; the relay forwards the high simulcast layer, then the low "
             "one, each with its own SSRC, numbers and timestamps (a layer switch the "
             "receiver sees as one stream stopping and another starting)",
             {"kind": "none", "forwarding": {
                 "layers_bps": [SFU_HIGH_BPS, SFU_LOW_BPS],
                 "switch_after_s": SFU_SWITCH_AFTER_S, "rewritten": False}},
             video=True, video_mode="sfu_switch"),
    CallPlan("mobile_loss",
             "a radio-like link: bursts of heavy loss with delay spikes (Gilbert-Elliott, "
             "per direction) between good stretches with small jitter; no rate limit",
             {"kind": "bursty_loss", "model": "gilbert-elliott", **_RADIO},
             tuple(RuleSpec(("iptables", "-A", "FORWARD", "-i", dev, "-p", "udp", "-m",
                             "multiport", "--ports", CALL_UDP_PORTS, "-j", "NFQUEUE",
                             "--queue-num", str(num)),
                            f"hand call UDP coming from the {side} to the radio-link model")
                   for (dev, num), side in zip(NFQUEUE_NUMS.items(), ("caller", "relay"),
                                               strict=True)),
             radio_link=(*(a for k, v in _RADIO.items()
                           for a in (f"--{k.replace('_', '-')}", str(v))),
                         "--queues", *(str(n) for n in NFQUEUE_NUMS.values())),
             vantages=(RELAY_END,)),
    CallPlan("tcp_reset_443", "every TCP connection to port 443 answered with a RST",
             {"kind": "tcp_reset", "port": TLS_PORT},
             (RuleSpec(("iptables", "-A", "FORWARD", "-p", "tcp", "--dport", str(TLS_PORT),
                        "-j", "REJECT", "--reject-with", "tcp-reset"),
                       "reset every TCP connection to port 443"),)),
    CallPlan("sni_reset", f"TLS connections whose ClientHello names {APP_SNI} are reset",
             {"kind": "sni_reset", "port": TLS_PORT, "sni": APP_SNI},
             (RuleSpec(("iptables", "-A", "FORWARD", "-p", "tcp", "--dport", str(TLS_PORT),
                        "-m", "string", "--algo", "bm", "--string", APP_SNI,
                        "-j", "REJECT", "--reject-with", "tcp-reset"),
                       f"reset TCP segments to 443 carrying the string {APP_SNI}"),)),
)


def _sip_rejected(outdir: Path, workdir: Path) -> ScenarioResult:
    """The callee declines each of three calls with 603 Decline after ringing."""
    return _sip_only("sip_rejected", "callee rings, then declines each call with 603 Decline",
                     "uac_rejected.xml", "uas_rejected.xml", calls=3, period_ms=3000,
                     final_status=603, outdir=outdir, workdir=workdir)


def _sip_no_answer(outdir: Path, workdir: Path) -> ScenarioResult:
    """The callee rings and never answers; the caller cancels after 4 s, twice."""
    return _sip_only("sip_no_answer",
                     "callee rings (180) and never answers; caller CANCELs, callee sends 487",
                     "uac_cancel.xml", "uas_no_answer.xml", calls=2, period_ms=5000,
                     final_status=487, outdir=outdir, workdir=workdir)


SCENARIOS: Final[dict[str, Callable[[Path, Path], ScenarioResult]]] = {
    **{plan.name: _plan_runner(plan) for plan in _PLANS},
    "sip_rejected": _sip_rejected,
    "sip_no_answer": _sip_no_answer,
}
"""Every scenario by name, in run order: fn(outdir, workdir) -> (pcap, metadata)."""

REQUIRED_TOOLS: Final = ("ip", "iptables", "tc", "ss", "tcpdump", "turnserver",
                         "turnutils_stunclient", "sipp", "gst-launch-1.0", "openssl",
                         "timeout")


def run_scenario(name: str, outdir: Path) -> ScenarioResult:
    """Run one scenario in a scratch directory; write ``<name>.pcap`` and ``<name>.json``."""
    outdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"marsad-lab-{name}-"))
    started = time.time()
    try:
        pcap, meta = SCENARIOS[name](outdir, workdir)
    except BaseException:
        sys.stderr.write(f"lab scenario {name} failed; logs kept in {workdir}\n")
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    meta["wall_time_s"] = round(time.time() - started, 3)
    (outdir / f"{name}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return pcap, meta


def missing_tools(extra: Sequence[str] = ()) -> list[str]:
    """Executables the lab needs that are not installed."""
    return [t for t in (*REQUIRED_TOOLS, *extra) if shutil.which(t) is None]
