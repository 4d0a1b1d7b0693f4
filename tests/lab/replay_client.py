"""Run replay tests from inside a lab namespace and print one JSON line per test.

``python replay_client.py SERVER PORT TOKEN_FILE --apps a,b,... --count N --parallel P
--seconds S [--drain S]``: N tests, the apps taken in turn, P at a time, each judged with
the default policy. Prints ``{"event": "started"}`` first (so the lab can time a rule
change against the test), then a line per finished test.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from policy.replay import judge_replay
from policy.rules import load_policy
from probe.active.replay import ReplayError, run_replay
from probe.active.trace import load_trace

_lock = threading.Lock()


def _say(obj: dict[str, Any]) -> None:
    with _lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("server")
    p.add_argument("port", type=int)
    p.add_argument("token_file")
    p.add_argument("--traces", required=True)
    p.add_argument("--apps", required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--drain", type=float, default=1.0)
    p.add_argument("--pause", type=float, default=0.5)
    a = p.parse_args()
    token = Path(a.token_file).read_text().strip().encode()
    traces = {n: load_trace(Path(a.traces) / f"{n}.pcap") for n in a.apps.split(",")}
    names = list(traces)
    policy = load_policy()

    def one(k: int) -> None:
        name = names[k % len(names)]
        t0 = time.monotonic()
        try:
            m = run_replay(traces[name], a.server, a.port, token, seconds=a.seconds,
                           drain_s=a.drain, pause_s=a.pause)
        except ReplayError as exc:
            _say({"event": "error", "trace": name, "error": str(exc)})
            return
        r = judge_replay(m, policy)
        _say({"event": "test", "trace": name, "verdict": str(r.verdict.kind),
              "reasons": [str(x) for x in r.verdict.reasons],
              "texts": [e.text for e in r.verdict.evidence],
              "analysis": {d: {k: v for k, v in r.test_keys.get("analysis", {}).get(
                  d, {}).items() if k in ("area", "ks_p", "loss", "mean_bps", "offered_bps",
                                          "delay_rise_ms", "delay_plateau", "stun",
                                          "plateau_bps", "area_controls",
                                          "original_after")}
                           for d in ("up", "down")},
              "ports": [[r_.client[1], r_.server[1]] for r_ in m.runs],
              "elapsed_s": round(time.monotonic() - t0, 2)})

    _say({"event": "started"})
    with ThreadPoolExecutor(max_workers=a.parallel) as pool:
        list(pool.map(one, range(a.count)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
