"""A gzip capture is read up to a bound on its decompressed size, then stops as damaged
(exit 3, the offset named): a small file that inflates without end cannot keep the probe
busy for ever."""

from __future__ import annotations

import gzip
import io
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from probe import MeterConfig, read_capture
from probe.sources import MAX_DECOMPRESSED

ROOT = Path(__file__).resolve().parents[3]
MARSAD = [sys.executable, "-c", "import sys; from api.cli import run; sys.exit(run())"]


def _record(i: int) -> bytes:
    udp = struct.pack(">HHHH", 40000, 50000, 38, 0) + b"\x11" * 30
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + udp
    frame = bytes(6) + b"\x02" * 6 + b"\x08\x00" + ip
    return struct.pack("<IIII", 1_700_000_000, i * 1000, len(frame), len(frame)) + frame


HEAD = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
GOOD = HEAD + b"".join(_record(i) for i in range(100))


def _bomb(zeros: int) -> bytes:
    """100 packets, then ``zeros`` zero bytes (empty records), gzip-compressed."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        gz.write(GOOD)
        for _ in range(zeros >> 20):
            gz.write(bytes(1 << 20))
    return out.getvalue()


def test_default_bound_is_generous() -> None:
    assert MeterConfig().max_decompressed_bytes == MAX_DECOMPRESSED == 64 << 30


@pytest.mark.parametrize("chunk", [8 << 20, 4096])
def test_reading_stops_at_the_bound_and_keeps_what_came_before(tmp_path: Path,
                                                              chunk: int) -> None:
    path = tmp_path / "bomb.pcap.gz"
    path.write_bytes(_bomb(4 << 20))
    run = read_capture(path, MeterConfig(max_decompressed_bytes=1 << 20, chunk_size=chunk))
    st = run.status
    assert not st.complete and st.stopped_at is not None
    assert (1 << 20) - 16 <= st.stopped_at <= 1 << 20  # the last whole record before it
    assert st.message == (f"stopped at byte {st.stopped_at}: the capture decompresses to "
                          "more than the limit of 1048576 bytes (max_decompressed_bytes)")
    assert [f.orig_pkts for f in run.flows] == [100]
    exact = len(GOOD) + (4 << 20)
    assert read_capture(path, MeterConfig(max_decompressed_bytes=exact)).status.complete
    assert not read_capture(path, MeterConfig(max_decompressed_bytes=exact - 1)).status.complete


def test_plain_captures_are_not_bounded(tmp_path: Path) -> None:
    path = tmp_path / "plain.pcap"
    path.write_bytes(GOOD)
    assert read_capture(path, MeterConfig(max_decompressed_bytes=100)).status.complete


@pytest.mark.parametrize("stdin", [False, True])
def test_cli_exits_3_naming_the_offset(tmp_path: Path, stdin: bool) -> None:
    path = tmp_path / "bomb.pcap.gz"
    path.write_bytes(_bomb(8 << 20))
    src = "-" if stdin else str(path)
    out = subprocess.run([*MARSAD, "flows", src, "--jsonl", "--max-decompressed-bytes",
                          "1000000"], input=path.read_bytes() if stdin else None,
                         capture_output=True, cwd=ROOT, timeout=120, check=False)
    err = out.stderr.decode()
    assert out.returncode == 3, err
    assert "stopped at byte 999992: the capture decompresses to more than the limit of " \
           "1000000 bytes" in err
    assert "Traceback" not in err
    assert sum(b'"uid"' in line for line in out.stdout.splitlines()) == 1
