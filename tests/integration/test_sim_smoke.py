"""A small load run end to end: `cvlan-sim run` on a real PostgreSQL and controller, then `report`.

About 1,000 simulated nodes register with tokens, hold mutual-TLS keep-alive connections, long-poll
as cvlan-ctrl does (plain polling through HAProxy, whose run steps the poll rate), report and renew;
in the steady state they churn (restarts, endpoint changes, joins, deletions and policy changes) and
two simulated vrouters poll their desired state. Asserts correctness only (every node registered,
every poll answered, every change reached every member, no errors), never timing: performance is
measured by the benchmark runs, not by tests."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvlan.sim import report

pytestmark = pytest.mark.pg

SIM = [sys.executable, "-m", "cvlan.sim"]


@pytest.fixture
def work() -> Iterator[Path]:
    """A private scratch dir outside pytest's shared, rotated basetemp (runs can outlive rotation)."""
    d = Path(tempfile.mkdtemp(prefix="cvlan-simtest-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run cvlan-sim; on timeout stop it with SIGTERM first, so it stops what it started."""
    proc = subprocess.Popen([*SIM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"cvlan-sim {args[0]} did not finish in {timeout:.0f} s: {err[-1000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.timeout(400)
@pytest.mark.parametrize("front", ["none", "haproxy", "cvlan"])
def test_smoke_run_registers_every_node_and_answers_every_poll(work: Path, front: str) -> None:
    if front == "haproxy" and not any(Path(d, "haproxy").exists() for d in ("/usr/sbin", "/usr/bin")):
        pytest.skip("haproxy is not installed (Debian package haproxy; `make deps` installs it)")
    nodes = 1000 if front == "none" else 200
    results = work / "results"
    # Through HAProxy the steady state is measured after settling at its rate, and the run also
    # steps the rate once down and once up, each after settling.
    knee = ["--steady-settle", "3", "--knee-rates", "20,60", "--knee-step", "5", "--knee-settle", "6"]
    knee = knee if front == "haproxy" else []
    # Long-polls of 5 s: the 15 s steady state sees waits end "unchanged"; HAProxy's run steps the
    # rate of plain polls.
    mode = ["--poll-mode", "plain"] if front == "haproxy" else ["--long-poll", "5"]
    # Churn (long-polling runs): a few dozen of each change in the steady state.
    churn = [
        "--churn-restart", "0.002",
        "--churn-endpoint", "0.002",
        "--churn-join", "0.002",
        "--churn-delete", "0.002",
        "--churn-policy-every", "2",
    ]  # fmt: skip
    churn = churn if front != "haproxy" else ["--churn-restart", "0", "--churn-endpoint", "0"]
    r = _run(
        [
            "run",
            "--tenants", "10",
            "--cvlans-per-tenant", "10",
            "--nodes-per-cvlan", str(nodes // 100),
            "--reg-rate", "100",
            "--poll-interval", "5",
            "--steady", "15",
            "--renew-after", "10",
            "--report-interval", "2",
            "--front", front,
            "--work-dir", str(work / "work"),
            "--results", str(results),
            "--quiet",
            *knee,
            *mode,
            *churn,
        ],
        timeout=380,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    data = report.load_results(results)
    reg = data["registration"]
    assert reg["registered"] == nodes
    phases = data["phase_summary"]
    assert set(phases) >= {"register", "steady"}
    errors = {k: v for ph in phases.values() for k, v in ph["errors"].items()}
    samples = {k: v for ph in phases.values() for k, v in ph.get("error_samples", {}).items()}
    assert not errors, f"errors: {errors}; first messages: {samples}"
    ok: dict[str, int] = {}
    for ph in phases.values():
        for k, v in ph["ok"].items():
            ok[k] = ok.get(k, 0) + v
    # Every node connected (restarted ones again), and every poll sent was answered (full map or
    # unchanged) but those a restart or a deletion dropped on purpose.
    dropped = ok.get("restart_sent", 0) + ok.get("delete", 0)
    assert ok["connect"] == nodes + ok.get("join_sent", 0) + ok.get("restart_sent", 0)
    assert ok["poll_sent"] - dropped <= ok["poll"] <= ok["poll_sent"]
    assert ok["poll"] == ok["poll_full"] + ok.get("poll_unchanged", 0)
    # Each node polled at least twice (first full map, then on its interval), and after the
    # registrations stopped the maps settled: the steady state saw unchanged answers.
    assert ok["poll"] >= 2 * nodes
    assert phases["steady"]["ok"].get("poll_unchanged", 0) > 0
    assert ok.get("renew", 0) >= 1 and ok.get("report", 0) >= 1
    # Every change reached every member: at the end each node holds its CVLAN's map, all its peers.
    assert ok["map_current"] + ok.get("map_restarting", 0) == nodes + ok.get("join", 0) - ok.get("delete", 0)
    prop = data["propagation"]
    assert prop["not_reached"] == 0, prop["not_reached_samples"]
    if front != "haproxy":
        # Churn made every kind of change, each reached every member of its CVLAN, and the
        # restarted nodes came back with their identity and their map.
        assert set(prop["count_by_kind"]) == {"endpoint", "join", "delete", "policy"}, prop
        assert ok["restart"] >= 1 and ok["restart"] <= ok["restart_sent"]
        assert ok.get("join", 0) == ok.get("join_sent", 0)
    # The simulated vrouters registered and got their desired state, with members in it.
    assert ok["vrouter_register"] == 2 and ok["vrouter_state"] >= 2
    assert all(v["members"] > 0 for v in data["vrouters"]), data["vrouters"]
    # Every component was sampled.
    comps = set(data["timeline"][-3]["procs"])
    assert {"controller", "postgresql", "simulator"} <= comps
    if front == "cvlan":
        # cvlan-front's parent and its workers, which hold the node connections
        assert "cvlan-front" in comps and data["timeline"][-3]["procs"]["cvlan-front"]["procs"] >= 2
        assert data["stack"]["front"].startswith("cvlan-front")
    if front == "haproxy":
        assert "haproxy" in comps
        assert [p["phase"] for p in data["phases"]][1:7] == [
            "settle-steady", "steady", "settle-20", "knee-20", "settle-60", "knee-60"
        ]  # fmt: skip
        # The fleet is at each rate from the first to the last second of its measured step: no
        # second of the next step's rate is counted in it.
        for rate in (20, 60):
            secs = [s["ok"].get("poll", 0) for s in data["timeline"] if s["phase"] == f"knee-{rate}"]
            assert 0.6 * rate <= phases[f"knee-{rate}"]["rates"]["poll"] <= 1.4 * rate, phases[f"knee-{rate}"]
            assert max(secs) <= 2 * rate, (rate, secs)
    # The liveness updates reached PostgreSQL and were read back for the report.
    table = data["postgresql_nodes_table"]
    assert table["updates"] >= nodes and "fillfactor=80" in table["options"]

    rep = _run(["report", str(results)], timeout=120)
    assert rep.returncode == 0, rep.stderr
    text = (results / "report.md").read_text()
    assert f"{nodes:,} nodes" in text and "Projected infrastructure cost" in text
    # a long-polling run is judged by its ordinary answers, a plainly polling one by its polls
    assert ("poll latency" if front == "haproxy" else "ordinary answer latency") in text
    assert "## The nodes table at the end of the run" in text and "heap-only" in text
    if front == "haproxy":
        assert "| knee-20 |" in text and "after 6 s at its rate unmeasured" in text
        assert "Measured after 3 s at the steady rate (phase settle-steady" in text
    for png in ("rates.png", "latency.png", "cpu.png", "memory.png"):
        assert (results / png).read_bytes().startswith(b"\x89PNG")


def test_run_refuses_bad_input_with_one_line(tmp_path: Path) -> None:
    r = _run(["run", "--tenants", "0", "--work-dir", str(tmp_path)], timeout=60)
    assert r.returncode == 2
    assert "at least 1" in r.stderr
    r = _run(["run", "--server", "https://127.0.0.1:1", "--work-dir", str(tmp_path)], timeout=60)
    assert r.returncode == 2 and "--admin-conf" in r.stderr
    r = _run(["report", str(tmp_path / "missing")], timeout=60)
    assert r.returncode == 2 and "no results.json" in r.stderr
    assert not any(tmp_path.iterdir())
