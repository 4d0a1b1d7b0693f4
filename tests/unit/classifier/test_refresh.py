"""refresh-data: rebuild owners/hostnames from local lists of each format; merging; determinism."""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
from pathlib import Path

import pytest

from classifier import refresh
from classifier.hostnames import HOSTNAMES_PATH, HostRules, Service
from classifier.owners import OWNERS_PATH, OwnerTable

FIXTURES = Path(__file__).resolve().parents[2] / "vectors" / "owners"
CIDR = FIXTURES / "telegram_cidr.txt"
O365 = FIXTURES / "o365_endpoints.json"
CSV = FIXTURES / "owners.csv"
DAY = dt.date(2026, 11, 23)


@pytest.fixture
def owners_copy(tmp_path: Path) -> Path:
    path = tmp_path / "ip_owners.json"
    shutil.copyfile(OWNERS_PATH, path)
    return path


def blocks_of(path: Path) -> list[dict[str, object]]:
    doc = json.loads(path.read_text())
    blocks: list[dict[str, object]] = doc["blocks"]
    return blocks


def test_parse_cidr_list_reports_bad_lines() -> None:
    good, bad = refresh.parse_cidr_list(CIDR.read_text())
    assert good == ["91.108.56.0/22", "91.108.4.0/22", "149.154.160.0/20", "2001:b28:f23d::/48"]
    assert [(b.line, b.text) for b in bad] == [(6, "91.108.8.1/22"), (7, "10.0.0.0/8"),
                                               (8, "not-a-prefix")]
    assert "host bits" in bad[0].reason and "not globally routable" in bad[1].reason


def test_refresh_cidr_replaces_only_that_owner(owners_copy: Path) -> None:
    before = blocks_of(owners_copy)
    report = refresh.refresh_owners(CIDR, "cidr", owners_copy, owner="telegram",
                                    apps=["telegram"], today=DAY)
    after = blocks_of(owners_copy)
    assert report.owners == ("telegram",) and report.added == 4 and len(report.bad) == 3
    old_tg = [b["prefixes"] for b in before if b["owner"] == "telegram"]
    assert report.removed == sum(len(p) for p in old_tg if isinstance(p, list)) == 14
    assert [b for b in after if b["owner"] != "telegram"] == \
        [b for b in before if b["owner"] != "telegram"]
    (tg,) = [b for b in after if b["owner"] == "telegram"]
    assert tg == {"owner": "telegram", "apps": ["telegram"], "service": "any",
                  "source": "telegram_cidr.txt (cidr list)", "retrieved": "2026-11-23",
                  "prefixes": ["91.108.4.0/22", "91.108.56.0/22", "149.154.160.0/20",
                               "2001:b28:f23d::/48"]}
    table = OwnerTable.from_file(owners_copy)
    hit = table.lookup("91.108.57.1")
    assert hit is not None and hit.source == "telegram_cidr.txt (cidr list)"
    assert table.lookup("95.161.64.1") is None  # gone with the old Telegram block
    assert json.loads(owners_copy.read_text())["updated"] == "2026-11-23"


def test_refresh_is_deterministic(tmp_path: Path, owners_copy: Path) -> None:
    outs = []
    for n in range(2):
        out = tmp_path / f"out{n}.json"
        refresh.refresh_owners(CIDR, "cidr", out, owner="telegram", apps=["telegram"],
                               base_path=owners_copy, today=DAY)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0].endswith(b"}\n")
    # refreshing the result again with the same list changes nothing
    again = tmp_path / "again.json"
    refresh.refresh_owners(CIDR, "cidr", again, owner="telegram", apps=["telegram"],
                           base_path=tmp_path / "out0.json", today=DAY)
    assert again.read_bytes() == outs[0]


def test_packaged_file_is_canonical(tmp_path: Path) -> None:
    doc = json.loads(OWNERS_PATH.read_text())
    blocks = [refresh.Block(b["owner"], tuple(b["apps"]), Service(b["service"]), b["source"],
                            b["retrieved"], tuple(b["prefixes"])) for b in doc["blocks"]]
    merged = refresh.merge_blocks([], blocks, [])
    rebuilt = {**doc, "blocks": [b.to_json() for b in merged]}
    assert refresh.dump_json(rebuilt) == OWNERS_PATH.read_text()


def test_refresh_o365(owners_copy: Path) -> None:
    report = refresh.refresh_owners(O365, "o365", owners_copy, today=DAY)
    assert report.owners == ("microsoft",)
    assert [(b.line, b.text) for b in report.bad] == [(2, "52.244.160.207/31")]
    ms = [b for b in blocks_of(owners_copy) if b["owner"] == "microsoft"]
    assert [(b["service"], b["prefixes"]) for b in ms] == [
        ("any", ["52.112.0.0/14", "52.122.0.0/15", "52.238.119.141/32", "2603:1027::/48"]),
        ("relay", ["52.112.0.0/14", "52.122.0.0/15", "2603:1063::/38"]),
    ]
    assert all(b["apps"] == ["teams"] for b in ms)
    table = OwnerTable.from_file(owners_copy)
    hit = table.lookup("52.113.0.9")
    assert hit is not None and hit.service is Service.RELAY  # Optimize wins over Allow
    assert table.lookup("40.96.0.1") is None  # Exchange area not read
    assert table.lookup("52.238.119.141") is not None


