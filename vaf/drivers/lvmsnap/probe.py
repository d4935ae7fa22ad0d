"""The host probe ``remotes/im/kvm-probes.d/host/system/vaf-lvmsnap``: free space per VG.

For a system datastore that is not shared (lvmsnap's), oned's scheduler takes each host's
free space for it from that host's monitoring, which runs every executable of
``im/kvm-probes.d/host/system/`` and reads ``DS = [ ID, USED_MB, TOTAL_MB, FREE_MB ]``
vectors (``vaf/lab/monitord.py`` models the path). This probe prints one per ``vg-one-<id>``
of the host, with the figures of :func:`vaf.drivers.lvmsnap.monitor.capacity` (the thin
pool's, under the overcommit ratio), asking the privileged host half (LVM needs root).

It runs as oneadmin on the host, with the policy of the host's copy of ``lvmsnap.conf``
(``onehost sync`` copies ``remotes/etc``). It never exits non-zero: a failing probe fails the
host's whole monitoring, so a problem here is one line on stderr and no ``DS`` line (the
scheduler then falls back to the stock probe's figures).

stdlib only: runs on hypervisors.
"""

from __future__ import annotations

import os
import sys

from vaf.config import load_config
from vaf.drivers.lvmsnap import requests as rq
from vaf.drivers.lvmsnap.settings import Settings, front_end
from vaf.errors import VafError
from vaf.host.runner import Runner
from vaf.one import remote


def lvmsnap_conf(remotes: str):
    return load_config(os.path.join(remotes, "etc", "tm", "lvmsnap", "lvmsnap.conf"))


def probe(inv, log) -> int:
    try:
        conf = lvmsnap_conf(inv.remotes)
        request = rq.Probe(Settings.from_config(conf), None, None)
        result = remote.call_privileged(Runner(), "lvmsnap-probe", request.to_json(),
                                        program=front_end(conf, "PRIVILEGED"))
        sys.stdout.write(result.stdout)
    except VafError as err:
        sys.stderr.write(f"vaf-lvmsnap probe: {err.reason}\n")
    except Exception as err:  # noqa: BLE001 - a probe must never fail the host's monitoring
        sys.stderr.write(f"vaf-lvmsnap probe: {type(err).__name__}: {err}\n")
    return 0


PROBE = probe
