"""Small lab helpers where no installed tool fits: a TLS server, checksum offload off.

``tls-server``: a TLS server for the relay namespace, many concurrent
handshakes, each with an SNI.

`openssl s_server` serves one connection at a time and waits forever for the
ClientHello of a connection whose ClientHello a censor dropped, which would
stall every later connection of the scenario.  This server handles each
connection on its own thread with a socket timeout, answers a one-line HTTP
request, and logs one JSON line per connection (the SNI it saw, whether the
handshake finished) so the scenario can tell what reached the far side.

Run: ``python peer.py tls-server --bind IP --port 443 --cert C --key K``.

``tx-csum-off IFNAME...``: veth devices leave the transport checksum to a
later stage (transmit checksum offload), so a capture would show partial,
invalid checksums on every packet.  This turns the offload off through the
SIOCETHTOOL ioctl (what ``ethtool -K IF tx off`` does) so that the kernel
fills in real checksums, as a mirror port would show them.

``gst-adapt --pipeline DESC --element NAME --property P --value V --after S``: runs a
GStreamer pipeline (through the library itself, by ctypes: this machine has no Python
GStreamer bindings) and sets one property of one element S seconds after it started,
as a sender's congestion control lowers its encoder's target bit rate mid-call.

``forward``: a forwarding media server (an SFU) in miniature. It receives two
simulcast layers of one video (two SSRCs on two loopback ports), forwards to the
receiver only one of them at a time — the high layer, then from ``--switch-after``
seconds the low layer with every other frame left out (a temporal layer dropped) —
and rewrites SSRC, sequence numbers and timestamps so the receiver sees one
continuous stream, as SFUs that rewrite do (RFC 7667 section 3.7, RFC 8853). With
``--no-rewrite`` it passes each layer's packets untouched (all its frames): the
receiver sees the high layer's SSRC stop and the low layer's start.

``nfqueue``: a mobile radio link on the ISP's forwarding path: call UDP is handed
to user space through NFQUEUE (this kernel has no netem) and each packet is dropped
or delayed by a two-state Gilbert-Elliott model per direction — rare long bursts of
heavy loss with delay spikes (link-layer retransmissions) between long good stretches
with small jitter, and optionally one handover: from ``--handover-at`` seconds after
a direction's first packet, for ``--handover-s`` seconds, every packet waits
``--handover-delay-ms`` longer and ``--handover-loss`` of them are lost; then the delay
recedes.  Packets of one direction leave in order.  Speaks
the nfnetlink_queue protocol over a raw netlink socket (no library needed).
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import heapq
import json
import os
import random
import select
import signal
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

_HANDSHAKE_TIMEOUT_S = 5.0
_RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"


class _TlsHandler(socketserver.BaseRequestHandler):
    server: _TlsServer

    def handle(self) -> None:
        raw: socket.socket = self.request
        raw.settimeout(_HANDSHAKE_TIMEOUT_S)
        seen: dict[str, str | None] = {"sni": None}

        def on_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
            seen["sni"] = name

        ctx = self.server.make_context(on_sni)
        entry: dict[str, object] = {"t": time.time(), "peer": self.client_address[0],
                                    "peer_port": self.client_address[1]}
        try:
            with ctx.wrap_socket(raw, server_side=True) as tls:
                entry["handshake"] = True
                entry["version"] = tls.version()
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 8192:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                tls.sendall(_RESPONSE)
                entry["request_bytes"] = len(request)
                # close_notify before the TCP FIN (RFC 8446 section 6.1).
                tls.unwrap()
        except (OSError, ssl.SSLError) as exc:
            entry.setdefault("handshake", False)
            entry["error"] = type(exc).__name__
        entry["sni"] = seen["sni"]
        self.server.log(entry)


class _TlsServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], cert: str, key: str) -> None:
        super().__init__(addr, _TlsHandler)
        self._cert = cert
        self._key = key
        self._lock = threading.Lock()

    def make_context(
        self, on_sni: Callable[[ssl.SSLObject, str | None, ssl.SSLContext], None]
    ) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self._cert, self._key)
        ctx.sni_callback = on_sni
        return ctx

    def log(self, entry: dict[str, object]) -> None:
        with self._lock:
            sys.stdout.write(json.dumps(entry) + "\n")
            sys.stdout.flush()


def _serve_tls(args: argparse.Namespace) -> int:
    server = _TlsServer((args.bind, args.port), args.cert, args.key)

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return 0


# linux/sockios.h and linux/ethtool.h
_SIOCETHTOOL = 0x8946
_ETHTOOL_GTXCSUM = 0x16
_ETHTOOL_STXCSUM = 0x17
_IFNAMSIZ = 16


def _ethtool_value(ifname: str, cmd: int, data: int = 0) -> int:
    """One `struct ethtool_value` request (u32 cmd, u32 data) on `ifname`."""
    buf = ctypes.create_string_buffer(struct.pack("=II", cmd, data), 8)
    ifreq = struct.pack(f"{_IFNAMSIZ}sP", ifname.encode(), ctypes.addressof(buf))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifreq)
    return int(struct.unpack("=II", buf.raw)[1])


def _tx_checksum_off(ifnames: list[str]) -> int:
    for ifname in ifnames:
        _ethtool_value(ifname, _ETHTOOL_STXCSUM, 0)
        if _ethtool_value(ifname, _ETHTOOL_GTXCSUM) != 0:
            sys.stderr.write(f"{ifname}: transmit checksum offload still on\n")
            return 1
    return 0


# -- gst-adapt -------------------------------------------------------------------------

_GST_STATE_NULL = 1
_GST_STATE_PLAYING = 4
_GST_MESSAGE_EOS = 1 << 0
_GST_MESSAGE_ERROR = 1 << 1


def _gst_adapt(args: argparse.Namespace) -> int:
    gst = ctypes.CDLL("libgstreamer-1.0.so.0")
    gobject = ctypes.CDLL("libgobject-2.0.so.0")
    gst.gst_init(None, None)
    gst.gst_parse_launch.restype = ctypes.c_void_p
    gst.gst_parse_launch.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    gst.gst_bin_get_by_name.restype = ctypes.c_void_p
    gst.gst_bin_get_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    gst.gst_element_set_state.argtypes = [ctypes.c_void_p, ctypes.c_int]
    gst.gst_element_get_bus.restype = ctypes.c_void_p
    gst.gst_element_get_bus.argtypes = [ctypes.c_void_p]
    gst.gst_bus_timed_pop_filtered.restype = ctypes.c_void_p
    gst.gst_bus_timed_pop_filtered.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
    err = ctypes.c_void_p()
    pipe = gst.gst_parse_launch(args.pipeline.encode(), ctypes.byref(err))
    if not pipe or err.value:
        sys.stderr.write(f"cannot build the pipeline: {args.pipeline}\n")
        return 1
    element = gst.gst_bin_get_by_name(pipe, args.element.encode())
    if not element:
        sys.stderr.write(f"no element named {args.element}\n")
        return 1
    gst.gst_element_set_state(pipe, _GST_STATE_PLAYING)
    bus = gst.gst_element_get_bus(pipe)
    started = time.monotonic()
    changed_at: float | None = None
    rc = 0
    while True:
        if changed_at is None and time.monotonic() - started >= args.after:
            gobject.g_object_set(ctypes.c_void_p(element), args.property.encode(),
                                 ctypes.c_int(args.value), ctypes.c_void_p(None))
            changed_at = time.monotonic() - started
        if gst.gst_bus_timed_pop_filtered(bus, 20_000_000, _GST_MESSAGE_EOS):
            break
        if gst.gst_bus_timed_pop_filtered(bus, 0, _GST_MESSAGE_ERROR):
            sys.stderr.write("the pipeline reported an error\n")
            rc = 1
            break
    gst.gst_element_set_state(pipe, _GST_STATE_NULL)
    sys.stdout.write(json.dumps({"property": args.property, "value": args.value,
                                 "changed_after_s": changed_at}) + "\n")
    return rc


# -- forward (a simulcast forwarder) -----------------------------------------------------

_VIDEO_FRAME_TICKS = 90000 // 25


def _forward(args: argparse.Namespace) -> int:
    """High layer first, then the low layer at half its frame rate, as one rewritten stream."""
    high = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    high.bind(("127.0.0.1", args.high_port))
    low = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    low.bind(("127.0.0.1", args.low_port))
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.bind((args.bind, args.port))
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    seq = args.seq_start
    ts_offset: int | None = None  # added to the layer's own timestamp
    layer_in_use: socket.socket | None = None
    last_out_ts = 0
    frames_seen: dict[int, int] = {}  # low layer: timestamp -> frame index
    counts = {"high_in": 0, "low_in": 0, "forwarded": 0, "left_out": 0}
    idle_since = time.monotonic()
    while not stop.is_set():
        ready, _, _ = select.select([high, low], [], [], 0.1)
        if not ready:
            if counts["forwarded"] and time.monotonic() - idle_since > args.idle_exit_s:
                break
            continue
        idle_since = time.monotonic()
        for sock in ready:
            data = sock.recv(2048)
            if len(data) < 12:
                continue
            counts["high_in" if sock is high else "low_in"] += 1
            wanted = high if time.monotonic() - started < args.switch_after else low
            if sock is not wanted:
                counts["left_out"] += 1
                continue
            ts = int.from_bytes(data[4:8], "big")
            if args.no_rewrite:
                # As some servers do: the layer's own SSRC, numbers and timestamps, so
                # the receiver sees one stream end and another begin.
                out.sendto(data, (args.dst, args.dst_port))
                counts["forwarded"] += 1
                continue
            if sock is low:
                index = frames_seen.setdefault(ts, len(frames_seen))
                if index % 2:
                    counts["left_out"] += 1  # the upper temporal layer is not forwarded
                    continue
            if layer_in_use is not sock:
                # A layer switch: go on one frame after the last timestamp sent.
                base = last_out_ts + _VIDEO_FRAME_TICKS if layer_in_use is not None \
                    else args.ts_start
                ts_offset = base - ts
                layer_in_use = sock
            assert ts_offset is not None
            out_ts = (ts + ts_offset) & 0xFFFFFFFF
            last_out_ts = out_ts
            packet = (data[:2] + (seq & 0xFFFF).to_bytes(2, "big") + out_ts.to_bytes(4, "big")
                      + args.ssrc.to_bytes(4, "big") + data[12:])
            seq += 1
            out.sendto(packet, (args.dst, args.dst_port))
            counts["forwarded"] += 1
    sys.stdout.write(json.dumps(counts) + "\n")
    return 0


# -- nfqueue (a lossy, jittery radio link) ------------------------------------------------

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_QUEUE = 3
_NFQNL_MSG_PACKET = 0
_NFQNL_MSG_VERDICT = 1
_NFQNL_MSG_CONFIG = 2
_NFQA_PACKET_HDR = 1
_NFQA_VERDICT_HDR = 2
_NFQA_CFG_CMD = 1
_NFQA_CFG_PARAMS = 2
_NFQNL_CFG_CMD_BIND = 1
_NFQNL_COPY_META = 1
_NLM_F_REQUEST = 1
_NLM_F_ACK = 4
_NLMSG_ERROR = 2
_NF_DROP = 0
_NF_ACCEPT = 1


def _nla(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def _nfq_msg(kind: int, flags: int, seq: int, queue: int, attrs: bytes) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (_NFNL_SUBSYS_QUEUE << 8) | kind, flags,
                       seq, 0) + body


class _GilbertElliott:
    """Two-state loss and delay model of one direction of a radio link."""

    def __init__(self, rng: random.Random, args: argparse.Namespace) -> None:
        self.rng = rng
        self.args = args
        self.bad = False
        self.release_at = 0.0  # FIFO: a packet never leaves before the one ahead of it
        self.bursts = 0
        self.first: float | None = None
        self.handover_packets = 0

    def step(self, now: float) -> float | None:
        """Release time of the next packet, or None to drop it."""
        a = self.args
        if self.first is None:
            self.first = now
        since = now - self.first
        if a.handover_s > 0 and a.handover_at <= since < a.handover_at + a.handover_s:
            self.handover_packets += 1
            if self.rng.random() < a.handover_loss:
                return None
            extra = a.handover_delay_ms + self.rng.random() * a.jitter_good_ms
            self.release_at = max(self.release_at, now + extra / 1e3)
            return self.release_at
        if self.bad:
            self.bad = self.rng.random() >= a.p_bad_good
        else:
            self.bad = self.rng.random() < a.p_good_bad
            self.bursts += self.bad
        loss = a.loss_bad if self.bad else a.loss_good
        if self.rng.random() < loss:
            return None
        base, spread = (a.delay_bad_ms, a.jitter_bad_ms) if self.bad else \
            (a.delay_good_ms, a.jitter_good_ms)
        self.release_at = max(self.release_at, now + (base + self.rng.random() * spread) / 1e3)
        return self.release_at


def _nfqueue(args: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((0, 0))
    seq = 0
    for queue in args.queues:
        for attr in (_nla(_NFQA_CFG_CMD, struct.pack("=BBH", _NFQNL_CFG_CMD_BIND, 0,
                                                     socket.htons(socket.AF_INET))),
                     _nla(_NFQA_CFG_PARAMS, struct.pack("!IB", 0, _NFQNL_COPY_META))):
            seq += 1
            sock.send(_nfq_msg(_NFQNL_MSG_CONFIG, _NLM_F_REQUEST | _NLM_F_ACK, seq, queue, attr))
            reply = sock.recv(65536)
            length, kind = struct.unpack_from("=IH", reply)
            if kind == _NLMSG_ERROR and struct.unpack_from("=i", reply, 16)[0] != 0:
                sys.stderr.write(f"NFQUEUE config of queue {queue} refused: "
                                 f"{os.strerror(-struct.unpack_from('=i', reply, 16)[0])}\n")
                return 1
    # One generator per direction: the n-th packet of a direction meets the same fate on
    # every run, however the two directions interleave.
    links = {q: _GilbertElliott(random.Random(args.seed * 1000 + q), args)
             for q in args.queues}
    held: list[tuple[float, int, int, int]] = []  # (release, order, queue, packet id)
    counts = {q: {"packets": 0, "dropped": 0} for q in args.queues}
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    order = 0

    def verdict(queue: int, packet_id: int, what: int) -> None:
        nonlocal seq
        seq += 1
        sock.send(_nfq_msg(_NFQNL_MSG_VERDICT, _NLM_F_REQUEST, seq, queue,
                           _nla(_NFQA_VERDICT_HDR, struct.pack("!II", what, packet_id))))

    while not stop.is_set() or held:
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, _, queue, held_id = heapq.heappop(held)
            verdict(queue, held_id, _NF_ACCEPT)
        if stop.is_set():
            time.sleep(0.001)
            continue
        wait = min(held[0][0] - now, 0.05) if held else 0.05
        ready, _, _ = select.select([sock], [], [], max(wait, 0.0))
        if not ready:
            continue
        data = sock.recv(65536)
        now = time.monotonic()
        off = 0
        while off + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, off)
            if length < 16:
                break
            if kind == (_NFNL_SUBSYS_QUEUE << 8) | _NFQNL_MSG_PACKET:
                queue = struct.unpack_from("!H", data, off + 18)[0]
                pos = off + 20
                packet_id: int | None = None
                while pos + 4 <= off + length:
                    alen, atype = struct.unpack_from("=HH", data, pos)
                    if alen < 4:
                        break
                    if atype & 0x3FFF == _NFQA_PACKET_HDR:
                        packet_id = struct.unpack_from("!I", data, pos + 4)[0]
                    pos += (alen + 3) & ~3
                if packet_id is not None and queue in links:
                    counts[queue]["packets"] += 1
                    release = links[queue].step(now)
                    if release is None:
                        counts[queue]["dropped"] += 1
                        verdict(queue, packet_id, _NF_DROP)
                    else:
                        order += 1
                        heapq.heappush(held, (release, order, queue, packet_id))
            off += (length + 3) & ~3
    sys.stdout.write(json.dumps({"queues": {str(q): {**counts[q], "bursts": links[q].bursts,
                                                     "handover_packets":
                                                         links[q].handover_packets}
                                            for q in args.queues}}) + "\n")
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    tls = sub.add_parser("tls-server", help="threaded TLS server that logs each SNI")
    tls.add_argument("--bind", required=True)
    tls.add_argument("--port", type=int, default=443)
    tls.add_argument("--cert", required=True)
    tls.add_argument("--key", required=True)
    csum = sub.add_parser("tx-csum-off", help="turn transmit checksum offload off")
    csum.add_argument("ifnames", nargs="+")
    adapt = sub.add_parser("gst-adapt", help="a GStreamer pipeline whose element changes a "
                                             "property mid-run")
    adapt.add_argument("--pipeline", required=True)
    adapt.add_argument("--element", required=True)
    adapt.add_argument("--property", required=True)
    adapt.add_argument("--value", type=int, required=True)
    adapt.add_argument("--after", type=float, required=True)
    fwd = sub.add_parser("forward", help="forward one of two simulcast layers, rewritten")
    fwd.add_argument("--high-port", type=int, required=True)
    fwd.add_argument("--low-port", type=int, required=True)
    fwd.add_argument("--bind", required=True)
    fwd.add_argument("--port", type=int, required=True)
    fwd.add_argument("--dst", required=True)
    fwd.add_argument("--dst-port", type=int, required=True)
    fwd.add_argument("--ssrc", type=lambda v: int(v, 0), required=True)
    fwd.add_argument("--switch-after", type=float, required=True)
    fwd.add_argument("--seq-start", type=int, default=1000)
    fwd.add_argument("--ts-start", type=int, default=90000)
    fwd.add_argument("--idle-exit-s", type=float, default=1.5)
    fwd.add_argument("--no-rewrite", action="store_true",
                     help="forward each layer's packets as they are (an SSRC switch)")
    nfq = sub.add_parser("nfqueue", help="Gilbert-Elliott loss and delay on NFQUEUE queues")
    nfq.add_argument("--queues", type=int, nargs="+", required=True)
    nfq.add_argument("--seed", type=int, default=1)
    nfq.add_argument("--p-good-bad", type=float, required=True)
    nfq.add_argument("--p-bad-good", type=float, required=True)
    nfq.add_argument("--loss-good", type=float, required=True)
    nfq.add_argument("--loss-bad", type=float, required=True)
    nfq.add_argument("--delay-good-ms", type=float, required=True)
    nfq.add_argument("--jitter-good-ms", type=float, required=True)
    nfq.add_argument("--delay-bad-ms", type=float, required=True)
    nfq.add_argument("--jitter-bad-ms", type=float, required=True)
    nfq.add_argument("--handover-at", type=float, default=0.0)
    nfq.add_argument("--handover-s", type=float, default=0.0)
    nfq.add_argument("--handover-delay-ms", type=float, default=0.0)
    nfq.add_argument("--handover-loss", type=float, default=0.0)
    args = parser.parse_args(argv)
    if args.cmd == "gst-adapt":
        return _gst_adapt(args)
    if args.cmd == "forward":
        return _forward(args)
    if args.cmd == "nfqueue":
        return _nfqueue(args)
    if args.cmd == "tls-server":
        return _serve_tls(args)
    if args.cmd == "tx-csum-off":
        return _tx_checksum_off(args.ifnames)
    parser.error(f"unknown command {args.cmd}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
