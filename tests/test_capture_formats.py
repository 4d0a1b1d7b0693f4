"""Every capture format, link type and encapsulation the probe must read.

``captures/manifest.json`` (written by ``captures/make_captures.py``) states, for each
synthetic capture, what a correct reader finds: container format, compression, link
types, the exact flows (endpoints, originator, packets and bytes each way, VLAN,
tunnel, ICMP notices), the malformed packets, and for damaged or unreadable files
where reading stops and the CLI's exit code. These tests hold the probe and the
``marsad flows`` CLI to it, check the captures independently with tshark and dpkt,
and check that the generator still reproduces the committed bytes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt
import pytest

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT / "captures"
MANIFEST: dict[str, Any] = json.loads((CAPTURES / "manifest.json").read_text())
ENTRIES: dict[str, dict[str, Any]] = MANIFEST["captures"]
MARSAD = ROOT / ".venv" / "bin" / "marsad"
TSHARK = shutil.which("tshark")

READABLE = sorted(n for n, e in ENTRIES.items() if e["exit_code"] in (0, 3))
GOOD = sorted(n for n, e in ENTRIES.items() if e["exit_code"] == 0)
PARTIAL = sorted(n for n, e in ENTRIES.items() if e["exit_code"] == 3)
UNREADABLE = sorted(n for n, e in ENTRIES.items() if e["exit_code"] == 2)
TSHARK_CHECKED = sorted(n for n, e in ENTRIES.items() if e["tshark"]["check"])
CLASSIC = sorted(n for n in GOOD if ENTRIES[n]["format"] == "pcap" and not ENTRIES[n]["compressed"])

INT_FIELDS = ("ip_version", "orig_pkts", "orig_bytes", "orig_wire_bytes", "resp_pkts",
              "resp_bytes", "resp_wire_bytes", "first_frame", "last_frame")
TS_TOLERANCE = 1e-6

FlowKey = tuple[str, str, int, str, int]


def _key(flow: dict[str, Any]) -> FlowKey:
    return (flow["proto"], flow["orig_h"], flow["orig_p"], flow["resp_h"], flow["resp_p"])


def _actual(flow: Any) -> dict[str, Any]:
    """The manifest's view of a probe FlowRecord."""
    d: dict[str, Any] = {name: getattr(flow, name) for name in
                         ("proto", "orig_h", "orig_p", "resp_h", "resp_p", "first_ts",
                          "last_ts", "vlan", "tunnel", *INT_FIELDS)}
    d["icmp"] = [{"frame": n.frame, "family": n.family, "type": n.type, "code": n.code,
                  "reporter": n.reporter} for n in flow.icmp]
    return d


def _is_allowed_extra(flow: dict[str, Any], entry: dict[str, Any]) -> bool:
    extra = entry["extra_flows"]
    if flow["proto"] in extra["protos"]:
        return True
    key = _key(flow)
    mirrored = (key[0], key[3], key[4], key[1], key[2])
    return any(tuple(t) in (key, mirrored) for t in extra["tuples"])


def flow_mismatches(actual_flows: list[Any], entry: dict[str, Any]) -> list[str]:
    """Differences between the probe's flows and the manifest's, as readable lines."""
    expected: dict[FlowKey, list[dict[str, Any]]] = defaultdict(list)
    for f in entry["flows"]:
        expected[_key(f)].append(f)
    actual: dict[FlowKey, list[dict[str, Any]]] = defaultdict(list)
    for rec in actual_flows:
        a = _actual(rec)
        if _key(a) in expected or not _is_allowed_extra(a, entry):
            actual[_key(a)].append(a)
    problems: list[str] = []
    for key in sorted(set(actual) - set(expected)):
        problems.append(f"unexpected flow {key} x{len(actual[key])}")
    for key, exp_list in expected.items():
        got = sorted(actual.get(key, []), key=lambda f: f["first_frame"])
        if len(got) != len(exp_list):
            problems.append(f"{key}: expected {len(exp_list)} flow(s), got {len(got)}")
            continue
        for exp, act in zip(sorted(exp_list, key=lambda f: f["first_frame"]), got, strict=True):
            for name in INT_FIELDS:
                if exp[name] != act[name]:
                    problems.append(f"{key} {name}: expected {exp[name]}, got {act[name]}")
            for name in ("vlan", "tunnel"):
                if exp[name] != act[name]:
                    problems.append(f"{key} {name}: expected {exp[name]!r}, got {act[name]!r}")
            for name in ("first_ts", "last_ts"):
                if exp[name] is not None and abs(exp[name] - act[name]) > TS_TOLERANCE:
                    problems.append(f"{key} {name}: expected {exp[name]:.9f}, "
                                    f"got {act[name]:.9f}")
            if exp["icmp"] != act["icmp"]:
                problems.append(f"{key} icmp: expected {exp['icmp']}, got {act['icmp']}")
    return problems


