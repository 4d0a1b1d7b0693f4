"""QUIC inspector: RFC 9001/9369 vectors, real Initials of many versions, gQUIC CHLOs."""

from __future__ import annotations

import contextlib
import random
import struct
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from classifier.dpi import quic
from classifier.dpi.quic import GquicHello, PacketType, QuicClientInitial, QuicVersion
from probe.cursor import Cursor
from probe.errors import Malformed, ParseError, Truncated

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "dpi"


def vec(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


RFC9001 = vec("rfc9001_a2_client_initial.bin")
RFC9369 = vec("rfc9369_a2_client_initial.bin")
RFC_DCID = bytes.fromhex("8394c8f03e515708")


def _initial(data: bytes) -> QuicClientInitial:
    result = quic.inspect_client([data])
    assert isinstance(result, QuicClientInitial)
    return result


def test_rfc9001_keys_and_client_initial() -> None:
    keys = quic.initial_keys(QuicVersion.V1, RFC_DCID)  # RFC 9001 A.1, client keys
    assert keys.key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert keys.iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert keys.hp.hex() == "9f50449e04a0e810283a1e9933adedd2"
    (header,) = quic.split_datagram(RFC9001)
    assert header.packet_type == PacketType.INITIAL
    assert (header.dcid, header.scid, header.token, header.size) == (RFC_DCID, b"", b"", 1200)
    pn, plain = quic.decrypt_initial(RFC9001, header, keys)
    assert pn == 2
    assert len(plain) == 1162
    assert plain.startswith(bytes.fromhex("060040f1010000ed0303ebf8"))  # RFC 9001 A.2 payload
    frames = quic.parse_initial_frames(plain, pn)
    assert frames.frame_types == (quic.FrameType.CRYPTO, quic.FrameType.PADDING)
    result = _initial(RFC9001)
    assert result.version == QuicVersion.V1 and result.dcid == RFC_DCID
    assert result.sni == "example.com"
    assert result.client_hello.cipher_suites == (0x1301, 0x1302)


def test_rfc9369_v2_client_initial() -> None:
    (header,) = quic.split_datagram(RFC9369)
    assert header.first_byte >> 4 == 0xD  # v2 Initial type bits are 01
    assert header.packet_type == PacketType.INITIAL
    keys = quic.initial_keys(QuicVersion.V2, RFC_DCID)
    assert keys != quic.initial_keys(QuicVersion.V1, RFC_DCID)
    pn, plain = quic.decrypt_initial(RFC9369, header, keys)
    assert pn == 2
    assert plain.startswith(bytes.fromhex("060040f1010000ed0303ebf8"))  # same payload as v1
    result = _initial(RFC9369)
    assert result.version == QuicVersion.V2
    assert result.client_hello == _initial(RFC9001).client_hello


@pytest.mark.parametrize(("name", "version", "sni", "alpn", "ja4"), [
    # JA4 b and c parts equal those nDPI prints for these captures (ndpi_result/*.out).
    ("quic-27_f1.bin", QuicVersion.DRAFT_27, "play.google.com", ("h3-27",),
     "q13d0309h7_55b375c5d22e_f68d9329452a"),
    ("quic-mvfst-22_f1.bin", QuicVersion.MVFST_22, "graph.facebook.com",
     ("h3-fb-05", "h1q-fb"), "q00d0109h5_0f2cb44170f4_01b7bde4a3dd"),
    ("quic_0RTT_f1.bin", QuicVersion.DRAFT_28, "abcd", ("h3-32",),
     "q00d0310h2_55b375c5d22e_060ec1c6a056"),
    ("quic_t51_f1.bin", QuicVersion.T051, "www.google.com", ("h3-T051",),
     "q13d0308h1_55b375c5d22e_e7bc1e4f333e"),
])
def test_real_initials(name: str, version: int, sni: str, alpn: tuple[str, ...],
                       ja4: str) -> None:
    result = _initial(vec(name))
    assert result.version == version
    assert result.sni == sni
    assert result.alpn == alpn
    assert result.ja4 == ja4
    assert result.packets == 1


def test_zero_rtt_before_initial_is_skipped() -> None:
    zero_rtt, initial = vec("quic_0RTT_f3.bin"), vec("quic_0RTT_f5.bin")
    assert [h.packet_type for h in quic.split_datagram(zero_rtt)] == [PacketType.ZERO_RTT]
    result = quic.inspect_client_initials([zero_rtt, initial])
    assert result.version == QuicVersion.V1
    assert result.sni == "ssl.gstatic.com"
    assert result.alpn == ("h3",)
    assert result.ja4 == "q13d0312h3_55b375c5d22e_73e2d9e6cde6"
    assert result.dcid == bytes.fromhex("65b9ee23b37344d6")


def _protect(dcid: bytes, pn: int, plain: bytes) -> bytes:
    """A v1 client Initial around ``plain`` (RFC 9001 §5.3-5.4), for split-CRYPTO cases."""
    keys = quic.initial_keys(QuicVersion.V1, dcid)
    length = 2 + len(plain) + 16
    header = bytearray(b"\xc1" + (1).to_bytes(4, "big") + bytes([len(dcid)]) + dcid + b"\x00\x00"
                       + (0x4000 | length).to_bytes(2, "big") + pn.to_bytes(2, "big"))
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(keys.key).encrypt(nonce, plain, bytes(header))
    encryptor = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()
    mask = encryptor.update(sealed[2:18]) + encryptor.finalize()
    header[0] ^= mask[0] & 0x0F
    header[-2] ^= mask[1]
    header[-1] ^= mask[2]
    return bytes(header) + sealed


def _crypto(offset: int, data: bytes) -> bytes:
    varint = (0x4000 | offset).to_bytes(2, "big") + (0x4000 | len(data)).to_bytes(2, "big")
    return b"\x06" + varint + data


def test_crypto_split_across_packets_out_of_order() -> None:
    # The real ClientHello of RFC 9001 A.2 cut in three, sent in two Initials
    # with the chunks out of order, plus ACK and PING frames.
    (header,) = quic.split_datagram(RFC9001)
    _, plain = quic.decrypt_initial(RFC9001, header, quic.initial_keys(1, RFC_DCID))
    (crypto,) = quic.parse_initial_frames(plain).crypto
    ch = crypto[1]
    a, b, c = ch[:90], ch[90:200], ch[200:]
    first = _protect(RFC_DCID, 0, _crypto(200, c) + b"\x01" + _crypto(0, a) + bytes(20))
    second = _protect(RFC_DCID, 1, b"\x02\x00\x00\x00\x00" + _crypto(90, b) + bytes(20))
    expected = _initial(RFC9001).client_hello
    coalesced = quic.inspect_client_initials([second + first])
    assert coalesced.client_hello == expected
    assert coalesced.packets == 2
    apart = quic.inspect_client_initials([second, first])
    assert apart.client_hello == expected
    with pytest.raises(Truncated) as exc:
        quic.inspect_client_initials([first])
    assert exc.value.offset == len(first)


def test_gquic_q050_encrypted_chlo() -> None:
    result = quic.inspect_client([vec("gquic_f1.bin")])
    assert isinstance(result, GquicHello)
    assert result.version == QuicVersion.Q050
    assert result.sni == "www.gstatic.com"
    assert result.uaid == "canary Chrome/85.0.4169.0 Windows NT 10.0; Win64; x64"
    assert result.tag("VER") == b"Q050"


def test_gquic_q046_and_q035_clear_chlo() -> None:
    q46 = quic.inspect_client([vec("quic046_f1.bin")])
    assert isinstance(q46, GquicHello)
    assert (q46.version, q46.sni) == (QuicVersion.Q046, "i.ytimg.com")
    assert q46.uaid == "Chrome/80.0.3987.132 Windows NT 6.3; Win64; x64"
    assert q46.cid == bytes.fromhex("b4a4f9f5f42edd39")
    q35 = quic.parse_gquic_packet(vec("youtube_quic_f11.bin"))
    assert (q35.version, q35.sni) == (QuicVersion.Q035, "yt3.ggpht.com")
    assert q35.uaid == "beta Chrome/57.0.2987.98 Intel Mac OS X 10_12_3"
    assert [t for t, _ in q35.tags][:3] == ["PAD", "SNI", "VER"]


def test_truncated_initial() -> None:
    with pytest.raises(Truncated) as exc:
        quic.split_datagram(RFC9001[:1000])
    assert exc.value.offset == 18  # where the 1182-byte packet number + payload begins
    with pytest.raises(Truncated) as exc:
        quic.inspect_client([RFC9001[:4]])
    assert exc.value.offset == 1
    with pytest.raises(Truncated):
        quic.inspect_client_initials([])


def test_junk_and_damage_are_malformed() -> None:
    damaged = bytearray(RFC9001)
    damaged[-1] ^= 1
    with pytest.raises(Malformed) as exc:
        quic.inspect_client([bytes(damaged)])
    assert exc.value.reason == "Initial packet does not decrypt"
    unknown = b"\xc0\x12\x34\x56\x78" + RFC9001[5:]
    with pytest.raises(Malformed):
        quic.inspect_client([unknown])
    with pytest.raises(Malformed):
        quic.inspect_client([b"\x40" + bytes(40)])  # short header, no version
    with pytest.raises(Malformed):
        quic.parse_initial_frames(b"\x10\x00")  # MAX_DATA is not allowed in an Initial


def test_fuzz_only_parse_errors() -> None:
    rng = random.Random(7)
    seeds = [RFC9001, vec("quic-27_f1.bin"), vec("gquic_f1.bin"), vec("quic046_f1.bin"),
             vec("youtube_quic_f11.bin")]
    for _ in range(400):
        base = rng.choice(seeds)
        kind = rng.randrange(4)
        if kind == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(80)))
        elif kind == 1:
            data = base[:rng.randrange(len(base))]
        elif kind == 2:
            mutated = bytearray(base)
            for _ in range(rng.randrange(1, 4)):
                mutated[rng.randrange(60)] = rng.randrange(256)
            data = bytes(mutated)
        else:
            data = bytes([rng.choice([0xC0, 0xC3, 0xD0, 0x0D, 0x09])]) + base[1:rng.randrange(80)]
        with contextlib.suppress(ParseError):
            quic.inspect_client([data])
        with contextlib.suppress(ParseError):
            quic.parse_initial_frames(data)


