"""probe.addresses: address classes (IANA special-purpose registries, RFC 6890) and which
end of a flow is local, with swapped-endpoint cases on flows read from real bytes."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP  # type: ignore[attr-defined]
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from probe import FlowRecord, read_capture
from probe import addresses as A

AddressClass = A.AddressClass
address_class, is_local_class, orig_is_local = A.address_class, A.is_local_class, A.orig_is_local
ends, local_host, local_is_orig = A.ends, A.local_host, A.local_is_orig

C = AddressClass

CLASSES = [
    # RFC 1918 section 3: the three private blocks and their edges
    ("10.0.0.0", C.PRIVATE), ("10.255.255.255", C.PRIVATE), ("172.16.0.0", C.PRIVATE),
    ("172.31.255.255", C.PRIVATE), ("192.168.1.23", C.PRIVATE),
    ("9.255.255.255", C.GLOBAL), ("11.0.0.0", C.GLOBAL), ("172.15.255.255", C.GLOBAL),
    ("172.32.0.0", C.GLOBAL), ("192.169.0.1", C.GLOBAL),
    # RFC 6598: shared address space for carrier-grade NAT
    ("100.64.0.0", C.SHARED), ("100.127.255.255", C.SHARED), ("100.63.255.255", C.GLOBAL),
    ("100.128.0.0", C.GLOBAL),
    # RFC 4193 unique local (its section 3.2.3 example prefix fd9a:...)
    ("fc00::1", C.UNIQUE_LOCAL), ("fd9a:ab11:2e8e::1", C.UNIQUE_LOCAL),
    # link-local: RFC 3927, RFC 4291 section 2.5.6 (a zone index is ignored)
    ("169.254.0.1", C.LINK_LOCAL), ("169.254.255.254", C.LINK_LOCAL),
    ("fe80::1", C.LINK_LOCAL), ("fe80::1%eth0", C.LINK_LOCAL), ("febf::1", C.LINK_LOCAL),
    # loopback and "this network"/unspecified
    ("127.0.0.1", C.LOOPBACK), ("127.255.255.255", C.LOOPBACK), ("::1", C.LOOPBACK),
    ("0.0.0.0", C.UNSPECIFIED), ("0.1.2.3", C.UNSPECIFIED), ("::", C.UNSPECIFIED),
    # multicast (RFC 5771, RFC 4291 section 2.7) and limited broadcast (RFC 919)
    ("224.0.0.251", C.MULTICAST), ("239.255.255.250", C.MULTICAST), ("ff02::fb", C.MULTICAST),
    ("ff05::1:3", C.MULTICAST), ("255.255.255.255", C.BROADCAST),
    # documentation: RFC 5737 TEST-NET-1/2/3, RFC 3849, RFC 9637
    ("192.0.2.1", C.DOCUMENTATION), ("198.51.100.7", C.DOCUMENTATION),
    ("203.0.113.9", C.DOCUMENTATION), ("203.0.114.1", C.GLOBAL),
    ("2001:db8::1", C.DOCUMENTATION), ("3fff::1", C.DOCUMENTATION),
    # benchmarking: RFC 2544 198.18.0.0/15, RFC 5180 2001:2::/48
    ("198.18.0.1", C.BENCHMARKING), ("198.19.255.255", C.BENCHMARKING),
    ("198.20.0.1", C.GLOBAL), ("2001:2::1", C.BENCHMARKING),
    # IETF protocol assignments (RFC 6890 section 2.2.2) and their global anycast entries
    ("192.0.0.8", C.IETF_PROTOCOL), ("192.0.0.170", C.IETF_PROTOCOL),
    # the IPv4 service continuity prefix (RFC 7335): DS-Lite and 464XLAT clients
    ("192.0.0.4", C.SERVICE_CONTINUITY), ("192.0.0.7", C.SERVICE_CONTINUITY),
    ("192.0.0.9", C.GLOBAL), ("192.0.0.10", C.GLOBAL), ("2001:1::5", C.IETF_PROTOCOL),
    ("2001:1::2", C.GLOBAL), ("64:ff9b:1::1", C.IETF_PROTOCOL),
    # reserved: RFC 1112 class E, deprecated site-local and ORCHID
    ("240.0.0.1", C.RESERVED), ("255.255.255.254", C.RESERVED), ("fec0::1", C.RESERVED),
    ("2001:10::1", C.RESERVED), ("4000::1", C.RESERVED), ("::2", C.RESERVED),
    ("100::1", C.DISCARD),
    # globally reachable special-purpose blocks
    ("192.88.99.1", C.GLOBAL), ("64:ff9b::808:808", C.GLOBAL), ("2001::1", C.GLOBAL),
    ("2002:c000:204::1", C.GLOBAL), ("2001:20::1", C.GLOBAL),
    # IPv4-mapped: the class of the IPv4 address inside (RFC 4291 section 2.5.5.2)
    ("::ffff:10.0.0.1", C.PRIVATE), ("::ffff:100.64.1.1", C.SHARED),
    ("::ffff:8.8.8.8", C.GLOBAL),
    # ordinary public addresses
    ("8.8.8.8", C.GLOBAL), ("157.240.1.1", C.GLOBAL), ("2001:4860:4860::8888", C.GLOBAL),
    ("2a03:2880:f003:c07:face:b00c::2", C.GLOBAL),
]


@pytest.mark.parametrize(("addr", "cls"), CLASSES)
def test_address_class(addr: str, cls: AddressClass) -> None:
    A._CLASS.clear()
    A._RANK.clear()
    assert address_class(addr) is cls
    assert address_class(addr) is cls  # and once cached
    assert is_local_class(addr) is (cls in A.LOCAL_CLASSES)


def test_every_class_has_an_example() -> None:
    assert {cls for _, cls in CLASSES} == set(AddressClass)


@pytest.mark.parametrize("addr", ["", "not-an-address", "1.2.3", "gggg::1", "10.0.0.256"])
def test_not_an_address(addr: str) -> None:
    assert address_class(addr) is None
    assert not is_local_class(addr)


def test_local_classes_are_those_behind_an_operator() -> None:
    assert {C.PRIVATE, C.SHARED, C.SERVICE_CONTINUITY, C.UNIQUE_LOCAL,
            C.LINK_LOCAL} == A.LOCAL_CLASSES


# -- which end is local, on flows read from real packets ------------------------------------------


def _pcap(frames: list[bytes]) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for i, data in enumerate(frames):
        out.write(struct.pack("<IIII", 1000 + i, 0, len(data), len(data)))
        out.write(data)
    return out.getvalue()


def _flow(tmp_path: Path, src: str, dst: str, sport: int = 40000, dport: int = 3478
          ) -> FlowRecord:
    """One UDP flow whose first packet goes from ``src`` to ``dst``, and one answer."""
    ip = IPv6 if ":" in src else IP
    frames = [bytes(Ether() / ip(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(b"x")),
              bytes(Ether() / ip(src=dst, dst=src) / UDP(sport=dport, dport=sport) / Raw(b"y"))]
    path = tmp_path / "f.pcap"
    path.write_bytes(_pcap(frames))
    flows = read_capture(path).flows
    assert len(flows) == 1
    f = flows[0]
    assert (f.orig_h, f.resp_h) == (src, dst)
    return f


PAIRS = [
    # (near, far): the near end is local whichever end sent first
    ("192.168.1.23", "157.240.1.1"),
    ("100.64.12.7", "157.240.1.1"),  # behind a carrier NAT
    ("192.0.0.4", "157.240.1.1"),  # a phone's 464XLAT translator (RFC 7335, RFC 6877)
    ("10.0.0.5", "203.0.113.9"),  # a documentation address is a far end
    ("10.0.0.5", "198.18.0.1"),  # so is a benchmarking one
    ("169.254.3.4", "8.8.8.8"),
    ("fd00::5", "2001:4860:4860::8888"),
    ("fe80::1", "2001:db8::1"),
    ("239.255.255.250", "8.8.4.4"),  # a group stands for the receivers near the capture
]


@pytest.mark.parametrize(("near", "far"), PAIRS)
@pytest.mark.parametrize("swap", [False, True])
def test_local_end_whichever_end_sent_first(tmp_path: Path, near: str, far: str,
                                            swap: bool) -> None:
    f = _flow(tmp_path, far, near) if swap else _flow(tmp_path, near, far)
    assert local_is_orig(f) is (not swap)
    assert orig_is_local(f.orig_h, f.resp_h) is (not swap)
    (lh, lp), (rh, rp) = ends(f)
    assert (lh, rh) == (near, far)
    assert lp == (f.orig_p if not swap else f.resp_p) and {lp, rp} == {40000, 3478}


@pytest.mark.parametrize(("a", "b"), [("192.168.1.2", "10.0.0.1"), ("8.8.8.8", "1.1.1.1"),
                                      ("203.0.113.1", "198.51.100.2"), ("fd00::1", "fe80::2")])
@pytest.mark.parametrize("swap", [False, True])
def test_ends_of_one_rank_make_the_originator_local(tmp_path: Path, a: str, b: str,
                                                    swap: bool) -> None:
    src, dst = (b, a) if swap else (a, b)
    f = _flow(tmp_path, src, dst)
    assert local_is_orig(f)
    assert ends(f)[0][0] == src


@pytest.mark.parametrize(("sport", "dport", "orig_local"), [
    (3478, 51000, False),  # a STUN server's answer seen first (RFC 8489 §9)
    (123, 60519, False),  # an NTP server's (a system port, RFC 6335 §6)
    (5060, 40000, False),  # a SIP server's
    (123, 123, True),  # server port to server port: NTP's symmetric mode, no telling
    (5060, 5060, True),  # ... a SIP phone's request to its server, or a trunk's
    (52000, 51000, True),  # client port to client port: two peers
    (8801, 61344, True),  # a port no standard gives a server: the originator, as ever
])
def test_ends_of_one_rank_a_server_port_first_makes_the_responder_local(
        tmp_path: Path, sport: int, dport: int, orig_local: bool) -> None:
    # A capture begun mid-exchange, or one that holds only what the host received, sees
    # a server's answer first: its port says which end serves.
    f = _flow(tmp_path, "203.0.113.1", "198.51.100.2", sport, dport)
    assert local_is_orig(f) is orig_local
    assert orig_is_local(f.orig_h, f.resp_h, f.orig_p, f.resp_p) is orig_local
    assert orig_is_local(f.orig_h, f.resp_h)  # without the ports: the originator
    # A higher-ranked end still decides first.
    g = _flow(tmp_path, "203.0.113.1", "192.168.1.5", sport, dport)
    assert not local_is_orig(g)


@pytest.mark.parametrize("swap", [False, True])
def test_a_known_local_host_decides_first(tmp_path: Path, swap: bool) -> None:
    # Two hosts of one private network: the call's local host says which is local.
    src, dst = ("192.168.1.1", "192.168.1.23") if not swap else ("192.168.1.23", "192.168.1.1")
    f = _flow(tmp_path, src, dst)
    assert local_is_orig(f, "192.168.1.23") is swap
    assert ends(f, "192.168.1.23")[0] == ("192.168.1.23", f.orig_p if swap else f.resp_p)
    # A local host that is neither end: the classes decide (here: same rank, originator).
    assert local_is_orig(f, "10.9.9.9")


def test_local_host_by_vote(tmp_path: Path) -> None:
    out = _flow(tmp_path, "100.64.0.9", "157.240.1.1")
    back = _flow(tmp_path, "31.13.64.1", "100.64.0.9")
    between = _flow(tmp_path, "203.0.113.5", "198.51.100.6")
    assert local_host([out, back, between]) == "100.64.0.9"
    assert local_host([between]) == "203.0.113.5"  # no local class: the originator
    assert local_host([back, out]) == "100.64.0.9"
    assert local_host([]) is None
    # one flow with a local end outvotes one flow without
    assert local_host([between, back]) == "100.64.0.9"
    # a one-sided tap that kept what the host received: every flow begins at a server
    host = "130.104.125.20"
    received = [_flow(tmp_path, server, host)
                for server in ("206.247.69.168", "170.114.15.169", "144.195.82.213")]
    assert local_host(received) == host
    # ... and a call's flows in it, all between the host and one server, tie: the capture's
    # other flows, which share the host, tell them apart
    server = "206.247.69.168"
    call = [_flow(tmp_path, server, host, 8801, port) for port in (61342, 61344, 61345)]
    assert local_host(call) == server  # the host seen first, without more to go by
    assert local_host(call, [*call, *received]) == host
    assert local_host(received, call) == host  # no tie: the vote over ``flows`` decides


# -- link-layer addresses and machines -----------------------------------------------------------

HOST_MAC, ROUTER_MAC, OTHER_MAC = "5c:e4:2a:f6:5e:46", "f0:4d:d4:46:58:1b", "62:65:01:18:11:40"


def _read(tmp_path: Path, frames: list[bytes], linktype: int = 1) -> list[FlowRecord]:
    data = bytearray(_pcap(frames))
    struct.pack_into("<I", data, 20, linktype)
    path = tmp_path / "m.pcap"
    path.write_bytes(bytes(data))
    return list(read_capture(path).flows)


def _exchange(src: str, dst: str, sport: int, src_mac: str, dst_mac: str,
              incoming_first: bool = False) -> list[bytes]:
    ip = IPv6 if ":" in src else IP
    out = bytes(Ether(src=src_mac, dst=dst_mac) / ip(src=src, dst=dst)
                / UDP(sport=sport, dport=3478) / Raw(b"x"))
    back = bytes(Ether(src=dst_mac, dst=src_mac) / ip(src=dst, dst=src)
                 / UDP(sport=3478, dport=sport) / Raw(b"y"))
    return [back, out] if incoming_first else [out, back]


def test_flows_carry_the_link_layer_addresses_of_their_ends(tmp_path: Path) -> None:
    # Whichever end sends first, each end keeps its own address (Zeek's orig_l2_addr).
    frames = (_exchange("192.168.1.8", "157.240.1.1", 40000, HOST_MAC, ROUTER_MAC)
              + _exchange("192.168.1.8", "157.240.1.2", 40001, HOST_MAC, ROUTER_MAC,
                          incoming_first=True))
    flows = sorted(_read(tmp_path, frames), key=lambda f: f.first_frame)
    assert [(f.orig_h, f.orig_l2_addr, f.resp_l2_addr) for f in flows] == [
        ("192.168.1.8", HOST_MAC, ROUTER_MAC), ("157.240.1.2", ROUTER_MAC, HOST_MAC)]
    assert flows[0].conn_dict()["orig_l2_addr"] == HOST_MAC


def test_cooked_captures_give_the_senders_address_only(tmp_path: Path) -> None:
    # Linux cooked v1 (link type 113): packet type, ARPHRD, address length 6, address.
    ip = bytes(IP(src="10.0.0.5", dst="157.240.1.1") / UDP(sport=40000, dport=3478)
               / Raw(b"x"))
    mac = bytes.fromhex(HOST_MAC.replace(":", ""))
    frame = struct.pack(">HHH", 4, 1, 6) + mac + b"\0\0" + struct.pack(">H", 0x0800) + ip
    (f,) = _read(tmp_path, [frame], linktype=113)
    assert (f.orig_l2_addr, f.resp_l2_addr) == (HOST_MAC, None)


def test_raw_ip_has_no_link_layer_address(tmp_path: Path) -> None:
    ip = bytes(IP(src="10.0.0.5", dst="157.240.1.1") / UDP(sport=40000, dport=3478) / Raw(b"x"))
    (f,) = _read(tmp_path, [ip], linktype=101)
    assert (f.orig_l2_addr, f.resp_l2_addr) == (None, None)


def test_one_machine_holds_its_ipv4_and_ipv6_addresses(tmp_path: Path) -> None:
    # A dual-stack host: one IPv4 address, a stable and a temporary IPv6 address of one
    # /64 (RFC 8981); the router's address carries every far end and is no machine.
    frames = (_exchange("192.168.1.8", "157.240.1.1", 40000, HOST_MAC, ROUTER_MAC)
              + _exchange("2a02:a03f:c095:7d00::17", "2a03:2880::1", 40001, HOST_MAC,
                          ROUTER_MAC)
              + _exchange("2a02:a03f:c095:7d00:c8e9::37", "2a03:2880::2", 40002, HOST_MAC,
                          ROUTER_MAC)
              + _exchange("192.168.1.46", "157.240.1.3", 40003, OTHER_MAC, ROUTER_MAC))
    who = A.machines(_read(tmp_path, frames))
    assert {h for h, m in who.items() if m == HOST_MAC} == {
        "192.168.1.8", "2a02:a03f:c095:7d00::17", "2a02:a03f:c095:7d00:c8e9::37"}
    assert who["192.168.1.46"] == OTHER_MAC
    assert "157.240.1.1" not in who and ROUTER_MAC not in who.values()


def test_a_link_layer_address_of_many_ipv4_hosts_is_no_machine(tmp_path: Path) -> None:
    # Captured beyond a router: every subscriber's packets carry the router's address.
    frames = (_exchange("100.64.0.8", "157.240.1.1", 40000, ROUTER_MAC, OTHER_MAC)
              + _exchange("100.64.0.9", "157.240.1.1", 40001, ROUTER_MAC, OTHER_MAC))
    who = A.machines(_read(tmp_path, frames))
    assert "100.64.0.8" not in who and "100.64.0.9" not in who
