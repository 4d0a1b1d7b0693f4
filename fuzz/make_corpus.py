"""Build the seed corpus of every fuzz target from the bundled captures.

    python fuzz/make_corpus.py [--out fuzz/corpus]

Reads ``captures/*.pcap*``, ``captures/apps/*.pcap`` and the DPI vectors in
``tests/vectors/dpi``, and writes, per target, small inputs in the layout
:mod:`fuzz.targets` describes: capture files cut to their first records (pcap, and
the same packets rewritten as pcapng with a few interface options), groups of packets
with their link type (decode), and transport payloads routed to the inspectors that
accept them (DNS, TLS, QUIC, ...), each flow's samples for ``inspect``. Files are named
by the SHA-1 of their content; the output is the same on every run. Each target keeps
at most :data:`PER_TARGET` files of at most :data:`MAX_FILE` bytes, so the committed
corpus stays a few hundred KB.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import shutil
import struct
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from classifier.dpi import dns, dtls, framings, quic, rtp, sip, stun, telephony, tls  # noqa: E402
from fuzz.targets import LINKTYPES, PORTS, SEP, TARGETS  # noqa: E402
from probe.errors import ParseError  # noqa: E402
from probe.records import PayloadSamples  # noqa: E402
from probe.run import read_capture  # noqa: E402

PER_TARGET = 40
"""Most files per target."""
MAX_FILE = 4096
"""Largest seed (bytes); captures are cut to whole records below it."""
MAX_RECORDS = 12
"""Most records of a capture seed."""


class Corpus:
    """Seeds per target, deduplicated by content, kept in the order they came."""

    def __init__(self) -> None:
        self.seeds: dict[str, dict[str, bytes]] = {name: {} for name in TARGETS}

    def add(self, target: str, data: bytes) -> None:
        if not data or len(data) > MAX_FILE:
            return
        self.seeds[target].setdefault(hashlib.sha1(data).hexdigest()[:16], data)

    def write(self, out: Path) -> dict[str, int]:
        sizes = {}
        for target, seeds in self.seeds.items():
            d = out / target
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
            chosen = _spread(list(seeds.items()), PER_TARGET)
            for name, data in chosen:
                (d / name).write_bytes(data)
            sizes[target] = len(chosen)
        return sizes


def _spread(items: list[tuple[str, bytes]], k: int) -> list[tuple[str, bytes]]:
    """At most ``k`` items spread evenly over the list (it is grouped by capture)."""
    if len(items) <= k:
        return items
    return [items[i * len(items) // k] for i in range(k)]


def _pcap_records(raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], str, int] | None:
    """(file header, [(record header, data)], endianness, link type) of a classic pcap."""
    if len(raw) < 24:
        return None
    for e in ("<", ">"):
        magic = struct.unpack(e + "I", raw[:4])[0]
        if magic in (0xA1B2C3D4, 0xA1B23C4D):
            break
    else:
        return None
    lt = struct.unpack(e + "I", raw[20:24])[0] & 0x0FFFFFFF
    recs = []
    p = 24
    while p + 16 <= len(raw):
        n = struct.unpack(e + "I", raw[p + 8:p + 12])[0]
        if p + 16 + n > len(raw):
            break
        recs.append((raw[p:p + 16], raw[p + 16:p + 16 + n]))
        p += 16 + n
    return raw[:24], recs, e, lt


def _cut(head: bytes, recs: list[tuple[bytes, bytes]]) -> bytes:
    out = bytearray(head)
    for hdr, data in recs[:MAX_RECORDS]:
        if len(out) + 16 + len(data) > MAX_FILE:
            break
        out += hdr + data
    return bytes(out)


def _ng_block(btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def _as_pcapng(lt: int, e: str, recs: list[tuple[bytes, bytes]], nano: bool) -> bytes:
    """The records as pcapng: SHB, an IDB with if_tsresol and if_tsoffset, EPBs."""
    shb = _ng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = struct.pack("<HHB3x", 9, 1, 9 if nano else 6) + struct.pack("<HHq", 14, 8, 0)
    opts += struct.pack("<HH", 0, 0)
    idb = _ng_block(1, struct.pack("<HHI", lt, 0, 0) + opts)
    out = bytearray(shb + idb)
    for hdr, data in recs[:MAX_RECORDS]:
        sec, frac, _, wire = struct.unpack(e + "IIII", hdr)
        ts = sec * (10**9 if nano else 10**6) + frac
        epb = _ng_block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), wire)
                        + data)
        if len(out) + len(epb) > MAX_FILE:
            break
        out += epb
    return bytes(out)


def _capture_seeds(c: Corpus, path: Path) -> None:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        c.add("pcap" if b"\x0a\x0d\x0d\x0a" not in gzip.decompress(raw)[:4] else "pcapng", raw)
        with contextlib.suppress(OSError, EOFError):
            raw = gzip.decompress(raw)
    if raw[:4] == b"\x0a\x0d\x0d\x0a":
        c.add("pcapng", raw[:MAX_FILE])
        c.add("gzip", raw[:MAX_FILE])
        return
    parsed = _pcap_records(raw)
    if parsed is None:
        c.add("pcap", raw[:MAX_FILE])
        return
    head, recs, e, lt = parsed
    nano = struct.unpack(e + "I", raw[:4])[0] == 0xA1B23C4D
    c.add("pcap", _cut(head, recs))
    if len(recs) > 2 * MAX_RECORDS:  # a second window from the middle of a long capture
        c.add("pcap", _cut(head, recs[len(recs) // 2:]))
    c.add("gzip", _cut(head, recs))
    c.add("pcapng", _as_pcapng(lt, e, recs, nano))
    if lt in LINKTYPES:
        code = bytes([LINKTYPES.index(lt)])
        for start in range(0, min(len(recs), 40), 4):
            group = b"".join(len(d).to_bytes(2, "big") + d for _, d in recs[start:start + 4])
            c.add("decode", code + group)


def _accepts(fn: Callable[[], object]) -> bool:
    try:
        return fn() is not None
    except ParseError:
        return False


def _payload_seeds(c: Corpus, samples: list[tuple[int, bytes]], proto: str,
                   ports: tuple[int, int]) -> None:
    orig = [d for direction, d in samples if direction == 0 and d]
    every = [d for _, d in samples if d]
    for d in every:
        if _accepts(lambda d=d: dns.parse_dns(d)) or _accepts(lambda d=d: dns.parse_dns_tcp(d)):
            c.add("dns", d)
        if d[:1] in (b"\x15", b"\x16") and _accepts(lambda d=d: tls.parse_records(d)):
            c.add("tls", d)
        if _accepts(lambda d=d: stun.parse_stun_payload(d, tcp=proto == "tcp")):
            c.add("stun", d)
        if _accepts(lambda d=d: rtp.parse_rtcp(d)) or (len(c.seeds["rtp"]) < 200
                                                      and _accepts(lambda d=d: rtp.parse_rtp(d))):
            c.add("rtp", d[:512])
        if _accepts(lambda d=d: sip.parse_sip(d, tcp=proto == "tcp")):
            c.add("sip", d)
        if any(_accepts(lambda f=f, d=d: f(d)) for f in (  # type: ignore[misc]
                framings.parse_zoom_sfu, framings.parse_discord, framings.parse_telegram_relay,
                framings.parse_whatsapp_prologue, framings.parse_zoom_p2p_hello)) or \
                _accepts(lambda d=d: framings.parse_viber(d, tcp=proto == "tcp")):
            c.add("framings", d)
        if any(f(d) is not None for f in (telephony.parse_mgcp, telephony.parse_h225_tpkt,
                                         telephony.parse_sccp, telephony.parse_agora)):
            c.add("telephony", d)
    if orig and orig[0][:1] and orig[0][0] & 0x80 and _accepts(
            lambda: quic.inspect_client(orig[:4])):
        c.add("quic", SEP.join(orig[:4]))
        for header in _quietly_list(lambda: quic.split_datagram(orig[0])):
            with contextlib.suppress(ParseError):
                keys = quic.initial_keys(header.version, header.dcid)
                _, plain = quic.decrypt_initial(orig[0], header, keys)
                c.add("quic", b"P" + plain.rstrip(b"\x00"))
    if every and every[0][:1] in (b"\x14", b"\x15", b"\x16", b"\x17") and _accepts(
            lambda: dtls.handshake_messages(every[:6])):
        c.add("dtls", SEP.join(every[:6]))
    if samples:
        head = bytes([1 if proto == "tcp" else 0, _port_index(ports[0]), _port_index(ports[1])])
        c.add("inspect", head + SEP.join(bytes([direction]) + d[:600]
                                         for direction, d in samples[:8]))


def _quietly_list(fn: Callable[[], Iterable[quic.LongHeader]]) -> list[quic.LongHeader]:
    try:
        return list(fn())
    except ParseError:
        return []


def _port_index(port: int) -> int:
    return PORTS.index(port) if port in PORTS else len(PORTS) - 2


def _flow_seeds(c: Corpus, path: Path) -> None:
    try:
        run = read_capture(path)
    except Exception:
        return
    for f in run.flows:
        pay = f.payloads
        items = pay.items() if isinstance(pay, PayloadSamples) else tuple(pay)
        samples = [(p.direction, p.data) for p in items]
        _payload_seeds(c, samples, f.proto, (f.orig_p, f.resp_p))


def _vector_seeds(c: Corpus) -> None:
    vectors = ROOT / "tests" / "vectors" / "dpi"
    for path in sorted(vectors.glob("*.bin")):
        d = path.read_bytes()
        proto = "tcp" if path.name.startswith("443-") else "udp"
        _payload_seeds(c, [(0, d)], proto, (50000, 443 if "quic" in path.name else 3478))


def _extras(c: Corpus) -> None:
    """Layouts no bundled capture holds: telephony control messages, a Mumble ping."""
    c.add("telephony", b"CRCX 1204 aaln/1@rgw.example.net MGCP 1.0\r\nC: A3C47F21456789F0\r\n")
    c.add("telephony", b"200 1204 OK\r\n")
    c.add("telephony", b"\x03\x00\x00\x10\x08\x02\x00\x01\x05\x04\x03\x80\x90\xa2\x18\x01")
    c.add("telephony", struct.pack("<III", 4, 0x12, 0x0000) + b"\x00\x00\x00\x00")
    c.add("telephony", bytes(4) + b"\x01\x02\x03\x04\x05\x06\x07\x08" + SEP
          + b"\x00\x01\x04\x00" + b"\x01\x02\x03\x04\x05\x06\x07\x08" + bytes(12))
    c.add("telephony", b"\x11\x22\x33\x44\x00\x00\x05\x00" + bytes(4) + b"\x03SNI" + bytes(8))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "fuzz" / "corpus")
    args = ap.parse_args()
    c = Corpus()
    caps = sorted((ROOT / "captures").glob("*.pcap*")) + sorted(
        (ROOT / "captures" / "apps").glob("*.pcap"))
    for path in caps:
        if path.stat().st_size:
            _capture_seeds(c, path)
            _flow_seeds(c, path)
    _vector_seeds(c)
    _extras(c)
    sizes = c.write(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(" ".join(f"{k}={v}" for k, v in sizes.items()), f"total={total} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
