"""DNS inspector: real queries and answers, CNAME chains, TCP framing, errors."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest

from classifier.dpi import dns
from classifier.dpi.dns import Rcode, RRType
from probe.errors import Malformed, ParseError, Truncated

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "dpi"


def vec(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


QUERY = vec("dns_f4.bin")  # dns.pcap frame 4: A? e7.whatsapp.net
ANSWER = vec("dns_f5.bin")  # dns.pcap frame 5: 8 A records
CNAMES = vec("teams_f333.bin")  # teams.pcap frame 333: CNAME chain to one A record

WHATSAPP = ["169.45.219.235", "169.47.40.142", "169.45.248.121", "108.168.176.234",
            "169.45.248.189", "169.45.248.180", "169.53.81.79", "169.45.219.232"]


def test_query() -> None:
    msg = dns.parse_dns(QUERY)
    assert msg.id == 0x7843 and not msg.is_response and msg.recursion_desired
    assert msg.opcode == dns.Opcode.QUERY
    assert msg.questions == (dns.DnsQuestion("e7.whatsapp.net", RRType.A, 1),)
    assert msg.answers == msg.authority == msg.additional == ()


def test_answer_with_compressed_names() -> None:
    msg = dns.parse_dns(ANSWER)
    assert msg.is_response and msg.recursion_available and msg.rcode == Rcode.NOERROR
    assert [rr.address for rr in msg.answers] == WHATSAPP
    assert all(rr.name == "e7.whatsapp.net" and rr.rtype == RRType.A for rr in msg.answers)
    assert msg.answers[0].ttl == 491
    assert list(dns.address_names(msg)) == [("e7.whatsapp.net", a) for a in WHATSAPP]


def test_cname_chain() -> None:
    msg = dns.parse_dns(CNAMES)
    assert [(rr.rtype, rr.target) for rr in msg.answers[:3]] == [
        (RRType.CNAME, "config.teams.trafficmanager.net"),
        (RRType.CNAME, "config-teams.s-0005.s-msedge.net"),
        (RRType.CNAME, "s-0005.s-msedge.net"),
    ]
    assert list(dns.address_names(msg)) == [
        ("config.teams.microsoft.com", "52.113.194.132"),
        ("config.teams.trafficmanager.net", "52.113.194.132"),
        ("config-teams.s-0005.s-msedge.net", "52.113.194.132"),
        ("s-0005.s-msedge.net", "52.113.194.132"),
    ]


def test_tcp_stream_with_two_messages() -> None:
    # RFC 1035 §4.2.2 framing around the real query and answer, in one segment.
    stream = b"".join(len(m).to_bytes(2, "big") + m for m in (QUERY, ANSWER))
    query, answer = dns.parse_dns_tcp(stream)
    assert query == dns.parse_dns(QUERY) and answer == dns.parse_dns(ANSWER)
    with pytest.raises(Truncated) as exc:
        dns.parse_dns_tcp(stream[:-1])
    assert exc.value.offset == 2 + len(QUERY)  # the cut message starts here


def test_truncated_answer() -> None:
    with pytest.raises(Truncated) as exc:
        dns.parse_dns(ANSWER[:100])
    # Answers are 16 bytes from offset 33: the 5th starts at 97 and its TYPE at 99
    # needs 2 bytes where 1 is left.
    assert exc.value.offset == 99


def test_pointer_loops_and_forward_pointers() -> None:
    # The first answer's owner name is the pointer c00c (to offset 12).
    assert ANSWER[33:35] == b"\xc0\x0c"
    self_loop = ANSWER[:33] + b"\xc0\x21" + ANSWER[35:]
    with pytest.raises(Malformed) as exc:
        dns.parse_dns(self_loop)
    assert exc.value.offset == 33
    forward = ANSWER[:33] + b"\xc0\x40" + ANSWER[35:]
    with pytest.raises(Malformed):
        dns.parse_dns(forward)
    # A question name that points at itself.
    with pytest.raises(Malformed):
        dns.parse_dns(QUERY[:12] + b"\xc0\x0c" + QUERY[-4:])


def test_junk() -> None:
    with pytest.raises(ParseError):
        dns.parse_dns(b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x80abc")
    with pytest.raises(Malformed):
        dns.parse_dns_tcp(b"\x00\x03abc")


def test_fuzz_only_parse_errors() -> None:
    rng = random.Random(3)
    seeds = [QUERY, ANSWER, CNAMES]
    for _ in range(3000):
        base = rng.choice(seeds)
        kind = rng.randrange(3)
        if kind == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        elif kind == 1:
            data = base[:rng.randrange(len(base))]
        else:
            mutated = bytearray(base)
            for _ in range(rng.randrange(1, 6)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            data = bytes(mutated)
        with contextlib.suppress(ParseError):
            list(dns.address_names(dns.parse_dns(data)))
        with contextlib.suppress(ParseError):
            dns.parse_dns_tcp(data)


def test_answers_only_matches_the_full_parse() -> None:
    """The classifier's shortcut reads the same question and answers, and nothing after."""
    from pathlib import Path

    from classifier.dpi.dns import parse_dns
    compared = 0
    for path in sorted((Path(__file__).resolve().parents[2] / "vectors" / "dpi").glob("dns*.bin")):
        full = parse_dns(path.read_bytes())
        quick = parse_dns(path.read_bytes(), answers_only=True)
        assert (quick.questions, quick.answers, quick.rcode) == (full.questions, full.answers,
                                                                 full.rcode)
        assert quick.authority == () and quick.additional == ()
        compared += 1
    assert compared >= 1


