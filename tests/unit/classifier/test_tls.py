"""TLS inspector: ClientHello/ServerHello on real bytes, JA4, alerts, errors."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import ipaddress
import random
import warnings
from pathlib import Path

import pytest

from classifier.dpi import tls
from classifier.dpi.tls import ClientHello, Extension, Transport
from probe.errors import Malformed, ParseError, Truncated

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "dpi"


def vec(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


CURL_CH = vec("443-curl_f4.bin")  # 443-curl.pcap frame 4: curl -> www.ntop.org
CURL_SERVER = vec("443-curl_f6.bin")  # 443-curl.pcap frame 6: ServerHello, Certificate...
CURL_SERVER_2 = vec("443-curl_f7.bin")  # frame 7: the rest of the Certificate message


def test_client_hello_from_curl_capture() -> None:
    ch = tls.parse_tls_client_hello(CURL_CH)
    assert ch.legacy_version == 0x0303
    assert ch.sni == "www.ntop.org"
    assert ch.alpn == ("h2", "http/1.1")
    assert len(ch.cipher_suites) == 67
    assert ch.cipher_suites[:2] == (0xCC14, 0xCC13)
    assert ch.extension_types == (0, 11, 10, 13, 13172, 16, 21)
    assert ch.supported_groups[:3] == (14, 13, 25)
    assert ch.signature_algorithms[:3] == (0x0601, 0x0602, 0x0603)
    assert ch.supported_versions == ()
    assert ch.cookie is None


def test_ja4_of_curl_matches_published_value() -> None:
    # nDPI's regression output for 443-curl.pcap (ndpi_result/443-curl.pcap.out) prints
    # this JA4; computed independently from the same ClientHello it must agree.
    ch = tls.parse_tls_client_hello(CURL_CH)
    assert tls.ja4(ch) == "t12d6707h2_2955a3196ffa_c83f907a73d3"
    raw = tls.ja4_raw(ch)
    a, ciphers, exts, sigs = raw.split("_")
    assert a == "t12d6707h2"
    assert hashlib.sha256(ciphers.encode()).hexdigest()[:12] == "2955a3196ffa"
    assert exts == "000a,000b,000d,0015,3374"  # SNI and ALPN left out, sorted
    assert hashlib.sha256(f"{exts}_{sigs}".encode()).hexdigest()[:12] == "c83f907a73d3"


def _spec_hello(grease: bool = False) -> ClientHello:
    """The ClientHello of JA4.md's worked example (JA4_ro lists its original order)."""
    ciphers = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8,
               0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
    ext_types = [0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D, 0x0005,
                 0x0023, 0x0012, 0x002B, 0xFF01, 0x000B, 0x000A, 0x0015]
    sigs = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]
    versions = [0x0304, 0x0303]
    if grease:
        ciphers.insert(0, 0x4A4A)
        ext_types.insert(0, 0x0A0A)
        ext_types.append(0xFAFA)
        sigs.insert(3, 0x9A9A)
        versions.insert(0, 0x7A7A)
    return ClientHello(0x0303, bytes(32), b"", None, tuple(ciphers), b"\x00",
                       tuple(Extension(t, b"") for t in ext_types), "example.com", ("h2",),
                       tuple(versions), tuple(sigs), (), ())


def test_ja4_spec_worked_example() -> None:
    # JA4.md "Example": t13d1516h2_8daaf6152771_e5627efa2ab1, with the sorted lists it shows.
    ch = _spec_hello()
    assert tls.ja4(ch) == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    assert tls.ja4_raw(ch) == (
        "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,"
        "cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,"
        "0804,0401,0503,0805,0501,0806,0601")
    # GREASE anywhere changes nothing; the transport only changes the first character.
    assert tls.ja4(_spec_hello(grease=True)) == tls.ja4(ch)
    assert tls.ja4(ch, Transport.QUIC).startswith("q13d1516h2_")


def test_ja4_alpn_and_version_edge_cases() -> None:
    ch = _spec_hello()
    no_alpn = dataclasses.replace(ch, alpn=())
    assert tls.ja4(no_alpn).startswith("t13d151600_")
    odd = dataclasses.replace(ch, alpn=("h3-27\xff",), supported_versions=())
    # No supported_versions -> legacy 0x0303; non-alphanumeric end -> hex digits.
    assert tls.ja4(odd).split("_")[0] == "t12d1516" + "6" + "f"


