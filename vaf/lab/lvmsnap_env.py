"""A front-end + hypervisor pair for lvmsnap tests and the benchmark.

The front-end is this machine: a copy of the remotes tree (as installed, symlinks
dereferenced), a var dir, a stub ``onevm`` printing canned VM XML, and the oned harness
(:mod:`vaf.lab.oned`) running transfer files the way one_tm.rb does. The hypervisor is the test
guest (:mod:`vaf.lab.testbed`): the remotes are synced into it, the image datastore is the shared
dir (mounted at the same path in the guest), the system datastore's VG is built on /dev/vdb.
"""

from __future__ import annotations

import hashlib
import os
import random
import shlex
import shutil
import sys
from pathlib import Path

from vaf.lab import oned
from vaf.lab.oned_logs import OnedLogs

REPO = Path(__file__).resolve().parents[2]

ONEADMIN_UID = 9869
REMOTE_DIR = "/var/tmp/one-lvmsnap"  # our own copy: other suites may sync /var/tmp/one
SYS_DS = 100
IMG_DS = 1
MB = 1024 * 1024

ONEVM_STUB = """\
import sys
directory, vmid = sys.argv[1], sys.argv[-1]
sys.stdout.write(open(f"{directory}/{vmid}.xml").read())
"""


def vm_xml(vmid: int, disks: list[dict[str, object]]) -> str:
    """A minimal ``onevm show -x`` document with the given DISK attributes."""
    parts = []
    for disk in disks:
        inner = "".join(f"<{k}>{v}</{k}>" for k, v in disk.items())
        parts.append(f"<DISK>{inner}</DISK>")
    return f"<VM><ID>{vmid}</ID><TEMPLATE>{''.join(parts)}</TEMPLATE></VM>"


