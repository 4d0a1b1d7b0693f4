"""The file mode of what the long-running commands write."""

from __future__ import annotations

import os

__all__ = ["PRIVATE_UMASK", "private_files"]

PRIVATE_UMASK = 0o077
"""What ``marsad serve`` and ``marsad probe`` create is the owner's alone: directories
0700, files (databases and their WAL, ring captures, status) 0600."""


def private_files() -> int:
    """Make every file and directory this process creates from now on private to its
    owner (umask 077): the store, the ledger and the capture ring hold captured traffic.
    Returns the previous umask."""
    return os.umask(PRIVATE_UMASK)