def test_client_hello_across_records_and_segments() -> None:
    # The same handshake message re-framed into three records, delivered as
    # four TCP segments: the parser sees the concatenation.
    hs = CURL_CH[5:]
    pieces = [hs[:100], hs[100:101], hs[101:]]
    stream = b"".join(b"\x16\x03\x01" + len(p).to_bytes(2, "big") + p for p in pieces)
    segments = [stream[:7], stream[7:200], stream[200:201], stream[201:]]
    assert tls.parse_tls_client_hello(b"".join(segments)) == tls.parse_tls_client_hello(CURL_CH)
    with pytest.raises(Truncated) as exc:
        tls.parse_tls_client_hello(b"".join(segments[:3]))
    assert exc.value.offset == 201


def test_bare_handshake_client_hello() -> None:
    assert tls.parse_client_hello(CURL_CH[5:]).sni == "www.ntop.org"
    with pytest.raises(Malformed):
        tls.parse_client_hello(b"\x02" + CURL_CH[6:])


def test_server_hello_and_no_alert() -> None:
    sh = tls.parse_tls_server_hello(CURL_SERVER)
    assert sh.legacy_version == 0x0303 and sh.selected_version == 0x0303
    assert sh.cipher_suite == 0xC02F
    assert sh.alpn == "h2"
    assert not sh.is_hello_retry
    assert [e.type for e in sh.extensions] == [0xFF01, 0, 11, 16]
    # The segment ends inside the Certificate record: the scan tolerates it.
    assert tls.parse_records(CURL_SERVER)[-1].partial
    assert tls.find_alert(CURL_SERVER) is None


def test_server_certificate_of_the_curl_capture() -> None:
    # TLS 1.2: ServerHello, then the Certificate in the clear (RFC 5246 §7.3); the
    # server's certificate is the first of its list and ends in the second segment.
    der = tls.server_certificate(CURL_SERVER + CURL_SERVER_2)
    assert der is not None and len(der) == 1365
    assert tls.certificate_names(der) == ("www.ntop.org",)
    with pytest.raises(Truncated):
        tls.server_certificate(CURL_SERVER)  # the first segment holds 1,318 of its bytes


def _server_hello_record(version: int) -> bytes:
    """A ServerHello in a handshake record; ``version`` 0x0304 is selected through
    supported_versions, as TLS 1.3 does (RFC 8446 §4.2.1)."""
    ext = b"" if version < 0x0304 else b"\x00\x2b\x00\x02" + version.to_bytes(2, "big")
    body = (b"\x03\x03" + bytes(range(32)) + b"\x00" + b"\x13\x01" + b"\x00"
            + len(ext).to_bytes(2, "big") + ext)
    msg = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + len(msg).to_bytes(2, "big") + msg


def test_no_server_certificate_under_tls13_or_on_resumption() -> None:
    # TLS 1.3 encrypts the Certificate (RFC 8446 §4.4.2): what follows the ServerHello
    # is ChangeCipherSpec and application data, never read as a certificate.
    encrypted = b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03\x00\x20" + bytes(32)
    assert tls.server_certificate(_server_hello_record(0x0304) + encrypted) is None
    assert tls.server_certificate(_server_hello_record(0x0304)) is None
    # A resumed TLS 1.2 session: ChangeCipherSpec right after the ServerHello.
    assert tls.server_certificate(_server_hello_record(0x0303) + encrypted) is None
    # A full TLS 1.2 handshake cut after its ServerHello: more bytes would tell.
    with pytest.raises(Truncated):
        tls.server_certificate(_server_hello_record(0x0303))
    with pytest.raises(Malformed):
        tls.server_certificate(b"HTTP/1.1 200 OK\r\n\r\n")


def _certificate_record(der: bytes, total: int | None = None) -> bytes:
    chain = len(der).to_bytes(3, "big") + der
    body = (len(chain) if total is None else total).to_bytes(3, "big") + chain
    msg = b"\x0b" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + len(msg).to_bytes(2, "big") + msg


