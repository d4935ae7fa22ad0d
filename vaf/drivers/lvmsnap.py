"""lvmsnap: the caching LVM transfer manager (TM_MAD=lvmsnap).

Every TM action oned may call is listed in :data:`ACTIONS`; the executables under
``remotes/tm/lvmsnap/`` are the launcher installed under those names.
"""

from __future__ import annotations

from vaf.errors import ProtocolError
from vaf.host.lvm import VolumeGroup, system_vg_name
from vaf.one.args import expect_args, parse_id
from vaf.one.dispatch import Invocation
from vaf.one.log import DriverLog
from vaf.one.xml import DsDriverAction


def monitor(inv: Invocation, log: DriverLog) -> int:
    """``monitor DSID`` with the base64 DS_DRIVER_ACTION_DATA on stdin (system datastore).

    Like fs_lvm, asks the first host of the datastore's BRIDGE_LIST (the VG is on the hosts),
    or this machine when there is none, and prints USED_MB, FREE_MB and TOTAL_MB.
    """
    args = expect_args(inv.args, ["DSID"], "monitor")
    ds_id = parse_id(args["DSID"], "datastore id")
    action = DsDriverAction.from_payload(inv.read_stdin("datastore payload"))
    if action.datastore.ds_id != ds_id:
        raise ProtocolError(f"monitor called for datastore {ds_id} with the payload of "
                            f"datastore {action.datastore.ds_id}")
    hosts = action.datastore.template.get("BRIDGE_LIST", "").split()
    host = hosts[0] if hosts else None
    usage = VolumeGroup(system_vg_name(ds_id), inv.runner.on(host)).usage()
    print(f"USED_MB={usage.used_mb}")
    print(f"FREE_MB={usage.free_mb}")
    print(f"TOTAL_MB={usage.total_mb}")
    return 0


ACTIONS = {
    "monitor": monitor,
}
