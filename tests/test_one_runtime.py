"""Which runtime a driver writes for, and what each runtime's admin then reads.

6.10.x (before 6.99.80) drops stderr on success and makes all of it the failure reason; 7.x
reads tagged lines. vaf reads the release from <remotes>/VERSION (override: runtime.conf) and on
6.10 sends its details to the VM log file (front-end) or keeps them for the end (VNM).
"""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

import pytest

from vaf.errors import ConfigError, DriverError
from vaf.lab.oned_logs import OnedLogs
from vaf.one import remote
from vaf.one.log import DriverLog, ascii_text, run_main
from vaf.one.runtime import OnedRuntime, load_runtime, oned_section

ONED_CONF = """\
LOG = [
  SYSTEM      = "file",   # file, syslog or std
  DEBUG_LEVEL = 3,
  USE_VMS_LOCATION = "NO"
]
FEDERATION = [
    MODE          = "STANDALONE",
    ZONE_ID       = 0,
    MASTER_ONED   = ""
]
"""


def tree(tmp_path: Path, version: str | None = None, conf: str = "") -> Path:
    remotes = tmp_path / "remotes"
    (remotes / "etc" / "vaf").mkdir(parents=True, exist_ok=True)
    if version is not None:
        (remotes / "VERSION").write_text(version + "\n")
    (remotes / "etc" / "vaf" / "runtime.conf").write_text(
        f"ONED_CONF={tmp_path / 'oned.conf'}\n" + conf)
    return remotes


@pytest.mark.parametrize("version, legacy", [
    ("6.10.5", True), ("6.10.0", True), ("6.99.79", True), ("6.99.80", False),
    ("7.0.0", False), ("7.4", False), (None, False),
])
def test_release_decides_the_rules(tmp_path, version, legacy):
    assert load_runtime(str(tree(tmp_path, version)), {}).legacy is legacy


def test_conf_overrides_the_version_file(tmp_path):
    remotes = tree(tmp_path, "7.0.0", "ONE_VERSION=6.10.5\n")
    assert load_runtime(str(remotes), {}).version == (6, 10, 5)


@pytest.mark.parametrize("where, text", [("VERSION", "seven"), ("conf", "ONE_VERSION=6.x\n")])
def test_a_garbled_release_is_one_clear_reason(tmp_path, where, text):
    remotes = tree(tmp_path, text if where == "VERSION" else "6.10.5",
                   text if where == "conf" else "")
    with pytest.raises(ConfigError, match="expected an OpenNebula release such as 6.10.5"):
        load_runtime(str(remotes), {})


@pytest.mark.parametrize("log, environ, expected", [
    ('SYSTEM = "file"', {}, "/var/log/one/{vmid}.log"),
    ('SYSTEM = "file", USE_VMS_LOCATION = "YES"', {}, "/var/lib/one/vms/{vmid}/vm.log"),
    ('SYSTEM = "file"', {"ONE_LOCATION": "/opt/one"}, "/opt/one/var/vms/{vmid}/vm.log"),
    ('SYSTEM = "syslog"', {}, ""),
    ('SYSTEM = "std"', {}, ""),
])
def test_vm_log_is_where_oned_writes_it(tmp_path, log, environ, expected):
    remotes = tree(tmp_path, "6.10.5")
    (tmp_path / "oned.conf").write_text(f"LOG = [ {log} ]\n")
    assert load_runtime(str(remotes), environ).vm_log == expected


def test_oned_conf_sections():
    assert oned_section(ONED_CONF, "LOG") == {"SYSTEM": "file", "DEBUG_LEVEL": "3",
                                             "USE_VMS_LOCATION": "NO"}
    assert oned_section(ONED_CONF, "FEDERATION")["ZONE_ID"] == "0"
    assert oned_section(ONED_CONF, "DB") == {}


def test_a_host_without_oned_uses_syslog(tmp_path):
    runtime = load_runtime(str(tree(tmp_path, "6.10.5")), {})  # no oned.conf written
    assert runtime.vm_log == "" and runtime.syslog_socket == "/dev/log"


# --- what the driver writes ---------------------------------------------------------------------

@pytest.fixture
def logs(tmp_path):
    oned_logs = OnedLogs(tmp_path / "log")
    yield oned_logs
    oned_logs.close()


def runtime_610(logs: OnedLogs, debug_level: int = 3) -> OnedRuntime:
    return OnedRuntime(version=(6, 10, 5), vm_log=f"{logs.dir}/{{vmid}}.log",
                       syslog_socket=logs.syslog.path, debug_level=debug_level)


def fails(log: DriverLog) -> None:
    log.vmid = 7
    log.info("filling cache from /img")
    log.debug("lvcreate took 0.2 s")
    raise DriverError("volume group vg-one-100 is full")


