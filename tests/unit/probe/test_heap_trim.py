"""The probe gives freed heap pages back to the system (glibc ``malloc_trim``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from probe.speed import trim_heap


def test_trim_is_harmless_to_call() -> None:
    trim_heap()
    trim_heap()


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr(
    "CS_GNU_LIBC_VERSION") is None, reason="malloc_trim is glibc's")
def test_trim_returns_freed_pages_that_a_live_block_pins() -> None:
    # 100 MB of 1 kB blocks, then one block after them: once the 100 MB are freed, the
    # live block at the top keeps glibc from shrinking the heap by itself; the freed
    # pages stay resident until trimmed.
    code = textwrap.dedent("""
        from probe.speed import trim_heap
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
        blocks = [bytes(1000) + bytes([i % 256]) for i in range(100_000)]
        pin = bytes(1000) + b"x"
        del blocks
        before = rss()
        trim_heap()
        print(before, rss())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    before, after = int(out[0]), int(out[1])
    assert before - after > 60, (before, after)
