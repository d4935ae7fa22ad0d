"""The after-deploy step, run the way oned runs it on a hypervisor.

A remotes tree like the host's ``/var/tmp/one`` (launcher, package, conf) is built in a temp
dir; the VNM ``post.d`` program and the RUNNING hook are executed with Debian's python3 (no
lxml, no installed vaf), with oned's argv and base64 VM XML, against real stand-in processes.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

import pytest

from vaf.config import DriverConfig
from vaf.drivers.cpu import Settings, describe, parse_class
from vaf.errors import ConfigError
from vaf.lab.kvm_standins import CGROUP_V1_CPU, Hypervisor, read_int, thread_nices, v1_cpu_available
from vaf.lab.oned import current_runtime, write_version_file

REPO = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
DEPLOY_ID = "3b4c8a2e-58f1-4d7e-9d0a-6c2f1e9b7a10"  # libvirt's UUID since OpenNebula 5.13

needs_v1 = pytest.mark.skipif(not v1_cpu_available(), reason="needs root and cgroup v1 cpu")


def vnm_xml(vmid: int, user_template: str = "") -> str:
    """The reduced VM document the VMM MAD gives VNM actions (opennebula-protocol.md 8.1)."""
    return f"""<VM><ID>{vmid}</ID><DEPLOY_ID>{DEPLOY_ID}</DEPLOY_ID><TEMPLATE>
<CONTEXT><NETWORK><![CDATA[YES]]></NETWORK></CONTEXT>
<NIC><BRIDGE><![CDATA[br0]]></BRIDGE><MAC><![CDATA[02:00:0a:00:00:07]]></MAC>
<NETWORK_ID><![CDATA[0]]></NETWORK_ID><NIC_ID><![CDATA[0]]></NIC_ID>
<TARGET><![CDATA[one-{vmid}-0]]></TARGET><VN_MAD><![CDATA[bridge]]></VN_MAD></NIC>
</TEMPLATE><USER_TEMPLATE>{user_template}</USER_TEMPLATE>
<HISTORY_RECORDS><HISTORY><HOSTNAME>node1</HOSTNAME><HID>0</HID><DS_ID>0</DS_ID>
<VM_MAD><![CDATA[kvm]]></VM_MAD></HISTORY></HISTORY_RECORDS></VM>"""


def full_xml(vmid: int, attribute: str) -> str:
    """The whole <VM> document a state hook gets as $TEMPLATE (abridged to what matters)."""
    return f"""<VM><ID>{vmid}</ID><UID>2</UID><GID>1</GID><UNAME>alice</UNAME>
<GNAME>users</GNAME><NAME>proof-{vmid}</NAME><STATE>3</STATE><LCM_STATE>3</LCM_STATE>
<DEPLOY_ID>{DEPLOY_ID}</DEPLOY_ID><TEMPLATE><CPU><![CDATA[1]]></CPU>
<VMID><![CDATA[{vmid}]]></VMID></TEMPLATE><USER_TEMPLATE>{attribute}</USER_TEMPLATE>
<HISTORY_RECORDS><HISTORY><OID>{vmid}</OID><SEQ>0</SEQ><HOSTNAME>node1</HOSTNAME>
<HID>0</HID><DS_ID>0</DS_ID><VM_MAD><![CDATA[kvm]]></VM_MAD></HISTORY></HISTORY_RECORDS></VM>"""


def b64(xml: str) -> str:
    return base64.b64encode(xml.encode()).decode()


@pytest.fixture
def hypervisor(tmp_path):
    hv = Hypervisor(str(tmp_path / "hv"))
    yield hv
    hv.close()


def vm_tag(vmid: int) -> str:
    """6.10's ssh stream logs a VNM line with the VM's id itself: none in the line then."""
    return f"{vmid} " if current_runtime() == "7.0" else ""


@pytest.fixture
def remotes(tmp_path, hypervisor, oned_runtime, oned_logs) -> Path:
    """A hypervisor's /var/tmp/one: launcher, package, our conf, the two entry points."""
    root = Path(hypervisor.remotes(str(tmp_path / "one")))
    write_version_file(root)  # each test runs under both runtimes (conftest.py)
    oned_logs.configure(root, front_end=False)
    return root


