"""Looking for the subscriber in an anonymised evidence bundle.

:func:`leaks` compares an anonymised bundle with the plain one of the same subject. The
local side's addresses and ports are found in the plain packets by tshark, not by the
rewriter: the call's local host, every address of a local class in an IP header, and the
reflexive addresses a STUN success response tells a local host. Then every file of the
anonymised bundle is searched for each address in every encoding the protocols use:
text (dotted, compressed and exploded IPv6), network-order bytes, XOR-ed with the STUN
magic cookie (IPv4) or with the cookie and each transaction ID of the bundle (IPv6). The
ports are looked for where they are written: each packet's TCP/UDP header on the local
side and its STUN address attributes (packet by packet against the plain bundle), and
SIP/SDP text (``m=``, ``a=rtcp:``, candidates, ``addr:port`` after a pseudonym).
Every unicast link-layer (MAC) address of the plain packets is looked for too, as bytes
and as text: a device's MAC address names it as surely as its IP address.
Ports below 1024 and the service ports the anonymiser keeps are not looked for.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from api.anonymise import KEPT_PORTS
from probe import LOCAL_CLASSES, AddressClass, address_class

COOKIE = bytes.fromhex("2112a442")
FIELDS = ("ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "udp.srcport", "udp.dstport",
          "tcp.srcport", "tcp.dstport", "stun.type", "stun.id", "stun.att.type",
          "stun.att.family", "stun.att.ipv4", "stun.att.ipv6", "stun.att.port", "eth.src",
          "eth.dst", "sll.src.eth")
ADDRESS_ATTRS = {0x0001, 0x0002, 0x0004, 0x0005, 0x000B, 0x0012, 0x0016, 0x0020, 0x8020,
                 0x8023, 0x802B, 0x802C}
MAPPED = {0x0001, 0x0020, 0x8020}
"""MAPPED-ADDRESS and XOR-MAPPED-ADDRESS: the address the server saw the client at."""


def _rows(tshark: str, pcap: Path) -> list[dict[str, list[str]]]:
    cmd = [tshark, "-n", "-r", str(pcap), "-T", "fields", "-E", "occurrence=a",
           "-E", "aggregator=,", "-E", "separator=\t"]
    for f in FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        cells = line.split("\t")
        rows.append({f: [x for x in (cells[i] if i < len(cells) else "").split(",") if x]
                     for i, f in enumerate(FIELDS)})
    return rows


def _is_local(addr: str, named: set[str]) -> bool:
    return addr in named or address_class(addr) in LOCAL_CLASSES | {AddressClass.LOOPBACK}


def _ends(row: dict[str, list[str]]) -> tuple[str, str] | None:
    """The innermost IP header's (source, destination)."""
    v4, v6 = row["ip.src"], row["ipv6.src"]
    if v4 and row["ip.dst"]:
        return v4[-1], row["ip.dst"][-1]
    if v6 and row["ipv6.dst"]:
        return v6[-1], row["ipv6.dst"][-1]
    return None


def _ports(row: dict[str, list[str]]) -> tuple[int, int] | None:
    for a, b in (("udp.srcport", "udp.dstport"), ("tcp.srcport", "tcp.dstport")):
        if row[a] and row[b]:
            return int(row[a][-1]), int(row[b][-1])
    return None


def _stun_ends(row: dict[str, list[str]]) -> list[tuple[int, str, int]]:
    """(attribute type, address, port) of every STUN address attribute, in order."""
    kinds = [int(t, 16) for t in row["stun.att.type"] if int(t, 16) in ADDRESS_ATTRS]
    v4, v6 = iter(row["stun.att.ipv4"]), iter(row["stun.att.ipv6"])
    out = []
    for kind, fam, port in zip(kinds, row["stun.att.family"], row["stun.att.port"],
                               strict=False):
        addr = next(v4 if int(fam, 16) == 1 else v6, None)
        if addr is not None:
            out.append((kind, addr, int(port)))
    return out


def locals_of(tshark: str, plain: Path, local: str | None
              ) -> tuple[set[str], set[int], set[tuple[str, int]]]:
    """The local side's addresses, (looked-for) ports and endpoints in a plain bundle's
    packets."""
    named = {local} if local else set()
    rows = _rows(tshark, plain)
    addrs: set[str] = set(named)
    for row in rows:
        for f in ("ip.src", "ip.dst", "ipv6.src", "ipv6.dst"):
            addrs.update(a for a in row[f] if _is_local(a, named))
    for row in rows:
        ends = _ends(row)
        if ends and row["stun.type"][:1] == ["0x0101"] and ends[1] in addrs:
            addrs.update(a for k, a, _ in _stun_ends(row) if k in MAPPED)
    endpoints: set[tuple[str, int]] = set()
    for row in rows:
        ends, ports_ = _ends(row), _ports(row)
        if ends and ports_:
            endpoints.update((a, p) for a, p in zip(ends, ports_, strict=True) if a in addrs)
        endpoints.update((a, p) for _, a, p in _stun_ends(row) if a in addrs)
    endpoints = {(a, p) for a, p in endpoints if p >= 1024 and p not in KEPT_PORTS}
    return addrs, {p for _, p in endpoints}, endpoints


