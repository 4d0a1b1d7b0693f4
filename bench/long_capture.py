"""Write a long synthetic capture: several periods of ``gen_capture.py`` traffic, one after
the other.

Each period is a capture of its own (the same profile and size, seed ``seed + k``: other
clients, ports and calls), moved ``k`` spans (180 s each) later, so the whole is one
capture ``periods`` times as long with the same rate throughout. A probe on a link for
an hour sees this: flows end and new ones start all the time, and what the analysis keeps
as context (the last ``window_s`` of flows, 600 s) fills up and stays full, which a 180 s
capture never shows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dpkt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_capture import BASE_SPAN_US, PROFILES, generate


def write_long(packets: int, periods: int, seed: int, profile: str, out: Path
               ) -> dict[str, Any]:
    """Generate ``periods`` captures of ``packets`` packets each and write them one after
    the other into ``out``; returns the sidecar contents."""
    span_s = BASE_SPAN_US / 1e6
    total = {"packets": 0, "flows": 0, "calls": 0}
    with tempfile.TemporaryDirectory() as tmp, out.open("wb") as fh:
        writer: Any = None
        for k in range(periods):
            part = Path(tmp) / f"part{k}.pcap"
            info = generate(packets, max(packets // 40, 10), 1, seed + k, part,
                            PROFILES[profile])
            for key in total:
                total[key] += info[key]
            with part.open("rb") as src:
                reader = dpkt.pcap.Reader(src)
                if writer is None:
                    writer = dpkt.pcap.Writer(fh, snaplen=reader.snaplen,
                                              linktype=reader.datalink())
                for ts, buf in reader:
                    writer.writepkt(buf, ts + k * span_s)
            part.unlink()
    return {**total, "periods": periods, "packets_per_period": packets, "seed": seed,
            "profile": profile, "span_s": span_s * periods}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--packets", type=int, default=250_000, help="packets per period")
    ap.add_argument("--periods", type=int, default=8, help="periods of 180 s")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="calls")
    ap.add_argument("--out", type=Path, default=None,
                    help="output pcap (default bench/data/long-<profile>-<packets>x<periods>.pcap)")
    a = ap.parse_args(argv)
    if a.packets < 1000 or a.periods < 1:
        ap.error("--packets must be at least 1000 and --periods at least 1")
    out = a.out or (Path(__file__).resolve().parent / "data"
                    / f"long-{a.profile}-{a.packets}x{a.periods}.pcap")
    out.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    info = write_long(a.packets, a.periods, a.seed, a.profile, out)
    info["generate_s"] = round(time.perf_counter() - t, 2)
    Path(str(out) + ".json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"{out}: {info['packets']} packets, {info['flows']} flows, {info['calls']} calls, "
          f"{info['span_s']:.0f} s span, {info['generate_s']} s to generate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
