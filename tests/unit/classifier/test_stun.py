"""STUN/TURN parser tests on bytes cut from real captures.

Captures named below are in ../shared/captures/ndpi-dev/pcap/ (frame numbers are
1-based, payload = UDP/TCP payload). The ChannelData vector is Chrome's, from
pion/turn internal/proto/testdata/02_chandata.hex (CC0-1.0).
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest

from classifier.dpi.stun import (
    AttrType,
    ChannelData,
    Kind,
    MessageClass,
    Method,
    StunFraming,
    StunGist,
    StunMessage,
    Vendor,
    classify_first_byte,
    looks_like_stun,
    parse_channel_data,
    parse_stun,
    parse_stun_payload,
    stun_gist,
    udp_stun_possible,
)
from probe.errors import Malformed, ParseError, Truncated

# stun_wa_call.pcapng frame 1: WhatsApp TURN Allocate request with 0x4000
WA_ALLOCATE = bytes.fromhex(
    "000300c02112a44270758b44c723a74ed1934a25400000960902b6281ef343ba8bcaaa266adadab1012ef432f7"
    "c19ee10ad595c8cba15da9f0345e42f822506711fa3185671936c5ea318573c45aeeafad513adad2fb47059a0fb2"
    "a8035ce7e0079c75ffa7bf7a4a01d42783eccb118a97198f3e2e16806b5519a1f2dfeb4880a877a92dba4bc8899e"
    "b222d2d0ed8f244c991b8cf4f238a60fb05f8b8c345bba1301107c5379c15594cf1f3616c1000000160008000"
    "12c847c2bdfa10008001424ce1048b6f505eb0030b75478471335d666576f")
# stun_wa_call.pcapng frame 11: Allocate success with XOR-MAPPED-ADDRESS and 0x4002
WA_ALLOCATE_OK = bytes.fromhex(
    "010300302112a44270758b44c723a74ed1934a25002000080001d1247c310f41400200080000018660b8c827"
    "00080014aa7209cd6fe3d57f1cfd68312450d84c88c21b4e")
# stun_wa_call.pcapng frame 47: non-standard type 0x0801, no attributes
WA_0801 = bytes.fromhex("080100002112a44270758b44c723a74ed1934a3b")
# stun_wa_call.pcapng frame 409: type 0x0800 with a 4-byte 0x802B (not an address)
WA_0800 = bytes.fromhex(
    "080000c82112a44270758b44c723a74ed1934a47400000960902b6281ef343ba8bcaaa266adadab1012ef432f7"
    "c19ee10ad595c8cba15da9f0345e42f822506711fa3185671936c5ea318573c45aeeafad513adad2fb47059a0fb2"
    "a8035ce7e0079c75ffa7bf7a4a01d42783eccb118a97198f3e2e16806b5519a1f2dfeb4880a877a92dba4bc8899e"
    "b222d2d0ed8f244c991b8cf4f238a60fb05f8b8c345bba1301107c5379c15594cf1f3616c10000802b0004020000"
    "000016000800012c847c2bdfa100080014d706ce2eaad7e6daab79be33e4ea46b67a1ebafb")
# teams.pcap frame 1238: Teams Allocate with MS-TURN attributes
TEAMS_ALLOCATE = bytes.fromhex(
    "000300302112a442b2343f6e67f41d58acba639f000f000472c64bc68037000400000002800800040000000680"
    "060004000000010010000400002ee08055000400020002")
# teams.pcap frame 1245: Allocate error 401 with MS-MULTIPLEXED-TURN-SESSION-ID
TEAMS_401 = bytes.fromhex(
    "011300a72112a442b2343f6e67f41d58acba639f000f000472c64bc680080004000000060009003d0000040154"
    "6865207265717565737420646964206e6f7420636f6e7461696e2061204d6573736167652d496e746567726974"
    "7920617474726962757465000e000800010d963472fa8d00140014024ecbf8827a60d65306debfa77d87d14402"
    "dd5d0015000a227274636d65646961220001000800010d983472fa8d809500087f20c4dd4f848dfa8020000800"
    "01c1d571a76a0a")
# teams.pcap frame 1404: ICE connectivity check with MS-IMPLEMENTATION-VERSION
TEAMS_CHECK = bytes.fromhex(
    "0001005c2112a442c6429a8034aea2ac958d0a81000600096f352f493a46593332000000802a000800007f8a52"
    "86580080700004000000078036000400000001002400046efffeff80370004000000020008001435a47bc3a5e0"
    "1cb9ad459c69056295906bb086ad80280004fb75b895")
# teams.pcap frame 1416: pre-RFC TURN Data indication 0x0115, no cookie, plain 0x0012, DATA
TEAMS_LEGACY_DATA = bytes.fromhex(
    "01150088c2d6764f53f1d813305855947dbe126b000f000472c64bc60012000800013fcc5d476ecd0013007000"
    "01005c2112a4429393ee2aa84f9a30724106d600060009465933323a6f352f490000008029000800007fed5e05"
    "8e0080700004000000078036000400000001002400046efffdfe80370004000000020008001430b3207fdc0715"
    "34616680862d7c738ed159b9e2802800047dd1bf47")
# teams.pcap frame 1424: 0xFF10 multiplexed-TURN header around a Binding success
TEAMS_MUX = bytes.fromhex(
    "ff100060deaa296708f708fc010100442112a44281275a7e28b364d88f3d14f980700004000000070020000800"
    "012c851560584a8037000400000002803600040000000100080014998b53fec81f7d913f18f8cc4c645293987537"
    "ed802800043ea7ac36")
# telegram_videocall.pcapng frame 549: Binding success with RESPONSE-ORIGIN / OTHER-ADDRESS
TG_BINDING_OK = bytes.fromhex(
    "010100402112a442483271554359716e6a344f690020000800010c727c3d45040001000800012d605d2fe14680"
    "2b0008000105785b6c0923802c0008000105790a434263802200044e6f6e6580280004c1a28444")
# telegram_videocall.pcapng frame 612: CreatePermission with XOR-PEER-ADDRESS and REALM
TG_CREATE_PERMISSION = bytes.fromhex(
    "0008006c2112a442373147436f7856674137343900120008000187282b3cc38a0006001d313634383035333935"
    "333a3733663830333863613635313032643562350000000014000c74656c656772616d2e6f7267001500103932"
    "33636634613931326565633631310008001402ccc11692d0e2eec5fd0261c110cab299d06cdb")
# telegram_videocall.pcapng frame 562: Allocate error 401 with REALM and NONCE
TG_401 = bytes.fromhex(
    "011300482112a442732f63644f7339774f4373300009001000000401556e617574686f72697a65640015001061"
    "346236376264313166336362666632001400 0c74656c656772616d2e6f7267802200044e6f6e6580280004ee"
    "695e19".replace(" ", ""))
# telegram_videocall.pcapng frame 645: Data indication carrying a Binding request
TG_DATA_IND = bytes.fromhex(
    "001700802112a442780a62763eead9a6295c052f001300600001004c2112a4426251584d534e44663269677500"
    "060009537555333a6c2f7763000000c057000400030384802900080000000000000000002400046e7f1f000008"
    "0014890589fe4709f04c3876fc2eedb31ea1d773b9ec80280004ea213c1c001200080001abd27c36a931802200"
    "044e6f6e6580280004b41cce31")
# telegram_videocall.pcapng frame 858: Refresh success, LIFETIME 0
TG_REFRESH_OK = bytes.fromhex(
    "010400302112a442394f5274524c6f6f2f667069000d000400000000802200044e6f6e6500080014169d20b26e"
    "e7a457f7b13d2b9d5981efec385f118028000400f4a40b")
# stun_google_meet.pcapng frame 216: Binding success with an IPv6 XOR-MAPPED-ADDRESS
MEET_V6 = bytes.fromhex(
    "010100382112a4426b4f6933493237343870764100200014000293160113af456172a821019327a02a575e5f00"
    "0800145aa3f076b27187c2cd59830e28a183d875f5c40a802800044b6055df")
# stun_google_meet.pcapng frame 5: Binding request with GOOG-NETWORK-INFO (0xC057)
MEET_CHECK = bytes.fromhex(
    "000100682112a442665152434857314a383677480006001f487252677061643750666f4b61416f4b4141694b41"
    "69414445413a50382f4c00c05700040003000a802a000848e5659350cd8cb5002400046e7f1effc0590002000100"
    "0000080014491905c045385ded81c816a1720e7ecd22bb0d4180280004ef25d4fe")
# stun_classic.pcap frames 1 and 2: RFC 3489 request (CHANGE-REQUEST) and response
CLASSIC_REQ = bytes.fromhex("000100089429ef88294dd52632c72931cb8dbb4c0003000400000000")
CLASSIC_RSP = bytes.fromhex("0101000c9429ef88294dd52632c72931cb8dbb4c000100080001d70aac103fe0")
# stun_tcp_multiple_msgs_same_pkt.pcap frame 5: three Allocate requests in one TCP segment
TCP_THREE = bytes.fromhex(
    "000300082112a442704b6e453952586746596c590019000411000000" * 3)
# pion/turn 02_chandata.hex line 1: Chrome ChannelData 0x4000 carrying a Binding request
CHANDATA = bytes.fromhex(
    "40000064000100502112a442453731722f2b322b6e4e7a5800060009443758343a33776c59000000c057000400"
    "0003e7802a00081d5136dab65b169300250000002400046e001eff0008001465d11a330e104a9f5f598af4abc6a8"
    "05f26003cf802800046b334442")

ALL_REAL = [WA_ALLOCATE, WA_ALLOCATE_OK, WA_0801, WA_0800, TEAMS_ALLOCATE, TEAMS_401,
            TEAMS_CHECK, TEAMS_LEGACY_DATA, TG_BINDING_OK, TG_CREATE_PERMISSION, TG_401,
            TG_DATA_IND, TG_REFRESH_OK, MEET_V6, MEET_CHECK, CLASSIC_REQ, CLASSIC_RSP]


def test_vectors_are_whole_messages() -> None:
    for v in ALL_REAL:
        assert len(v) == 20 + int.from_bytes(v[2:4], "big")
        assert looks_like_stun(v)


def test_whatsapp_allocate() -> None:
    m = parse_stun(WA_ALLOCATE)
    assert (m.method, m.cls, m.magic_cookie) == (Method.ALLOCATE, MessageClass.REQUEST, True)
    assert m.is_turn
    assert [a.type for a in m.attributes] == [0x4000, AttrType.XOR_RELAYED_ADDRESS,
                                              AttrType.MESSAGE_INTEGRITY]
    assert m.get(0x4000) is not None and len(m.get(0x4000).value) == 0x96  # type: ignore[union-attr]
    assert m.vendors == {Vendor.WHATSAPP}
    assert m.transaction_id == bytes.fromhex("70758b44c723a74ed1934a25")
    assert m.message_integrity is not None and len(m.message_integrity) == 20


def test_whatsapp_allocate_success_xor_mapped() -> None:
    m = parse_stun(WA_ALLOCATE_OK)
    assert (m.method, m.cls) == (Method.ALLOCATE, MessageClass.SUCCESS_RESPONSE)
    assert m.xor_mapped_address is not None
    assert (m.xor_mapped_address.address, m.xor_mapped_address.port) == ("93.35.171.3", 61494)
    assert Vendor.WHATSAPP in m.vendors


def test_whatsapp_nonstandard_types() -> None:
    m = parse_stun(WA_0801)
    assert (m.msg_type, m.method, m.attributes) == (0x0801, Method.WHATSAPP_201, ())
    assert m.vendors == {Vendor.WHATSAPP}
    m = parse_stun(WA_0800)
    assert m.msg_type == 0x0800 and m.method == Method.WHATSAPP_200
    # the 4-byte 0x802B is not an address: kept raw, reported, message still parsed
    assert m.undecoded == (AttrType.RESPONSE_ORIGIN,)
    assert m.response_origin is None
    assert m.get(AttrType.RESPONSE_ORIGIN).value == bytes.fromhex("02000000")  # type: ignore[union-attr]


def test_teams_allocate_microsoft_attributes() -> None:
    m = parse_stun(TEAMS_ALLOCATE)
    assert m.method == Method.ALLOCATE and m.cls == MessageClass.REQUEST
    assert m.ms_version == 6
    assert {a.type for a in m.attributes} >= {AttrType.MS_SERVICE_QUALITY,
                                              AttrType.MS_ADDITIONAL_ADDRESS}
    assert m.vendors == {Vendor.MICROSOFT}


def test_teams_error_401() -> None:
    m = parse_stun(TEAMS_401)
    assert m.cls == MessageClass.ERROR_RESPONSE and m.method == Method.ALLOCATE
    assert m.error is not None and m.error.code == 401
    assert m.error.reason.startswith("The request did not contain a Message-Integrity")
    assert m.nonce == '"rtcmedia"'
    assert m.mapped_address is not None and m.mapped_address.address == "52.114.250.141"
    assert m.xor_mapped_address is not None  # 0x8020, the pre-RFC number
    assert m.get(AttrType.MS_MULTIPLEXED_TURN_SESSION_ID).value == bytes.fromhex(  # type: ignore[union-attr]
        "7f20c4dd4f848dfa")


def test_teams_connectivity_check() -> None:
    m = parse_stun(TEAMS_CHECK)
    assert m.username == "o5/I:FY32"
    assert m.ms_implementation_version == 7
    assert m.ice_controlling is not None and m.priority == 0x6EFFFEFF
    assert m.fingerprint_ok is True
    assert Vendor.MICROSOFT in m.vendors


def test_teams_legacy_data_indication_without_cookie() -> None:
    m = parse_stun(TEAMS_LEGACY_DATA)
    assert not m.magic_cookie and m.msg_type == 0x0115 and len(m.transaction_id) == 16
    assert m.xor_peer_addresses[0].address == "93.71.110.205"  # plain REMOTE-ADDRESS
    assert m.xor_peer_addresses[0].port == 16332
    assert m.inner is not None and m.inner.method == Method.BINDING
    assert m.inner.fingerprint_ok is True and m.inner.username == "FY32:o5/I"


def test_teams_multiplexed_turn() -> None:
    p = parse_stun_payload(TEAMS_MUX)
    assert p.framing is StunFraming.MS_MULTIPLEXED
    assert p.ms_session_id == bytes.fromhex("deaa296708f708fc")
    (m,) = p.messages
    assert m.cls == MessageClass.SUCCESS_RESPONSE and m.fingerprint_ok is True


def test_telegram_binding_addresses() -> None:
    m = parse_stun(TG_BINDING_OK)
    # the same values nDPI prints for this flow (telegram_videocall.pcapng.out)
    assert m.xor_mapped_address == m.mapped_address
    assert (m.mapped_address.address, m.mapped_address.port) == ("93.47.225.70", 11616)  # type: ignore[union-attr]
    assert (m.response_origin.address, m.response_origin.port) == ("91.108.9.35", 1400)  # type: ignore[union-attr]
    assert (m.other_address.address, m.other_address.port) == ("10.67.66.99", 1401)  # type: ignore[union-attr]
    assert m.software == "None" and m.fingerprint_ok is True


def test_telegram_turn_permission_and_errors() -> None:
    m = parse_stun(TG_CREATE_PERMISSION)
    assert m.method == Method.CREATE_PERMISSION and m.realm == "telegram.org"
    assert [(a.address, a.port) for a in m.xor_peer_addresses] == [("10.46.103.200", 42554)]
    assert m.nonce == "923cf4a912eec611"
    m = parse_stun(TG_401)
    assert m.error is not None and (m.error.code, m.error.reason) == (401, "Unauthorized")
    assert m.realm == "telegram.org" and m.fingerprint_ok is True
    m = parse_stun(TG_REFRESH_OK)
    assert m.method == Method.REFRESH and m.lifetime == 0


def test_data_indication_inner_message() -> None:
    m = parse_stun(TG_DATA_IND)
    assert (m.method, m.cls) == (Method.DATA, MessageClass.INDICATION)
    assert m.data is not None and len(m.data) == 0x60
    assert m.inner is not None and m.inner.method == Method.BINDING
    assert m.inner.network_info == (3, 900) and m.inner.ice_controlled == 0
    assert m.inner.fingerprint_ok is True and m.fingerprint_ok is True
    assert m.xor_peer_addresses[0].address == "93.36.13.115"


def test_ipv6_xor_mapped_address() -> None:
    m = parse_stun(MEET_V6)
    a = m.xor_mapped_address
    assert a is not None and a.family == 2
    # nDPI prints [2001:b07:a3d:c112:48a1:1094:1227:281e]:45572 for this flow
    assert (a.address, a.port) == ("2001:b07:a3d:c112:48a1:1094:1227:281e", 45572)


def test_google_network_info_is_not_a_vendor_mark() -> None:
    m = parse_stun(MEET_CHECK)
    assert m.network_info == (3, 10)
    assert m.vendors == frozenset()
    assert m.get(AttrType.GOOG_MISC_INFO) is not None


def test_classic_stun() -> None:
    req = parse_stun(CLASSIC_REQ)
    assert not req.magic_cookie and req.method == Method.BINDING
    assert req.get(AttrType.CHANGE_REQUEST) is not None
    rsp = parse_stun(CLASSIC_RSP)
    assert rsp.mapped_address is not None
    assert (rsp.mapped_address.address, rsp.mapped_address.port) == ("172.16.63.224", 55050)
    with pytest.raises(Malformed):
        parse_stun(CLASSIC_REQ, tcp=True)  # no cookie on TCP


def test_fingerprint_mismatch_detected() -> None:
    bad = bytearray(TEAMS_CHECK)
    bad[30] ^= 0x01  # inside USERNAME
    assert parse_stun(bytes(bad)).fingerprint_ok is False


def test_tcp_several_messages() -> None:
    p = parse_stun_payload(TCP_THREE, tcp=True)
    assert p.framing is StunFraming.BARE and len(p.messages) == 3
    assert all(m.requested_transport == 17 for m in p.messages)


def test_tcp_rfc4571_framing() -> None:
    # the 28-byte message of frame 2 behind its RFC 4571 length, twice in one segment
    one = TCP_THREE[:28]
    p = parse_stun_payload((len(one).to_bytes(2, "big") + one) * 2, tcp=True)
    assert p.framing is StunFraming.RFC4571 and len(p.items) == 2


def test_channel_data() -> None:
    cd = parse_channel_data(CHANDATA)
    assert (cd.channel, cd.length, cd.inner_kind) == (0x4000, 100, Kind.STUN)
    assert cd.inner_stun is not None and cd.inner_stun.use_candidate
    assert cd.inner_stun.fingerprint_ok is True
    p = parse_stun_payload(CHANDATA)
    assert isinstance(p.items[0], ChannelData)


def test_demultiplexer() -> None:
    expect = {0: Kind.STUN, 3: Kind.STUN, 4: Kind.UNKNOWN, 15: Kind.UNKNOWN, 16: Kind.ZRTP,
              19: Kind.ZRTP, 20: Kind.DTLS, 63: Kind.DTLS, 64: Kind.TURN_CHANNEL,
              79: Kind.TURN_CHANNEL, 80: Kind.QUIC, 127: Kind.QUIC, 128: Kind.RTP_RTCP,
              191: Kind.RTP_RTCP, 192: Kind.QUIC, 255: Kind.QUIC}
    for b, kind in expect.items():
        assert classify_first_byte(b) is kind
    assert classify_first_byte(CHANDATA[0]) is Kind.TURN_CHANNEL
    assert classify_first_byte(TG_BINDING_OK[0]) is Kind.STUN


def test_truncated_at_attribute_block() -> None:
    with pytest.raises(Truncated) as exc:
        parse_stun(TG_BINDING_OK[:50])
    assert exc.value.offset == 20  # the 64-byte attribute block starts after the header
    with pytest.raises(Truncated) as exc:
        parse_stun(TG_BINDING_OK[:12])
    assert exc.value.offset == 8  # transaction id
    with pytest.raises(Truncated) as exc:
        parse_channel_data(CHANDATA[:60])
    assert exc.value.offset == 4
    with pytest.raises(Truncated):
        parse_stun_payload(TCP_THREE[:40], tcp=True)


def test_junk_raises_parse_error() -> None:
    for junk in (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
                 bytes.fromhex("01010600182be7600000800000000000"),  # DHCP, teams.pcap frame 1
                 b"\x00\x01\x00\x05" + bytes(16),
                 TG_BINDING_OK + b"\x00"):
        with pytest.raises(ParseError):
            parse_stun(junk)
    with pytest.raises(Malformed):
        parse_channel_data(b"\x80\x00\x00\x00")
    assert not looks_like_stun(b"\x16\xfe\xfd" + bytes(30))


def test_fuzz_only_parse_errors_escape() -> None:
    rng = random.Random(20240611)
    seeds = [*ALL_REAL, TEAMS_MUX, CHANDATA, TCP_THREE]
    for _ in range(3000):
        base = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            if op < 0.5 and base:
                base[rng.randrange(len(base))] = rng.randrange(256)
            elif op < 0.75:
                del base[rng.randrange(len(base) + 1):]
            else:
                base += rng.randbytes(rng.randint(1, 8))
        for tcp in (False, True):
            with contextlib.suppress(ParseError):
                parse_stun_payload(bytes(base), tcp=tcp)


SHARED = Path(__file__).resolve().parents[4] / "shared" / "captures" / "ndpi-dev" / "pcap"


@pytest.mark.shared
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared captures not present")
def test_every_stun_message_in_call_captures_parses() -> None:
    dpkt = pytest.importorskip("dpkt")
    count = 0
    for name in ("stun_wa_call.pcapng", "teams.pcap", "telegram_videocall.pcapng",
                 "stun_google_meet.pcapng", "stun_zoom.pcapng"):
        with (SHARED / name).open("rb") as fh:
            reader = dpkt.pcapng.Reader(fh) if name.endswith("ng") else dpkt.pcap.Reader(fh)
            for _ts, frame in reader:
                ip = dpkt.ethernet.Ethernet(frame).data
                udp = getattr(ip, "data", None)
                if not isinstance(udp, dpkt.udp.UDP) or not udp.data:
                    continue
                data = bytes(udp.data)
                if data[:2] != b"\xff\x10" and not looks_like_stun(data):
                    continue
                msgs: tuple[StunMessage, ...] = parse_stun_payload(data).messages
                assert all(m.fingerprint_ok is not False for m in msgs)
                count += 1
    assert count > 200


# -- the classifier's fast read (stun_gist) ------------------------------------------------------

def _gist_of(m: StunMessage) -> StunGist:
    return StunGist(*(getattr(m, name) for name in StunGist._fields))


def test_gist_reads_what_the_full_parser_reads() -> None:
    plain = [WA_ALLOCATE_OK, WA_0801, TEAMS_ALLOCATE, TEAMS_CHECK, TG_BINDING_OK,
             TG_CREATE_PERMISSION, TG_401, TG_REFRESH_OK, MEET_V6, MEET_CHECK]
    for data in plain:
        gist = stun_gist(data)
        assert gist is not None
        (m,) = parse_stun_payload(data).items
        assert isinstance(m, StunMessage)
        assert gist == _gist_of(m) and gist.is_turn == m.is_turn
    gist = stun_gist(MEET_V6)
    assert gist is not None and gist.xor_mapped_address is not None
    assert gist.xor_mapped_address.address == "2001:b07:a3d:c112:48a1:1094:1227:281e"
    gist = stun_gist(TG_CREATE_PERMISSION)
    assert gist is not None and gist.realm == "telegram.org"
    assert [(a.address, a.port) for a in gist.xor_peer_addresses] == [("10.46.103.200", 42554)]


def test_gist_leaves_anything_else_to_the_full_parser() -> None:
    # DATA (an inner message), classic STUN, ChannelData, 0xFF10, cut short, junk
    for data in (TG_DATA_IND, TEAMS_LEGACY_DATA, CLASSIC_REQ, CLASSIC_RSP, CHANDATA, TEAMS_MUX,
                 TG_BINDING_OK[:50], TG_BINDING_OK[:19], b"", bytes.fromhex("8064") + bytes(40),
                 b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"):
        assert stun_gist(data) is None


def test_gist_fuzz_agrees_with_the_full_parser() -> None:
    rng = random.Random(20260101)
    seeds = [*ALL_REAL, TEAMS_MUX, CHANDATA]
    answered = 0
    for _ in range(4000):
        base = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(0, 3)):
            if rng.random() < 0.7 and base:
                base[rng.randrange(len(base))] = rng.randrange(256)
            else:
                del base[rng.randrange(len(base) + 1):]
        data = bytes(base)
        gist = stun_gist(data)
        if gist is None:
            continue
        answered += 1
        (m,) = parse_stun_payload(data).items  # the gist never answers where this raises
        assert isinstance(m, StunMessage) and m.inner is None
        assert gist == _gist_of(m)
    assert answered > 500


def test_udp_stun_possible_only_rules_out_what_cannot_parse() -> None:
    for data in (*ALL_REAL, TEAMS_MUX, CHANDATA):
        assert udp_stun_possible(data)
    rtp = bytes.fromhex("808092db000000a0343da99bffffffffffffffffffffffff")
    quic = bytes.fromhex("c5ff00001b087ba7750a8f3bf556000045204135bf2bc44c")
    for data in (rtp, quic):
        assert not udp_stun_possible(data)
    rng = random.Random(5)
    for _ in range(3000):
        data = bytes([rng.randrange(256)]) + rng.randbytes(rng.randrange(40))
        if not udp_stun_possible(data):
            with pytest.raises(ParseError):
                parse_stun_payload(data)


def test_ipv6_addresses_read_as_ipaddress_writes_them() -> None:
    """Addresses are formatted with inet_ntop, and as ipaddress when an IPv4 part is embedded."""
    import ipaddress
    import socket
    for text in ("::ffff:1.2.3.4", "::1.2.3.4", "::1", "::", "2001:db8::1", "1:0:0:1::1",
                 "fe80::1:0:0:0"):
        raw = socket.inet_pton(socket.AF_INET6, text)
        value = b"\x00\x02\x12\x34" + raw  # MAPPED-ADDRESS, family 2, port 0x1234
        msg = (bytes.fromhex("0101") + (4 + len(value)).to_bytes(2, "big")
               + bytes.fromhex("2112a442") + bytes(12) + b"\x00\x01"
               + len(value).to_bytes(2, "big") + value)
        m = parse_stun(msg)
        assert m.mapped_address is not None
        assert m.mapped_address.address == str(ipaddress.IPv6Address(raw))
        assert stun_gist(msg) == _gist_of(m)
