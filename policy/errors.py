"""Errors raised by the policy package.

The tree::

    PolicyError
    ├── QualityError                  a series cannot be measured (inconsistent arrays...)
    └── LedgerError                   the evidence ledger refused an operation
        ├── LedgerFormatError         the file is not a ledger this code can read
        └── EntryRejected             an entry to append is invalid (bad hash, not JSON...)

A ledger whose contents were tampered with is *not* an exception: ``Ledger.verify``
reports every problem it finds as data, with its position in the chain.
"""

from __future__ import annotations

__all__ = [
    "EntryRejected",
    "LedgerError",
    "LedgerFormatError",
    "PolicyError",
    "QualityError",
]


class PolicyError(Exception):
    """Base of every error the policy package raises."""


class QualityError(PolicyError):
    """A packet or rate series cannot be measured as given."""


class LedgerError(PolicyError):
    """The evidence ledger refused an operation."""


class LedgerFormatError(LedgerError):
    """The database exists but does not hold a ledger of a known format version."""


class EntryRejected(LedgerError):
    """An entry to append is invalid; nothing was written."""