@pytest.mark.parametrize("name", ["rfc9001_a2_client_initial.bin", "rfc9369_a2_client_initial.bin",
                                  "quic-27_f1.bin", "quic-mvfst-22_f1.bin", "quic_0RTT_f1.bin",
                                  "quic_t51_f1.bin"])
def test_names_only_reads_the_same_names(name: str) -> None:
    full = quic.inspect_client([vec(name)])
    names = quic.inspect_client([vec(name)], names_only=True)
    assert isinstance(full, QuicClientInitial) and isinstance(names, quic.QuicNames)
    assert (names.version, names.sni, names.alpn) == (full.version, full.sni, full.alpn)


def test_names_only_on_truncated_and_damaged_initials() -> None:
    with pytest.raises(Truncated):
        quic.inspect_client([RFC9001[:4]], names_only=True)
    damaged = bytearray(RFC9001)
    damaged[-1] ^= 1
    with pytest.raises(Malformed):
        quic.inspect_client([bytes(damaged)], names_only=True)
    # gQUIC has no TLS ClientHello: its CHLO comes back whatever was asked
    assert isinstance(quic.inspect_client([vec("quic046_f1.bin")], names_only=True),
                      quic.GquicHello)


# -- the direct-indexing readers against the Cursor reads they replace ---------------------------

