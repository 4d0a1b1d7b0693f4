"""Run the lab scenarios and write ``<outdir>/<scenario>.pcap`` and ``.json`` for each.

Usage: ``python tests/lab/make_lab_captures.py OUTDIR [--only NAME ...]`` as root.
Scenarios run one after the other; each builds and tears down its own lab.
"""

from __future__ import annotations

import argparse
import runpy
import signal
import sys
import time
from pathlib import Path
from types import FrameType

if __name__ == "__main__" and not __package__:
    # Run as a script: re-run as a module of the lab package so that its
    # relative imports resolve.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    runpy.run_module("lab.make_lab_captures", run_name="__main__", alter_sys=True)
    raise SystemExit(0)

from .scenarios import SCENARIOS, missing_tools, run_scenario


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so every NetLab context tears down.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), metavar="NAME",
                        help=f"run only these scenarios (of: {', '.join(SCENARIOS)})")
    args = parser.parse_args(argv)
    missing = missing_tools()
    if missing:
        parser.error(f"missing tools: {', '.join(missing)}")
    signal.signal(signal.SIGTERM, _terminate)
    names = args.only or list(SCENARIOS)
    started = time.monotonic()
    for name in names:
        t = time.monotonic()
        pcap, meta = run_scenario(name, args.outdir)
        print(f"{name}: {pcap} ({meta['capture']['packets_captured']} packets, "
              f"{time.monotonic() - t:.1f} s)", flush=True)
    print(f"{len(names)} scenarios in {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
