"""What an admin reads after a VNM action or a post.d program, on 6.10 and on 7.x.

Through the runtime stand-in (vaf/lab/oned.py, MAD locale LANG unset) with the real
executables: the failure reason (what the VM's ERROR attribute and `onevm show` carry) must be
short and exact, the details must be in the VM log (7.x: the stream's and the tagged LOG lines;
6.10: the host's syslog, as stderr would be glued into the reason), and non-ASCII template
values must give a clean reply.
"""

from __future__ import annotations

import pytest
from test_cpu_driver import DEPLOY_ID, hypervisor, remotes, vnm_xml  # noqa: F401 - fixtures
from test_isolation import A1, lab, nic_xml, vm_xml  # noqa: F401 - fixtures
from test_isolation import remotes as isolation_remotes  # noqa: F401 - fixture

from vaf.lab import oned


def vm_log(run: oned.ScriptRun, vmid: int) -> list[str]:
    """The texts the VM's log gets from a network step: its LOG lines for that VM."""
    return [text for _log, _sev, ident, text in (line.split(" ", 3) for line in run.logs)
            if ident == str(vmid)]


def test_post_d_with_a_non_ascii_class_gives_a_clean_reason(remotes, hypervisor,  # noqa: F811
                                                           oned_runtime, oned_logs):
    hypervisor.start(7)
    run = oned.run_vnm_action("post.d/vaf-cpu-priority", remotes=remotes, vn_mad="bridge",
                              vm_xml=vnm_xml(7, "<CPU_PRIORITY>turb\u00e9</CPU_PRIORITY>"),
                              args=[DEPLOY_ID, "node1"])
    reason = ("CPU_PRIORITY of VM 7 must be one of interactive, normal, batch, "
              "got 'turb\\xe9'")
    assert not run.ok and run.exit_code == 1
    # the ssh stream leaves its "ExitCode: N" line behind: 7.x glues it on, 6.10 with a space
    assert run.reason == reason + ("ExitCode: 1" if oned_runtime == "7.0" else " ExitCode: 1")
    assert vm_log(run, 7)[-2:] == [reason, "ExitCode: 1"]
    assert oned_logs.syslog.messages() == []  # no details on this failure


@pytest.fixture
def broken_nft(isolation_remotes):  # noqa: F811
    """The nft backend with a table name nft refuses (a number, where nft expects a
    string; vaf-privileged lets it through): a real nft failure, with its stderr."""
    if isolation_remotes.backend != "nft":
        pytest.skip("an nft failure")
    conf = isolation_remotes.root / "etc" / "vnm" / "vaf_isolation" / "vaf_isolation.conf"
    conf.write_text(conf.read_text() + "NFT_TABLE=123\n")
    return isolation_remotes


def test_vnm_failure_reason_is_short_and_the_details_reach_the_admin(broken_nft, tmp_path,
                                                                     oned_runtime, oned_logs):
    shim = broken_nft.shim(tmp_path / "shim")
    xml = vm_xml(11, [nic_xml(0, A1.mac, A1.tap, A1.ip, vn_mad="vaf_isolation")])
    run = oned.run_vnm_action("post", remotes=shim, vn_mad="vaf_isolation", vm_xml=xml,
                              args=("deploy-uuid", "node1"))
    assert not run.ok
    reason, _, tail = run.reason.rpartition("ExitCode: 1")
    assert reason.strip().startswith("nft failed: ") and tail == ""
    assert "ERROR" not in run.reason and "command on" not in run.reason  # no detail glued in
    details = [text for text in (vm_log(run, 11) if oned_runtime == "7.0"
                                 else oned_logs.syslog.texts())
               if "vaf_isolation/post: command: /usr/sbin/nft -f - (exit code 1)" in text]
    assert details, "\n".join(run.logs + oned_logs.syslog.texts())
    if oned_runtime == "6.10":
        assert all(text.startswith("[VM 11][vaf_isolation/post][E]: ")
                   for text in oned_logs.syslog.texts())
