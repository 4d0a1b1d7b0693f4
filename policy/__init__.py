"""policy: classified flows -> calls, call quality, verdicts and a tamper-evident ledger."""
