"""The live probe's tee walks plain records in bulk; it must give what the per-record walk
gives, byte for byte and counter for counter.

Each case writes its own stream: sections of either byte order, microsecond or
nanosecond resolution, pcap versions 2.2 to 2.4 (lengths in either field), a first
section of patched-libpcap records, another link type, garbage and overwritten
headers, timestamp jumps, a cut at the end. The stream is fed in random chunks to a
:class:`PcapStream` and a :class:`CaptureRing` cutting files by size and by capture
time, once with the fast paths and once with ``fast=False``, and everything is compared:
the clean bytes of every feed, the notes, every attribute, the ring's files and index.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from probe import CaptureRing, PcapStream, RingConfig
from probe.sources import MAX_RECORD, pcap_header, record_offsets

NOKIA_STUFF = 0x9FBFB601
"""Four bytes of the form Nokia's record headers carry."""


def _file_header(order: str, ns: bool, minor: int, link: int = 1, snap: int = 65535,
                 zone: int = 0, sigfigs: int = 0) -> bytes:
    return struct.pack(order + "IHHiIII", 0xA1B23C4D if ns else 0xA1B2C3D4, 2, minor, zone,
                       sigfigs, snap, link)


class _Writer:
    """Records of one section, stamped from a clock that mostly creeps and sometimes
    jumps."""

    def __init__(self, rng: random.Random, order: str, ns: bool, minor: int,
                 variant: str = "pcap") -> None:
        self.rng, self.order, self.ns, self.minor, self.variant = rng, order, ns, minor, variant

    def record(self, t: float) -> bytes:
        rng = self.rng
        size = rng.choice([0, 1, 14, 60, rng.randrange(200), rng.randrange(1600)])
        sec = int(t)
        frac = int((t - sec) * (1e9 if self.ns else 1e6))
        orig = max(1, size + rng.choice([0, 0, 0, rng.randrange(100)]))  # never 0: damage
        if self.minor < 3 or (self.minor == 3 and rng.random() < 0.5):
            lengths = (orig, size)
        else:
            lengths = (size, orig)
        head = struct.pack(self.order + "IIII", sec, frac, *lengths)
        if self.variant == "ss990417":
            head += struct.pack(self.order + "IHBB", rng.randrange(4), 0x0800,
                                rng.randrange(5), 0)
        elif self.variant == "nokia":
            head += struct.pack(self.order + "I", NOKIA_STUFF)
        return head + rng.randbytes(size)