def test_server_certificate_reads_no_further_than_the_certificate() -> None:
    der = tls.server_certificate(CURL_SERVER + CURL_SERVER_2)
    assert der is not None
    flight = _server_hello_record(0x0303) + _certificate_record(der)
    assert tls.server_certificate(flight) == der
    # What follows it is not looked at: a record header cut short, bytes of no record.
    assert tls.server_certificate(flight + b"\x16\x03") == der
    assert tls.server_certificate(flight + b"GET / HTTP/1.1\r\n") == der
    # One record holding both messages, and a message split over two records.
    msg = flight[5:_server_hello_len() + 5] + _certificate_record(der)[5:]
    assert tls.server_certificate(b"\x16\x03\x03" + len(msg).to_bytes(2, "big") + msg) == der
    cut = 60
    split = (b"\x16\x03\x03" + cut.to_bytes(2, "big") + msg[:cut] + b"\x16\x03\x03"
             + (len(msg) - cut).to_bytes(2, "big") + msg[cut:])
    assert tls.server_certificate(split) == der


def _server_hello_len() -> int:
    return len(_server_hello_record(0x0303)) - 5


def test_server_certificate_lengths_that_contradict_each_other() -> None:
    sh = _server_hello_record(0x0303)
    der = b"\x30" * 40
    with pytest.raises(Malformed):  # the list says less than the message holds
        tls.server_certificate(sh + _certificate_record(der, total=len(der)))
    with pytest.raises(Malformed):  # a list too short to hold a certificate's length
        tls.server_certificate(sh + b"\x16\x03\x03\x00\x08\x0b\x00\x00\x04\x00\x00\x01\x00")
    with pytest.raises(Malformed):  # a message too short to hold the list's length
        tls.server_certificate(sh + b"\x16\x03\x03\x00\x05\x0b\x00\x00\x01\x00")
    # The first certificate longer than its list.
    body = (10).to_bytes(3, "big") + len(der).to_bytes(3, "big") + der[:7]
    msg = b"\x0b" + len(body).to_bytes(3, "big") + body
    with pytest.raises(Malformed):
        tls.server_certificate(sh + b"\x16\x03\x03" + len(msg).to_bytes(2, "big") + msg)
    # An empty list: the server sent no certificate.
    assert tls.server_certificate(sh + b"\x16\x03\x03\x00\x07\x0b\x00\x00\x03\x00\x00\x00") \
        is None


def test_no_server_certificate_from_a_tls13_draft() -> None:
    # Drafts up to -21 of TLS 1.3 put 0x7fNN in the ServerHello's version field; what
    # follows is encrypted, whatever it looks like.
    body = b"\x7f\x12" + bytes(32) + b"\x13\x01" + b"\x00\x00"
    msg = b"\x02" + len(body).to_bytes(3, "big") + body
    hello = b"\x16\x03\x01" + len(msg).to_bytes(2, "big") + msg
    assert tls.server_certificate(hello + _certificate_record(b"\x30" * 40)) is None


