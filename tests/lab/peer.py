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
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
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
    args = parser.parse_args(argv)
    if args.cmd == "tls-server":
        return _serve_tls(args)
    if args.cmd == "tx-csum-off":
        return _tx_checksum_off(args.ifnames)
    parser.error(f"unknown command {args.cmd}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
