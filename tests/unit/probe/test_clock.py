"""Timestamps are data: a packet stamped far before or after its neighbours is a counted
weird with its frame, and costs a flow no more than a well-stamped packet would."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from probe import FlowReader, MeterConfig, read_capture
from probe.prepare import CLOCK_WEIRDS

ROOT = Path(__file__).resolve().parents[3]
T0_US = 1_700_000_000 * 1_000_000


def _udp(i: int, ts_us: int) -> bytes:
    """One pcap record: 10.0.0.1:40000 -> 10.0.0.2:50000, 30 payload bytes (not RTP)."""
    udp = struct.pack(">HHHH", 40000, 50000, 38, 0) + b"\x11" * 30
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + udp
    frame = bytes(6) + b"\x02" * 6 + b"\x08\x00" + ip
    sec, usec = divmod(ts_us, 1_000_000)
    return struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame


def _pcap(stamps: list[int]) -> bytes:
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    return head + b"".join(_udp(i, ts) for i, ts in enumerate(stamps))


def _forty(bad: int | None) -> list[int]:
    """40 packets 100 ms apart (a 3.9 s flow the media detector looks at); the 36th
    stamped ``bad`` instead."""
    stamps = [T0_US + i * 100_000 for i in range(40)]
    if bad is not None:
        stamps[35] = bad
    return stamps


EARLY = T0_US - 10**8 * 1_000_000  # 10^8 s (three years) early
EPOCH = 0  # 1970


@pytest.mark.parametrize("bad", [EARLY, EPOCH], ids=["1e8-early", "1970"])
@pytest.mark.parametrize(("chunk", "workers"), [(8 << 20, 1), (400, 1), (400, 2)],
                         ids=["one-batch", "small-batches", "two-processes"])
def test_a_packet_stamped_far_back_is_a_weird_and_its_own_flow(tmp_path: Path, bad: int,
                                                                chunk: int, workers: int) -> None:
    path = tmp_path / "clock.pcap"
    path.write_bytes(_pcap(_forty(bad)))
    run = read_capture(path, MeterConfig(chunk_size=chunk), workers=workers)
    assert [(f.first_frame, f.last_frame, f.orig_pkts) for f in run.flows] == [
        (1, 35, 35), (36, 36, 1), (37, 40, 4)]
    assert run.flows[0].end_reason == "clock-step"
    assert run.flows[1].first_ts == bad / 1e6
    weirds = [(w.frame, w.layer, w.reason, w.uid) for w in run.all_weirds()]
    assert weirds == [(36, "clock", "clock-backwards", run.flows[1].uid),
                      (37, "clock", "clock-jump", run.flows[2].uid)]
    assert run.stats.clock_steps == 2
    for f in run.flows:  # every flow's per-second rows stay within its own few seconds
        assert int(f.rate[:, 0].max() - f.rate[:, 0].min()) <= 4


def test_a_clock_walking_back_in_small_steps_never_stretches_a_flow(tmp_path: Path) -> None:
    """Each packet 100 s before the one before: under the 120 s UDP idle timeout one step
    at a time, so only the flow's newest packet tells how far the clock walked away."""
    stamps = [T0_US - i * 100_000_000 for i in range(50)]
    path = tmp_path / "walk.pcap"
    path.write_bytes(_pcap(stamps))
    for chunk in (8 << 20, 400):
        run = read_capture(path, MeterConfig(chunk_size=chunk))
        assert sum(f.orig_pkts for f in run.flows) == 50
        for f in run.flows:
            assert int(f.rate[:, 0].max() - f.rate[:, 0].min()) <= 120
        assert run.stats.clock_steps == 49


def test_clock_weirds_are_bounded_per_batch_and_all_counted(tmp_path: Path) -> None:
    stamps = [T0_US if i % 2 else EPOCH + i * 1_000_000 for i in range(2000)]
    path = tmp_path / "alternate.pcap"
    path.write_bytes(_pcap(stamps))
    reader = FlowReader(path, MeterConfig(chunk_size=8 << 20))
    flows = list(reader)
    assert sum(f.orig_pkts for f in flows) == 2000
    assert reader.stats.clock_steps == 1999
    recorded = len(reader.weirds) + sum(len(f.weirds) for f in flows)
    assert recorded == CLOCK_WEIRDS == reader.stats.weird  # one batch


def test_reordered_packets_and_long_silences_are_not_clock_steps(tmp_path: Path) -> None:
    stamps = [T0_US, T0_US + 500_000, T0_US + 200_000, T0_US + 3600 * 1_000_000,
              T0_US + 3600 * 1_000_000 + 1]
    path = tmp_path / "fine.pcap"
    path.write_bytes(_pcap(stamps))
    run = read_capture(path)
    assert run.stats.clock_steps == 0 and not run.all_weirds()
    assert [f.orig_pkts for f in run.flows] == [3, 2]


_MEASURED = """
import sys
from api.cli import main
code = main(sys.argv[1:])
# VmHWM is this program's own peak: ru_maxrss would also count the pages of the process it
# was forked from before exec (a test runner grown large by the tests before).
with open("/proc/self/status") as fh:
    peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
print(f"maxrss_kb={peak}", file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("bad", [EARLY, EPOCH], ids=["1e8-early", "1970"])
def test_analyze_stays_small_whatever_one_timestamp_says(tmp_path: Path, bad: int) -> None:
    """Before: 914 MB for the packet 10^8 s early, a MemoryError and exit 1 for 1970."""
    path = tmp_path / "clock.pcap"
    path.write_bytes(_pcap(_forty(bad)))
    # One process: its own peak is the whole cost.
    out = subprocess.run([sys.executable, "-c", _MEASURED, "analyze", "--json", "--workers",
                          "1", str(path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    peak_mb = int(out.stderr.rsplit("maxrss_kb=", 1)[1].split()[0]) / 1024
    assert peak_mb < 300, f"peak {peak_mb:.0f} MB"
    assert '"uid"' in out.stdout
