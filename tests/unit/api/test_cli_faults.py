"""Small CLI faults: --version, usage of the subcommand on a mistyped option, one line (not
a traceback) for an unopenable ledger or a closed stdout, non-positive timeouts refused,
``report`` on several captures with --json and --only, the serve data directory of
``make run``, and the systemd unit of ``serve``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib.metadata import version

import pytest

from api.cli import EXIT_OK, EXIT_UNREADABLE, main
from api.config import Settings
from tests.conftest import ROOT

CAPTURES = ROOT / "captures"
MARSAD = [sys.executable, "-c",
          "import sys; from api.cli import run; sys.argv[0] = 'marsad'; run()"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MARSAD, *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, check=False)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"marsad {version('marsad')}"


@pytest.mark.parametrize("command", ["flows", "analyze", "report"])
def test_a_mistyped_option_shows_the_subcommands_usage(command: str,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, str(CAPTURES / "sample-call.pcap"), "--jsonn"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: marsad {command} ")
    assert f"marsad {command}: error: unrecognized arguments: --jsonn" in err


@pytest.mark.parametrize("option", ["--udp-idle", "--tcp-idle", "--active-timeout"])
@pytest.mark.parametrize("value", ["-5", "0", "nan"])
def test_non_positive_timeouts_are_refused(option: str, value: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["flows", str(CAPTURES / "sample-call.pcap"), f"{option}={value}"])
    assert exc.value.code == 2
    assert f"argument {option}: must be a positive number" in capsys.readouterr().err


def test_probe_intervals_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["probe", "-r", "-", "--status-interval", "-1"])
    assert "must be a positive number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["probe", "-r", "-", "--metrics-port", "70000"])
    assert "a port is 1 to 65535" in capsys.readouterr().err


def test_an_unopenable_ledger_is_one_line() -> None:
    got = _run("analyze", str(CAPTURES / "sample-call.pcap"), "--ledger", "/proc/nope/x.db")
    assert got.returncode == EXIT_UNREADABLE
    assert "Traceback" not in got.stderr
    assert got.stderr.strip() == ("marsad: /proc/nope/x.db: cannot create the ledger: no "
                                  "directory /proc/nope")
    got = _run("analyze", str(CAPTURES / "sample-call.pcap"), "--ledger", str(CAPTURES))
    assert got.returncode == EXIT_UNREADABLE and "Traceback" not in got.stderr
    assert got.stderr.strip() == (f"marsad: {CAPTURES}: cannot open the ledger: unable "
                                  "to open database file")


def test_an_unwritable_calls_csv_is_one_line() -> None:
    got = _run("analyze", str(CAPTURES / "sample-call.pcap"), "--csv", "--calls-csv",
               "/proc/nope/calls.csv")
    assert got.returncode == EXIT_UNREADABLE
    assert "Traceback" not in got.stderr
    assert got.stderr.strip().splitlines()[-1] == ("marsad: /proc/nope/calls.csv: No such "
                                                   "file or directory")


@pytest.mark.parametrize("args", [["flows", "--json"], ["flows", "--jsonl"],
                                  ["flows", "--csv"], ["analyze", "--json"],
                                  ["report"]])
def test_a_closed_stdout_ends_quietly(args: list[str]) -> None:
    """``marsad flows --json | head``: the reader has gone before the output is written."""
    proc = subprocess.Popen([*MARSAD, args[0], str(CAPTURES / "sample-call.pcap"), *args[1:]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == EXIT_OK
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_report_several_captures_as_json_only_interfered(capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    caps = [str(CAPTURES / n) for n in ("sample-blocked.pcap", "sample-call.pcap")]
    assert main(["report", *caps, "--json", "--only", "interfered", "--workers", "1"]) == 0
    got = json.loads(capsys.readouterr().out)
    blocked, ok = got["captures"]
    assert [blocked["capture"], ok["capture"]] == caps
    assert [c["verdict"] for c in blocked["calls"]] == ["blocked"]
    assert blocked["verdicts"] == {"blocked": 1} and ok["verdicts"] == {"ok": 1}
    assert ok["calls"] == [] and ok["calls_total"] == 1
    assert main(["report", *caps, "--json", "--workers", "1"]) == 0
    every = json.loads(capsys.readouterr().out)["captures"]
    assert [len(c["calls"]) for c in every] == [1, 1]


def test_report_text_of_several_captures_only_interfered(capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    caps = [str(CAPTURES / n) for n in ("sample-blocked.pcap", "sample-call.pcap")]
    assert main(["report", *caps, "--only", "interfered", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("\ncapture ") + out.startswith("capture ") == 2
    assert out.count("\nCall ") == 1 and "verdict     blocked" in out
    assert "only interfered: 0 call(s)" in out


def test_report_goes_on_past_an_unreadable_capture(capsys: pytest.CaptureFixture[str]
                                                   ) -> None:
    caps = [str(CAPTURES / "bad-text.pcap"), str(CAPTURES / "sample-blocked.pcap")]
    assert main(["report", *caps, "--json", "--workers", "1"]) == EXIT_UNREADABLE
    out = capsys.readouterr()
    assert [c["capture"] for c in json.loads(out.out)["captures"]] == caps[1:]
    assert "bad-text.pcap" in out.err


def test_make_run_uses_the_serve_default_data_dir() -> None:
    makefile = (ROOT / "Makefile").read_text()
    m = re.search(r"marsad serve .*--data-dir (\S+)", makefile)
    assert m is not None
    assert m.group(1) == str(Settings.model_fields["data_dir"].default)
    assert f"default ./{m.group(1)}" in " ".join(_run("serve", "--help").stdout.split())


def test_serve_has_a_hardened_systemd_unit() -> None:
    unit = (ROOT / "deploy" / "systemd" / "marsad-serve.service").read_text()
    probe = (ROOT / "deploy" / "systemd" / "marsad-probe.service").read_text()
    exec_line = re.search(r"^ExecStart=(.*)$", unit.replace("\\\n", " "), re.M)
    assert exec_line is not None and " serve " in exec_line.group(1)
    assert "--data-dir /var/lib/marsad" in exec_line.group(1)  # the probe's data directory
    assert "--data-dir /var/lib/marsad" in probe
    settings = dict(line.split("=", 1) for line in unit.splitlines()
                    if "=" in line and not line.startswith(("#", " ")))
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups",
                "RestrictNamespaces", "LockPersonality"):
        assert settings[key] == "yes", key
    assert settings["ProtectSystem"] == "strict" and settings["User"] == "marsad"
    assert settings["CapabilityBoundingSet"] == "" and "AF_PACKET" not in unit
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed: the unit's syntax was not checked")
    got = subprocess.run(["systemd-analyze", "verify", str(ROOT / "deploy" / "systemd" /
                                                         "marsad-serve.service")],
                         capture_output=True, text=True, timeout=60, check=False)
    problems = [ln for ln in (got.stdout + got.stderr).splitlines()
                if ln.strip() and "is not executable" not in ln]
    assert problems == []