def run(remotes: Path, entry: str, args: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([DEBIAN_PYTHON, str(remotes / entry), *args], input=stdin,
                          capture_output=True, text=True, cwd="/", check=False,
                          env={"PATH": os.environ["PATH"]})


POST = "vnm/bridge/post.d/vaf-cpu-priority"
HOOK = "hooks/cpu-priority/vaf-cpu-priority"


@needs_v1
def test_post_d_gives_the_template_class(remotes, hypervisor):
    vm = hypervisor.start(7, threads=3, cgroup=CGROUP_V1_CPU)
    done = run(remotes, POST, [DEPLOY_ID, "node1"],
               b64(vnm_xml(7, "<CPU_PRIORITY><![CDATA[interactive]]></CPU_PRIORITY>")))
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(rf"INFO: {vm_tag(7)}bridge/post: CPU priority applied: class interactive, "
                        r"nice -5 on 4 threads, cpu\.shares 4096\n", done.stderr)
    assert set(thread_nices(vm.pid).values()) == {-5}
    assert read_int(os.path.join(vm.cgroup, "cpu.shares")) == 4096


def test_post_d_without_the_attribute_does_nothing(remotes, hypervisor):
    vm = hypervisor.start(7)
    done = run(remotes, POST, [DEPLOY_ID, "node1"], b64(vnm_xml(7)))
    assert (done.returncode, done.stderr) == (0, "")
    assert set(thread_nices(vm.pid).values()) == {0}
    assert not os.path.exists(hypervisor.state_dir)


def test_post_d_refuses_an_unknown_class_in_one_line(remotes, hypervisor):
    vm = hypervisor.start(7)
    done = run(remotes, POST, [DEPLOY_ID, "node1"],
               b64(vnm_xml(7, "<CPU_PRIORITY>turbo</CPU_PRIORITY>")))
    assert done.returncode == 1
    assert done.stderr == ("CPU_PRIORITY of VM 7 must be one of interactive, normal, batch, "
                           "got 'turbo'\n")
    assert set(thread_nices(vm.pid).values()) == {0}


def test_post_d_for_a_vm_that_is_not_running_is_skipped(remotes):
    done = run(remotes, POST, [DEPLOY_ID, "node1"],
               b64(vnm_xml(404, "<CPU_PRIORITY>batch</CPU_PRIORITY>")))
    assert done.returncode == 0
    assert done.stderr == (f"INFO: {vm_tag(404)}bridge/post: CPU priority skipped: not running "
                           "on this host\n")


def test_post_d_rejects_a_broken_payload(remotes):
    done = run(remotes, POST, [DEPLOY_ID, "node1"], "not base64!")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith("VM payload is not valid base64")


@pytest.mark.parametrize("on_stdin", [False, True], ids=["argument", "arguments-stdin"])
def test_running_hook_gives_the_template_class(remotes, hypervisor, on_stdin):
    vm = hypervisor.start(8, threads=2)
    payload = b64(full_xml(8, "<CPU_PRIORITY><![CDATA[batch]]></CPU_PRIORITY>"))
    done = (run(remotes, HOOK, [], payload) if on_stdin else run(remotes, HOOK, [payload]))
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("INFO: 8 cpu-priority/vaf-cpu-priority: CPU priority "
                                  "applied: class batch, nice 19 on 3 threads")
    assert set(thread_nices(vm.pid).values()) == {19}
    again = run(remotes, HOOK, [payload])  # RUNNING again (migration, resume): idempotent
    assert again.returncode == 0 and set(thread_nices(vm.pid).values()) == {19}


# --- settings -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, nice, weight", [
    ("nice=19 weight=10%", 19, "10%"), ("nice=-5", -5, ""), ("weight=512 nice=0", 0, "512"),
])
def test_parse_class(text, nice, weight):
    priority = parse_class("x", text, "here")
    assert (priority.nice, priority.weight) == (nice, weight)


@pytest.mark.parametrize("text", ["", "weight=10%", "nice=fast", "nice=1 nice=2", "prio=3",
                                  "nice=30", "nice=0 weight=lots", "nice=--1"])
def test_parse_class_refuses(text):
    with pytest.raises(ConfigError):
        parse_class("x", text, "here")


def test_settings_defaults_and_a_site_class():
    settings = Settings.from_config(DriverConfig({
        "CLASSES": "interactive normal batch idle", "CLASS_IDLE": "nice=19 weight=2",
        "SQUEEZE_CLASS": "idle"}))
    assert list(settings.classes) == ["interactive", "normal", "batch", "idle"]
    assert settings.classes["idle"].weight == "2" and settings.squeeze_class == "idle"
    assert settings.priority(" Batch ", "CPU_PRIORITY").nice == 19


@pytest.mark.parametrize("values, message", [
    ({"CLASSES": "fast"}, "CLASS_FAST in <defaults> is missing"),
    ({"SQUEEZE_CLASS": "idle"}, "SQUEEZE_CLASS in <defaults> must be one of"),
])
def test_settings_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_config(DriverConfig(values))


def test_describe_a_gone_vm_and_an_error():
    assert describe({"vmid": 3, "status": "gone", "notes": ["domain one-3 is not running"]}) \
        == "skipped: not running on this host"
    assert describe({"vmid": 3, "status": "error", "reason": "Permission denied: /x"}) \
        == "failed: Permission denied: /x"


# --- through the oned runtime stand-in (vaf/lab/oned.py) ------------------------------

def test_post_d_through_the_vmm_runtime(remotes, hypervisor):
    oned = pytest.importorskip("vaf.lab.oned")
    vm = hypervisor.start(7, threads=2)
    ok = oned.run_vnm_action("post.d/vaf-cpu-priority", remotes=remotes, vn_mad="bridge",
                             vm_xml=vnm_xml(7, "<CPU_PRIORITY>batch</CPU_PRIORITY>"),
                             args=[DEPLOY_ID, "node1"])
    assert ok.ok, ok
    assert any(line.startswith("LOG I 7 bridge/post: CPU priority applied: class batch, "
                               "nice 19 on 3 threads") for line in ok.logs)
    assert set(thread_nices(vm.pid).values()) == {19}
    bad = oned.run_vnm_action("post.d/vaf-cpu-priority", remotes=remotes, vn_mad="bridge",
                              vm_xml=vnm_xml(7, "<CPU_PRIORITY>turbo</CPU_PRIORITY>"),
                              args=[DEPLOY_ID, "node1"])
    assert not bad.ok
    assert bad.reason.startswith("CPU_PRIORITY of VM 7 must be one of interactive, normal, "
                                 "batch, got 'turbo'")


def test_running_hook_through_the_hook_manager(remotes, hypervisor):
    oned = pytest.importorskip("vaf.lab.oned")
    vm = hypervisor.start(8, threads=2)
    done = oned.run_hook("cpu-priority/vaf-cpu-priority", remotes=remotes,
                         template_xml=full_xml(8, "<CPU_PRIORITY>interactive</CPU_PRIORITY>"))
    assert done.ok and done.exit_code == 0
    assert done.logs[0].startswith("LOG I 8 cpu-priority/vaf-cpu-priority: CPU priority "
                                   "applied: class interactive, nice -5")
    assert set(thread_nices(vm.pid).values()) == {-5}
