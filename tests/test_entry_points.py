"""Every entry point says the same of a capture.

``marsad analyze`` as JSON, JSON lines and CSV, the service's analysis job (read back from
its store) and the live probe fed the capture as a stream run the one pipeline
(:mod:`policy.pipeline`); each must give every flow the same app, category, media and
verdict, and find the same calls with the same verdicts. Run on every bundled capture and,
when ``../shared`` is there, on every ``ndpi-dev`` and ``real-dev`` capture.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.cli import main
from api.jobs import Jobs
from api.live import LiveConfig, LiveProbe
from api.output import dumps, write_analysis_csv, write_analysis_zeek
from api.pipeline import analyze_capture
from api.store import JobState, Query, SqliteStore
from policy.ledger import Ledger
from policy.rules import load_policy
from tests.conftest import ROOT, timeless

SHARED = ROOT.parent / "shared" / "captures"
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".gz")

Labels = dict[str, tuple[Any, ...]]
Calls = dict[str, tuple[Any, ...]]


def _captures() -> list[Any]:
    out: list[Any] = []
    for p in sorted((ROOT / "captures").iterdir()):
        if p.name.endswith(CAPTURE_SUFFIXES) and not p.name.startswith("bad-"):
            out.append(pytest.param(p, id=f"captures/{p.name}"))
    for sub in ("ndpi-dev/pcap", "ndpi-dev/pcap_other", "real-dev/pcap"):
        d = SHARED / sub
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.is_file():
                out.append(pytest.param(p, id=f"{sub.split('/')[0]}/{p.name}",
                                        marks=pytest.mark.shared))
    return out


def _flow_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row.get("app") or None, row.get("category") or None, row.get("media") or None)


def _call_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row.get("app"), tuple(row.get("media") or ()), row.get("verdict"),
            tuple(row.get("reasons") or ()), tuple(sorted(row.get("flow_uids") or ())))


def _from_json(obj: dict[str, Any]) -> tuple[Labels, Calls, dict[str, Any]]:
    labels = {r["uid"]: _flow_key(r) for r in obj["flows"]}
    verdicts = {r["uid"]: r["verdict"] for r in obj["flows"] if r.get("verdict")}
    return labels, {c["uid"]: _call_key(c) for c in obj["calls"]}, verdicts


def _from_jsonl(text: str) -> tuple[Labels, Calls, dict[str, Any]]:
    labels: Labels = {}
    calls: Calls = {}
    verdicts: dict[str, Any] = {}
    for line in text.splitlines():
        r = json.loads(line)
        if r["record"] == "flow":
            labels[r["uid"]] = _flow_key(r)
        elif r["record"] == "call":
            calls[r["uid"]] = _call_key(r)
        elif r["record"] == "flow-verdict":
            verdicts[r["uid"]] = r["verdict"]
    return labels, calls, verdicts


def _readable(path: Path) -> bool:
    try:
        analyze_capture(path, hash_capture=False)
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def policy() -> Any:
    return load_policy()


def _service(path: Path, tmp: Path) -> tuple[Labels, Calls, dict[str, Any]]:
    store = SqliteStore(tmp / "marsad.db", clock=lambda: 1_700_000_000.0)
    ledger = Ledger(tmp / "ledger.db", clock=lambda: 1_700_000_000.0)
    jobs = Jobs(store, ledger, captures_dir=tmp / "captures", policy=load_policy(),
                max_upload_bytes=1 << 30, retention=(None, None),
                clock=lambda: 1_700_000_000.0)
    try:
        row, _ = jobs.accept(jobs.copy_in(path), path.name)
        assert jobs.wait(300)
        done = store.capture(row.id)
        assert done is not None and done.state is JobState.DONE, done

        def every(kind: str) -> Iterator[dict[str, Any]]:
            offset = 0
            while True:
                q = Query(capture_id=row.id, limit=500, offset=offset, newest_first=False)
                page = store.flows(q) if kind == "flows" else store.calls(q)
                yield from page.items
                if len(page.items) < 500:
                    return
                offset += 500

        flows = list(every("flows"))
        labels = {r["uid"]: _flow_key(r) for r in flows}
        verdicts = {r["uid"]: r["verdict"] for r in flows if r.get("verdict")}
        calls = {c["uid"]: _call_key(c) for c in every("calls")}
        return labels, calls, verdicts
    finally:
        jobs.shutdown()
        ledger.close()
        store.close()


def _live(path: Path, policy: Any) -> tuple[Labels, Calls, dict[str, Any]]:
    out = io.StringIO()
    with path.open("rb") as fh:
        probe = LiveProbe(LiveConfig(source="-"), policy, out, stdin=fh)
        probe.run()
    return _from_jsonl(out.getvalue())


@pytest.mark.parametrize("path", _captures())
def test_every_entry_point_gives_the_same_labels_calls_and_verdicts(
        path: Path, tmp_path: Path, policy: Any, capsys: pytest.CaptureFixture[str]) -> None:
    if not _readable(path):
        pytest.skip(f"{path.name}: not a capture marsad reads (covered by the format tests)")
    result = analyze_capture(path, hash_capture=False)
    want = _from_json(result.to_json())
    main(["analyze", str(path), "--json"])  # gathered step by step, the result never whole
    assert capsys.readouterr().out == dumps(result.to_json()) + "\n", "analyze --json"
    main(["analyze", str(path), "--jsonl"])
    assert _from_jsonl(capsys.readouterr().out) == want, "analyze --jsonl"
    calls_csv = tmp_path / "calls.csv"
    main(["analyze", str(path), "--csv", "--calls-csv", str(calls_csv)])
    text = capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO(text)))
    got = {r["uid"]: _flow_key({k: (v or None) for k, v in r.items()}) for r in rows
           if r.get("uid", "").startswith("C")}
    assert got == want[0], "analyze --csv"
    flows_out, calls_out = io.StringIO(), io.StringIO()
    write_analysis_csv(result, flows_out, calls_out)  # the whole result's tables, the same
    assert (text, calls_csv.read_text()) == (flows_out.getvalue(), calls_out.getvalue())
    main(["analyze", str(path), "--zeek"])
    zeek = io.StringIO()
    write_analysis_zeek(result, zeek)
    assert timeless(capsys.readouterr().out) == timeless(zeek.getvalue()), "analyze --zeek"
    assert _service(path, tmp_path) == want, "service job"
    assert _live(path, policy) == want, "live probe on a stream"


def test_report_and_analyze_agree_under_other_settings(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The meter and pipeline options change flows and calls (a 0.5 s UDP idle timeout
    splits streams); ``report`` takes them as ``analyze`` does, and says the same."""
    cap = str(ROOT / "captures" / "sample-blocked.pcap")
    opts = ["--udp-idle", "0.5", "--call-interval", "1", "--call-settle", "5"]
    main(["analyze", cap, "--json", *opts])
    want = _from_json(json.loads(capsys.readouterr().out))
    main(["analyze", cap, "--json"])
    assert _from_json(json.loads(capsys.readouterr().out))[1] != want[1]  # the options matter
    main(["report", cap, "--json", *opts])
    got = json.loads(capsys.readouterr().out)["captures"][0]
    assert sorted((c["uid"], c["verdict"]) for c in got["calls"]) == sorted(
        (u, key[2]) for u, key in want[1].items())  # _call_key: (app, media, verdict, ...)
