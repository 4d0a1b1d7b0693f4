"""A bounded soak in the normal suite (``make soak`` runs the long one): the service and the
live probe on one data directory for about a minute, with uploads, restarts and kill -9 of
both (tests/soak/soak.py). The run happens once; each test judges one aspect of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.soak.soak import SoakResult, run_soak

SECONDS = 75.0


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> SoakResult:
    data_dir: Path = tmp_path_factory.mktemp("soak")
    return run_soak(SECONDS, seed=7, data_dir=data_dir, chaos_every=(6.0, 10.0))


def test_every_kind_of_trouble_happened(soak: SoakResult) -> None:
    assert soak.server_restarts and soak.server_kills, soak
    assert soak.probe_restarts >= 2 and soak.probe_kills, soak
    assert soak.packets_fed > 10_000 and soak.uploads_accepted > 10


def test_ledger_verifies(soak: SoakResult) -> None:
    assert soak.verify_exit == 0, soak.verify_output
    assert soak.ledger_entries > 0


def test_memory_stays_bounded(soak: SoakResult) -> None:
    assert 0 < soak.peak_rss_mb["serve"] < 600, soak.peak_rss_mb
    assert 0 < soak.peak_rss_mb["probe"] < 400, soak.peak_rss_mb
    assert all(g < 64 for g in soak.rss_growth_mb.values()), soak.rss_growth_mb


def test_uploads_are_all_analysed(soak: SoakResult) -> None:
    assert soak.server_5xx == 0
    assert not {"queued", "running", "failed"} & set(soak.jobs), soak.jobs
    assert sum(soak.jobs.values()) == soak.uploads_accepted


def test_verdicts_of_stopped_probes_are_ledgered(soak: SoakResult) -> None:
    """A probe stopped by the end of its input or SIGTERM that printed a verdict put it in the
    ledger, or exited non-zero saying why."""
    assert soak.verdicts_printed > 0
    assert soak.missing_clean == [], soak.missing_clean


def test_verdicts_of_killed_probes_are_ledgered(soak: SoakResult) -> None:
    """A verdict printed is in the ledger even when its probe was then killed (SIGKILL)."""
    assert soak.missing_after_kill == [], soak.missing_after_kill
