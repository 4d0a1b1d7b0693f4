"""The far side of the reachability lab: DNS, TLS and STUN servers, run in the relay namespace.

``python -m tests.lab.reach_servers CONFIG.json`` starts what the file lists and serves
until killed::

    {"cert": PEM, "key": PEM,
     "dns": [{"ip", "port", "table": {name: [addresses]}}],
     "tls": [{"ip", "port"}], "stun": [{"ip", "port"}]}
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tests.unit.active.loopback_servers import DnsServer, StunServer, TlsServer


def main(config_path: str) -> None:
    cfg = json.loads(Path(config_path).read_text())
    cert, key = Path(cfg["cert"]), Path(cfg["key"])
    servers: list[object] = []
    for d in cfg["dns"]:
        servers.append(DnsServer(d["table"], d["ip"], d["port"]))
    for t in cfg["tls"]:
        servers.append(TlsServer(t["ip"], t["port"], cert, key))
    for s in cfg["stun"]:
        servers.append(StunServer(s["ip"], s["port"]))
    print(f"ready: {len(servers)} servers", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1])
