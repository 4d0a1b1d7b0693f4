"""A TLS server's certificate names the app when the ClientHello names none.

Before TLS 1.3 the server's Certificate follows its ServerHello in the clear (RFC 5246
§7.3); nDPI reads its names the same way. Each capture here is a real TCP exchange
written with scapy: handshake, ClientHello, the server's ServerHello, Certificate and
ServerHelloDone in full-size segments, then the client's answer."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from classifier.engine import classify_flows
from classifier.owners import lookup
from classifier.payloads import meter_config
from classifier.records import Classification
from probe import read_capture

PHONE, SERVER = "192.168.1.20", "45.90.28.10"  # the server's address is nobody's we know
MSS = 1400
_KEY = ec.generate_private_key(ec.SECP256R1())


def _certificate(cn: str, alt: list[str]) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
         .public_key(_KEY.public_key()).serial_number(1)
         .not_valid_before(datetime.datetime(2026, 1, 1))
         .not_valid_after(datetime.datetime(2027, 1, 1)))
    if alt:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in alt]),
                            critical=False)
    return b.sign(_KEY, hashes.SHA256()).public_bytes(Encoding.DER)


def _handshake(msg_type: int, body: bytes) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def _records(handshakes: bytes) -> bytes:
    """Handshake messages in TLS 1.2 records of at most 16 KiB (RFC 5246 §6.2.1)."""
    out = b""
    for i in range(0, len(handshakes), 16384):
        part = handshakes[i:i + 16384]
        out += b"\x16\x03\x03" + len(part).to_bytes(2, "big") + part
    return out


def _client_hello(sni: str | None, padding: int = 0) -> bytes:
    ext = b""
    if padding:  # the padding extension (RFC 7685), before the server name
        ext = b"\x00\x15" + padding.to_bytes(2, "big") + bytes(padding)
    if sni is not None:
        host = sni.encode()
        entry = b"\x00" + len(host).to_bytes(2, "big") + host
        data = len(entry).to_bytes(2, "big") + entry
        ext += b"\x00\x00" + len(data).to_bytes(2, "big") + data
    body = (b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\xc0\x2f" + b"\x01\x00"
            + len(ext).to_bytes(2, "big") + ext)
    return _records(_handshake(1, body))


def _server_flight(der: bytes) -> bytes:
    hello = b"\x03\x03" + bytes(range(32)) + b"\x00" + b"\xc0\x2f" + b"\x00" + b"\x00\x00"
    chain = len(der).to_bytes(3, "big") + der
    return _records(_handshake(2, hello) + _handshake(11, len(chain).to_bytes(3, "big") + chain)
                    + _handshake(14, b""))


def _capture(path: Path, der: bytes, sni: str | None = None, client: bool = True,
             padding: int = 0) -> Path:
    """One TLS 1.2 connection; ``client=False`` keeps only the server's packets, and
    ``padding`` pads the ClientHello, sent as one segment, by that many bytes."""
    t = [1_700_000_000.0]
    seq = {PHONE: 1000, SERVER: 5000}
    pkts = []

    def send(src: str, flags: str, data: bytes = b"") -> None:
        dst = SERVER if src == PHONE else PHONE
        sport, dport = (51000, 443) if src == PHONE else (443, 51000)
        p = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=src, dst=dst)
             / TCP(sport=sport, dport=dport, flags=flags, seq=seq[src], ack=seq[dst]) / data)
        p.time = t[0]
        t[0] += 0.01
        seq[src] += len(data) + (1 if "S" in flags else 0)
        if client or src == SERVER:
            pkts.append(p)

    send(PHONE, "S")
    send(SERVER, "SA")
    send(PHONE, "A")
    send(PHONE, "PA", _client_hello(sni, padding))
    flight = _server_flight(der)
    for i in range(0, len(flight), MSS):
        send(SERVER, "PA", flight[i:i + MSS])
    send(PHONE, "PA", b"\x14\x03\x03\x00\x01\x01")
    send(SERVER, "PA", b"\x17\x03\x03\x00\x20" + bytes(32))
    wrpcap(str(path), pkts)
    return path


def _classify(path: Path) -> Classification:
    run = read_capture(path, meter_config())
    (c,) = classify_flows(run.flows)
    return c


def test_the_server_address_is_nobodys() -> None:
    assert lookup(SERVER) is None  # so that only the certificate can name the app


def test_the_certificates_common_name_names_the_app(tmp_path: Path) -> None:
    c = _classify(_capture(tmp_path / "wa.pcap", _certificate("*.whatsapp.net", [])))
    assert (c.app, c.method) == ("whatsapp", "tls-cert")
    assert c.reason == "server certificate for *.whatsapp.net matches suffix:whatsapp.net"
    assert c.facts.cert_names == ("*.whatsapp.net",)
    assert c.facts.sni is None and c.facts.server_hello


def test_a_shared_certificate_is_named_by_its_common_name(tmp_path: Path) -> None:
    # Meta's certificate lists messenger.com among facebook.com's names.
    der = _certificate("*.facebook.com", ["*.facebook.com", "facebook.com", "*.messenger.com"])
    c = _classify(_capture(tmp_path / "fb.pcap", der))
    assert (c.app, c.method) == ("facebook", "tls-cert")


def test_other_names_count_only_when_every_one_names_the_app(tmp_path: Path) -> None:
    der = _certificate("www.example.org", ["www.example.org", "*.zoom.us", "zoom.us"])
    c = _classify(_capture(tmp_path / "zoom.pcap", der))
    assert (c.app, c.method) == ("zoom", "tls-cert")
    assert "every other name of its 3 names, all but the first www.example.org, names " \
           "zoom" in c.reason
    # A front end's certificate: its other names are the organisation's other services,
    # some of which name no app (google.com, gstatic.com): no app by its names.
    der = _certificate("*.google.com", ["*.google.com", "*.youtube.com", "*.gstatic.com",
                                        "youtu.be"])
    c = _classify(_capture(tmp_path / "google.pcap", der))
    assert c.app is None and c.method != "tls-cert"
    assert c.facts.cert_names == ("*.google.com", "*.youtube.com", "*.gstatic.com", "youtu.be")
    # A CDN's shared certificate: one customer's name among others.
    der = _certificate("a248.e.example-cdn.net", ["*.example-cdn.net", "*.whatsapp.net"])
    c = _classify(_capture(tmp_path / "cdn.pcap", der))
    assert c.app is None


def test_the_client_hellos_server_name_comes_first(tmp_path: Path) -> None:
    der = _certificate("*.zoom.us", [])
    c = _classify(_capture(tmp_path / "sni.pcap", der, sni="web.whatsapp.com"))
    assert (c.app, c.method) == ("whatsapp", "sni")
    # A server name that names no app is still the service the client reached: the
    # certificate (which lists a server's other services too) is not read.
    for name in ("telemetry.example.org", "telemetry.example.org."):
        c = _classify(_capture(tmp_path / "other.pcap", der, sni=name))
        assert c.app is None and c.facts.cert_names == ()
    # An address in place of a name (RFC 6066 §3 forbids it), or an empty name, names
    # nothing.
    for name in (SERVER, ""):
        c = _classify(_capture(tmp_path / "literal.pcap", der, sni=name))
        assert (c.app, c.method) == ("zoom", "tls-cert")


def test_a_client_hello_not_read_whole_is_no_sign_of_no_name(tmp_path: Path) -> None:
    # One 2.7 KB segment (a capture made with segmentation offload): the probe keeps its
    # first 2,048 bytes, the server name past them is lost, and the certificate, which
    # could name another of the server's services, is not read in its place.
    der = _certificate("*.zoom.us", [])
    path = _capture(tmp_path / "offload.pcap", der, sni="telemetry.example.org",
                    padding=2600)
    c = _classify(path)
    assert c.facts.client_hello is False and c.facts.protocol == "tls"
    assert c.facts.cert_names == () and c.app is None


def test_only_the_servers_side_captured(tmp_path: Path) -> None:
    c = _classify(_capture(tmp_path / "oneway.pcap", _certificate("*.whatsapp.net", []),
                           client=False))
    assert (c.app, c.method) == ("whatsapp", "tls-cert")
    assert c.facts.protocol == "tls" and not c.facts.client_hello


def test_a_certificate_longer_than_the_bytes_kept_names_nothing(tmp_path: Path) -> None:
    # The probe keeps the first three payloads back whole; a certificate that goes on
    # past them cannot be read, and no name is guessed from what was kept.
    der = _certificate("*.whatsapp.net", [f"host{i}.example.org" for i in range(300)])
    assert len(der) > 3 * MSS
    c = _classify(_capture(tmp_path / "long.pcap", der))
    assert c.facts.cert_names == () and c.facts.protocol == "tls"
    assert c.app is None
