"""DTLS inspector: hellos of DTLS 1.0/1.2/1.3, cookies, fragments, alerts, errors."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest

from classifier.dpi import dtls, tls
from classifier.dpi.tls import HandshakeType, Transport
from probe.cursor import Cursor
from probe.errors import Malformed, ParseError, Truncated

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "dpi"


def vec(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


FRAG = [vec(f"dtls_certificate_fragments_f{n}.bin")
        for n in ("1_c", "2_s", "3_c", "4_s", "5_s")]


def test_dtls12_client_hello_with_srtp() -> None:
    data = vec("dtls_f1.bin")  # dtls.pcap frame 1
    (record,) = dtls.parse_dtls_records(data)
    assert (record.content_type, record.version, record.epoch) == (22, 0xFEFF, 0)
    assert record.sequence == 0
    ch = dtls.parse_dtls_client_hello([data])
    assert ch.legacy_version == dtls.DtlsVersion.DTLS_1_2
    assert ch.cookie == b""
    assert ch.srtp_profiles == (1,)  # SRTP_AES128_CM_HMAC_SHA1_80
    assert ch.sni is None
    # b and c equal nDPI's JA4 for this flow; nDPI prints "d" for SNI where none is sent.
    assert tls.ja4(ch, Transport.DTLS) == "dd2i120700_7c0e62f61317_d9dd6182da81"


def test_dtls13_hello_pair() -> None:
    ch = dtls.parse_dtls_client_hello([vec("dtls_f7.bin")])  # dtls.pcap frame 7
    assert ch.supported_versions == (dtls.DtlsVersion.DTLS_1_3,)
    assert tls.ja4(ch, Transport.DTLS) == "dd3i270600_991e33d7eb74_10f9deb96590"
    sh = dtls.parse_dtls_server_hello([vec("dtls_f8.bin")])
    assert sh.legacy_version == 0xFEFD
    assert sh.selected_version == dtls.DtlsVersion.DTLS_1_3
    assert sh.cipher_suite == 0x1301


def test_hello_verify_cookie_and_fragmented_certificate() -> None:
    client = [FRAG[0], FRAG[2]]
    first, second = dtls.handshake_messages(client)
    assert (first.message_seq, second.message_seq) == (0, 1)
    retry = tls.parse_client_hello_body(Cursor(second.body, "dtls"), dtls=True)
    assert retry.cookie == bytes.fromhex("66acf8c1472146e4e7c30876eb9ce1408a10f943")
    assert dtls.parse_dtls_client_hello(client).cookie == b""  # the first one wins
    server = [FRAG[1], FRAG[3], FRAG[4]]
    types = [(m.msg_type, m.message_seq, len(m.body)) for m in dtls.handshake_messages(server)]
    assert types == [(HandshakeType.HELLO_VERIFY_REQUEST, 0, 23),
                     (HandshakeType.SERVER_HELLO, 1, 54),
                     (HandshakeType.CERTIFICATE, 2, 1547),
                     (HandshakeType.SERVER_HELLO_DONE, 3, 0)]
    sh = dtls.parse_dtls_server_hello(server)
    assert sh.cipher_suite == 0x0035
    # Without the second fragment the Certificate stays incomplete and is not yielded.
    assert [m.msg_type for m in dtls.handshake_messages(server[:2])] == [3, 2]


def test_stun_datagrams_are_skipped() -> None:
    stun, hello = vec("stun_dtls_unidirectional_client_f1.bin"), \
        vec("stun_dtls_unidirectional_client_f3.bin")
    assert not dtls.looks_like_dtls(stun)
    ch = dtls.parse_dtls_client_hello([stun, hello])
    assert ch.legacy_version == dtls.DtlsVersion.DTLS_1_0
    assert ch.srtp_profiles == (2, 1)
    assert tls.ja4(ch, Transport.DTLS) == "dd1i350400_23b9269eae60_dbc12469f409"


def test_alert() -> None:
    alert = dtls.find_dtls_alert([vec("dtls_f1.bin"), vec("dtls_f6_gtp_inner.bin")])
    assert alert == tls.TlsAlert(tls.AlertLevel.FATAL, tls.AlertDescription.UNEXPECTED_MESSAGE, 0)
    assert dtls.find_dtls_alert([vec("dtls_f7.bin")]) is None


def test_unified_header_record_ends_the_scan() -> None:
    # A DTLS 1.3 ciphertext record (unified header 0x2c ...) after the real ClientHello.
    data = vec("dtls_f7.bin")
    assert dtls.parse_dtls_records(data + b"\x2c\x00\x01" + bytes(20)) == \
        dtls.parse_dtls_records(data)


def test_truncated() -> None:
    data = vec("dtls_f7.bin")
    with pytest.raises(Truncated) as exc:
        dtls.parse_dtls_records(data[:100])
    assert exc.value.offset == 13  # the 509-byte record body starts after the header
    with pytest.raises(Truncated) as exc:
        dtls.parse_dtls_client_hello([data[:100]])
    assert exc.value.offset == 13
    with pytest.raises(Truncated) as exc:
        dtls.parse_dtls_server_hello([FRAG[1]])  # only the HelloVerifyRequest
    assert exc.value.offset == len(FRAG[1])


def test_junk() -> None:
    with pytest.raises(Malformed):
        dtls.parse_dtls_records(b"\x16\x03\x03" + bytes(20))  # TLS, not DTLS
    bad = bytearray(vec("dtls_f1.bin"))
    bad[13 + 9:13 + 12] = (0xFFFF).to_bytes(3, "big")  # fragment_length beyond the message
    with pytest.raises(ParseError):
        dtls.parse_dtls_client_hello([bytes(bad)])


def test_fuzz_only_parse_errors() -> None:
    rng = random.Random(5)
    seeds = [vec("dtls_f1.bin"), vec("dtls_f7.bin"), vec("dtls_f8.bin"), *FRAG]
    for _ in range(2000):
        base = rng.choice(seeds)
        kind = rng.randrange(3)
        if kind == 0:
            data = bytes([22, 0xFE]) + bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        elif kind == 1:
            data = base[:rng.randrange(len(base))]
        else:
            mutated = bytearray(base)
            for _ in range(rng.randrange(1, 6)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            data = bytes(mutated)
        for func in (dtls.parse_dtls_client_hello, dtls.parse_dtls_server_hello,
                     dtls.find_dtls_alert):
            with contextlib.suppress(ParseError):
                func([data, rng.choice(seeds)])