def _cursor_long_header(cur: Cursor) -> quic.LongHeader:
    """RFC 9000 §17.2 read with a Cursor, field by field (the reference for split_datagram)."""
    layer, start = cur.layer, cur.pos
    first = cur.u8()
    if not first & 0x80:
        raise Malformed(layer, start, "short header packet")
    version = cur.u32()
    if version >> 16 in (0x5130, 0x5430) and version < QuicVersion.Q050:
        raise Malformed(layer, start + 1, f"gQUIC {version:#x} has no IETF long header")
    dcid = cur.take(cur.u8())
    scid = cur.take(cur.u8())
    if version != 0 and (len(dcid) > 20 or len(scid) > 20):
        raise Malformed(layer, start + 5, "connection ID longer than 20 bytes")
    if version == 0:
        if cur.remaining() % 4:
            raise Malformed(layer, cur.pos, "version list not a multiple of 4 bytes")
        cur.skip(cur.remaining())
        return quic.LongHeader(start, cur.pos - start, first, version,
                               PacketType.VERSION_NEGOTIATION, dcid, scid, b"", 0, 0)
    bits = (first >> 4) & 0x03
    ptype = quic._V2_TYPES[bits] if version == QuicVersion.V2 else PacketType(bits)
    if ptype == PacketType.RETRY:
        token = cur.take(cur.remaining())
        return quic.LongHeader(start, cur.pos - start, first, version, ptype, dcid, scid, token,
                               0, 0)
    token = cur.take(cur.varint()) if ptype == PacketType.INITIAL else b""
    length = cur.varint()
    pn_offset = cur.pos - start
    cur.skip(length)
    return quic.LongHeader(start, cur.pos - start, first, version, ptype, dcid, scid, token,
                           pn_offset, length)