def test_certificate_names_common_name_first_then_alt_names() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "*.Example.ORG")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(datetime.datetime(2026, 1, 1))
            .not_valid_after(datetime.datetime(2027, 1, 1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("*.example.org"), x509.DNSName("example.net"),
                 x509.IPAddress(ipaddress.ip_address("192.0.2.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    der = cert.public_bytes(Encoding.DER)
    assert tls.certificate_names(der) == ("*.example.org", "example.net")
    # A serial number that is not positive (RFC 5280 §4.1.2.2 forbids it; servers send
    # it): read all the same, with no warning let out of the reading.
    at = der.index(bytes.fromhex("a003020102020107")) + 7  # version v3, serial 7
    negative = der[:at] + b"\x87" + der[at + 1:]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tls.certificate_names(negative) == ("*.example.org", "example.net")
        # The library reads the extensions only when asked, and warns then: a byte of the
        # curl capture's certificate changed so that an extension's serial number is not
        # positive.
        ntop = tls.server_certificate(CURL_SERVER + CURL_SERVER_2)
        assert ntop is not None and ntop[586] == 0x80
        with contextlib.suppress(Malformed):
            tls.certificate_names(ntop[:586] + b"\x82" + ntop[587:])
    with pytest.raises(Malformed):
        tls.certificate_names(der[:-1])  # cut short
    with pytest.raises(Malformed):
        tls.certificate_names(b"\x30\x03\x02\x01\x00")


def test_alert_instead_of_server_hello() -> None:
    # The alert body of dtls.pcap frame 6 (fatal unexpected_message) in a TLS record.
    body = vec("dtls_f6_gtp_inner.bin")[13:]
    assert body == b"\x02\x0a"
    reply = b"\x15\x03\x03\x00\x02" + body
    alert = tls.find_alert(reply)
    assert alert == tls.TlsAlert(tls.AlertLevel.FATAL, tls.AlertDescription.UNEXPECTED_MESSAGE, 0)
    with pytest.raises(Malformed):
        tls.parse_tls_server_hello(reply)
    # After a ServerHello record, a plaintext alert is still found, at its own offset.
    first = tls.parse_records(CURL_SERVER)[0]
    sh_record = CURL_SERVER[:5 + len(first.fragment)]
    assert tls.find_alert(sh_record + reply) == tls.TlsAlert(2, 10, len(sh_record))


def test_truncated_client_hello_offset() -> None:
    with pytest.raises(Truncated) as exc:
        tls.parse_tls_client_hello(CURL_CH[:300])
    assert exc.value.offset == 300
    with pytest.raises(Truncated) as exc:
        tls.parse_tls_client_hello(CURL_CH[:3])
    assert exc.value.offset == 3  # inside the record header: the length is missing


def test_junk_is_malformed() -> None:
    with pytest.raises(Malformed):
        tls.parse_tls_client_hello(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(Malformed):
        tls.parse_tls_client_hello(b"\x16\x05\x01\x00\x10" + bytes(16))
    # One byte after the extensions block, with record and handshake lengths
    # grown to cover it: the ClientHello body is not used up exactly.
    grown = bytearray(CURL_CH + b"\x00")
    grown[3:5] = (int.from_bytes(grown[3:5], "big") + 1).to_bytes(2, "big")
    grown[6:9] = (int.from_bytes(grown[6:9], "big") + 1).to_bytes(3, "big")
    with pytest.raises(Malformed) as exc:
        tls.parse_tls_client_hello(bytes(grown))
    assert exc.value.offset == len(CURL_CH) - 5


def test_fuzz_only_parse_errors() -> None:
    rng = random.Random(1)
    seeds = [CURL_CH, CURL_SERVER, CURL_SERVER + CURL_SERVER_2]
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
        for func in (tls.parse_tls_client_hello, tls.parse_tls_server_hello, tls.find_alert,
                     tls.parse_client_hello, tls.server_certificate):
            try:
                result = func(data)
                if isinstance(result, ClientHello):
                    tls.ja4(result)
                elif isinstance(result, bytes):  # a certificate's bytes, perhaps mangled
                    tls.certificate_names(result)
            except ParseError:
                continue


def test_names_fast_path_agrees_with_the_full_parser() -> None:
    """The classifier's SNI/ALPN reader gives what the full ClientHello parser gives."""
    from pathlib import Path

    from classifier.dpi import tls as tls_mod
    from probe.errors import ParseError
    compared = 0
    for path in sorted((Path(__file__).resolve().parents[2] / "vectors" / "dpi").glob("*.bin")):
        data = path.read_bytes()
        try:
            full = tls_mod.parse_tls_client_hello(data)
        except ParseError:  # not every vector is a TLS ClientHello
            continue
        assert tls_mod.tls_client_hello_names(data) == (full.sni, tuple(full.alpn)), path.name
        compared += 1
    assert compared >= 1
    # Cut short anywhere, it fails the way the full parser does: with a ParseError.
    data = (Path(__file__).resolve().parents[2] / "vectors" / "dpi" / "443-curl_f4.bin"
            ).read_bytes()
    for n in range(0, len(data), 7):
        with contextlib.suppress(ParseError):
            tls_mod.tls_client_hello_names(data[:n])


def _slow_leading_handshake(data: bytes) -> bytes:
    """The first handshake message as :func:`tls.iter_records` reads the records."""
    buf = bytearray()
    for rec in tls.iter_records(data):
        if rec.content_type != tls.ContentType.HANDSHAKE:
            if not buf:
                raise Malformed("tls", rec.offset,
                                f"first record is content type {rec.content_type}, not handshake")
            break
        buf += rec.fragment
        if len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[1:4], "big"):
            return bytes(buf)
    if not buf and not data:
        raise Truncated("tls", 0, "no TLS record")
    raise Truncated("tls", len(data), "input ends inside the first handshake message")


def _outcome(func: object, data: bytes) -> object:
    try:
        return func(data)  # type: ignore[operator]
    except ParseError as exc:
        return type(exc), exc.offset, exc.reason


def test_leading_handshake_reads_records_as_iter_records_does() -> None:
    hello = tls._leading_handshake(CURL_CH, "tls")
    # the same ClientHello cut into three records, then a ChangeCipherSpec
    split = b"".join(b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part
                     for part in (hello[:3], hello[3:100], hello[100:]))
    split += b"\x14\x03\x03\x00\x01\x01"
    assert tls._leading_handshake(split, "tls") == hello
    samples = [CURL_CH, CURL_SERVER, split, b"\x15\x03\x03\x00\x02\x02\x28", b"",
               b"\x16\x03", b"\x17\x03\x03\x00\x05hello", b"\x16\x02\x00\x00\x00",
               b"\x16\x03\x01\xff\xff" + hello, b"\x16\x03\x01\x00\x00\x15\x03\x03\x00\x00"]
    rng = random.Random(3)
    for _ in range(3000):
        data = bytearray(rng.choice([CURL_CH, CURL_SERVER, split]))
        if rng.random() < 0.5:
            del data[rng.randrange(len(data) + 1):]
        for _ in range(rng.randint(0, 2)):
            if data:
                data[rng.randrange(min(len(data), 12))] = rng.randrange(256)
        samples.append(bytes(data))
    for sample in samples:
        assert _outcome(lambda d: tls._leading_handshake(d, "tls"), sample) == \
            _outcome(_slow_leading_handshake, sample)


def _hello_with(*extensions: tuple[int, bytes]) -> bytes:
    """A TLS record holding a ClientHello with these (type, body) extensions."""
    exts = b"".join(t.to_bytes(2, "big") + len(b).to_bytes(2, "big") + b for t, b in extensions)
    body = (b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
            + len(exts).to_bytes(2, "big") + exts)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


def _alpn(*names: bytes) -> bytes:
    items = b"".join(bytes([len(n)]) + n for n in names)
    return len(items).to_bytes(2, "big") + items


def _sni(*entries: tuple[int, bytes]) -> bytes:
    items = b"".join(bytes([t]) + len(n).to_bytes(2, "big") + n for t, n in entries)
    return len(items).to_bytes(2, "big") + items


def test_names_fast_path_takes_the_last_extension_of_a_type() -> None:
    # Found by the tls fuzz target (fuzz/regressions/tls): a ClientHello whose server_name
    # extension type was changed into a second ALPN extension. The fast path added up the
    # names of both ALPN extensions; the full parser keeps the last.
    cases = [
        _hello_with((16, _alpn(b"imo.im")), (16, _alpn(b"h2", b"http/1.1"))),
        _hello_with((0, _sni((0, b"a.example"))), (0, _sni((0, b"b.example")))),
        _hello_with((0, _sni((0, b"a.example"))), (0, _sni((1, b"x"), (0, b"b.example")))),
        _hello_with((0, _sni((0, b"a.example"))), (0, _sni((1, b"x")))),
    ]
    found = (Path(__file__).resolve().parents[3] / "fuzz" / "regressions" / "tls"
             / "duplicate-alpn-extension").read_bytes()
    for data in (*cases, found):
        full = tls.parse_tls_client_hello(data)
        assert tls.tls_client_hello_names(data) == (full.sni, tuple(full.alpn))
    assert tls.tls_client_hello_names(cases[0]) == (None, ("h2", "http/1.1"))
    assert tls.tls_client_hello_names(cases[2])[0] == "b.example"
    assert tls.tls_client_hello_names(cases[3])[0] is None
