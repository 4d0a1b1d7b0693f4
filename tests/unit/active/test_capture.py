"""A test's own capture holds every packet the test sent while it ran."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import dpkt
import pytest

from probe.active.capture import TestCapture, peer_filter

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("tcpdump") is None,
                                reason="needs root and tcpdump to capture")


def test_every_packet_sent_inside_the_block_is_in_the_file(tmp_path: Path) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.7", 0))
    port = rx.getsockname()[1]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with TestCapture(tmp_path / "t.pcap", peer_filter(["127.0.0.7"]), iface="any") as cap:
        for i in range(3000):  # a burst, then the block ends at once
            tx.sendto(i.to_bytes(4, "big") * 10, ("127.0.0.7", port))
    r = cap.result
    assert r.problem is None and r.path is not None and r.sha256 is not None
    assert r.packets is not None and r.packets >= 3000 and r.dropped == 0
    with r.path.open("rb") as f:
        got = {bytes(buf)[-4:] for _, buf in dpkt.pcap.Reader(f)}
    assert got == {i.to_bytes(4, "big") for i in range(3000)}


def test_a_missing_tcpdump_is_said_not_raised(tmp_path: Path) -> None:
    with TestCapture(tmp_path / "t.pcap", "host 127.0.0.7", tcpdump="no-such-tcpdump") as cap:
        pass
    assert cap.result.path is None and "not found" in (cap.result.problem or "")


def test_a_bad_filter_is_said_not_raised(tmp_path: Path) -> None:
    with TestCapture(tmp_path / "t.pcap", "host not-an-address-(") as cap:
        pass
    assert cap.result.path is None and "tcpdump did not start" in (cap.result.problem or "")
