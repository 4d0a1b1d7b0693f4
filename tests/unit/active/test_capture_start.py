"""A test capture notices tcpdump is listening however its stderr lines arrive."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from probe.active.capture import TestCapture


def test_listening_line_arriving_with_an_earlier_one_is_seen(tmp_path: Path) -> None:
    # tcpdump -i any says two lines; when they arrive in one write, a line-buffered
    # reader took both and waited 10 s on an empty pipe, then gave up on a running capture.
    # In Python, not sh: like tcpdump, it catches SIGINT even when started with SIGINT
    # ignored (a job a non-interactive shell put in the background), which sh cannot trap.
    fake = tmp_path / "fake-tcpdump"
    fake.write_text(f"#!{sys.executable}\n"
                    "import os, signal, sys, time\n"
                    "def stop(*_):\n"
                    "    sys.stderr.write('0 packets captured\\n'); sys.stderr.flush()\n"
                    "    os._exit(0)\n"
                    "signal.signal(signal.SIGINT, stop)\n"
                    "os.write(2, b'tcpdump: data link type LINUX_SLL2\\n'\n"
                    "         b'tcpdump: listening on any, link-type LINUX_SLL2\\n')\n"
                    "while True:\n"
                    "    time.sleep(0.05)\n")
    fake.chmod(0o755)
    start = time.monotonic()
    with TestCapture(tmp_path / "t.pcap", "host 127.0.0.1", tcpdump=str(fake)) as cap:
        assert cap.result.problem == "capture not run"  # started: no problem said yet
    assert time.monotonic() - start < 5
    assert cap.result.problem == "tcpdump wrote no file" and cap.result.packets == 0
