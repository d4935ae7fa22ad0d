"""The elastic pieces around the engine: Slurm's JSON (real samples), the store, the
settings file, and the command line (Slurm's entry points return at once)."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vaf.batch.base import (
    BUSY,
    DOWN,
    DRAINED,
    DRAINING,
    IDLE,
    PENDING,
    POWERED_DOWN,
    POWERING_UP,
    RUNNING,
)
from vaf.batch.slurm import expand_hostlist, node_state, parse_sinfo_json, parse_squeue_json
from vaf.cli import main
from vaf.elastic.cli import elastic
from vaf.elastic.config import load_settings
from vaf.elastic.states import BadTransition
from vaf.elastic.store import Store
from vaf.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

DATA = Path(__file__).parent / "data" / "elastic"


@pytest.mark.parametrize("hostlist, names", [
    ("w1", ["w1"]), ("w[1-3]", ["w1", "w2", "w3"]), ("w[1-2,5],x7", ["w1", "w2", "w5", "x7"]),
    ("n[08-10]", ["n08", "n09", "n10"]), ("", [])])
def test_expand_hostlist(hostlist, names):
    assert expand_hostlist(hostlist) == names


@pytest.mark.parametrize("state, flags, alloc, expected", [
    ("idle", [], 0, IDLE), ("mixed", [], 1, BUSY), ("allocated", [], 2, BUSY),
    ("idle", ["CLOUD", "POWERED_DOWN"], 0, POWERED_DOWN),
    ("allocated", ["CLOUD", "POWERING_UP"], 1, POWERING_UP),
    ("idle", ["POWERING_DOWN"], 0, POWERED_DOWN),
    ("down", ["CLOUD", "POWERED_DOWN", "NOT_RESPONDING"], 0, POWERED_DOWN),
    ("idle", ["NOT_RESPONDING"], 0, DOWN), ("idle", ["DRAIN"], 0, DRAINED),
    ("mixed", ["DRAIN"], 1, DRAINING)])
def test_node_states(state, flags, alloc, expected):
    assert node_state(state, flags, alloc) == expected


def test_sinfo_sample():
    nodes = {n.name: n for n in parse_sinfo_json((DATA / "sinfo.json").read_text())}
    assert {n: v.state for n, v in nodes.items()} == {
        "cloud1": POWERED_DOWN, "cloud2": POWERED_DOWN, "worker7": IDLE, "dyn3": POWERED_DOWN}
    assert nodes["worker7"].cores == 2 and nodes["worker7"].features == ("dyn",)
    assert nodes["cloud1"].reason == "ResumeTimeout reached"


def test_squeue_sample():
    jobs = {j.id: j for j in parse_squeue_json((DATA / "squeue.json").read_text())}
    assert (jobs["5"].state, jobs["5"].nodes, jobs["5"].cores) == (RUNNING, ("worker7",), 2)
    assert (jobs["6"].state, jobs["6"].reason, jobs["6"].queue) == (PENDING, "Resources", "dyn")
    assert jobs["6"].submitted == 1795673953


def test_store_checks_the_table_and_survives_reopening(tmp_path):
    path = str(tmp_path / "s" / "state.db")
    store = Store(path)
    store.transition("w1", "requested", "Slurm resumed it", now=1.0)
    store.transition("w1", "booting", vm_id=4, now=2.0)
    with pytest.raises(BadTransition, match="booting -> gone is not allowed"):
        store.transition("w1", "gone")
    store.close()
    again = Store(path)
    (record,) = again.records()
    assert (record.state, record.vm_id, record.since, record.requested_at) == ("booting", 4,
                                                                               2.0, 1.0)
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700


def conf(tmp_path, text=""):
    path = tmp_path / "elastic.conf"
    path.write_text(f"NODES=\"w[1-4]\"\nMAX_VMS=4\nSTATE_DIR={tmp_path / 'state'}\n{text}")
    return str(path)


def test_settings_file_and_bad_values(tmp_path):
    settings = load_settings(conf(tmp_path, "IDLE_THRESHOLD=30\nSQUEEZE=\"--attr B=1\"\n"))
    assert settings.nodes == ("w1", "w2", "w3", "w4")
    assert settings.idle_threshold == 30.0 and settings.squeeze == ("--attr", "B=1")
    for bad, reason in (("MODE=fast", "MODE must be one of"),
                        ("MAX_VMS=9", "NODES names 4 workers, fewer than MAX_VMS 9"),
                        ("BATCH=torque", "BATCH=torque needs MODE=queue"),
                        ("DEPLOY_TIMEOUT=soon", "must be a number")):
        with pytest.raises(ConfigError, match=reason):
            load_settings(conf(tmp_path, bad + "\n"))


def test_resume_writes_the_request_wakes_the_daemon_and_returns(tmp_path):
    path = conf(tmp_path)
    (tmp_path / "state").mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "state" / "wake.sock"))
    result = CliRunner().invoke(elastic, ["resume", "--conf", path, "w[1-2]"])
    assert result.exit_code == 0, result.output
    assert listener.recv(16) == b"wake"
    requests = Store(str(tmp_path / "state" / "state.db")).pending_requests()
    assert [(r.kind, r.name) for r in requests] == [("resume", "w1"), ("resume", "w2")]
    # without a daemon it still succeeds: the request waits in the store
    listener.close()
    assert CliRunner().invoke(elastic, ["suspend", "--conf", path, "w3"]).exit_code == 0


def test_status_table_and_json(tmp_path):
    path = conf(tmp_path)
    store = Store(str(tmp_path / "state" / "state.db"))
    store.transition("w1", "requested", "Slurm resumed it")
    store.put("last_decision", {"at": 0, "why": "w1: refused, quota reached", "actions": [],
                                "held": []})
    table = CliRunner().invoke(elastic, ["status", "--conf", path])
    assert table.exit_code == 0
    assert "w1" in table.output and "requested" in table.output
    assert "w1: refused, quota reached" in table.output
    shown = json.loads(CliRunner().invoke(elastic, ["status", "--conf", path, "--json"]).output)
    assert shown["nodes"][0]["state"] == "requested"


def test_bad_config_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(elastic, ["status", "--conf", conf(tmp_path, "MODE=x\n")])
    assert result.exit_code == 1 and "MODE must be one of" in result.output


@pytest.mark.parametrize("command", [[], ["run"], ["status"], ["resume"], ["suspend"],
                                     ["resume-fail"]])
def test_help_everywhere(command):
    result = CliRunner().invoke(main, ["elastic", *command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_slurms_programs_are_lean_and_say_one_line(tmp_path):
    """What ResumeProgram runs records the request without loading click or the daemon;
    a bad config is one line and a non-zero exit."""
    path = conf(tmp_path)
    (tmp_path / "state").mkdir()
    probe = ("import sys; from vaf.elastic import power; rc = power.main('resume', "
             f"['--conf', {path!r}, 'w[3-4]']); "
             "print(rc, 'click' in sys.modules, 'vaf.elastic.daemon' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert done.stdout.split() == ["0", "False", "False"], done.stderr
    requests = Store(str(tmp_path / "state" / "state.db")).pending_requests()
    assert [r.name for r in requests] == ["w3", "w4"]
    bad = tmp_path / "bad.conf"
    bad.write_text("MODE=sideways\n")
    done = subprocess.run([sys.executable, "-m", "vaf.elastic.power", "suspend", "--conf",
                           str(bad), "w1"], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "vaf-elastic-suspend: MODE must be one of power-save, queue, got 'sideways'"]