def _slow_gist(data: bytes) -> tuple[bool, int, str | None, tuple[tuple[str, str], ...]]:
    m = dns.parse_dns(data, answers_only=True)
    return (m.is_response, int(m.rcode), m.questions[0].name if m.questions else None,
            tuple(dns.address_names(m)))


def test_gist_reads_what_the_full_parser_reads() -> None:
    for data in (QUERY, ANSWER, CNAMES):
        gist = dns.dns_gist(data)
        assert gist is not None
        assert (gist.is_response, gist.rcode, gist.question, gist.addresses) == _slow_gist(data)
    gist = dns.dns_gist(ANSWER)
    assert gist is not None and [a for _, a in gist.addresses] == WHATSAPP
    cn = dns.dns_gist(CNAMES)
    assert cn is not None and len({a for _, a in cn.addresses}) == 1 and len(cn.addresses) > 1


def test_gist_leaves_anything_odd_to_the_full_parser() -> None:
    # cut short, pointer loops, forward pointers, junk: no gist, and the full parser raises
    odd = [ANSWER[:40], ANSWER[:33] + b"\xc0\x21" + ANSWER[35:],
           ANSWER[:33] + b"\xc0\x40" + ANSWER[35:], QUERY[:12] + b"\xc0\x0c" + QUERY[-4:],
           b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x80abc", b"", b"\x00" * 11]
    for data in odd:
        assert dns.dns_gist(data) is None
        with pytest.raises(ParseError):
            dns.parse_dns(data, answers_only=True)


def test_gist_fuzz_agrees_with_the_full_parser() -> None:
    """Wherever the fast path answers, the full parser gives the same answer."""
    rng = random.Random(11)
    answered = 0
    for _ in range(4000):
        base = rng.choice([QUERY, ANSWER, CNAMES])
        keep = len(base) if rng.random() < 0.5 else rng.randrange(len(base) // 2, len(base))
        mutated = bytearray(base[:keep])
        for _ in range(rng.randrange(0, 3)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        data = bytes(mutated)
        gist = dns.dns_gist(data)
        if gist is None:
            continue
        answered += 1
        assert (gist.is_response, gist.rcode, gist.question, gist.addresses) == _slow_gist(data)
    assert answered > 300


def test_gist_names_pointing_back_are_read_as_the_full_parser_reads_them() -> None:
    """Owners that point at the question, at a CNAME target, at a name that itself ends in
    a pointer, or too far back for the labels they reach: the same names as the full parser."""
    def labels(*parts: bytes) -> bytes:
        return b"".join(bytes([len(p)]) + p for p in parts)

    def rr(owner: bytes, rtype: int, rdata: bytes) -> bytes:
        return owner + rtype.to_bytes(2, "big") + b"\x00\x01" + bytes(4) + \
            len(rdata).to_bytes(2, "big") + rdata

    head = bytes.fromhex("abcd81800001000500000000")
    question = labels(b"WWW", b"example", b"com") + b"\x00" + b"\x00\x01\x00\x01"
    body = head + question
    cname_at = len(body) + 2 + 10  # where the CNAME target begins
    body += rr(b"\xc0\x0c", 5, labels(b"edge", b"CDN", b"net") + b"\x00")
    body += rr(bytes([0xC0, cname_at]), 1, bytes([192, 0, 2, 7]))
    prefixed_at = len(body)
    body += rr(labels(b"v6") + b"\xc0\x0c", 28, bytes(15) + b"\x01")
    body += rr(bytes([0xC0, prefixed_at]), 1, bytes([192, 0, 2, 8]))
    body += rr(bytes([0xC0, 16]), 1, bytes([192, 0, 2, 9]))  # a suffix of the question
    gist = dns.dns_gist(body)
    assert gist is not None
    assert (gist.is_response, gist.rcode, gist.question, gist.addresses) == _slow_gist(body)
    assert ("www.example.com", "192.0.2.7") in gist.addresses
    assert ("v6.www.example.com", "::1") in gist.addresses
    assert ("example.com", "192.0.2.9") in gist.addresses
