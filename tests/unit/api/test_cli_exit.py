"""The ``marsad`` console command ends batch commands without interpreter teardown; what it
prints and its exit status are those of :func:`api.cli.main`."""

from __future__ import annotations

import gc
import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import pytest

from api.cli import EXIT_PARTIAL, main

ROOT = Path(__file__).resolve().parents[3]
CAPTURES = ROOT / "captures"
MARSAD = [sys.executable, "-c",
          "import sys; from api.cli import run; sys.argv[0] = 'marsad'; run()"]
"""The console command, run by this interpreter."""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MARSAD, *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, check=False)


@pytest.mark.parametrize("command", ["analyze", "flows"])
def test_console_command_prints_what_main_prints(command: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cap = str(CAPTURES / "sample-call.pcap")
    assert main([command, cap, "--jsonl"]) == 0
    want = capsys.readouterr().out
    got = _run(command, cap, "--jsonl")
    assert got.returncode == 0, got.stderr
    assert got.stdout == want and want.count("\n") > 3


def test_console_command_keeps_the_partial_exit_status() -> None:
    got = _run("flows", str(CAPTURES / "bad-truncated.pcap"), "--jsonl")
    assert got.returncode == EXIT_PARTIAL
    assert "truncated" in got.stderr and got.stdout.count("\n") >= 1


def test_console_command_on_a_closed_pipe_ends_quietly() -> None:
    proc = subprocess.Popen([*MARSAD, "analyze",
                             str(CAPTURES / "sample-call.pcap"), "--jsonl"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 1, 120)
    assert "Traceback" not in err


@pytest.mark.parametrize("fmt", ["--jsonl", "--json"])
def test_records_are_held_only_when_the_process_ends_next(fmt: str,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    from probe import FlowRecord, speed
    cap = str(CAPTURES / "sample-call.pcap")
    kept: list[object] = []
    monkeypatch.setattr(speed, "_kept", kept)
    assert main(["analyze", cap, fmt]) == 0  # in-process (tests, the service): nothing held
    assert kept == []
    monkeypatch.setattr(speed, "_exit_follows", True)
    assert main(["analyze", cap, fmt]) == 0
    out = capsys.readouterr().out
    # each step is let go once written (--jsonl) or made into the object's text (--json):
    # what is held for the exit is the reader and, for --json, that text; no record
    assert out.count('"uid":"C') > 3
    held = [x for x in kept if x is not None]
    assert (fmt == "--jsonl") == (len(held) == 1)
    assert not [x for x in _reachable(held) if isinstance(x, FlowRecord)]


def _reachable(roots: list[object], limit: int = 200_000) -> list[object]:
    """The objects reachable from ``roots`` (at most ``limit`` of them)."""
    seen = {id(r) for r in roots}
    todo, out = list(roots), []
    while todo and len(out) < limit:
        obj = todo.pop()
        out.append(obj)
        for ref in gc.get_referents(obj):
            if id(ref) not in seen and not isinstance(ref, type):
                seen.add(id(ref))
                todo.append(ref)
    return out


def test_a_policy_that_does_not_load_leaves_no_reader_process(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The reader process starts before the policy loads (reading overlaps the imports);
    when the policy fails, it is ended, not left blocked on its pipe."""
    bad = tmp_path / "policy.toml"
    bad.write_text("this is not [ a policy\n")
    before = set(mp.active_children())
    code = main(["analyze", str(CAPTURES / "sample-call.pcap"), "--json", "--workers", "2",
                 "--policy", str(bad)])
    assert code != 0 and "policy" in capsys.readouterr().err.lower()
    assert set(mp.active_children()) <= before
