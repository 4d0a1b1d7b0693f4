#!/usr/bin/env python3
"""Reference flow meter for the benchmark: nfstream over a capture file.

``--mode no-dpi`` meters flows without application detection
(``n_dissections=0``, no statistical features); ``--mode dpi`` uses nfstream's
defaults (nDPI on the first 20 packets of every flow). All flows are iterated;
prints ``flows N``, and with ``--apps`` the flow count per detected application.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from nfstream import NFStreamer


def run(path: Path, dpi: bool) -> tuple[int, Counter[str]]:
    """Iterate every flow of the capture; return the flow count and the flows per application."""
    if dpi:
        streamer = NFStreamer(source=str(path))
    else:
        streamer = NFStreamer(source=str(path), n_dissections=0, statistical_analysis=False)
    apps: Counter[str] = Counter()
    n = 0
    for flow in streamer:
        n += 1
        if dpi:
            apps[str(flow.application_name)] += 1
    return n, apps


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="nfstream over a capture file")
    ap.add_argument("pcap", type=Path)
    ap.add_argument("--mode", choices=("no-dpi", "dpi"), default="no-dpi")
    ap.add_argument("--apps", action="store_true", help="print flows per application (dpi)")
    a = ap.parse_args(argv)
    if not a.pcap.is_file():
        ap.error(f"no such capture: {a.pcap}")
    n, apps = run(a.pcap, a.mode == "dpi")
    if a.apps:
        for app, count in apps.most_common():
            print(f"app {app} {count}")
    print(f"flows {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
