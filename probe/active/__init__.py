"""Active measurements: traffic marsad sends itself to test a path (replays, reachability).

The records in :mod:`probe.active.records` are what a test measured; the policy stage
judges them (``policy.replay``, ``policy.reach``) and the api stage runs, stores and serves
them.
"""

__all__: list[str] = []
