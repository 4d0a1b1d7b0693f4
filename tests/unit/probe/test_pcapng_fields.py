"""pcapng timestamp fields that no capture can mean (a timestamp past 2^63, a resolution
too fine to count a second, an offset beyond year 2262) and an interface block too short
to hold its fields: the reader stops there and says where (exit 3, the flows before it
printed), it never raises."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from probe import read_capture

ROOT = Path(__file__).resolve().parents[3]
MARSAD = [sys.executable, "-c", "import sys; from api.cli import run; sys.exit(run())"]
T0_US = 1_700_000_000 * 1_000_000


def _block(btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def _shb() -> bytes:
    return _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def _idb(*options: tuple[int, bytes]) -> bytes:
    opts = b"".join(struct.pack("<HH", c, len(v)) + v + bytes(-len(v) % 4) for c, v in options)
    if options:
        opts += struct.pack("<HH", 0, 0)
    return _block(1, struct.pack("<HHI", 1, 0, 65535) + opts)


def _frame(i: int) -> bytes:
    udp = struct.pack(">HHHH", 40000, 50000, 38, 0) + b"\x11" * 30
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + udp
    return bytes(6) + b"\x02" * 6 + b"\x08\x00" + ip


def _epb(i: int, raw: int) -> bytes:
    f = _frame(i)
    return _block(6, struct.pack("<IIIII", 0, raw >> 32, raw & 0xFFFFFFFF, len(f), len(f)) + f)


def _good(n: int) -> bytes:
    return b"".join(_epb(i, T0_US + i * 20_000) for i in range(n))


HEAD = _shb() + _idb()
CASES = {
    # (capture bytes, packets read before the damage, byte offset where it stopped)
    "epb-ts-high-word-2^31": (HEAD + _good(3) + _epb(3, 0x80000000 << 32), 3,
                              len(HEAD + _good(3))),
    "epb-ts-max": (HEAD + _good(3) + _epb(3, (1 << 64) - 1), 3, len(HEAD + _good(3))),
    "tsresol-decimal-28": (_shb() + _idb((9, b"\x1c")) + _good(3), 0, len(_shb())),
    "tsresol-binary-65": (_shb() + _idb((9, b"\xc1")) + _good(3), 0, len(_shb())),
    "tsoffset-1e10-s": (_shb() + _idb((14, struct.pack("<q", 10**10))) + _good(3), 0,
                        len(_shb())),
    "tsoffset-min": (_shb() + _idb((14, struct.pack("<q", -(1 << 63)))) + _good(3), 0,
                     len(_shb())),
    "idb-length-12-last": (HEAD + _good(2) + _block(1, b""), 2, len(HEAD + _good(2))),
    # A new section whose interface says so: what the first section held is kept.
    "second-section-tsresol": (HEAD + _good(2) + _shb() + _idb((9, b"\x1c")) + _good(2), 2,
                               len(HEAD + _good(2) + _shb())),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_reader_stops_at_the_block_and_names_its_offset(tmp_path: Path, name: str) -> None:
    data, packets, offset = CASES[name]
    path = tmp_path / f"{name}.pcapng"
    path.write_bytes(data)
    run = read_capture(path)
    assert run.status.packets == packets
    assert (run.status.complete, run.status.stopped_at) == (False, offset)
    assert sum(f.orig_pkts for f in run.flows) == packets


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("command", ["flows", "probe"])
def test_cli_stops_at_the_damage_with_no_traceback(tmp_path: Path, name: str,
                                                      command: str) -> None:
    data, packets, offset = CASES[name]
    args = ["flows", "-", "--jsonl"] if command == "flows" else [
        "probe", "-r", "-", "--data-dir", str(tmp_path / "data")]
    out = subprocess.run([*MARSAD, *args], input=data, capture_output=True, cwd=ROOT,
                         timeout=120, check=False)
    err = out.stderr.decode()
    assert "Traceback" not in err
    flows = sum(b'"uid"' in line for line in out.stdout.splitlines())
    assert flows == (1 if packets else 0)
    assert out.returncode == 3, err
    assert f"byte {offset}" in err


def test_timestamps_at_the_edges_of_the_range_are_read(tmp_path: Path) -> None:
    """The limits are exact enough: 1970 plus an offset, and a nanosecond interface whose
    last packet is stamped in 2262, read whole."""
    ns = _shb() + _idb((9, b"\x09")) + _epb(0, 0) + _epb(1, (1 << 63) - 1)
    path = tmp_path / "edges.pcapng"
    path.write_bytes(ns)
    run = read_capture(path)
    assert run.status.complete and run.status.packets == 2
    assert [f.first_ts for f in run.flows] == [0.0, ((1 << 63) - 1) / 1e9]
    back = _shb() + _idb((14, struct.pack("<q", -100))) + _epb(0, 100_000_000) + _epb(1, 99)
    path.write_bytes(back)
    run = read_capture(path)
    assert (run.status.packets, run.status.stopped_at) == (1, len(back) - len(_epb(1, 99)))
    assert run.flows[0].first_ts == 0.0


def test_a_simple_packet_block_takes_the_time_before_it_across_batches(tmp_path: Path) -> None:
    """An SPB has no timestamp: it takes the previous packet's, also when it opens a batch
    (it took 1970 there, a clock step back of decades)."""
    from probe import MeterConfig

    spb = _block(3, struct.pack("<I", len(_frame(9))) + _frame(9))
    path = tmp_path / "spb.pcapng"
    path.write_bytes(HEAD + _good(3) + spb)
    for chunk in (8 << 20, 200):
        run = read_capture(path, MeterConfig(chunk_size=chunk))
        assert run.status.complete and run.status.packets == 4
        assert [f.orig_pkts for f in run.flows] == [4]
        assert run.flows[0].last_ts == (T0_US + 2 * 20_000) / 1e6
        assert run.stats.clock_steps == 0