def test_610_front_end_failure_reason_alone_on_stderr_details_in_the_vm_log(logs):
    out = io.StringIO()
    log = DriverLog("lvmsnap/clone", stream=out)
    log.use("tm", runtime_610(logs))
    assert run_main(fails, log) == 1
    assert out.getvalue() == "volume group vg-one-100 is full\n"
    assert logs.vm_log(7) == [("TrM", "I", "lvmsnap/clone: filling cache from /img"),
                              ("TrM", "D", "lvmsnap/clone: lvcreate took 0.2 s")]
    line = logs.vm_log_path(7).read_text().splitlines()[0]
    assert re.fullmatch(r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4} \[Z0\]\[TrM\]\[I\]: .*", line)
    assert time.ctime()[-4:] in line  # oned's ctime format, this year


def test_610_front_end_success_writes_nothing_to_stderr(logs):
    out = io.StringIO()
    log = DriverLog("lvmsnap/clone", vmid=3, stream=out)
    log.use("tm", runtime_610(logs, debug_level=2))
    assert run_main(lambda lg: lg.info("done") or lg.debug("hidden"), log) == 0
    assert out.getvalue() == ""
    assert logs.vm_log_texts(3) == ["lvmsnap/clone: done"]  # DEBUG_LEVEL 2 drops D lines


def test_610_lines_without_a_vm_go_to_syslog(logs):
    out = io.StringIO()
    log = DriverLog("lvmsnap/monitor", stream=out)
    log.use("tm", runtime_610(logs))
    run_main(lambda lg: lg.warn("vg-one-100 is 95% full"), log)
    assert out.getvalue() == ""
    [message] = logs.syslog.messages()
    assert re.fullmatch(r"<28>\w{3} [ \d]\d \d\d:\d\d:\d\d vaf\[\d+\]: "
                        r"\[Z0\]\[TrM\]\[W\]: lvmsnap/monitor: vg-one-100 is 95% full", message)


def test_610_vnm_success_is_what_the_stream_logs(logs):
    out_610, out_70 = io.StringIO(), io.StringIO()
    for out, runtime in ((out_610, runtime_610(logs)), (out_70, OnedRuntime(None, ""))):
        log = DriverLog("vaf_isolation/post", vmid=11, stream=out)
        log.use("vnm", runtime)
        run_main(lambda lg: lg.info("isolated one-11-0"), log)
    assert out_70.getvalue() == "INFO: 11 vaf_isolation/post: isolated one-11-0\n"
    # the stream logs it with the VM's id: an id in the text would read "11 vaf_isolation..."
    assert out_610.getvalue() == "INFO: vaf_isolation/post: isolated one-11-0\n"


def test_610_vnm_failure_details_go_to_the_host_syslog(logs):
    out = io.StringIO()
    log = DriverLog("vaf_isolation/post", stream=out)
    log.use("vnm", runtime_610(logs))
    assert run_main(fails, log) == 1
    assert out.getvalue() == "volume group vg-one-100 is full\n"
    assert logs.syslog.texts() == [
        "[VM 7][vaf_isolation/post][I]: vaf_isolation/post: filling cache from /img",
        "[VM 7][vaf_isolation/post][D]: vaf_isolation/post: lvcreate took 0.2 s"]


def test_hooks_write_the_same_on_both_runtimes(logs):
    out = io.StringIO()
    log = DriverLog("ebtables/vaf-isolation", stream=out)
    log.use("hooks", runtime_610(logs))
    run_main(fails, log)
    assert out.getvalue() == ("INFO: 7 ebtables/vaf-isolation: filling cache from /img\n"
                              "DEBUG: 7 ebtables/vaf-isolation: lvcreate took 0.2 s\n"
                              "volume group vg-one-100 is full\n")


HOST_STDERR = ("INFO: 7 lvmsnap/clone: filled cache from /img/caf\\xe9\n"
               "WARN: 7 lvmsnap/clone: slow\n"
               "disk full\n")


def relay_through(log: DriverLog) -> int:
    argv = ["sh", "-c", f"printf '{HOST_STDERR}' >&2; exit 1"]

    def action(lg):
        remote.call(_Local(argv), "lvmsnap-clone", {}, remotes="/r")

    return run_main(action, log)


class _Local:
    """A runner that runs a fixed argv here, whatever host command it is given."""

    def __init__(self, argv):
        from vaf.host.runner import Runner
        self._runner, self._argv = Runner(), argv

    def run(self, _argv, **kwargs):
        return self._runner.run(self._argv, **kwargs)


