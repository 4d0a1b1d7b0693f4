"""A test capture notices tcpdump is listening however its stderr lines arrive."""

from __future__ import annotations

import time
from pathlib import Path

from probe.active.capture import TestCapture


def test_listening_line_arriving_with_an_earlier_one_is_seen(tmp_path: Path) -> None:
    # tcpdump -i any says two lines; when they arrive in one write, a line-buffered
    # reader took both and waited 10 s on an empty pipe, then gave up on a running capture.
    fake = tmp_path / "fake-tcpdump"
    fake.write_text("#!/bin/sh\n"
                    "printf 'tcpdump: data link type LINUX_SLL2\\n"
                    "tcpdump: listening on any, link-type LINUX_SLL2\\n' >&2\n"
                    "trap 'echo \"0 packets captured\" >&2; exit 0' INT\n"
                    "while :; do sleep 0.05; done\n")
    fake.chmod(0o755)
    start = time.monotonic()
    with TestCapture(tmp_path / "t.pcap", "host 127.0.0.1", tcpdump=str(fake)) as cap:
        assert cap.result.problem == "capture not run"  # started: no problem said yet
    assert time.monotonic() - start < 5
    assert cap.result.problem == "tcpdump wrote no file" and cap.result.packets == 0
