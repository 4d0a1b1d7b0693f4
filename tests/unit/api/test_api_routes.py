"""The REST API through FastAPI's TestClient, on the sample captures."""

from __future__ import annotations

import importlib.util
import io
import json
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.config import Settings
from api.deps import Services
from api.main import create_app
from api.probe_status import STATUS_FILE, ProbeState, ProbeStatus, write_probe_status
from api.routes import calls as calls_route
from api.routes import captures as captures_route
from tests.conftest import ROOT
from tests.pcapbytes import pcap, split, udp_frame

CAPTURES = ROOT / "captures"
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = 1_700_100_000.0


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {"data_dir": tmp_path / "data", "api_token": SecretStr(TOKEN)}
    base.update(kw)
    return Settings(**base)


def _services(client: TestClient) -> Services:
    found: Services = client.app.state.services  # type: ignore[attr-defined]
    return found


def _upload(client: TestClient, name: str, **kw: Any) -> Any:
    data = (CAPTURES / name).read_bytes()
    return client.post("/v1/captures", params={"name": name}, content=data,
                       headers={**AUTH, "Content-Type": "application/vnd.tcpdump.pcap"}, **kw)


def _settle(client: TestClient) -> None:
    assert _services(client).jobs.wait(60)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(_settings(tmp_path), clock=lambda: NOW)
    with TestClient(app) as c:
        yield c


@pytest.fixture
def loaded(client: TestClient) -> TestClient:
    """A service holding the three sample captures, analysed."""
    for name in ("sample-call.pcap", "sample-blocked.pcap", "sample-sip.pcap"):
        assert _upload(client, name).status_code == 202
    _settle(client)
    return client


def test_upload_raw_then_follow_the_job(client: TestClient) -> None:
    r = _upload(client, "sample-blocked.pcap")
    assert r.status_code == 202, r.text
    body = r.json()
    assert r.headers["location"] == f"/v1/captures/{body['id']}"
    assert body["filename"] == "sample-blocked.pcap" and body["size_bytes"] == 61889
    assert body["state"] in ("queued", "running", "done")
    _settle(client)
    got = client.get(f"/v1/captures/{body['id']}").json()
    assert got["state"] == "done" and got["progress"] == 1.0
    s = got["summary"]
    assert (s["packets"], s["flows"], s["calls"]) == (382, 11, 1)
    assert s["verdicts"] == {"blocked": 1} and s["ledger_entries"] == 2
    listed = client.get("/v1/captures").json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == body["id"]


def test_upload_multipart_and_duplicate(client: TestClient) -> None:
    data = (CAPTURES / "sample-sip.pcap").read_bytes()
    r = client.post("/v1/captures", headers=AUTH,
                    files={"file": ("../../etc/sip-call.pcap", data, "application/octet-stream")})
    assert r.status_code == 202, r.text
    first = r.json()
    assert first["filename"] == "sip-call.pcap"
    _settle(client)
    # The same bytes again: the stored capture, 200, no new job.
    again = _upload(client, "sample-sip.pcap")
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert again.json()["state"] == "done"
    assert client.get("/v1/captures").json()["total"] == 1


@pytest.mark.parametrize("given,kept", [
    (None, "upload"), ("", "upload"), ("a\x07b\x00.pcap", "ab.pcap"),
    ("C:\\cap\\x.pcapng", "x.pcapng"), ("/..", "upload"), ("x" * 300, "x" * 255),
])
def test_upload_names_are_cleaned(given: str | None, kept: str) -> None:
    assert captures_route._clean_name(given) == kept


@pytest.mark.parametrize("name,fragment", [
    ("bad-text.pcap", "not a pcap or pcapng capture"),
    ("bad-empty.pcap", "empty input"),
])
def test_not_a_capture_is_400(client: TestClient, name: str, fragment: str) -> None:
    r = _upload(client, name)
    assert r.status_code == 400 and fragment in r.json()["detail"]
    assert str(_services(client).settings.data_dir) not in r.json()["detail"]
    assert client.get("/v1/captures").json()["total"] == 0