def _needles(addr: str, txids: set[bytes]) -> list[tuple[str, bytes | re.Pattern[bytes]]]:
    ip = ipaddress.ip_address(addr)
    out: list[tuple[str, bytes | re.Pattern[bytes]]] = []
    texts = {str(ip)} | ({ip.exploded} if ip.version == 6 else set())
    for t in texts:
        edge = rb"[\d.]" if ip.version == 4 else rb"[0-9A-Fa-f:.]"
        out.append(("text", re.compile(rb"(?<!" + edge + rb")" + re.escape(t.encode())
                                       + rb"(?!" + edge + rb")", re.I)))
    out.append(("bytes", ip.packed))
    if ip.version == 4:
        out.append(("xor", bytes(a ^ b for a, b in zip(ip.packed, COOKIE, strict=True))))
    else:
        for tx in txids:
            mask = COOKIE + tx
            out.append(("xor+txid", bytes(a ^ b for a, b in zip(ip.packed, mask, strict=True))))
    return out


def leaks(tshark: str, plain: Path, anon: Path, files: dict[str, bytes],
          local: str | None, pseudonym: Callable[[str], str]) -> tuple[list[str], dict[str, int]]:
    """Every trace of the local side left in an anonymised bundle (``anon`` is its capture,
    ``files`` all its files), and what was looked for. ``pseudonym`` names the address a
    local one became, to find ``pseudonym:port`` written with the original port."""
    addrs, ports, endpoints = locals_of(tshark, plain, local)
    before, after = _rows(tshark, plain), _rows(tshark, anon)
    found: list[str] = []
    if len(before) != len(after):
        return [f"{len(before)} packets before, {len(after)} after"], {}
    txids = {bytes.fromhex(t.removeprefix("0x")) for r in after for t in r["stun.id"]}
    for addr in sorted(addrs):
        for kind, needle in _needles(addr, txids):
            for name, data in files.items():
                hit = (needle.search(data) is not None if isinstance(needle, re.Pattern)
                       else needle in data)
                if hit:
                    found.append(f"{addr} as {kind} in {name}")
    macs = {m for r in before for k in ("eth.src", "eth.dst", "sll.src.eth") for m in r[k]
            if len(m) == 17 and not int(m[:2], 16) & 1}
    for mac in sorted(macs):
        for kind, needle in (("bytes", bytes.fromhex(mac.replace(":", ""))),
                             ("text", mac.encode())):
            for name, data in files.items():
                if needle in data:
                    found.append(f"link-layer address {mac} as {kind} in {name}")
    n_header = n_stun = 0
    for k, (b, a) in enumerate(zip(before, after, strict=True), 1):
        ends, pb, pa = _ends(b), _ports(b), _ports(a)
        if ends and pb and pa:
            for side in (0, 1):
                if ends[side] in addrs and pb[side] in ports:
                    n_header += 1
                    if pa[side] == pb[side]:
                        found.append(f"packet {k}: local port {pb[side]} in its header")
        for (_, addr, port), (_, _, port_after) in zip(_stun_ends(b), _stun_ends(a),
                                                         strict=False):
            if addr in addrs and port in ports:
                n_stun += 1
                if port_after == port:
                    found.append(f"packet {k}: local port {port} in a STUN attribute")
    text = b"\n".join(files.values())
    pats = [(port, rb"(?:m=\w+ |a=rtcp:|rport )" + str(port).encode() + rb"(?!\d)")
            for port in sorted(ports)]
    pats += [(port, rb" " + str(port).encode() + rb" typ ") for port in sorted(ports)]
    for addr, port in sorted(endpoints):
        where = pseudonym(addr).encode()
        pats.append((port, re.escape(where) + rb"\]?:" + str(port).encode() + rb"(?!\d)"))
    for port, pat in pats:
        for m in re.finditer(pat, text):
            found.append(f"port {port} as text: {m.group(0)!r}")
    return found, {"addresses": len(addrs), "ports": len(ports), "header_ports": n_header,
                   "stun_ports": n_stun, "link_addresses": len(macs)}