def test_refresh_csv(tmp_path: Path) -> None:
    out = tmp_path / "owners.json"
    report = refresh.refresh_owners(CSV, "csv", out, today=DAY)  # no base file yet
    assert report.owners == ("cloudflare", "discord")
    assert [b.line for b in report.bad] == [6, 7, 8]
    assert "globally" in report.bad[0].reason or "CIDR" in report.bad[0].reason
    assert "unknown app" in report.bad[1].reason and "columns" in report.bad[2].reason
    got = [(b["owner"], b["apps"], b["prefixes"]) for b in blocks_of(out)]
    assert got == [("cloudflare", [], ["162.159.128.0/19", "2606:4700::/32"]),
                   ("discord", ["discord"], ["66.22.196.0/22", "66.22.200.0/21"])]
    found = OwnerTable.from_file(out).lookup("66.22.201.1")
    assert found is not None and found.app == "discord"


def test_refresh_rejects_bad_options(tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    with pytest.raises(ValueError, match="owner"):
        refresh.refresh_owners(CIDR, "cidr", out)
    with pytest.raises(ValueError, match="unknown app"):
        refresh.refresh_owners(CIDR, "cidr", out, owner="x", apps=["skype"])
    with pytest.raises(ValueError, match="format"):
        refresh.refresh_owners(CIDR, "xml", out)
    junk = tmp_path / "junk.txt"
    junk.write_text("nothing here\n300.0.0.0/8\n")
    with pytest.raises(ValueError, match="no usable prefix"):
        refresh.refresh_owners(junk, "cidr", out, owner="x")
    assert not out.exists()


def test_refresh_hostnames(tmp_path: Path) -> None:
    base = tmp_path / "hostnames.json"
    shutil.copyfile(HOSTNAMES_PATH, base)
    before = json.loads(base.read_text())
    report = refresh.refresh_hostnames(O365, base, today=DAY)
    after = json.loads(base.read_text())
    assert [b.text for b in report.bad] == ["<tenant>.example.com"]
    fresh = {(r["host"], r["match"]): r["service"] for r in after["rules"]
             if r["source"] == "ms365-endpoints"}
    assert fresh == {("lync.com", "suffix"): "call-setup",  # kept from the old rule
                     ("teams.microsoft.com", "suffix"): "messaging",
                     ("teams.microsoft.com", "exact"): "web",
                     ("mstea.ms", "suffix"): "web",
                     ("secure.skypeassets.com", "suffix"): "media",
                     ("mlccdnprod.azureedge.net", "exact"): "web"}  # new host
    others_before = [r for r in before["rules"] if r["source"] != "ms365-endpoints"]
    others_after = [r for r in after["rules"] if r["source"] != "ms365-endpoints"]
    assert sorted(map(json.dumps, others_before)) == sorted(map(json.dumps, others_after))
    src = after["sources"]["ms365-endpoints"]
    assert (src["file"], src["retrieved"]) == ("o365_endpoints.json", "2026-11-23")
    rules = HostRules.from_file(base)
    hit = rules.match("mlccdnprod.azureedge.net")
    assert hit is not None and hit.app == "teams"
    first = base.read_bytes()
    refresh.refresh_hostnames(O365, base, today=DAY)
    assert base.read_bytes() == first


def test_main_cli(tmp_path: Path, owners_copy: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = refresh.main(["owners", "--format", "cidr", "--owner", "telegram", "--app", "telegram",
                         str(CIDR), "--out", str(owners_copy), "--date", "2026-11-23"],
                        stdout=out, stderr=err)
    assert code == 0
    lines = err.getvalue().splitlines()
    assert lines[0] == ("telegram_cidr.txt:6: not a CIDR prefix: 91.108.8.1/22 has host bits set: "
                        "91.108.8.1/22")
    assert lines[2].startswith("telegram_cidr.txt:8: not a CIDR prefix: ")
    assert [line.split(":")[1] for line in err.getvalue().splitlines()] == ["6", "7", "8"]
    assert "telegram" in out.getvalue() and "3 skipped" in out.getvalue()
    code = refresh.main(["hostnames", "--format", "o365", str(O365),
                         "--out", str(tmp_path / "h.json"), "--date", "2026-11-23"],
                        stdout=io.StringIO(), stderr=io.StringIO())
    assert code == 0 and HostRules.from_file(tmp_path / "h.json").match("x.lync.com")


def test_main_cli_errors(tmp_path: Path) -> None:
    err = io.StringIO()
    assert refresh.main(["owners", "--format", "cidr", str(CIDR), "--out",
                         str(tmp_path / "o.json")], stdout=io.StringIO(), stderr=err) == 1
    assert "needs an owner" in err.getvalue()
    assert refresh.main(["owners", "--format", "yaml", str(CIDR)],
                        stdout=io.StringIO(), stderr=io.StringIO()) == 2
    assert refresh.main(["owners", "--format", "cidr", "--owner", "x", str(tmp_path / "missing"),
                         "--out", str(tmp_path / "o.json")],
                        stdout=io.StringIO(), stderr=io.StringIO()) == 1