def test_relayed_host_lines_follow_the_runtime(logs):
    out_70 = io.StringIO()
    assert relay_through(DriverLog("lvmsnap/clone", vmid=7, stream=out_70)) == 1
    assert out_70.getvalue() == ("INFO: 7 lvmsnap/clone: filled cache from /img/caf\\xe9\n"
                                 "WARN: 7 lvmsnap/clone: slow\n"
                                 "disk full\n")
    out_610 = io.StringIO()
    log = DriverLog("lvmsnap/clone", vmid=7, stream=out_610)
    log.use("tm", runtime_610(logs))
    assert relay_through(log) == 1
    assert out_610.getvalue() == "disk full\n"
    assert logs.vm_log(7) == [("TrM", "I", "lvmsnap/clone: filled cache from /img/caf\\xe9"),
                              ("TrM", "W", "lvmsnap/clone: slow")]


# --- ASCII only ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("plain", "plain"),
    ("/img/caf\u00e9", "/img/caf\\xe9"),
    ("wait\u2026", "wait\\u2026"),
    (os.fsdecode(b"/img/caf\xc3"), "/img/caf\\xc3"),  # a byte that is not UTF-8
    ("\U0001f600", "\\U0001f600"),
])
def test_ascii_text(text, expected):
    assert ascii_text(text) == expected


def test_every_stderr_line_is_ascii():
    out = io.StringIO()
    log = DriverLog("lvmsnap/clone", vmid=7, stream=out)
    run_main(lambda lg: (lg.info("copying /img/\u00e9t\u00e9"),
                         lg.reason("no such image /img/\u00e9t\u00e9"))[0], log)
    assert out.getvalue().isascii()
    assert out.getvalue() == ("INFO: 7 lvmsnap/clone: copying /img/\\xe9t\\xe9\n"
                              "no such image /img/\\xe9t\\xe9\n")


def _docstrings(tree) -> set[int]:
    import ast

    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def test_no_string_literal_in_vaf_holds_non_ascii():
    """What reaches stderr starts as a literal somewhere: docstrings alone may hold prose."""
    import ast

    root = Path(__file__).resolve().parents[1] / "vaf"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if source.isascii():
            continue
        tree = ast.parse(source)
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docs:
                segment = ast.get_source_segment(source, node) or ""
                if not segment.isascii():
                    offenders.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    assert offenders == []


# --- a TM action through the runtime stand-in, both runtimes (no test hypervisor needed) ------

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def front_end(tmp_path, oned_runtime, oned_logs):
    """A front-end remotes tree (the repo's, as installed) and oned's var dir."""
    import shutil

    remotes = tmp_path / "remotes"
    shutil.copytree(REPO / "remotes", remotes, symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    from vaf.lab import oned

    oned.write_version_file(remotes)
    oned_logs.configure(remotes)
    (tmp_path / "var").mkdir()
    return remotes


def mkimage(front_end: Path, logs: OnedLogs, disk: dict, vmid: int = 7):
    """MKIMAGE of a volatile disk whose template DISK is ``disk``; the reply as oned has it."""
    from vaf.lab import oned
    from vaf.lab.lvmsnap_env import ONEVM_STUB, vm_xml

    work = front_end.parent
    (work / "onevm.py").write_text(ONEVM_STUB)
    (work / f"{vmid}.xml").write_text(vm_xml(vmid, [disk]), encoding="utf-8")
    conf = front_end / "etc" / "tm" / "lvmsnap" / "lvmsnap.conf"
    conf.write_text(f"ONEVM='{os.sys.executable} {work / 'onevm.py'} {work}'\n")
    prolog = work / "var" / "transfer.0.prolog"
    prolog.write_text(f"MKIMAGE lvmsnap 64 raw node1:/var/lib/one/datastores/100/{vmid}/disk.2"
                      f" {vmid} 100\n")
    env = {k: v for k, v in os.environ.items() if k not in ("LANG", "LC_ALL")}
    env["PATH"] = f"{Path(os.sys.executable).parent}:{env.get('PATH', '')}"
    lines = oned.run_transfer_file(prolog, remotes=front_end, drivers="lvmsnap", action_id=vmid,
                                   var_dir=work / "var", env=env)
    logs.record_transfer(vmid, lines)
    return oned.parse_reply(lines)


def test_non_ascii_template_value_gives_a_clean_reply(front_end, oned_logs, oned_runtime):
    """LANG unset: one non-ASCII byte on stderr would make the reply an internal error."""
    reply = mkimage(front_end, oned_logs, {"DISK_ID": 2, "FS": "xfs\u00e9"})
    assert reply.result == "FAILURE"
    assert reply.reason.startswith("unsupported filesystem 'xfs\\xe9' for a volatile disk")
    assert reply.reason.isascii() and "\n" not in reply.reason
    error = f"Error executing image transfer script: {reply.reason}"
    assert oned_logs.error(7) == error[:100] + "... see more details in VM log"
    texts = oned_logs.vm_log_texts(7)
    assert texts[0].startswith("Command execution failed (exit code: 1): ")
    assert texts[1:] == [reply.reason, error]  # the MAD's dump of stderr, then oned's own line