def _damage(rng: random.Random, rec: bytes) -> bytes:
    """Garbage before a record, or the record itself overwritten."""
    kind = rng.randrange(7)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 300)) + rec
    if kind == 1:
        return bytes(rng.randrange(1, 100)) + rec
    if kind == 2:
        return b"\xff" * rng.randrange(1, 100) + rec
    if kind == 3:  # a pcap magic where a record should start, not a file header
        if rng.random() < 0.5:
            return b"\xd4\xc3\xb2\xa1" + rng.randbytes(rng.randrange(0, 40)) + rec
        size = rng.randrange(0, 12)  # a plausible record header whose time is a magic
        return (rng.choice([b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1"])
                + struct.pack("<III", rng.randrange(3, 1000), size, size)
                + rng.randbytes(size) + rec)
    if kind == 4 and len(rec) >= 16:  # a header field overwritten
        at = rng.randrange(0, 16)
        return rec[:at] + rng.randbytes(4) + rec[at + 4:]
    if kind == 5:
        return rec[:rng.randrange(len(rec) + 1)]
    return rec + rng.randbytes(rng.randrange(1, 20))


def _stream(rng: random.Random) -> bytes:
    t = rng.choice([0.0, 1_700_000_000.0, 4_000_000_000.0])
    damage = rng.choice([0.0, 0.0, 0.002, 0.02, 0.2])
    jumps = rng.choice([0.0, 0.01, 0.3])
    order = rng.choice("<>")
    variant = rng.choice(["pcap", "pcap", "ss990417", "nokia"])
    ns = variant == "pcap" and rng.random() < 0.3
    minor = 4 if variant != "pcap" else rng.choice([4, 4, 4, 3, 2])
    parts = [_file_header(order, ns, minor)]
    writer = _Writer(rng, order, ns, minor, variant)
    for section in range(rng.choice([1, 1, 2, 4])):
        if section:
            same = rng.random() < 0.5
            order = order if same else rng.choice("<>")
            ns = ns if same else rng.random() < 0.5
            minor = rng.choice([4, 4, 3, 2])
            link = 1 if rng.random() < 0.9 else 101
            zone, sigfigs = rng.choice([(0, 0), (rng.randrange(40), rng.randrange(1, 90))])
            parts.append(_file_header(order, ns, minor, link, zone=zone, sigfigs=sigfigs))
            writer = _Writer(rng, order, ns, minor)
        for _ in range(rng.randrange(0, 400)):
            t += rng.choice([0.0, 0.000_001, rng.random() * 0.01, rng.random() * 2])
            if rng.random() < jumps:
                t = max(0.0, t + rng.choice([-1, 1]) * rng.choice([3601.0, 86401.0, 1e6]))
            rec = writer.record(t)
            parts.append(_damage(rng, rec) if rng.random() < damage else rec)
    data = b"".join(parts)
    if rng.random() < 0.3:
        data = data[:rng.randrange(len(data) + 1)]
    return data


def _chunks(rng: random.Random, data: bytes) -> Iterator[bytes]:
    pos = 0
    sizes = [1, 7, 16, 100, 1000, 5000, 1 << 20]
    while pos < len(data):
        step = rng.choice(sizes)
        yield data[pos:pos + step]
        pos += step


def _clock() -> Callable[[], float]:
    now = [1_700_000_000.0]

    def tick() -> float:
        now[0] += 0.25
        return now[0]
    return tick


def _ring_state(ring: CaptureRing, directory: Path) -> dict[str, Any]:
    return {"files": ring.files, "frames": ring.frames, "origin": ring.origin,
            "newest_ts": ring.newest_ts, "disabled": ring.disabled, "deleted": ring.deleted,
            "current": ring.current(), "closed_through": ring.closed_through(),
            "on_disk": {p.name: p.read_bytes() for p in sorted(directory.iterdir())}}


def _tee(data: bytes, seed: int, directory: Path, fast: bool, ring_cfg: dict[str, Any]
         ) -> dict[str, Any]:
    """What the tee does with ``data``: the mended stream into the ring."""
    rng = random.Random(seed)
    notes: list[str] = []
    stream = PcapStream(note=notes.append, fast=fast)
    ring = CaptureRing(RingConfig(directory, **ring_cfg), clock=_clock(),
                       fast=fast)
    outs = []
    for chunk in _chunks(rng, data):
        clean = stream.feed(chunk)
        if clean:
            ring.feed(clean, stream.record_starts)
        outs.append(clean)
        if rng.random() < 0.05:
            ring.tick()
    clean = stream.finish()
    if clean:
        ring.feed(clean, stream.record_starts)
    outs.append(clean)
    ring.close()
    fields = {k: v for k, v in vars(stream).items() if k not in ("_note", "_fast", "record_starts")}
    return {"outs": outs, "notes": notes, "stream": fields, "ring": _ring_state(ring, directory)}


def _ring_cfg(rng: random.Random) -> dict[str, Any]:
    return {"file_bytes": rng.choice([1, 300, 5000, 60_000, 50 << 20]),
            "file_age_s": rng.choice([0.0, 0.5, 30.0, 3600.0, 1e12]),
            "total_bytes": rng.choice([20_000, 1 << 40]), "keep_s": 1e12}


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many records the fast paths took (a comparison where they took none proves
    nothing)."""
    took = {"stream": 0, "ring": 0}
    plain_run = PcapStream._plain_run
    count_plain = CaptureRing._count_plain

    def run(self: PcapStream, buf: bytearray, pos: int) -> tuple[int, list[int]]:
        before = self.frames
        got = plain_run(self, buf, pos)
        took["stream"] += self.frames - before
        return got

    def count(self: CaptureRing, i: int, *args: Any) -> int:
        j = count_plain(self, i, *args)
        took["ring"] += j - i
        return j

    monkeypatch.setattr(PcapStream, "_plain_run", run)
    monkeypatch.setattr(CaptureRing, "_count_plain", count)
    return took


@pytest.mark.parametrize("seed", range(120))
def test_the_tee_fast_paths_give_what_the_per_record_walks_give(
        tmp_path: Path, seed: int, spied: dict[str, int]) -> None:
    rng = random.Random(seed)
    data = _stream(rng)
    cfg = _ring_cfg(rng)
    slow = _tee(data, seed, tmp_path / "slow", False, cfg)
    assert spied == {"stream": 0, "ring": 0}
    fast = _tee(data, seed, tmp_path / "fast", True, cfg)
    assert fast["outs"] == slow["outs"]
    assert fast["notes"] == slow["notes"]
    assert fast["stream"] == slow["stream"]
    assert fast["ring"] == slow["ring"]


def test_the_fast_paths_took_most_records_of_the_cases(tmp_path: Path,
                                                       spied: dict[str, int]) -> None:
    frames = 0
    for seed in range(0, 120, 7):
        rng = random.Random(seed)
        data = _stream(rng)
        frames += _tee(data, seed, tmp_path / str(seed), True, _ring_cfg(rng))["stream"][
            "frames"]
    for seed in range(0, 40, 3):
        _raw_ring(seed, tmp_path / f"raw{seed}", True)
    assert spied["stream"] > frames // 2 and spied["ring"] > frames // 4


def _raw_ring(seed: int, directory: Path, fast: bool) -> dict[str, Any]:
    """The ring fed directly, records cut anywhere, a captured length past
    :data:`MAX_RECORD` somewhere in half the cases (a corrupt header stops the ring)."""
    rng = random.Random(seed)
    order = rng.choice("<>")
    ns = rng.random() < 0.5
    writer = _Writer(rng, order, ns, 4)
    t = 1_700_000_000.0
    recs = []
    for _ in range(rng.randrange(1, 600)):
        t += rng.random() * rng.choice([0.01, 1.0])
        recs.append(writer.record(t))
    if rng.random() < 0.5:
        at = rng.randrange(len(recs))
        recs[at] = recs[at][:8] + struct.pack(order + "I", MAX_RECORD + 1) + recs[at][12:]
    data = _file_header(order, ns, 4) + b"".join(recs)
    cfg = _ring_cfg(rng)
    if rng.random() < 0.5:  # a file filled to the byte
        cfg["file_bytes"] = 24 + sum(map(len, recs[:rng.randrange(1, len(recs) + 1)]))
    ring = CaptureRing(RingConfig(directory, **cfg), clock=_clock(), fast=fast)
    for chunk in _chunks(rng, data):
        ring.feed(chunk)
    ring.close()
    return _ring_state(ring, directory)


@pytest.mark.parametrize("seed", range(40))
def test_the_ring_fast_path_on_a_raw_stream(tmp_path: Path, seed: int) -> None:
    assert (_raw_ring(seed, tmp_path / "fast", True)
            == _raw_ring(seed, tmp_path / "slow", False))


@pytest.mark.parametrize("minor", [2, 3])
@pytest.mark.parametrize("step", [500, 3000, 1 << 20])
def test_a_later_section_of_an_older_version_is_walked_as_the_first_reads_it(
        tmp_path: Path, minor: int, step: int) -> None:
    """The records of a later section whose lengths are in the other field are rewritten
    the first section's way, in both walks, and the ring walks them with the first
    section's reading: the stream does not hand it their offsets."""
    rng = random.Random(minor)
    first, later = _Writer(rng, "<", False, 4), _Writer(rng, "<", False, minor)
    data = (_file_header("<", False, 4) + b"".join(first.record(1e9 + i) for i in range(10))
            + _file_header("<", False, minor)
            + b"".join(later.record(1e9 + 20 + i / 8) for i in range(300)))
    got = []
    for fast in (False, True):
        stream = PcapStream(fast=fast)
        directory = tmp_path / str(fast)
        ring = CaptureRing(RingConfig(directory, file_bytes=3000), clock=_clock(), fast=fast)
        for at in range(0, len(data), step):
            ring.feed(stream.feed(data[at:at + step]), stream.record_starts)
        ring.feed(stream.finish(), stream.record_starts)
        ring.close()
        got.append((stream.frames, _ring_state(ring, directory)))
    assert got[0][0] == 310
    assert got[0] == got[1]


@pytest.mark.parametrize("order", "<>")
def test_the_record_walk_stops_at_the_first_record_cut_short(order: str) -> None:
    """:func:`record_offsets` against the plainest walk, over a stream cut everywhere."""
    rng = random.Random(5)
    writer = _Writer(rng, order, False, 4)
    data = b"".join(writer.record(1e9 + i) for i in range(40))
    header = pcap_header(_file_header(order, False, 4))
    assert header is not None
    for cut in range(len(data) + 1):
        for pos in (0, 1, cut, cut + 3):
            buf = data[:cut]
            offs, at = [], pos
            while at + 16 <= len(buf):
                nxt = at + 16 + struct.unpack_from(order + "I", buf, at + 8)[0]
                if nxt > len(buf):
                    break
                offs.append(at)
                at = nxt
            assert record_offsets(buf, pos, header) == (offs, at)


@pytest.mark.parametrize("minor", [2, 3])
def test_a_later_section_of_an_older_version_reads_as_the_first_section(minor: int) -> None:
    """What the mender passes on is read with the first file header alone (as the flow
    reader and the ring read it): a later section of version 2.2 (lengths the other way
    round) or 2.3 (either way) comes out with each record's captured length in the third
    field, so the walk meets every record, none of them misread."""
    rng = random.Random(11 + minor)
    first, later = _Writer(rng, "<", False, 4), _Writer(rng, "<", False, minor)
    records = [later.record(1e9 + 20 + i / 8) for i in range(300)]
    data = (_file_header("<", False, 4) + b"".join(first.record(1e9 + i) for i in range(10))
            + _file_header("<", False, minor) + b"".join(records))
    for fast in (False, True):
        stream = PcapStream(fast=fast)
        out = stream.feed(data) + stream.finish()
        sizes, pos = [], 24
        while pos < len(out):
            incl, orig = struct.unpack_from("<II", out, pos + 8)
            assert incl <= orig
            sizes.append(incl)
            pos += 16 + incl
        assert pos == len(out) and len(sizes) == 310
        assert sizes[10:] == [len(r) - 16 for r in records]
