"""Small real servers on loopback for the reachability tests: DNS, TLS, STUN, reset.

Each runs in a daemon thread on 127.0.0.x and stops when its ``close()`` is called.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import struct
import threading
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MAGIC = 0x2112A442


class DnsServer:
    """Answers A questions from ``table`` (name -> addresses); NXDOMAIN for other names,
    an empty NOERROR for AAAA of known names."""

    def __init__(self, table: dict[str, list[str]], ip: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.table = {k.rstrip(".").lower(): v for k, v in table.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, port))
        self.address = f"{ip}:{self.sock.getsockname()[1]}"
        self.asked: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            q = query.question[0]
            name = q.name.to_text().rstrip(".").lower()
            self.asked.append(name)
            if name not in self.table:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            elif q.rdtype == dns.rdatatype.A:
                reply.answer.append(dns.rrset.from_text_list(
                    q.name, 60, "IN", "A", self.table[name]))
            reply.flags |= dns.flags.RA
            self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self.sock.close()


def make_ca(tmp: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """A CA (file), and a server certificate and key for ``names`` it signed."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "marsad test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


class TlsServer:
    """Completes TLS handshakes with ``cert``; ``reset_after_hello`` instead reads the
    ClientHello and answers with a RST (SO_LINGER 0), as an SNI filter does."""

    def __init__(self, ip: str, port: int, cert: Path | None = None, key: Path | None = None,
                 *, reset_after_hello: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.reset = reset_after_hello
        self.ctx: ssl.SSLContext | None = None
        if cert is not None and key is not None:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(cert, key)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(3)
        try:
            if self.reset or self.ctx is None:
                conn.recv(4096)  # the ClientHello
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                return
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            conn.close()

    def close(self) -> None:
        self.sock.close()


def stun_response(request: bytes, peer: tuple[str, int]) -> bytes:
    """An RFC 8489 Binding success response to ``request`` with XOR-MAPPED-ADDRESS."""
    txid = request[8:20]
    port = peer[1] ^ (MAGIC >> 16)
    ip = struct.unpack("!I", socket.inet_aton(peer[0]))[0] ^ MAGIC
    attr = struct.pack("!HHBBHI", 0x0020, 8, 0, 1, port, ip)
    return struct.pack("!HHI", 0x0101, len(attr), MAGIC) + txid + attr


class StunServer:
    """Answers STUN Binding requests (UDP) with a success response."""

    def __init__(self, ip: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, port))
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(2048)
            except OSError:
                return
            self.requests.append(data)
            if len(data) >= 20 and struct.unpack_from("!HHI", data)[::2] == (1, MAGIC):
                self.sock.sendto(stun_response(data, peer), peer)

    def close(self) -> None:
        self.sock.close()
