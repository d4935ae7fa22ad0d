#!/usr/bin/env python3
"""A stand-in for OpenNebula's ``onevm`` CLI that prints canned XML in oned's format.

    cpu_onevm.py DIR list -x        -> DIR/pool.xml   (<VM_POOL> of short VM bodies)
    cpu_onevm.py DIR show -x ID     -> DIR/vm-ID.xml  (one full <VM>)

:func:`write_cloud` writes those files from a few facts per VM. The pool listing carries the
short body oned returns for ``one.vmpool.info`` (no template attributes beyond a few), so a
selection by template attribute must ask ``onevm show -x``, as with a real oned.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class CannedVm:
    vm_id: int
    uname: str
    gname: str
    host: str | None = "node1"
    state: int = 3  # ACTIVE
    lcm_state: int = 3  # RUNNING
    user_template: str = ""  # inner XML
    uid: int = 2
    gid: int = 100


def _history(vm: CannedVm) -> str:
    if vm.host is None:
        return "<HISTORY_RECORDS/>"
    return (f"<HISTORY_RECORDS><HISTORY><OID>{vm.vm_id}</OID><SEQ>0</SEQ>"
            f"<HOSTNAME>{vm.host}</HOSTNAME><HID>0</HID><CID>0</CID><STIME>1764140000</STIME>"
            f"<ETIME>0</ETIME><VM_MAD><![CDATA[kvm]]></VM_MAD><TM_MAD><![CDATA[ssh]]></TM_MAD>"
            f"<DS_ID>0</DS_ID><ACTION>0</ACTION></HISTORY></HISTORY_RECORDS>")


def _head(vm: CannedVm) -> str:
    return (f"<ID>{vm.vm_id}</ID><UID>{vm.uid}</UID><GID>{vm.gid}</GID>"
            f"<UNAME>{vm.uname}</UNAME><GNAME>{vm.gname}</GNAME><NAME>{vm.uname}-{vm.vm_id}</NAME>"
            "<PERMISSIONS><OWNER_U>1</OWNER_U><OWNER_M>1</OWNER_M><OWNER_A>0</OWNER_A>"
            "<GROUP_U>0</GROUP_U><GROUP_M>0</GROUP_M><GROUP_A>0</GROUP_A><OTHER_U>0</OTHER_U>"
            "<OTHER_M>0</OTHER_M><OTHER_A>0</OTHER_A></PERMISSIONS>"
            f"<LAST_POLL>0</LAST_POLL><STATE>{vm.state}</STATE><LCM_STATE>{vm.lcm_state}"
            f"</LCM_STATE><PREV_STATE>{vm.state}</PREV_STATE><PREV_LCM_STATE>{vm.lcm_state}"
            "</PREV_LCM_STATE><RESCHED>0</RESCHED><STIME>1764140000</STIME><ETIME>0</ETIME>"
            "<DEPLOY_ID>3b4c8a2e-58f1-4d7e-9d0a-6c2f1e9b7a10</DEPLOY_ID>")


def full_vm(vm: CannedVm) -> str:
    return (f"<VM>{_head(vm)}<MONITORING/><SCHED_ACTIONS/><TEMPLATE>"
            f"<AUTOMATIC_REQUIREMENTS><![CDATA[!(PUBLIC_CLOUD = YES)]]></AUTOMATIC_REQUIREMENTS>"
            f"<CPU><![CDATA[1]]></CPU><MEMORY><![CDATA[2048]]></MEMORY>"
            f"<VMID><![CDATA[{vm.vm_id}]]></VMID></TEMPLATE>"
            f"<USER_TEMPLATE>{vm.user_template}</USER_TEMPLATE>{_history(vm)}</VM>")


def short_vm(vm: CannedVm) -> str:
    return (f"<VM>{_head(vm)}<MONITORING/><TEMPLATE><CPU><![CDATA[1]]></CPU>"
            f"<MEMORY><![CDATA[2048]]></MEMORY></TEMPLATE><USER_TEMPLATE/>{_history(vm)}</VM>")


def write_cloud(directory: str, vms: list[CannedVm]) -> None:
    with open(os.path.join(directory, "pool.xml"), "w") as handle:
        handle.write("<VM_POOL>" + "".join(short_vm(vm) for vm in vms) + "</VM_POOL>\n")
    for vm in vms:
        with open(os.path.join(directory, f"vm-{vm.vm_id}.xml"), "w") as handle:
            handle.write(full_vm(vm) + "\n")


def main(argv: list[str]) -> int:
    directory, command = argv[0], argv[1:]
    if command == ["list", "-x"]:
        path = os.path.join(directory, "pool.xml")
    elif len(command) == 3 and command[:2] == ["show", "-x"]:
        path = os.path.join(directory, f"vm-{command[2]}.xml")
        if not os.path.exists(path):
            print(f"[one.vm.info] Error getting virtual machine [{command[2]}].",
                  file=sys.stderr)
            return 255
    else:
        print(f"cpu_onevm stand-in: unsupported {command}", file=sys.stderr)
        return 2
    with open(path) as handle:
        sys.stdout.write(handle.read())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