# --------------------------------------------------------------------------- the probe


def _all_weirds(run: Any) -> list[Any]:
    """The run's weirds plus those kept with a flow, each counted once."""
    seen: dict[tuple[int, str, int, str], Any] = {}
    for w in [*run.weirds, *(w for f in run.flows for w in f.weirds)]:
        seen.setdefault((w.frame, w.layer, w.offset, w.reason), w)
    return list(seen.values())


@pytest.mark.parametrize("name", READABLE)
def test_read_capture_matches_manifest(name: str) -> None:
    from probe import read_capture

    entry = ENTRIES[name]
    run = read_capture(CAPTURES / name)
    status = run.status
    assert status.format == entry["format"]
    assert status.compressed is entry["compressed"]
    assert status.packets == entry["packets"]
    assert status.complete is entry["complete"]
    assert status.stopped_at == entry["stopped_at"]
    if not entry["complete"]:
        assert status.message, "a partial read must say why it stopped"
    assert flow_mismatches(run.flows, entry) == []
    weirds = _all_weirds(run)
    packet_weirds = Counter((w.frame, w.layer) for w in weirds if w.frame > 0)
    assert packet_weirds == Counter((w["frame"], w["layer"]) for w in entry["weirds"])
    file_weirds = [w for w in weirds if w.frame == 0]
    if entry["stopped_at"] is None:
        assert file_weirds == []
    else:
        assert len(file_weirds) <= 1
        assert all(w.offset == entry["stopped_at"] for w in file_weirds)


def test_read_capture_accepts_str_and_path() -> None:
    from probe import read_capture

    path = CAPTURES / "pcap-le-usec.pcap"
    by_str = read_capture(str(path))
    by_path = read_capture(path)
    assert [_actual(f) for f in by_str.flows] == [_actual(f) for f in by_path.flows]
    assert flow_mismatches(by_str.flows, ENTRIES["pcap-le-usec.pcap"]) == []


def test_udp_idle_split_follows_the_configured_timeout() -> None:
    """The split in flow-udp-idle.pcap is config-dependent: a longer timeout merges it."""
    from probe import MeterConfig, read_capture

    entry = ENTRIES["flow-udp-idle.pcap"]
    assert MeterConfig().udp_idle_s == MANIFEST["config"]["udp_idle_timeout_s"]
    merged = read_capture(CAPTURES / "flow-udp-idle.pcap",
                          MeterConfig(udp_idle_s=entry["config"]["gap_s"] + 60))
    assert len(merged.flows) == 1
    (flow,) = merged.flows
    for name in ("orig_pkts", "resp_pkts", "orig_wire_bytes", "resp_wire_bytes"):
        assert getattr(flow, name) == sum(f[name] for f in entry["flows"])


@pytest.mark.parametrize("name", UNREADABLE)
def test_read_capture_refuses_unreadable_input(name: str) -> None:
    from probe import CaptureError, read_capture

    with pytest.raises(CaptureError):
        read_capture(CAPTURES / name)


def test_flow_comparison_catches_a_swapped_originator() -> None:
    """The comparison itself must notice a reader that picks the wrong originator."""
    entry = ENTRIES["pcap-le-usec.pcap"]

    class Rec:
        def __init__(self, d: dict[str, Any]) -> None:
            self.__dict__.update(d)
            self.icmp: list[Any] = []

    flows = [Rec(f) for f in entry["flows"]]
    assert flow_mismatches(flows, entry) == []
    first = dict(entry["flows"][0])
    first.update(orig_h=first["resp_h"], resp_h=first["orig_h"], orig_p=first["resp_p"],
                 resp_p=first["orig_p"])
    swapped = [Rec(first), *flows[1:]]
    assert any("unexpected flow" in p for p in flow_mismatches(swapped, entry))


# --------------------------------------------------------------------------- the CLI


def _marsad(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(MARSAD), "flows", *args], input=stdin, capture_output=True,
                          timeout=120, cwd=ROOT, check=False)


def _one_clear_line(stderr: bytes) -> str:
    text = stderr.decode("utf-8", "replace")
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {text!r}"
    return lines[0]


def _jsonl_flows(stdout: bytes) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
    for row in rows:
        assert {"proto", "orig_h", "orig_p", "resp_h", "resp_p"} <= set(row)
    return rows


def _flow_keys(rows: list[dict[str, Any]]) -> Counter[FlowKey]:
    return Counter(_key(r) for r in rows)


@pytest.mark.parametrize("name", UNREADABLE)
def test_cli_unreadable_input_exits_2(name: str) -> None:
    proc = _marsad(str(CAPTURES / name))
    assert proc.returncode == 2
    _one_clear_line(proc.stderr)