class LvmsnapEnv:
    def __init__(self, tb, work: Path, conf: dict[str, str] | None = None):
        self.tb = tb
        self.work = work
        self.remotes = work / "remotes"
        self.var = work / "var"
        self.vms = work / "vms"
        for directory in (self.var, self.vms):
            directory.mkdir(parents=True, exist_ok=True)
        shutil.copytree(REPO / "remotes", self.remotes, symlinks=False,
                        ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        (work / "onevm.py").write_text(ONEVM_STUB)
        self.base_conf = {
            "SSH": f"ssh -F {tb.ssh_config}",
            "REMOTE_DIR": REMOTE_DIR,
            "ONEVM": f"{sys.executable} {work / 'onevm.py'} {self.vms}",
            "PROGRESS_SECONDS": "0",
        }
        self.set_conf(**(conf or {}))
        # what the admin reads (VM logs, ERROR attributes); the drivers' 6.10 lines land there too
        self.logs = OnedLogs(work / "oned-log")
        self.logs.configure(self.remotes)
        tb.sync_remotes(self.remotes, dest=REMOTE_DIR)
        self.sequence = 0
        # The launcher's "#!/usr/bin/env python3" should find this interpreter directly, as
        # it finds /usr/bin/python3 on a front-end, not a version manager's shell-script shim
        # (which costs more than the whole driver's start-up).
        path = os.environ.get("PATH", "")
        self.mad_env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{path}")

    # -- front-end side --------------------------------------------------------------------

    def set_conf(self, **values: str) -> None:
        """Rewrite lvmsnap.conf (read on the front-end only: no sync needed)."""
        merged = {**self.base_conf, **values}
        text = "".join(f"{k}={shlex.quote(v)}\n" for k, v in merged.items() if v is not None)
        conf = self.remotes / "etc" / "tm" / "lvmsnap" / "lvmsnap.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(text)

    def vm(self, vmid: int, *disks: dict[str, object]) -> None:
        (self.vms / f"{vmid}.xml").write_text(vm_xml(vmid, list(disks)))

    def transfer(self, vmid: int, *lines: str) -> oned.Reply:
        """Run a transfer file through the harness; the parsed reply."""
        self.sequence += 1
        directory = self.var / "vms" / str(vmid)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"transfer.{self.sequence}.prolog"
        path.write_text("\n".join(lines) + "\n")
        oned.write_version_file(self.remotes)  # the runtime selected (vaf.lab.oned.runtime)
        out = oned.run_transfer_file(path, remotes=self.remotes, drivers="lvmsnap",
                                     action_id=vmid, var_dir=self.var, env=self.mad_env)
        self.logs.record_transfer(vmid, out)
        return oned.parse_reply(out)

    def command(self, vmid: int, line: str, stdin: bytes = b"") -> oned.Reply:
        oned.write_version_file(self.remotes)
        out = oned.run_tm_command(line, remotes=self.remotes, action_id=vmid,
                                  var_dir=self.var, stdin=stdin, env=self.mad_env)
        self.logs.record_logs(out[:-1])  # the VMM's own failure message is not modelled
        return oned.parse_reply(out)

    def monitor(self, ds_id: int, template: str = "") -> list[str]:
        payload = (f"<DS_DRIVER_ACTION_DATA><DATASTORE><ID>{ds_id}</ID><TYPE>1</TYPE>"
                   f"<DS_MAD>-</DS_MAD><TM_MAD>lvmsnap</TM_MAD><TEMPLATE>{template}</TEMPLATE>"
                   "</DATASTORE><DATASTORE_LOCATION>/var/lib/one/datastores"
                   "</DATASTORE_LOCATION><MONITOR_VM_DISKS>0</MONITOR_VM_DISKS>"
                   "</DS_DRIVER_ACTION_DATA>")
        oned.write_version_file(self.remotes)
        return oned.run_ds_monitor(ds_id, payload, remotes=self.remotes,
                                   allowed_system="lvmsnap", var_dir=self.var,
                                   env=self.mad_env)

    # -- lines oned would write --------------------------------------------------------------

    @staticmethod
    def disk_path(vmid: int, disk: int, sys_ds: int = SYS_DS) -> str:
        return f"/var/lib/one/datastores/{sys_ds}/{vmid}/disk.{disk}"

    def clone_line(self, image: str, vmid: int, disk: int = 0, sys_ds: int = SYS_DS,
                   action: str = "CLONE") -> str:
        return (f"{action} lvmsnap fe:{image} {self.tb.host}:{self.disk_path(vmid, disk, sys_ds)}"
                f" {vmid} {IMG_DS}")

    def clone(self, image: str, vmid: int, disk: int = 0, sys_ds: int = SYS_DS,
              size_mb: int | None = None, action: str = "CLONE") -> oned.Reply:
        attrs: dict[str, object] = {"DISK_ID": disk}
        if size_mb:
            attrs["SIZE"] = size_mb
        self.vm(vmid, attrs)
        return self.transfer(vmid, self.clone_line(image, vmid, disk, sys_ds, action))

    def delete(self, vmid: int, disk: int | None = 0, sys_ds: int = SYS_DS) -> oned.Reply:
        path = self.disk_path(vmid, disk, sys_ds) if disk is not None else \
            f"/var/lib/one/datastores/{sys_ds}/{vmid}"
        return self.transfer(vmid, f"DELETE lvmsnap {self.tb.host}:{path} {vmid} {IMG_DS}")

    # -- images on the shared mount -------------------------------------------------------------

    def image(self, name: str, size_mb: float, seed: int) -> tuple[str, str]:
        """Write a deterministic pseudo-random image; (path, sha256)."""
        path = Path(self.tb.shared_dir) / name
        generator, digest = random.Random(seed), hashlib.sha256()
        temporary = path.with_name(path.name + ".tmp")
        left = int(size_mb * MB)
        with open(temporary, "wb") as handle:
            while left:  # in chunks: randbytes cannot make hundreds of MB at once
                chunk = generator.randbytes(min(left, 16 * MB))
                handle.write(chunk)
                digest.update(chunk)
                left -= len(chunk)
        if os.geteuid() == 0:
            os.chown(temporary, ONEADMIN_UID, ONEADMIN_UID)
        os.replace(temporary, path)
        return str(path), digest.hexdigest()

    # -- the hypervisor -------------------------------------------------------------------------

    def guest(self, cmd: str | list[str], check: bool = True, timeout: float = 300):
        return self.tb.ssh(cmd, user="root", check=check, timeout=timeout)

    def lvs(self, vg: str = f"vg-one-{SYS_DS}") -> dict[str, dict[str, str]]:
        fields = "lv_name,lv_attr,lv_size,origin,lv_tags"
        out = self.guest(["lvs", "--noheadings", "--units", "b", "--nosuffix", "--separator",
                          "|", "-o", fields, vg]).stdout
        volumes = {}
        for line in out.splitlines():
            if line.strip():
                name, attr, size, origin, tags = line.strip().split("|")
                volumes[name] = {"attr": attr, "size": int(size), "origin": origin,
                                 "tags": tags.split(",") if tags else []}
        return volumes

    def caches(self, vg: str = f"vg-one-{SYS_DS}") -> dict[str, dict[str, str]]:
        return {n: v for n, v in self.lvs(vg).items() if n.startswith("vaf-cache-")}

    def sha_of(self, path: str, nbytes: int) -> str:
        """sha256 of the first nbytes of a device or file in the guest."""
        out = self.guest(f"head -c {int(nbytes)} {shlex.quote(path)} | sha256sum").stdout
        return out.split()[0]

    def readlink(self, path: str) -> str:
        return self.guest(["readlink", path], check=False).stdout.strip()