def _outcome(func: Callable[[], object]) -> object:
    try:
        return func()
    except ParseError as exc:
        return type(exc), exc.offset, exc.reason


def test_long_headers_read_as_a_cursor_reads_them() -> None:
    rng = random.Random(9)
    seeds = [RFC9001, RFC9369, vec("quic-27_f1.bin"), vec("quic_0RTT_f3.bin"),
             vec("quic_0RTT_f5.bin"), vec("quic-mvfst-22_f1.bin"), vec("gquic_f1.bin"),
             b"\x80\x00\x00\x00\x00\x04abcd\x04efgh\x00\x00\x00\x01",  # version negotiation
             b"\xf0\x00\x00\x00\x01\x01a\x01b" + bytes(20)]  # Retry
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        if rng.random() < 0.5:
            del data[rng.randrange(len(data) + 1):]
        for _ in range(rng.randint(0, 3)):
            if data:
                data[rng.randrange(min(len(data), 40))] = rng.randrange(256)
        raw = bytes(data)
        for pos in (0, 1):
            ours, ref = Cursor(raw, "quic", min(pos, len(raw))), Cursor(raw, "quic",
                                                                        min(pos, len(raw)))
            got = _outcome(partial(quic.parse_long_header, ours))
            want = _outcome(partial(_cursor_long_header, ref))
            assert got == want
            if isinstance(want, quic.LongHeader):
                assert ours.pos == ref.pos  # moved past the packet


def test_initial_frames_errors_where_a_cursor_would() -> None:
    # frames cut at every length: Truncated at the offset of the read that ran out
    plain = (b"\x02\x41\x00\x05\x00\x00" + b"\x03\x00\x00\x00\x00\x01\x02\x03"
             + b"\x06\x00\x05hello" + b"\x01" + b"\x1c\x07\x06\x03abc" + bytes(8))
    frames = quic.parse_initial_frames(plain)
    assert frames.crypto == ((0, b"hello"),)
    assert frames.frame_types == (2, 3, 6, 1, 0x1C, 0)
    for n in range(len(plain)):
        cut = plain[:n]
        try:
            quic.parse_initial_frames(cut)
        except Truncated as err:
            assert 0 <= err.offset <= n
            assert err.reason.startswith("need ")
    with pytest.raises(Truncated) as exc:
        quic.parse_initial_frames(b"\x06\x00\x09hello")
    assert (exc.value.offset, exc.value.reason) == (3, "need 9 bytes, 5 left")
    with pytest.raises(Truncated) as exc:
        quic.parse_initial_frames(b"\x06\x40")
    assert (exc.value.offset, exc.value.reason) == (1, "need 2 bytes, 1 left")


def _chlo(tags: list[tuple[bytes, bytes]]) -> bytes:
    """A gQUIC handshake message: tag, count, padding, (tag, end offset) entries, values."""
    out = b"CHLO" + struct.pack("<HH", len(tags), 0)
    end = 0
    for tag, value in tags:
        end += len(value)
        out += tag + struct.pack("<I", end)
    return out + b"".join(v for _, v in tags)


def test_gquic_q046_chlo_at_a_later_stream_offset() -> None:
    """A CHLO sent again at offset 1024 of the crypto stream (its first copy not
    captured) is still read, as Wireshark reads it."""
    chlo = _chlo([(b"SNI\x00", b"www.youtube.com"), (b"UAID", b"Chrome/74.0 Android 8.0.0"),
                  (b"VER\x00", b"Q046")])
    frame = b"\xa4\x01" + struct.pack(">HH", 1024, len(chlo)) + chlo
    packet = (b"\xc3Q046\x50" + bytes.fromhex("eacfe6e706df272d") + b"\x00\x00\x00\x04"
              + bytes(12) + frame + bytes(40))
    hello = quic.parse_gquic_packet(packet)
    assert (hello.version, hello.sni, hello.uaid) == (QuicVersion.Q046, "www.youtube.com",
                                                      "Chrome/74.0 Android 8.0.0")
    other = b"\xa4\x03" + struct.pack(">HH", 1024, len(chlo)) + chlo  # stream 3: not crypto
    with pytest.raises(ParseError):
        quic.parse_gquic_packet(packet.replace(frame, other))