def test_cli_missing_file_exits_2() -> None:
    proc = _marsad(str(CAPTURES / "no-such-capture.pcap"))
    assert proc.returncode == 2
    assert "no-such-capture.pcap" in _one_clear_line(proc.stderr)


@pytest.mark.parametrize("name", PARTIAL)
def test_cli_partial_capture_exits_3_with_offset(name: str) -> None:
    entry = ENTRIES[name]
    proc = _marsad(str(CAPTURES / name), "--jsonl")
    assert proc.returncode == 3
    assert str(entry["stopped_at"]) in _one_clear_line(proc.stderr)
    assert _flow_keys(_jsonl_flows(proc.stdout)) == _flow_keys(entry["flows"])


@pytest.mark.parametrize("name", ["pcap-le-usec.pcap", "pcapng-multi.pcapng",
                                  "gz-pcapng-misnamed.pcap", "encap-vxlan.pcap",
                                  "sample-call.pcap"])
def test_cli_good_capture_exits_0(name: str) -> None:
    entry = ENTRIES[name]
    proc = _marsad(str(CAPTURES / name), "--jsonl")
    assert proc.returncode == 0, proc.stderr.decode()
    assert "Traceback" not in proc.stderr.decode()
    assert _flow_keys(_jsonl_flows(proc.stdout)) == _flow_keys(entry["flows"])


def test_cli_reads_gzip_from_stdin() -> None:
    entry = ENTRIES["gz-pcap.pcap.gz"]
    proc = _marsad("-", "--jsonl", stdin=(CAPTURES / "gz-pcap.pcap.gz").read_bytes())
    assert proc.returncode == 0, proc.stderr.decode()
    assert _flow_keys(_jsonl_flows(proc.stdout)) == _flow_keys(entry["flows"])


def test_cli_csv_and_json_outputs() -> None:
    entry = ENTRIES["pcap-be-nsec.pcap"]
    proc = _marsad(str(CAPTURES / "pcap-be-nsec.pcap"), "--csv")
    assert proc.returncode == 0, proc.stderr.decode()
    rows = list(csv.DictReader(io.StringIO(proc.stdout.decode())))
    assert len(rows) == len(entry["flows"])
    assert {r["orig_h"] for r in rows} == {f["orig_h"] for f in entry["flows"]}
    proc = _marsad(str(CAPTURES / "pcap-be-nsec.pcap"), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    json.loads(proc.stdout)


# --------------------------------------------------------------------------- the captures


def test_generator_reproduces_committed_files(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(CAPTURES / "make_captures.py"), str(tmp_path)],
                   check=True, capture_output=True, timeout=300)
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted([*ENTRIES, "manifest.json", "README.md"])
    for name in made:
        assert (tmp_path / name).read_bytes() == (CAPTURES / name).read_bytes(), name


def test_captures_stay_small() -> None:
    total = 0
    for name, entry in ENTRIES.items():
        size = (CAPTURES / name).stat().st_size
        assert size == entry["size"]
        if not name.startswith("sample-"):
            assert size <= 16 * 1024, name
        total += size
    assert total < 1024 * 1024


def test_readme_lists_every_capture() -> None:
    readme = (CAPTURES / "README.md").read_text()
    for name in ENTRIES:
        assert f"`{name}`" in readme
    assert "generated by the marsad project" in readme


@pytest.mark.parametrize("name", CLASSIC)
def test_dpkt_reads_classic_pcap(name: str) -> None:
    """An independent pcap reader agrees on link type, packet count and time range."""
    entry = ENTRIES[name]
    with (CAPTURES / name).open("rb") as fh:
        reader = dpkt.pcap.Reader(fh)
        assert reader.datalink() == entry["link_types"][0]
        stamps = [float(ts) for ts, _ in reader]
    assert len(stamps) == entry["packets"]
    firsts = [f["first_ts"] for f in entry["flows"]]
    lasts = [f["last_ts"] for f in entry["flows"]]
    assert min(stamps) == pytest.approx(min(firsts), abs=TS_TOLERANCE)
    assert max(stamps) >= max(lasts) - TS_TOLERANCE


TSHARK_FIELDS = ("frame.number", "frame.len", "frame.encap_type", "frame.time_epoch",
                 "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "tcp.srcport", "tcp.dstport",
                 "tcp.len", "udp.srcport", "udp.dstport", "udp.length", "icmp.type",
                 "icmpv6.type", "_ws.malformed")


