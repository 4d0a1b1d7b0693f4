"""`marsad test replay` and `marsad replay-server`: what a test sends is shown first,
the result and capture are written, the ledger gets the entry, failures exit 2."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import sys
from pathlib import Path

import dpkt
import pytest

from api.cli import main
from api.replay_test import ReplaySpec, plan, run_replay_test
from policy.ledger import Ledger
from policy.rules import load_policy
from probe.active.replay import ReplayLimits, ReplayServer
from probe.active.trace import load_trace
from tests.unit.active.tracebytes import write_trace

TOKEN = "cli-token"


@pytest.fixture
def traces(tmp_path: Path) -> Path:
    folder = tmp_path / "traces"
    folder.mkdir()
    write_trace(folder / "whatsapp.pcap", 1.2)
    return folder


@pytest.fixture
def server(traces: Path) -> ReplayServer:
    t = load_trace(traces / "whatsapp.pcap")
    with ReplayServer("127.0.0.1", 0, TOKEN.encode(), {t.name: t}) as srv:
        yield srv


def _token(tmp_path: Path, text: str = TOKEN) -> str:
    p = tmp_path / "token"
    p.write_text(text + "\n")
    return str(p)


def test_a_replay_test_prints_its_plan_then_its_result_and_records_it(
        tmp_path: Path, traces: Path, server: ReplayServer,
        capsys: pytest.CaptureFixture[str]) -> None:
    host, port = server.address
    out, ledger = tmp_path / "out", tmp_path / "ledger.db"
    code = main(["test", "replay", "whatsapp", "--server", f"{host}:{port}", "--token-file",
                 _token(tmp_path), "--traces", str(traces), "--out", str(out), "--ledger",
                 str(ledger), "--yes", "--json", "--no-capture"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    trace = load_trace(traces / "whatsapp.pcap")
    # The plan: four runs (the original before and after the controls), their bytes.
    assert "4 runs (original, inverted, random ports, original again)" in captured.err
    assert f"{trace.bytes_in() * 4} bytes;" in captured.err
    assert f"against {host}:{port}" in captured.err
    result = json.loads(captured.out)
    assert result["kind"] == "replay" and result["verdict"] == "ok"
    assert (out / f"{result['uid']}.json").is_file()
    assert json.loads((out / f"{result['uid']}.json").read_text())["uid"] == result["uid"]
    with Ledger(str(ledger), clock=lambda: 0.0) as led:
        (entry,) = led.entries()
    assert entry.subject_uid == result["uid"] and entry.verdict == "OK"  # enum names
    assert entry.evidence["test_keys"]["measurement"]["trace"] == trace.ident


def test_a_wrong_token_exits_2_with_the_servers_word(tmp_path: Path, traces: Path,
                                                    server: ReplayServer,
                                                    capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    host, port = server.address
    code = main(["test", "replay", "whatsapp", "--server", f"{host}:{port}", "--token-file",
                 _token(tmp_path, "wrong"), "--traces", str(traces), "--out",
                 str(tmp_path / "o"), "--yes", "--no-capture"])
    assert code == 2
    assert "authentication failed" in capsys.readouterr().err


def test_without_yes_and_no_terminal_nothing_is_sent(tmp_path: Path, traces: Path,
                                                     server: ReplayServer,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    host, port = server.address
    code = main(["test", "replay", "whatsapp", "--server", f"{host}:{port}", "--token-file",
                 _token(tmp_path), "--traces", str(traces), "--out", str(tmp_path / "o"),
                 "--no-capture"])
    assert code == 2 and "add --yes" in capsys.readouterr().err
    assert server.counts["sessions"] == 0


def test_limits_beyond_the_trace_refuse_before_anything_is_sent(
        tmp_path: Path, traces: Path, server: ReplayServer,
        capsys: pytest.CaptureFixture[str]) -> None:
    host, port = server.address
    code = main(["test", "replay", "whatsapp", "--server", f"{host}:{port}", "--token-file",
                 _token(tmp_path), "--traces", str(traces), "--max-bytes", "1000", "--yes",
                 "--no-capture"])
    assert code == 2 and "the limits refuse this test" in capsys.readouterr().err
    assert server.counts["sessions"] == 0


def test_an_unknown_app_or_a_missing_token_file_exits_2(
        tmp_path: Path, traces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", "replay", "nosuchapp", "--server", "127.0.0.1:9", "--token-file",
                 _token(tmp_path), "--traces", str(traces), "--yes"]) == 2
    assert "nosuchapp.pcap" in capsys.readouterr().err
    assert main(["replay-server", "--listen", "127.0.0.1:0", "--token-file",
                 str(tmp_path / "none"), "--traces", str(traces)]) == 2
    assert "cannot read the token file" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("tcpdump") is None,
                    reason="needs root and tcpdump to capture")
def test_the_test_keeps_its_own_capture_of_every_run(tmp_path: Path, traces: Path,
                                                     server: ReplayServer) -> None:
    host, port = server.address
    spec = ReplaySpec(app="whatsapp", server=host, port=port, token=TOKEN, traces=traces)
    result = run_replay_test(spec, tmp_path / "out", policy=load_policy())
    assert result.capture == str(tmp_path / "out" / f"{result.uid}.pcap"), \
        result.test_keys["capture"]
    data = Path(result.capture).read_bytes()
    import hashlib
    assert hashlib.sha256(data).hexdigest() == result.capture_sha256
    trace = load_trace(traces / "whatsapp.pcap")
    ports = {(r.client[1], r.server[1]) for r in load_runs(result.test_keys)}
    seen: set[tuple[int, int]] = set()
    udp_payloads = 0
    for _, buf in dpkt.pcap.Reader(io.BytesIO(data)):
        ip = _ip(buf)
        if ip is not None and isinstance(ip.data, dpkt.udp.UDP):
            seen.add((ip.data.sport, ip.data.dport))
            udp_payloads += 1
    # The four runs' datagrams, both ways, are in the capture.
    assert len(load_runs(result.test_keys)) == 4
    assert all((c, s) in seen and (s, c) in seen for c, s in ports)
    assert udp_payloads >= 4 * len(trace.packets)
    assert not list((tmp_path / "out").glob(".replay-*"))


def load_runs(keys: dict[str, object]) -> list[object]:
    from probe.active.records import ReplayKind, ReplayRun

    class _R:
        def __init__(self, d: dict[str, object]) -> None:
            self.kind = ReplayKind(d["kind"])
            self.client = d["client"]
            self.server = d["server"]
    runs = keys["measurement"]["runs"]  # type: ignore[index]
    assert isinstance(runs, list)
    _ = ReplayRun
    return [_R(r) for r in runs]


def _ip(buf: bytes) -> dpkt.ip.IP | None:
    # tcpdump on "any" writes Linux cooked headers (SLL or SLL2).
    for cls in (dpkt.sll2.SLL2, dpkt.sll.SLL):
        try:
            pkt = cls(buf)
        except (dpkt.dpkt.Error, AttributeError):
            continue
        if isinstance(pkt.data, dpkt.ip.IP):
            return pkt.data
    return None


def test_an_unknown_app_or_transport_names_the_traces_there(
        tmp_path: Path, traces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["nosuchapp"], ["whatsapp", "--tcp"]):
        assert main(["test", "replay", *args, "--server", "127.0.0.1:9", "--token-file",
                     _token(tmp_path), "--traces", str(traces), "--yes"]) == 2
        err = capsys.readouterr().err
        assert f"the traces in {traces}: whatsapp" in err, err
    assert "no TCP trace for 'whatsapp'" in err


def test_limits_that_would_refuse_everything_are_refused_by_the_parser(
        tmp_path: Path, traces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = _token(tmp_path)
    # No traces: were a limit let through, the server would stop there, not serve.
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad in (["--max-concurrent", "0"], ["--max-sessions", "0"], ["--max-bytes", "0.5"]):
        with pytest.raises(SystemExit) as exc:
            main(["replay-server", "--listen", "127.0.0.1:0", "--token-file", token,
                  "--traces", str(empty), *bad])
        assert exc.value.code == 2
        assert f"argument {bad[0]}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["test", "replay", "whatsapp", "--server", "127.0.0.1:0", "--token-file", token,
              "--traces", str(traces), "--yes", "--no-capture", "--out", str(tmp_path)])
    assert "a port of 1 to 65535" in capsys.readouterr().err


def test_a_port_in_use_names_the_address_the_server_could_not_listen_on(
        tmp_path: Path, traces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["replay-server", "--listen", f"127.0.0.1:{port}", "--token-file",
                     _token(tmp_path), "--traces", str(traces)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in \
        capsys.readouterr().err


def test_the_plan_counts_four_runs_against_the_limits(traces: Path) -> None:
    trace = load_trace(traces / "whatsapp.pcap")
    per_run = trace.bytes_in()
    spec = ReplaySpec(app="whatsapp", server="192.0.2.7", port=7000, token=TOKEN,
                      traces=traces, limits=ReplayLimits(max_bytes=4 * per_run))
    shown = plan(spec, trace)
    assert shown["runs"] == 4 and shown["total_bytes"] == 4 * per_run
    assert shown["refused"] is None
    # Room for three runs is not room for the test.
    tight = ReplaySpec(app="whatsapp", server="192.0.2.7", port=7000, token=TOKEN,
                       traces=traces, limits=ReplayLimits(max_bytes=4 * per_run - 1))
    assert plan(tight, trace)["refused"] == (f"4 runs send {4 * per_run} bytes, the limit "
                                             f"is {4 * per_run - 1}")


def test_the_text_output_gives_both_runs_of_the_original(
        tmp_path: Path, traces: Path, server: ReplayServer,
        capsys: pytest.CaptureFixture[str]) -> None:
    host, port = server.address
    code = main(["test", "replay", "whatsapp", "--server", f"{host}:{port}", "--token-file",
                 _token(tmp_path), "--traces", str(traces), "--out", str(tmp_path / "out"),
                 "--yes", "--no-capture"])
    out = capsys.readouterr().out
    assert code == 0
    down = next(line for line in out.splitlines() if line.startswith("  down: "))
    assert "'original': " in down and "'original-after': " in down
    assert "the original after the controls: area {'inverted': " in down
