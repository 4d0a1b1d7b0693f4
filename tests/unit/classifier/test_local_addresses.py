"""Which side of a flow is the far end: the engine's private/link-local/multicast test
agrees with the standard library's on every kind of address."""

from __future__ import annotations

import ipaddress

import pytest

from classifier import engine

ADDRESSES = [
    # IPv4: each special block's edges, and public neighbours
    "0.0.0.0", "9.255.255.255", "10.0.0.0", "10.255.255.255", "11.0.0.0", "100.64.0.1",
    "127.0.0.1", "169.254.1.1", "172.15.255.255", "172.16.0.0", "172.31.255.255",
    "172.32.0.0", "192.0.0.5", "192.0.0.8", "192.0.0.170", "192.0.2.1", "192.88.99.1",
    "192.168.1.1", "192.169.0.1", "198.18.0.1", "198.20.0.1", "198.51.100.7", "203.0.113.9",
    "203.0.114.1", "224.0.0.251", "239.255.255.250", "240.0.0.1", "255.255.255.255",
    "8.8.8.8", "31.13.64.1", "157.240.1.1", "52.112.0.1",
    # IPv6
    "::", "::1", "::2", "::ffff:10.0.0.1", "::ffff:8.8.8.8", "64:ff9b::808:808", "100::1",
    "2001::1", "2001:db8::1", "2001:4860:4860::8888", "2001:10::1", "2002:c000:204::1",
    "2a03:2880:f003:c07:face:b00c::2", "2606:4700::1111", "fc00::1", "fd00::5",
    "fe80::1", "fe80::1%eth0", "febf::1", "fec0::1", "ff02::fb", "ff05::1:3",
    # not addresses at all
    "", "not-an-address", "1.2.3", "gggg::1",
]


def _reference(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return ip.is_private or ip.is_link_local or ip.is_multicast


@pytest.mark.parametrize("addr", ADDRESSES)
def test_agrees_with_ipaddress(addr: str) -> None:
    engine._PRIVATE.clear()
    assert engine._is_private(addr) is _reference(addr)
    assert engine._is_private(addr) is _reference(addr)  # and once cached