@dataclass
class TsharkView:
    """What tshark makes of a capture, summed per conversation direction."""

    packets: int = 0
    malformed: list[str] = field(default_factory=list)
    totals: Counter[Any] = field(default_factory=Counter)
    """(conversation..., "frames" | "bytes" | "payload") -> sum, per direction."""
    span: dict[Any, list[float]] = field(default_factory=dict)
    """Direction-free conversation -> [first, last] frame time."""
    opener: dict[Any, tuple[Any, ...]] = field(default_factory=dict)
    """Direction-free conversation -> sender (address[, port]) of its first frame."""


def tshark_view(path: Path, key: str) -> TsharkView:
    """Decode ``path`` with tshark: the innermost IP and ports of each frame (last
    occurrence) name its conversation; ICMP errors are left out since here they belong
    to no conversation of their own. ``key == "ip"`` groups by address pair only
    (fragments carry no ports), and then payload bytes are not summed.
    """
    assert TSHARK is not None
    cmd = [TSHARK, "-r", str(path), "-T", "fields", "-E", "occurrence=l", "-E",
           "separator=/t"]
    for name in TSHARK_FIELDS:
        cmd += ["-e", name]
    proc = subprocess.run(cmd, capture_output=True, timeout=120, check=True,
                          env={**os.environ, "LC_ALL": "C"})
    view = TsharkView()
    for line in proc.stdout.decode().splitlines():
        (number, length, encap, when, ip_src, ip_dst, ip6_src, ip6_dst, tsport, tdport, tlen,
         usport, udport, ulen, icmp, icmp6, bad) = line.split("\t")
        if not encap:
            continue  # a non-packet pcapng block tshark lists as a frame (custom block)
        view.packets += 1
        if bad:
            view.malformed.append(number)
        if icmp or icmp6:
            continue
        src, dst = (ip_src, ip_dst) if ip_src else (ip6_src, ip6_dst)
        payload = 0
        both: tuple[Any, ...]
        if key == "ip" or not (tsport or usport):
            conv: tuple[Any, ...] = (src, dst)
            both = (min(src, dst), max(src, dst))
        else:
            if tsport:
                conv = ("tcp", src, int(tsport), dst, int(tdport))
                payload = int(tlen)
            else:
                conv = ("udp", src, int(usport), dst, int(udport))
                payload = int(ulen) - 8
            both = (conv[0], *sorted([(src, conv[2]), (dst, conv[4])]))
        view.totals[(*conv, "frames")] += 1
        view.totals[(*conv, "bytes")] += int(length)
        if key != "ip":
            view.totals[(*conv, "payload")] += payload
        view.opener.setdefault(both, (src,) if len(conv) == 2 else (src, conv[2]))
        if when:
            span = view.span.setdefault(both, [float(when), float(when)])
            span[0], span[1] = min(span[0], float(when)), max(span[1], float(when))
    return view


def expected_view(entry: dict[str, Any]) -> TsharkView:
    view = TsharkView(packets=entry["packets"])
    by_ip = entry["tshark"]["key"] == "ip"
    for f in entry["flows"]:
        orig, resp = (f["orig_h"], f["orig_p"]), (f["resp_h"], f["resp_p"])
        sides: list[tuple[str, tuple[Any, ...]]] = [("orig", (f["proto"], *orig, *resp)),
                                                    ("resp", (f["proto"], *resp, *orig))]
        for side, conv in sides:
            if by_ip:
                conv = (conv[1], conv[3])
            if f[side + "_pkts"]:
                view.totals[(*conv, "frames")] += f[side + "_pkts"]
                view.totals[(*conv, "bytes")] += f[side + "_wire_bytes"]
                if not by_ip:
                    view.totals[(*conv, "payload")] += f[side + "_bytes"]
        both = ((min(orig[0], resp[0]), max(orig[0], resp[0])) if by_ip
                else (f["proto"], *sorted([orig, resp])))
        first = view.opener.get(both)
        if first is None or first[0] > f["first_frame"]:
            view.opener[both] = (f["first_frame"], orig[:1] if by_ip else orig)
        if f["first_ts"] is not None:
            span = view.span.setdefault(both, [f["first_ts"], f["last_ts"]])
            span[0], span[1] = min(span[0], f["first_ts"]), max(span[1], f["last_ts"])
    view.opener = {k: v[1] for k, v in view.opener.items()}
    return view


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
@pytest.mark.parametrize("name", TSHARK_CHECKED)
def test_tshark_agrees_with_manifest(name: str) -> None:
    entry = ENTRIES[name]
    got = tshark_view(CAPTURES / name, entry["tshark"]["key"])
    want = expected_view(entry)
    assert got.malformed == [], f"tshark reports malformed frames {got.malformed}"
    assert got.packets == want.packets
    assert got.totals == want.totals
    assert got.opener == want.opener
    assert got.span.keys() == want.span.keys()
    for conv, (first, last) in want.span.items():
        assert got.span[conv] == pytest.approx([first, last], abs=TS_TOLERANCE), conv
