"""The TORQUE adapter's parsers against outputs captured from a real TORQUE 6 server
(tests/data/torque/, unchanged), and its state/cores mapping as tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from vaf.batch.base import (
    BUSY,
    DOWN,
    DRAINED,
    DRAINING,
    IDLE,
    OTHER,
    PENDING,
    RUNNING,
    UNKNOWN,
    BatchFailed,
    Job,
    Node,
    NodeRequest,
)
from vaf.batch.torque import (
    exec_hosts,
    job_cores,
    job_ids_on_node,
    node_state,
    parse_pbsnodes_xml,
    parse_qstat_xml,
    qmgr_create_node,
    qmgr_delete_node,
)

DATA = Path(__file__).parent / "data" / "torque"


def sample(name: str) -> str:
    return (DATA / name).read_text()


def test_pbsnodes_x_while_a_job_runs():
    assert parse_pbsnodes_xml(sample("pbsnodes-x.xml")) == [
        Node(name="vm", state=BUSY, cores=2, jobs=1)]


def test_pbsnodes_x_after_pbsnodes_o_is_drained_with_its_note():
    assert parse_pbsnodes_xml(sample("pbsnodes-x-offline.xml")) == [
        Node(name="vm", state=DRAINED, cores=2, jobs=0, reason="stale: no heartbeat")]


def test_qstat_x_running_and_waiting_jobs():
    assert parse_qstat_xml(sample("qstat-x.xml")) == [
        Job(id="2.vm", state=RUNNING, cores=2, submitted=1795674120.0, queue="batch",
            nodes=("vm",), reason="Job started on Thu Nov 26 at 06:22"),
        Job(id="3.vm", state=PENDING, cores=2, submitted=1795674120.0, queue="batch",
            reason="Not Running: Not enough of the right type of nodes are available")]


def test_properties_and_several_nodes():
    text = ("<Data><Node><name>w1</name><state>free</state><np>4</np>"
            "<properties>cloud,small</properties><ntype>cluster</ntype></Node>"
            "<Node><name>w2</name><state>down,offline,MOM-list-not-sent</state><np>1</np>"
            "</Node></Data>")
    assert parse_pbsnodes_xml(text) == [
        Node(name="w1", state=IDLE, cores=4, features=("cloud", "small")),
        Node(name="w2", state=DOWN, cores=1)]


@pytest.mark.parametrize("text", ["", "\n"])
def test_empty_outputs_are_empty_lists(text):
    assert parse_pbsnodes_xml(text) == [] and parse_qstat_xml(text) == []


def test_output_that_is_not_xml_is_a_batch_failure():
    with pytest.raises(BatchFailed, match="pbsnodes -x printed output that is not XML"):
        parse_pbsnodes_xml("pbsnodes: cannot connect to server")


@pytest.mark.parametrize(("states", "jobs", "expected"), [
    ("free", 0, IDLE),
    ("free", 1, BUSY),  # cores left over, still running something
    ("job-exclusive", 1, BUSY),
    ("job-sharing", 2, BUSY),
    ("busy", 0, BUSY),
    ("offline", 0, DRAINED),
    ("offline", 1, DRAINING),
    ("job-exclusive,offline", 1, DRAINING),
    ("down", 0, DOWN),
    ("down,offline", 0, DOWN),
    ("down,offline,MOM-list-not-sent", 0, DOWN),
    ("down,job-exclusive", 1, DOWN),
    ("state-unknown", 0, UNKNOWN),
    ("", 0, UNKNOWN),
])
def test_node_state_table(states, jobs, expected):
    assert node_state(states, jobs) == expected


@pytest.mark.parametrize(("resources", "cores"), [
    ({"nodes": "1:ppn=2"}, 2),
    ({"nodes": "2:ppn=4"}, 8),
    ({"nodes": "2:ppn=4+1:ppn=2"}, 10),
    ({"nodes": "3"}, 3),
    ({"nodes": "1:gpu:ppn=2"}, 2),
    ({"nodes": "wn13:ppn=2"}, 2),
    ({"nodes": "cloud"}, 1),
    ({"walltime": "01:00:00"}, 1),  # job 4.vm of the accounting sample: no nodes at all
    ({"procs": "6"}, 6),
    ({"ncpus": "3"}, 3),
    ({"procs": "0"}, 1),
])
def test_job_cores_table(resources, cores):
    assert job_cores(resources) == cores


@pytest.mark.parametrize(("value", "ids"), [
    ("0-1/2.vm", ("2.vm",)),
    ("0/2.vm, 1/2.vm", ("2.vm",)),
    ("0/2.vm,1-3/7.head", ("2.vm", "7.head")),
    ("", ()),
])
def test_job_ids_on_node(value, ids):
    assert job_ids_on_node(value) == ids


def test_exec_hosts():
    assert exec_hosts("vm/0-1+w2/0+vm/2") == ("vm", "w2")


def test_qmgr_directives():
    assert qmgr_create_node(NodeRequest("w1", 2, ("cloud", "small"))) == (
        'create node w1 np=2,properties="cloud,small"')
    assert qmgr_create_node(NodeRequest("w1", 1)) == "create node w1 np=1"
    assert qmgr_delete_node("w1") == "delete node w1"


def test_other_job_states_are_neither_demand_nor_load():
    text = ("<Data><Job><Job_Id>5.vm</Job_Id><job_state>H</job_state><qtime>1</qtime>"
            "<Resource_List><nodes>1:ppn=2</nodes></Resource_List></Job></Data>")
    assert parse_qstat_xml(text)[0].state == OTHER
