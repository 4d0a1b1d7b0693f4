"""The payload rewriters of :mod:`api.anonymise` on messages written here byte by byte."""

from __future__ import annotations

import ipaddress
import struct
import zlib

import pytest

from api.anonymise import KEPT_PORTS, Pseudonyms, rewrite_payload

KEY = bytes(range(32))
COOKIE = 0x2112A442
PHONE4, PHONE6 = "192.168.1.50", "fd00::50"
PUBLIC = "198.51.100.77"  # the phone's public address, as a STUN server saw it


def _local(raw: bytes) -> bool:
    return str(ipaddress.ip_address(raw)) in {PHONE4, PHONE6, PUBLIC}


def _xor_address(addr: str, port: int, txid: bytes) -> bytes:
    ip = ipaddress.ip_address(addr)
    mask = struct.pack("!I", COOKIE) + txid
    raw = bytes(a ^ b for a, b in zip(ip.packed, mask, strict=False))
    return struct.pack("!BBH", 0, 1 if ip.version == 4 else 2, port ^ (COOKIE >> 16)) + raw


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def _stun(kind: int, txid: bytes, attrs: bytes, fingerprint: bool = True) -> bytes:
    body = attrs
    if fingerprint:
        head = struct.pack("!HHI", kind, len(body) + 8, COOKIE) + txid
        crc = zlib.crc32(head + body) ^ 0x5354554E
        body += _attr(0x8028, struct.pack("!I", crc))
    return struct.pack("!HHI", kind, len(body), COOKIE) + txid + body


def _decode_xor(value: bytes, txid: bytes) -> tuple[str, int]:
    width = 4 if value[1] == 1 else 16
    mask = struct.pack("!I", COOKIE) + txid
    raw = bytes(a ^ b for a, b in zip(value[4:4 + width], mask, strict=False))
    return str(ipaddress.ip_address(raw)), struct.unpack("!H", value[2:4])[0] ^ (COOKIE >> 16)


@pytest.mark.parametrize("addr", [PUBLIC, PHONE6])
def test_xor_mapped_address_is_rewritten_and_the_fingerprint_recomputed(addr: str) -> None:
    txid = bytes(range(100, 112))
    msg = _stun(0x0101, txid, _attr(0x0020, _xor_address(addr, 52001, txid)))
    names = Pseudonyms(KEY)
    out = rewrite_payload(msg, "udp", (3478, 52001), _local, names)
    assert out.kind == "stun" and len(out.data) == len(msg)
    assert _decode_xor(out.data[24:24 + (8 if ":" not in addr else 20)], txid) == (
        names.address(addr), names.port(52001))
    fp_at = len(out.data) - 8
    crc = struct.unpack_from("!I", out.data, fp_at + 4)[0]
    assert crc == zlib.crc32(out.data[:fp_at]) ^ 0x5354554E
    # Neither the address nor the port is left in any encoding.
    ip = ipaddress.ip_address(addr)
    for needle in (ip.packed, _xor_address(addr, 52001, txid)[4:], addr.encode()):
        assert needle not in out.data


def test_a_remote_address_is_left_and_kept_ports_stay() -> None:
    txid = bytes(12)
    msg = _stun(0x0101, txid, _attr(0x0020, _xor_address("157.240.1.1", 40000, txid))
                + _attr(0x802B, struct.pack("!BBH4s", 0, 1, 3478,
                                            ipaddress.ip_address("157.240.1.1").packed)))
    out = rewrite_payload(msg, "udp", (3478, 40000), _local, Pseudonyms(KEY))
    assert out.data == msg and out.changes == 0
    names = Pseudonyms(KEY)
    assert all(names.port(p) == p for p in (*KEPT_PORTS, 80, 443))
    moved = [p for p in range(1024, 65536) if names.port(p) == p]
    assert sorted(moved) == sorted(KEPT_PORTS | {5348, 5351})  # their even/odd partners


def test_turn_over_tcp_carries_several_messages_in_one_segment() -> None:
    txid = bytes(range(12))
    one = _stun(0x0008, txid, _attr(0x0012, _xor_address(PHONE4, 50000, txid)), False)
    data = one + one + struct.pack("!HH", 0x4000, 3) + b"abc\0"
    out = rewrite_payload(data, "tcp", (50000, 443), _local, Pseudonyms(KEY))
    assert out.kind == "stun" and len(out.data) == len(data) and out.changes == 4
    assert _xor_address(PHONE4, 50000, txid)[4:] not in out.data
    assert out.data.endswith(b"abc\0")


def test_dns_answers_with_a_local_address() -> None:
    q = b"\x06router\x04home\x00\x00\x01\x00\x01"
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + \
        ipaddress.ip_address(PHONE4).packed
    data = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0) + q + answer
    names = Pseudonyms(KEY)
    out = rewrite_payload(data, "udp", (53, 40000), _local, names)
    assert out.kind == "dns" and out.data.endswith(names.packed(
        ipaddress.ip_address(PHONE4).packed))