def test_multipart_without_file_part_is_400(client: TestClient) -> None:
    r = client.post("/v1/captures", headers=AUTH, data={"note": "hello"},
                    files={"other": ("x.pcap", b"\xd4\xc3\xb2\xa1")})
    assert r.status_code == 400 and "'file'" in r.json()["detail"]
    r = client.post("/v1/captures", content=b"--x\r\nnonsense",
                    headers={**AUTH, "Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400


def test_too_large_is_413_declared_or_streamed(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, max_upload_bytes=10_000), clock=lambda: NOW)
    data = (CAPTURES / "sample-blocked.pcap").read_bytes()
    with TestClient(app) as c:
        r = c.post("/v1/captures", content=data, headers=AUTH)
        assert r.status_code == 413 and "10000 bytes" in r.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for i in range(0, len(data), 4096):
                yield data[i:i + 4096]

        r = c.post("/v1/captures", content=chunks(), headers=AUTH)
        assert r.status_code == 413
        r = c.post("/v1/captures", headers=AUTH, files={"file": ("big.pcap", data)})
        assert r.status_code == 413
        captures_dir = _services(c).settings.captures_dir
        assert list(captures_dir.iterdir()) == []
        assert c.get("/v1/captures").json()["total"] == 0


def test_streamed_multipart_413_states_the_configured_limit(tmp_path: Path) -> None:
    """The multipart framing allowance is ours, not the limit the operator set."""
    app = create_app(_settings(tmp_path, max_upload_bytes=10_000), clock=lambda: NOW)
    data = (CAPTURES / "sample-blocked.pcap").read_bytes() * 20
    assert len(data) > 10_000 + (1 << 16)
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.pcap\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--XyZ--\r\n")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]

    with TestClient(app) as c:
        r = c.post("/v1/captures", content=chunks(),
                   headers={**AUTH, "Content-Type": "multipart/form-data; boundary=XyZ"})
        assert r.status_code == 413
        assert r.json()["detail"] == "the capture is larger than the limit of 10000 bytes"


def _gzip_bomb(inflated: int) -> bytes:
    """A pcap header and then ``inflated`` zero bytes, gzip-compressed (about 1000:1)."""
    import gzip
    import struct

    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        gz.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        block = bytes(1 << 20)
        for _ in range(inflated >> 20):
            gz.write(block)
    return out.getvalue()


@pytest.mark.parametrize("how", ["raw", "multipart", "preload"])
def test_a_gzip_upload_that_inflates_past_the_limit_is_413(tmp_path: Path, how: str) -> None:
    bomb = _gzip_bomb(64 << 20)
    assert len(bomb) < 100_000
    settings = _settings(tmp_path, max_decompressed_bytes=8 << 20)
    if how == "preload":
        from api.jobs import InflatesTooLarge

        path = tmp_path / "bomb.pcap.gz"
        path.write_bytes(bomb)
        with pytest.raises(InflatesTooLarge, match="decompresses to more than the limit of "
                                                   "8388608 bytes"):
            create_app(_settings(tmp_path, max_decompressed_bytes=8 << 20, preload=(path,)))
        return
    app = create_app(settings, clock=lambda: NOW)
    with TestClient(app) as c:
        if how == "raw":
            r = c.post("/v1/captures", content=bomb, headers=AUTH)
        else:
            r = c.post("/v1/captures", headers=AUTH, files={"file": ("b.pcap.gz", bomb)})
        assert r.status_code == 413
        assert r.json()["detail"] == ("the capture decompresses to more than the limit of "
                                      "8388608 bytes")
        assert list(_services(c).settings.captures_dir.iterdir()) == []
        # Within the limit, a gzip capture is taken and analysed.
        import gzip

        good = gzip.compress((CAPTURES / "sample-blocked.pcap").read_bytes())
        r = c.post("/v1/captures", content=good, headers=AUTH)
        assert r.status_code == 202
        _settle(c)
        assert c.get(f"/v1/captures/{r.json()['id']}").json()["state"] == "done"


def test_write_and_evidence_need_the_token(loaded: TestClient) -> None:
    data = (CAPTURES / "sample-sip.pcap").read_bytes()
    r = loaded.post("/v1/captures", content=data)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = loaded.post("/v1/captures", content=data, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and TOKEN not in r.text
    uid = loaded.get("/v1/calls").json()["items"][0]["uid"]
    assert loaded.get(f"/v1/calls/{uid}/evidence").status_code == 401
    # Reads are open.
    assert loaded.get("/v1/flows").status_code == 200


def test_no_token_configured_refuses_writes(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d")
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/captures", content=b"x", headers=AUTH)
        assert r.status_code == 403 and "MARSAD_API_TOKEN" in r.json()["detail"]
    # The token file 'marsad serve' creates is picked up.
    token_file = settings.ensure_token()
    assert token_file is not None and token_file.stat().st_mode & 0o077 == 0
    token = token_file.read_text().strip()
    with TestClient(create_app(settings)) as c:
        data = (CAPTURES / "sample-sip.pcap").read_bytes()
        r = c.post("/v1/captures", content=data, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 202
        _settle(c)
    assert TOKEN not in repr(_settings(tmp_path)) and token not in repr(settings)


def test_reads_can_be_closed(tmp_path: Path) -> None:
    with TestClient(create_app(_settings(tmp_path, open_reads=False))) as c:
        for path in ("/v1/flows", "/v1/calls", "/v1/captures", "/v1/probe",
                     "/v1/ledger/verify"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers=AUTH).status_code == 200, path
        assert c.get("/healthz").status_code == 200


def test_flows_and_calls_with_filters(loaded: TestClient) -> None:
    calls = loaded.get("/v1/calls").json()
    assert calls["total"] == 3 and calls["limit"] == 100 and calls["offset"] == 0
    assert sorted((c["app"], c["verdict"]) for c in calls["items"]) == \
        [("sip", "ok"), ("whatsapp", "blocked"), ("whatsapp", "ok")]
    blocked = loaded.get("/v1/calls", params={"verdict": "blocked"}).json()["items"]
    assert len(blocked) == 1 and blocked[0]["reasons"] == ["stun-unanswered", "media-no-return"]
    assert blocked[0]["evidence"][0]["rule"] == "blocked.stun"
    assert loaded.get("/v1/calls", params={"app": "sip"}).json()["total"] == 1
    assert loaded.get("/v1/calls", params={"category": "messaging"}).json()["total"] == 2
    sip_capture = next(c["capture_id"] for c in calls["items"] if c["app"] == "sip")
    assert loaded.get("/v1/calls", params={"capture": sip_capture}).json()["total"] == 1
    # Time: the SIP call starts at 1700002000.038, the WhatsApp calls end by 1700001030.
    since = loaded.get("/v1/calls", params={"since": "2023-11-14T22:40:00Z"}).json()
    assert [c["app"] for c in since["items"]] == ["sip"]
    until = loaded.get("/v1/calls", params={"until": 1_700_001_500}).json()
    assert sorted(c["app"] for c in until["items"]) == ["whatsapp", "whatsapp"]
    # Flows.
    flows = loaded.get("/v1/flows", params={"limit": 1000}).json()
    assert flows["total"] == 12 + 11 + 4
    assert all({"uid", "app", "category", "orig_h", "resp_p"} <= f.keys()
               for f in flows["items"])
    own = loaded.get("/v1/flows", params={"verdict": "blocked"}).json()["items"]
    assert len(own) == 1 and own[0]["resp_p"] == 3478 and own[0]["call_verdict"] == "blocked"
    dns = loaded.get("/v1/flows", params={"category": "dns", "app": "whatsapp"}).json()
    want = [f["uid"] for f in flows["items"]
            if f["category"] == "dns" and f["app"] == "whatsapp"]
    assert dns["total"] == len(want) > 0
    assert [f["uid"] for f in dns["items"]] == want
    page = loaded.get("/v1/flows", params={"limit": 5, "offset": 25, "order": "oldest"}).json()
    assert page["total"] == 27 and len(page["items"]) == 2


def test_one_call(loaded: TestClient) -> None:
    sip = loaded.get("/v1/calls", params={"app": "sip"}).json()["items"][0]
    r = loaded.get(f"/v1/calls/{sip['uid']}")
    assert r.status_code == 200 and r.json() == sip
    assert r.json()["sip_call_id"] == "a84b4c76e66710@192.168.1.50"
    assert [leg["mos"] for leg in r.json()["legs"]] == [4.36, 4.36]
    # The answered WhatsApp call and the blocked one begin with the same packets at the
    # same times (the same first packet: one capture identity) and part at the media: two
    # uids, and each names its own call.
    wa = loaded.get("/v1/calls", params={"app": "whatsapp"}).json()["items"]
    assert sorted(c["verdict"] for c in wa) == ["blocked", "ok"]
    assert wa[0]["uid"] != wa[1]["uid"]
    for c in wa:
        got = loaded.get(f"/v1/calls/{c['uid']}").json()
        assert (got["capture_id"], got["verdict"]) == (c["capture_id"], c["verdict"])


def test_a_uid_in_two_different_captures_is_409_until_one_is_named(client: TestClient) -> None:
    # The call capture, and the same with one more packet a second after its end: two files
    # (two SHA-256s) holding the same call, with the same uid. Asked for without naming a
    # capture, the service does not pick one for the caller.
    header, records = split((CAPTURES / "sample-call.pcap").read_bytes())
    last = struct.unpack_from("<I", records[-1], 0)[0]
    later = pcap([(last + 1.0, udp_frame("192.168.1.23", 40000, "192.168.1.1", 53,
                                            b"\x12\x34" + bytes(10)))])
    longer = header + b"".join(records) + split(later)[1][0]
    for name, data in (("sample-call.pcap", (CAPTURES / "sample-call.pcap").read_bytes()),
                       ("sample-call-longer.pcap", longer)):
        r = client.post("/v1/captures", params={"name": name}, content=data,
                        headers={**AUTH, "Content-Type": "application/vnd.tcpdump.pcap"})
        assert r.status_code == 202, r.text
    _settle(client)
    wa = client.get("/v1/calls", params={"app": "whatsapp"}).json()["items"]
    assert len(wa) == 2 and wa[0]["uid"] == wa[1]["uid"]
    r = client.get(f"/v1/calls/{wa[0]['uid']}")
    assert r.status_code == 409, r.text
    assert all(c["capture_id"] in r.json()["detail"] for c in wa)
    assert client.get(f"/v1/calls/{wa[0]['uid']}/evidence", headers=AUTH).status_code == 409
    for c in wa:
        got = client.get(f"/v1/calls/{c['uid']}", params={"capture": c["capture_id"]})
        assert got.status_code == 200 and got.json()["capture_id"] == c["capture_id"]


def test_copies_of_one_capture_answer_with_the_newest(client: TestClient) -> None:
    # The same bytes under another name are not stored twice; the call is found plainly.
    assert _upload(client, "sample-call.pcap").status_code == 202
    _settle(client)
    uid = client.get("/v1/calls").json()["items"][0]["uid"]
    assert client.get(f"/v1/calls/{uid}").status_code == 200


@pytest.mark.parametrize("path,params,status", [
    ("/v1/calls/Knope", {}, 404),
    ("/v1/captures/Pnope", {}, 404),
    ("/v1/calls", {"limit": 0}, 422),
    ("/v1/calls", {"limit": 1001}, 422),
    ("/v1/flows", {"offset": -1}, 422),
    ("/v1/flows", {"since": "yesterday-ish"}, 422),
    ("/v1/flows", {"since": "2023-11-14"}, 422),  # a date alone is not a date-time
    ("/v1/calls", {"until": "2023-11-14 22:40:00Z"}, 422),
    ("/v1/calls", {"until": "2023-13-14T22:40:00Z"}, 422),
    ("/v1/flows", {"since": "inf"}, 422),
    ("/v1/flows", {"until": "nan"}, 422),
    ("/v1/stats/apps", {"since": "1e999"}, 422),
    ("/v1/stats/apps", {"since": "-1e300", "until": "1e300"}, 422),  # was a 500
    ("/v1/stats/apps", {"since": 2, "until": 1}, 400),
    ("/v1/flows", {"category": "gossip"}, 422),
    ("/v1/calls", {"verdict": "maybe"}, 422),
    ("/v1/calls", {"order": "sideways"}, 422),
    ("/v1/ledger/verify", {"anchor_seq": 1}, 400),
    ("/v1/ledger/verify", {"anchor_seq": 1, "anchor_hash": "xyz"}, 422),
])
def test_bad_input_is_a_clear_4xx(loaded: TestClient, path: str, params: dict[str, Any],
                                  status: int) -> None:
    r = loaded.get(path, params=params)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["detail"]


def test_evidence_bundle(loaded: TestClient) -> None:
    blocked = loaded.get("/v1/calls", params={"verdict": "blocked"}).json()["items"][0]
    r = loaded.get(f"/v1/calls/{blocked['uid']}/evidence", headers=AUTH,
                   params={"capture": blocked["capture_id"]})
    if importlib.util.find_spec("api.evidence") is None:
        pytest.xfail("api.evidence is not present: the evidence endpoint answers 501")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    # Named after the uploaded file, as is the capture in the manifest (not the stored
    # copy's P<hex>.pcap).
    assert f'filename="sample-blocked-{blocked["uid"]}.zip"' in r.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        names = set(z.namelist())
        assert {"report.json", "manifest.json"} <= names
        report = json.loads(z.read("report.json"))
        manifest = json.loads(z.read("manifest.json"))
        md = z.read("report.en.md").decode()
    assert manifest["capture"]["name"] == "sample-blocked.pcap"
    assert "marsad verify ledger.db --capture sample-blocked.pcap" in md  # the service's
    assert report["subject_uid"] == blocked["uid"]
    assert report["call"]["verdict"] == "blocked"
    assert loaded.get("/v1/calls/Knope/evidence", headers=AUTH).status_code == 404


def test_a_calls_report_in_each_format_and_language(loaded: TestClient) -> None:
    blocked = loaded.get("/v1/calls", params={"verdict": "blocked"}).json()["items"][0]
    url = f"/v1/calls/{blocked['uid']}/report"
    r = loaded.get(url, params={"lang": "ar"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'dir="rtl"' in r.text and blocked["uid"] in r.text and "محجوبة" in r.text
    md = loaded.get(url, params={"format": "md", "lang": "fr"})
    assert md.status_code == 200 and "# Rapport sur la qualité" in md.text
    assert "sample-blocked.pcap" in md.text  # the uploaded name, not the stored copy's
    if importlib.util.find_spec("weasyprint") is not None:
        pdf = loaded.get(url, params={"format": "pdf"})
        assert pdf.status_code == 200 and pdf.content[:5] == b"%PDF-"
    assert loaded.get(url, params={"lang": "de"}).status_code == 422
    assert loaded.get("/v1/calls/Knope/report").status_code == 404


@pytest.mark.xfail(importlib.util.find_spec("api.evidence") is None, strict=True,
                   reason="api.evidence (build_bundle) is not present: bundles answer 501")
def test_evidence_builder_is_found() -> None:
    assert calls_route.bundle_builder() is not None


def test_evidence_without_builder_is_501(loaded: TestClient,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calls_route, "bundle_builder", lambda: None)
    uid = loaded.get("/v1/calls").json()["items"][0]["uid"]
    r = loaded.get(f"/v1/calls/{uid}/evidence", headers=AUTH)
    assert r.status_code == 501 and "build_bundle" in r.json()["detail"]


def test_evidence_for_a_capture_no_longer_kept_is_410(loaded: TestClient) -> None:
    sip = loaded.get("/v1/calls", params={"app": "sip"}).json()["items"][0]
    row = _services(loaded).store.capture(sip["capture_id"])
    assert row is not None
    Path(row.path).unlink()
    r = loaded.get(f"/v1/calls/{sip['uid']}/evidence", headers=AUTH)
    assert r.status_code == 410


def test_ledger_verify_finds_tampering(loaded: TestClient) -> None:
    r = loaded.get("/v1/ledger/verify", params={"rederive": "true"}, headers=AUTH).json()
    # sample-blocked's call and flow; the other captures' verdicts are all ok.
    assert r["ok"] and r["entries"] == 2 and len(r["captures_checked"]) == 1
    anchor = r["anchor"]
    assert anchor["seq"] == 2
    good = loaded.get("/v1/ledger/verify", params={"anchor_seq": 2,
                                                    "anchor_hash": anchor["entry_hash"]})
    assert good.json()["ok"]
    bad = loaded.get("/v1/ledger/verify", params={"anchor_seq": 2, "anchor_hash": "0" * 64})
    assert [p["kind"] for p in bad.json()["problems"]] == ["anchor-mismatch"]
    # Edit an entry behind the ledger's back.
    import sqlite3
    path = _services(loaded).settings.ledger_path
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER entries_no_update")
    db.execute("UPDATE entries SET verdict = 'OK' WHERE seq = 1")
    db.commit()
    db.close()
    r = loaded.get("/v1/ledger/verify", params={"rederive": True}, headers=AUTH).json()
    assert not r["ok"]
    kinds = {(p["kind"], p["seq"]) for p in r["problems"]}
    assert ("content-mismatch", 1) in kinds and ("derivation-mismatch", 1) in kinds


def test_rederive_needs_the_token_where_reads_are_open(loaded: TestClient) -> None:
    """Re-deriving re-analyses every stored capture: not for anyone who can read."""
    calls: list[str] = []
    jobs = _services(loaded).jobs
    derive = jobs.derive

    def counted(*a: Any, **kw: Any) -> Any:
        calls.append("derive")
        return derive(*a, **kw)

    jobs.derive = counted  # type: ignore[method-assign]
    r = loaded.get("/v1/ledger/verify", params={"rederive": "true"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = loaded.get("/v1/ledger/verify", params={"rederive": "true"},
                   headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and TOKEN not in r.text
    assert calls == []
    assert loaded.get("/v1/ledger/verify").json()["ok"]  # the hash walk alone stays open
    assert calls == []
    r = loaded.get("/v1/ledger/verify", params={"rederive": "true"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["captures_checked"] and calls


def test_rederive_without_a_configured_token_is_403(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data"), clock=lambda: NOW)
    with TestClient(app) as c:
        r = c.get("/v1/ledger/verify", params={"rederive": "true"})
        assert r.status_code == 403
        assert c.get("/v1/ledger/verify").status_code == 200


def test_costly_requests_run_one_at_a_time(loaded: TestClient) -> None:
    """While one request re-analyses captures, the next gets 429 with Retry-After; the
    slot is given back however the request ends."""
    svc = _services(loaded)
    uid = loaded.get("/v1/calls").json()["items"][0]["uid"]
    assert svc.costly.acquire(blocking=False)  # a request already re-analysing
    try:
        r = loaded.get("/v1/ledger/verify", params={"rederive": "true"}, headers=AUTH)
        assert r.status_code == 429 and r.headers["retry-after"] == "10"
        assert "1 request(s)" in r.json()["detail"]
        r = loaded.get(f"/v1/calls/{uid}/evidence", headers=AUTH)
        assert r.status_code == 429
        assert loaded.get("/v1/ledger/verify").status_code == 200  # cheap reads go on
    finally:
        svc.costly.release()
    for _ in range(2):  # each finished request gave its slot back
        r = loaded.get("/v1/ledger/verify", params={"rederive": "true"}, headers=AUTH)
        assert r.status_code == 200
        assert loaded.get(f"/v1/calls/{uid}/evidence", headers=AUTH).status_code == 200
    jobs = svc.jobs

    def broken(*a: Any, **kw: Any) -> Any:
        raise RuntimeError("analysis failed")

    jobs.analyse = broken  # type: ignore[method-assign]
    plain = TestClient(loaded.app, raise_server_exceptions=False)  # no second lifespan
    assert plain.get(f"/v1/calls/{uid}/evidence", headers=AUTH).status_code == 500
    assert svc.costly.acquire(blocking=False)  # released after the failure too
    svc.costly.release()


def test_a_second_rederive_while_one_runs_is_429(loaded: TestClient) -> None:
    import threading

    jobs = _services(loaded).jobs
    derive = jobs.derive
    entered, go = threading.Event(), threading.Event()

    def slow(*a: Any, **kw: Any) -> Any:
        entered.set()
        assert go.wait(30)
        return derive(*a, **kw)

    jobs.derive = slow  # type: ignore[method-assign]
    first: list[int] = []
    t = threading.Thread(target=lambda: first.append(loaded.get(
        "/v1/ledger/verify", params={"rederive": "true"}, headers=AUTH).status_code))
    t.start()
    try:
        assert entered.wait(30)
        r = loaded.get("/v1/ledger/verify", params={"rederive": "true"}, headers=AUTH)
        assert r.status_code == 429
    finally:
        go.set()
        t.join(60)
    assert first == [200]


def test_costly_concurrency_is_configurable(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, costly_concurrency=2), clock=lambda: NOW)
    with TestClient(app) as c:
        svc = _services(c)
        assert svc.costly.acquire(blocking=False)
        r = c.get("/v1/ledger/verify", params={"rederive": "true"}, headers=AUTH)
        assert r.status_code == 200
        assert svc.costly.acquire(blocking=False)
        r = c.get("/v1/ledger/verify", params={"rederive": "true"}, headers=AUTH)
        assert r.status_code == 429 and "2 request(s)" in r.json()["detail"]
        svc.costly.release()
        svc.costly.release()


def test_probe_status_file(client: TestClient) -> None:
    data_dir = _services(client).settings.data_dir
    assert client.get("/v1/probe").json()["state"] == "absent"
    status = ProbeStatus(state=ProbeState.RUNNING, interface="eth0", pid=4242,
                         started_at=NOW - 100, updated_at=NOW - 2, packets=1000, bytes=90000,
                         flows_active=3, calls=1, verdicts={"ok": 1})
    write_probe_status(data_dir, status)
    r = client.get("/v1/probe").json()
    assert r["running"] and r["state"] == "running" and r["age_s"] == 2
    assert r["status"]["interface"] == "eth0" and r["status"]["verdicts"] == {"ok": 1}
    # No heartbeat for longer than the limit.
    write_probe_status(data_dir, ProbeStatus(state=ProbeState.RUNNING, interface="eth0",
                                             pid=4242, started_at=NOW - 500,
                                             updated_at=NOW - 300))
    r = client.get("/v1/probe").json()
    assert not r["running"] and r["state"] == "stale" and "300 s" in r["detail"]
    write_probe_status(data_dir, ProbeStatus(state=ProbeState.STOPPED, interface="eth0",
                                             pid=4242, started_at=NOW - 500,
                                             updated_at=NOW - 300, message="interrupted"))
    r = client.get("/v1/probe").json()
    assert r["state"] == "stopped" and r["detail"] == "interrupted" and not r["running"]
    for junk in (b"{not json", b"[1, 2]", json.dumps({"version": 9}).encode(),
                 json.dumps({**status.to_json(), "packets": -1}).encode(),
                 json.dumps({**status.to_json(), "updated_at": "now"}).encode()):
        (data_dir / STATUS_FILE).write_bytes(junk)
        r = client.get("/v1/probe")
        assert r.status_code == 200 and r.json()["state"] == "unreadable", junk
        assert str(data_dir) not in r.json()["detail"]


def test_probe_status_round_trip(tmp_path: Path) -> None:
    from api.probe_status import read_probe_status
    status = ProbeStatus(state=ProbeState.ERROR, interface="wlan0", pid=1, started_at=1.0,
                         updated_at=2.5, dropped=7, flows_finished=9, message="no permission")
    write_probe_status(tmp_path, status)
    assert read_probe_status(tmp_path) == status
    assert [p.name for p in tmp_path.iterdir()] == [STATUS_FILE]


def test_openapi_states_the_400s_and_what_a_time_may_be(client: TestClient) -> None:
    """Every 400 a route can answer is in its responses, and a time parameter is a
    date-time string or a number, as the routes accept (no more, no less)."""
    spec = client.get("/openapi.json").json()["paths"]
    for path, method in (("/v1/captures", "post"), ("/v1/ledger/verify", "get"),
                         ("/v1/stats/apps", "get")):
        assert "400" in spec[path][method]["responses"], path
    moment = {"anyOf": [{"type": "string", "format": "date-time"},
                        {"type": "number", "minimum": -62_135_596_800,
                         "maximum": 253_402_300_799}]}
    for path in ("/v1/flows", "/v1/calls", "/v1/stats/apps"):
        params = {p["name"]: p["schema"] for p in spec[path]["get"]["parameters"]}
        for name in ("since", "until"):
            assert {k: v for k, v in params[name].items() if k != "title"} == moment, path
    for value in ("2023-11-14T22:40:00Z", "2023-11-14T22:40:00+01:00", "2023-11-14T22:40:00",
                  "1700001500", "1.7e9", "-5"):
        assert client.get("/v1/flows", params={"since": value}).status_code == 200, value


def test_healthz_and_openapi(client: TestClient) -> None:
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["jobs"]["done"] == 0
    spec = client.get("/openapi.json").json()
    for path in ("/v1/captures", "/v1/captures/{capture_id}", "/v1/flows", "/v1/calls",
                 "/v1/calls/{uid}", "/v1/calls/{uid}/evidence", "/v1/ledger/verify",
                 "/v1/probe", "/healthz"):
        assert path in spec["paths"], path
    body = spec["paths"]["/v1/captures"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/vnd.tcpdump.pcap"} <= body.keys()
    assert client.get("/docs").status_code == 200


def test_every_part_states_one_version_when_the_package_is_not_installed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A source tree that was never installed: the OpenAPI document, /healthz and the
    CLI name the same fallback version (they had three: ``0``, ``unknown``,
    ``0+unknown``)."""
    import importlib.metadata

    from api.cli import main
    from api.version import UNKNOWN

    def absent(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", absent)
    with TestClient(create_app(_settings(tmp_path), clock=lambda: NOW)) as c:
        assert c.get("/healthz").json()["version"] == UNKNOWN
        assert c.get("/openapi.json").json()["info"]["version"] == UNKNOWN
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"marsad {UNKNOWN}"


def test_restart_reports_interrupted_jobs(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    from api.store import SqliteStore
    settings.data_dir.mkdir(parents=True)
    store = SqliteStore(settings.store_path, clock=lambda: NOW)
    store.add_capture(capture_id="Pcut", filename="cut.pcap", path="/gone.pcap",
                      sha256="c" * 64, size_bytes=1)
    assert store.start_job("Pcut")
    store.close()
    with TestClient(create_app(settings, clock=lambda: NOW)) as c:
        got = c.get("/v1/captures/Pcut").json()
        assert got["state"] == "interrupted" and "stopped" in got["error"]
        assert got["summary"] is None


def test_preload(tmp_path: Path) -> None:
    settings = _settings(tmp_path, preload=(CAPTURES / "sample-sip.pcap",
                                            CAPTURES / "sample-blocked.pcap"))
    with TestClient(create_app(settings)) as c:
        _settle(c)
        caps = c.get("/v1/captures").json()["items"]
        assert sorted(x["filename"] for x in caps) == ["sample-blocked.pcap", "sample-sip.pcap"]
        assert all(x["state"] == "done" for x in caps)
        assert c.get("/v1/calls").json()["total"] == 2
    # Starting again with the same preload adds nothing.
    with TestClient(create_app(settings)) as c:
        _settle(c)
        assert c.get("/v1/captures").json()["total"] == 2
    # The originals are copied, never moved or deleted.
    assert (CAPTURES / "sample-sip.pcap").is_file()


def test_healthz_is_503_when_the_store_is_gone(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path))
    c = TestClient(app)  # no lifespan: the store is closed by hand below
    assert c.get("/healthz").status_code == 200
    services: Services = app.state.services
    services.jobs.shutdown()
    services.store.close()
    r = c.get("/healthz")
    assert r.status_code == 503 and r.json()["detail"] == "the store cannot be read"
    services.ledger.close()


def test_settings_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARSAD_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("MARSAD_API_TOKEN", "from-env")
    monkeypatch.setenv("MARSAD_OPEN_READS", "false")
    monkeypatch.setenv("MARSAD_MAX_UPLOAD_BYTES", "5000")
    monkeypatch.setenv("MARSAD_RETENTION_DAYS", "7")
    s = Settings()
    assert s.data_dir == tmp_path / "env" and s.token() == "from-env"
    assert not s.open_reads and s.max_upload_bytes == 5000 and s.retention_days == 7
    assert "from-env" not in repr(s) and "from-env" not in str(s.model_dump())
    assert s.ensure_token() is None and not s.token_path.exists()
    with TestClient(create_app(s)) as c:
        assert c.get("/v1/calls").status_code == 401
        assert c.get("/v1/calls", headers={"Authorization": "Bearer from-env"}).json() == \
            {"items": [], "total": 0, "limit": 100, "offset": 0}


def test_metrics_follow_the_stored_analyses(loaded: TestClient) -> None:
    """/metrics is served by the app at /metrics itself (no redirect to /metrics/) and
    reflects the captures it analysed, as captures (not current traffic), beside the
    process's own series and the build info."""
    r = loaded.get("/metrics", follow_redirects=False)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'marsad_flow_packets_total{app="whatsapp",category="voice",source="capture"}' in text
    assert ('marsad_call_ended_total{app="whatsapp",source="capture",verdict="blocked"}'
            in text)
    assert 'source="live"' not in text and "marsad_flow_rate_bytes_per_second" not in text
    assert "marsad_analysis_jobs" in text
    assert "process_resident_memory_bytes " in text and "process_start_time_seconds " in text
    assert "python_info{" in text
    from importlib.metadata import version
    assert f'marsad_build_info{{version="{version("marsad")}"}} 1.0' in text
    om = loaded.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n")
