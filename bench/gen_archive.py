#!/usr/bin/env python3
"""Write a folder of many small captures, as a probe's capture ring or an archive holds
them, for ``marsad analyze DIR --out DATASET`` (the suite's batch tests and the batch
benchmark).

The folder mixes:

* ring files: synthetic captures of :mod:`gen_capture` (the ``calls`` and ``web``
  profiles, voice and video RTP with ICE, TLS, QUIC, DNS, STUN), each cut at packet
  boundaries into consecutive files of ``--packets-per-file`` packets, as a capture ring
  rotates them;
* the project's sample captures with whole calls (``captures/sample-*.pcap``: a call, a
  blocked call, a SIP call), so the dataset holds verdicts other than ok;
* damaged files: ring files cut inside a packet record (truncated), a gzip capture cut
  short, a text file and an empty file named ``.pcap``;
* duplicates: byte copies of some files under other names, in ``dup/``.

``kinds.json`` in the folder says what each file is. The same arguments give the same
bytes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_capture as gc

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ("sample-call.pcap", "sample-blocked.pcap", "sample-sip.pcap")


def records(data: bytes) -> tuple[bytes, list[bytes]]:
    """(file header, packet records) of a little-endian classic pcap."""
    if data[:4] != b"\xd4\xc3\xb2\xa1":
        raise ValueError("not a little-endian microsecond pcap")
    out, pos = [], 24
    while pos + 16 <= len(data):
        incl = struct.unpack_from("<I", data, pos + 8)[0]
        out.append(data[pos:pos + 16 + incl])
        pos += 16 + incl
    return data[:24], out


def make_archive(out: Path, files: int = 200, packets_per_file: int = 120, seed: int = 1,
                 base_packets: int = 6000) -> dict[str, Any]:
    """Write at least ``files`` captures into ``out`` (see the module's docstring);
    returns ``kinds.json``: each file's kind (``ring``, ``sample``, ``truncated``,
    ``gzip-truncated``, ``text``, ``empty``, ``duplicate``) by name relative to ``out``,
    and for duplicates the file they copy."""
    out.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, str] = {}
    copies: dict[str, str] = {}
    damaged_every = 25
    dup_every = 20
    ring_wanted = max(files - len(SAMPLES) - 2 - files // dup_every, 1)
    n = 0
    base = 0
    profiles = ("calls", "web")
    with tempfile.TemporaryDirectory() as tmp:
        while n < ring_wanted:
            profile = profiles[base % len(profiles)]
            src = Path(tmp) / f"base-{base}.pcap"
            gc.generate(base_packets, max(base_packets // 40, 10), 1, seed * 1000 + base, src,
                        gc.PROFILES[profile])
            head, recs = records(src.read_bytes())
            for i in range(0, len(recs), packets_per_file):
                if n >= ring_wanted:
                    break
                chunk = recs[i:i + packets_per_file]
                name = f"ring/{profile}-{base:02d}-{i // packets_per_file:03d}.pcap"
                body = head + b"".join(chunk)
                kind = "ring"
                if n % damaged_every == damaged_every - 1:
                    body = body[:len(body) - len(chunk[-1]) // 2]  # cut inside the last one
                    kind = "truncated"
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                (out / name).write_bytes(body)
                kinds[name] = kind
                n += 1
            base += 1
    for s in SAMPLES:
        shutil.copyfile(ROOT / "captures" / s, out / s)
        kinds[s] = "sample"
    call = (ROOT / "captures" / SAMPLES[0]).read_bytes()
    gz = gzip.compress(call, mtime=0)
    (out / "cut.pcap.gz").write_bytes(gz[:len(gz) * 2 // 3])
    kinds["cut.pcap.gz"] = "gzip-truncated"
    (out / "notes.pcap").write_text("This is not a capture: notes of the capture ring.\n")
    kinds["notes.pcap"] = "text"
    (out / "empty.pcap").write_bytes(b"")
    kinds["empty.pcap"] = "empty"
    names = sorted(kinds)
    for i, name in enumerate(names[::dup_every]):
        dup = f"dup/copy-{i:02d}-{Path(name).name}"
        (out / dup).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / name, out / dup)
        kinds[dup] = "duplicate"
        copies[dup] = name
    info = {"kinds": kinds, "copies": copies}
    (out / "kinds.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("out", type=Path, help="the folder to write")
    ap.add_argument("--files", type=int, default=200, help="captures at least (default 200)")
    ap.add_argument("--packets-per-file", type=int, default=120,
                    help="packets per ring file (default 120)")
    ap.add_argument("--base-packets", type=int, default=6000,
                    help="packets of each synthetic capture cut into ring files")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    info = make_archive(a.out, a.files, a.packets_per_file, a.seed, a.base_packets)
    total = sum(f.stat().st_size for f in a.out.rglob("*") if f.is_file())
    by_kind: dict[str, int] = {}
    for k in info["kinds"].values():
        by_kind[k] = by_kind.get(k, 0) + 1
    print(f"{a.out}: {len(info['kinds'])} files, {total / 2**20:.1f} MiB: "
          + ", ".join(f"{v} {k}" for k, v in sorted(by_kind.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
