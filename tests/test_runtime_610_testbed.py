"""lvmsnap under the 6.10 runtime, for real in the test hypervisor: a representative subset.

The whole lvmsnap suite runs under 7.x (tests/test_lvmsnap_testbed.py); here the cases where
6.10 differs: progress of a success (6.10 drops stderr: vaf writes it into the VM log), a
failure with details (only the reason on stderr: the ERROR attribute stays short) and a host
that cannot be reached. Assertions are on what the admin reads: the VM log file and the ERROR
attribute (vaf/lab/oned_logs.py).
"""

from __future__ import annotations

import pytest
from test_lvmsnap_testbed import env, kill_at, no_kill  # noqa: F401 - the module-scoped fixture (VG on /dev/vdb)

from vaf.lab.lvmsnap_env import oned
from vaf.lab.oned_logs import TRANSFER_ERROR, TRUNCATED

pytestmark = pytest.mark.testbed


def error_attribute(reason: str) -> str:
    message = f"{TRANSFER_ERROR}: {reason}"
    return message if len(message) < 100 else message[:100] + TRUNCATED


@pytest.mark.parametrize("version", oned.RUNTIMES)
def test_progress_of_a_success_reaches_the_vm_log(env, version):  # noqa: F811
    vmid = 200 + oned.RUNTIMES.index(version)
    image, _ = env.image(f"progress-{version}", 8, seed=20)
    with oned.runtime(version):
        reply = env.clone(image, vmid)
    assert reply.result == "SUCCESS", reply
    assert env.logs.error(vmid) is None
    progress = [r for r in env.logs.vm_log(vmid) if f"cache from {image}" in r.text]
    assert {r.severity for r in progress} == {"I"}
    assert progress[0].text == f"lvmsnap/clone: filling cache from {image} (8 MB)"
    assert progress[-1].text.startswith(f"lvmsnap/clone: filled cache from {image} in ")
    if version == "6.10":
        assert reply.logs == []  # nothing through the MAD: vaf wrote the VM log itself


def test_failure_with_details_keeps_the_reason_short(env):  # noqa: F811
    image, _ = env.image("killed-610", 8, seed=21)
    kill_at(env, "lvchange", "vaf-fill-", "after")  # the host half dies after the copy
    try:
        with oned.runtime("6.10"):
            reply = env.clone(image, 210)
    finally:
        no_kill(env)
    reason = reply.reason
    assert reply.result == "FAILURE" and "was killed before it finished" in reason
    assert "\n" not in reason and "INFO" not in reason and "DEBUG" not in reason
    assert env.logs.error(210) == error_attribute(reason)
    texts = env.logs.vm_log_texts(210)
    assert any(t.startswith(f"lvmsnap/clone: filling cache from {image}") for t in texts)
    assert texts[-3].startswith("Command execution failed (exit code: 1): ")
    assert texts[-2:] == [reason, f"{TRANSFER_ERROR}: {reason}"]
    with oned.runtime("6.10"):
        assert env.clone(image, 210).result == "SUCCESS"  # the killed fill left nothing in use


def test_unreachable_host_is_one_reason(env):  # noqa: F811
    env.set_conf(SSH=f"ssh -F {env.tb.ssh_config} -o Port=1 -o ConnectTimeout=5")
    try:
        with oned.runtime("6.10"):
            reply = env.clone("/var/lib/one/datastores/1/any", 211)
    finally:
        env.set_conf()
    assert reply.result == "FAILURE"
    assert env.tb.host in reply.reason and "ssh" in reply.reason
    assert "ERROR" not in reply.reason and "\n" not in reply.reason
    assert env.logs.error(211) == error_attribute(reply.reason)
    assert env.logs.vm_log_texts(211)[-2:] == [reply.reason, f"{TRANSFER_ERROR}: {reply.reason}"]


def test_non_ascii_image_path_gives_a_clean_reply_on_7x(env):  # noqa: F811
    with oned.runtime("7.0"):  # the MAD's locale: LANG unset, stderr read as US-ASCII
        reply = env.clone("/var/lib/one/datastores/1/caf\u00e9", 212)
    assert reply.result == "FAILURE"
    assert "caf\\xe9" in reply.reason and reply.reason.isascii()
    assert "invalid byte sequence" not in reply.reason
