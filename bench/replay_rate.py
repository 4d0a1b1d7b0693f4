"""The highest rate the live probe keeps up with on a real interface, with no kernel drops.

A capture is replayed with ``tcpreplay`` out of one end of a veth pair that lives in a
network namespace of its own; ``marsad probe -i`` captures on the other end (tcpdump
and its kernel ring, the pipeline, the capture ring and the store, as an advocate runs
it). At each rate (packets per second, ``tcpreplay --pps``) the probe is started afresh,
the capture is replayed, the probe is stopped once the link is quiet and its status file
is read: packets received and dropped by the kernel. The answer is the highest rate of
the list with no drop; the figures of every rate are printed as one JSON line each.

Needs root (network namespaces, veth, capture) and tcpreplay::

    python bench/replay_rate.py --capture bench/data/calls-200k.pcap --rates 5000,10000,20000

The kernel ring is tcpdump's default (2 MiB on Linux).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NS = "marsad-replay"
TX, RX = "mrep-tx", "mrep-rx"


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _link_up() -> None:
    _link_down()
    _sh("ip", "netns", "add", NS)
    _sh("ip", "link", "add", RX, "mtu", "9000", "type", "veth", "peer", "name", TX,
        "mtu", "9000")
    _sh("ip", "link", "set", TX, "netns", NS)
    _sh("ip", "netns", "exec", NS, "ip", "link", "set", TX, "up")
    _sh("ip", "link", "set", RX, "up")
    # no address, no IPv6 autoconfiguration: the replayed frames are all the link carries
    _sh("sysctl", "-q", "-w", f"net.ipv6.conf.{RX}.disable_ipv6=1")


def _link_down() -> None:
    subprocess.run(["ip", "link", "del", RX], stderr=subprocess.DEVNULL, check=False)
    subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL, check=False)


def _status(data_dir: Path) -> dict[str, Any]:
    path = data_dir / "probe-status.json"
    doc: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    return doc


def one_rate(marsad: str, capture: Path, pps: int, limit: int,
             workdir: Path) -> dict[str, Any]:
    """Replay ``capture`` at ``pps`` into a fresh probe; what the probe's status says."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"pps{pps}-", dir=workdir))
    argv = [marsad, "probe", "-i", RX, "--data-dir", str(data_dir)]
    probe = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 20
    while _status(data_dir).get("state") != "capturing" and time.monotonic() < deadline:
        if probe.poll() is not None:
            err = probe.stderr.read() if probe.stderr else ""
            raise SystemExit(f"the probe ended at once: {err}")
        time.sleep(0.2)
    t0 = time.monotonic()
    rep = subprocess.run(["ip", "netns", "exec", NS, "tcpreplay", "-q", "-i", TX,
                          f"--pps={pps}", f"--limit={limit}", str(capture)],
                         capture_output=True, text=True, check=False)
    replay_s = time.monotonic() - t0
    time.sleep(3.0)  # let the ring and the pipeline drain before stopping
    probe.send_signal(signal.SIGINT)
    try:
        _, err = probe.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        probe.kill()
        _, err = probe.communicate()
    st = _status(data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)
    return {"pps": pps, "replay_s": round(replay_s, 2), "tcpreplay_rc": rep.returncode,
            "received": st.get("packets"), "dropped": st.get("dropped"),
            "flows": st.get("flows_finished"), "calls": st.get("calls"),
            "probe_rc": probe.returncode, "stderr_tail": err.strip().splitlines()[-2:]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--capture", type=Path, required=True)
    ap.add_argument("--rates", default="5000,10000,20000,40000,80000",
                    help="packets per second, comma-separated, tried in this order")
    ap.add_argument("--marsad", default=str(Path(sys.executable).with_name("marsad")))
    ap.add_argument("--limit", type=int, default=200_000, help="packets replayed per rate")
    a = ap.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("tcpreplay") is None:
        print("replay_rate: needs root and tcpreplay", file=sys.stderr)
        return 2
    best = None
    workdir = Path(tempfile.mkdtemp(prefix="marsad-replay-"))
    try:
        _link_up()
        for pps in (int(x) for x in a.rates.split(",")):
            row = one_rate(a.marsad, a.capture, pps, a.limit, workdir)
            print(json.dumps(row), flush=True)
            if row["dropped"] == 0 and row["received"]:
                best = pps
    finally:
        _link_down()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"highest_rate_without_drops_pps": best}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