def test_sip_headers_sdp_and_candidates_and_the_content_length() -> None:
    sdp = (f"v=0\r\no=alice 2890844526 2890844526 IN IP4 {PHONE4}\r\ns=-\r\n"
           f"c=IN IP4 {PHONE4}\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\na=rtcp:49171\r\n"
           f"a=candidate:1 1 UDP 2130706431 {PHONE4} 49170 typ host\r\n"
           f"a=candidate:2 1 UDP 1694498815 {PUBLIC} 61000 typ srflx raddr {PHONE4} "
           f"rport 49170\r\n")
    msg = (f"INVITE sip:bob@example.net SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP {PHONE4}:5060;branch=z9hG4bK1\r\n"
           f"Contact: <sip:alice@{PHONE4}:5062>\r\nCall-ID: a@{PHONE4}\r\n"
           f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}")
    names = Pseudonyms(KEY)
    out = rewrite_payload(msg.encode(), "udp", (5060, 5060), _local, names)
    text = out.data.decode()
    assert out.kind == "sip" and PHONE4 not in text and PUBLIC not in text
    for port in ("49170", "49171", "61000", "5062"):
        assert port not in text
    head, body = text.split("\r\n\r\n", 1)
    assert f"Content-Length: {len(body)}" in head
    p4 = names.address(PHONE4)
    assert f"Via: SIP/2.0/UDP {p4}:5060;" in head  # a SIP service port is kept
    assert f"m=audio {names.port(49170)} RTP/AVP 0" in body
    assert f"a=rtcp:{names.port(49171)}" in body and names.port(49171) == names.port(49170) + 1
    assert (f"{names.address(PUBLIC)} {names.port(61000)} typ srflx raddr {p4} rport "
            f"{names.port(49170)}") in body


def test_pseudonyms_are_never_routable() -> None:
    names = Pseudonyms(KEY)
    for addr in ("10.1.2.3", "172.16.5.4", "192.168.1.23", "100.64.0.9", "169.254.1.1",
                 "127.0.0.1", "192.0.0.4", "8.8.8.8", "130.104.37.81"):
        assert ipaddress.ip_address(names.address(addr)) in ipaddress.ip_network("240.0.0.0/4")
    for addr in ("fe80::1", "fd00::50", "2a02:a03f::1"):
        assert ipaddress.ip_address(names.address(addr)) in ipaddress.ip_network("2001:db8::/32")
    assert ipaddress.ip_address(names.address("192.0.0.4")) in ipaddress.ip_network(
        "246.0.0.0/29")  # a 464XLAT translator's address keeps its block's place
    # A subnet stays a subnet.
    a, b = names.address("192.168.1.23"), names.address("192.168.1.1")
    assert ipaddress.ip_network(f"{a}/24", strict=False) == \
        ipaddress.ip_network(f"{b}/24", strict=False)


def _ip_checksum(header: bytes) -> int:
    s = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                       ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return head[:10] + struct.pack("!H", _ip_checksum(head)) + head[12:] + payload


def test_a_stun_answer_quoted_by_an_icmp_error_is_rewritten_too() -> None:
    # The phone closed its socket; its ICMP port unreachable quotes the server's whole
    # Binding success response, XOR-MAPPED-ADDRESS and all (Linux quotes up to 576 bytes).
    from api.evidence import PrefixAnonymiser, anonymise_frames
    from probe import CutPacket
    txid = bytes(range(12))
    stun = _stun(0x0101, txid, _attr(0x0020, _xor_address(PHONE4, 51704, txid)))
    udp = struct.pack("!HHHH", 3478, 51704, 8 + len(stun), 0) + stun
    quoted = _ipv4("203.0.113.5", PHONE4, 17, udp)
    icmp = struct.pack("!BBHI", 3, 3, 0, 0) + quoted
    icmp = icmp[:2] + struct.pack("!H", _ip_checksum(icmp + b"\0" * (len(icmp) % 2))) + icmp[4:]
    frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + _ipv4(PHONE4, "203.0.113.5", 1, icmp)
    [out], mapped = anonymise_frames([CutPacket(1, 0, len(frame), 1, frame)],
                                     PrefixAnonymiser(KEY), [PHONE4])
    assert mapped[PHONE4] in {PrefixAnonymiser(KEY).address(PHONE4)}
    for needle in (ipaddress.ip_address(PHONE4).packed,
                   _xor_address(PHONE4, 51704, txid)[2:]):
        assert needle not in out.data
    # The ICMP checksum still holds over the rewritten quote.
    icmp_out = out.data[14 + 20:]
    assert _ip_checksum(icmp_out + b"\0" * (len(icmp_out) % 2)) == 0


def _zoom_hello(address: str, port: int) -> bytes:
    ident = b"0123456789abcdef0123456789abcdef"
    return (b"\x1f\x02\x01" + bytes(range(19)) + struct.pack("!H", port)
            + struct.pack("!I", len(address)) + address.encode()
            + struct.pack("!I", len(ident)) + ident + b"\0\0\0\0")


@pytest.mark.parametrize("addr", [PHONE4, PHONE6])
def test_zoom_p2p_hello_sent_to_the_subscriber(addr: str) -> None:
    from classifier.dpi.framings import parse_zoom_p2p_hello

    names = Pseudonyms(KEY)
    out = rewrite_payload(_zoom_hello(addr, 51234), "udp", (46757, 51234), _local, names)
    assert out.kind == "zoom" and out.addresses == [addr] and out.changes == 2
    hello = parse_zoom_p2p_hello(out.data)  # still a hello: the lengths follow the text
    assert hello is not None
    assert (hello.address, hello.port) == (names.address(addr), names.port(51234))
    assert addr.encode() not in out.data and struct.pack("!H", 51234) not in out.data
    remote = _zoom_hello("198.51.100.44", 46757)  # the subscriber's hello to its peer
    assert rewrite_payload(remote, "udp", (51234, 46757), _local, names).data is remote
