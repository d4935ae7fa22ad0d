"""lvmsnap: the caching LVM transfer manager (TM_MAD=lvmsnap), front-end side.

Every TM action oned may call is listed in :data:`ACTIONS`; the executables under
``remotes/tm/lvmsnap/`` are the launcher installed under those names. Each action checks oned's
argv, reads what it needs from the conf and (at most once) from ``onevm show -x``, then sends
**one** typed request (:mod:`vaf.drivers.lvmsnap.requests`) through :mod:`vaf.one.remote`:
one ssh call running ``sudo -n /usr/lib/vaf/vaf-privileged lvmsnap-<command>`` on the
hypervisor with the request on stdin (:mod:`vaf.drivers.lvmsnap.host` does the work there, as
root, from the root-owned install), whose tagged log lines and reason line reach oned
unchanged. If oned cancels the action, the call is cut and the host undoes its work.

The cache layout and key are described in :mod:`vaf.drivers.lvmsnap.cache` and
``docs/lvmsnap.md``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable

from vaf.drivers.lvmsnap import requests as rq
from vaf.drivers.lvmsnap.settings import Settings, front_end
from vaf.errors import DriverError, ProtocolError
from vaf.host.fs import SUPPORTED_FS
from vaf.host.iso import find_iso_tool, iso_argv
from vaf.host.runner import CommandError, Result
from vaf.one import remote
from vaf.one.args import (
    HostPath,
    disk_id_from_path,
    expect_args,
    is_disk_path,
    parse_host,
    parse_host_path,
    parse_id,
    parse_size_mb,
    system_ds_from_path,
)
from vaf.one.dispatch import Invocation
from vaf.one.log import DriverLog
from vaf.one.xml import VM, DsDriverAction, decode_payload, parse_xml

MKIMAGE_FS = ("xfs", "ext2", "ext3", "ext4", "raw", "swap")


# --- configuration -------------------------------------------------------------------------

def settings(inv: Invocation, sys_ds: int | None = None) -> Settings:
    """The host-side policy from ``lvmsnap.conf`` (keys and defaults: :mod:`.settings`)."""
    return Settings.from_config(inv.config)


# --- calling the host side -------------------------------------------------------------------

def host_call(inv: Invocation, host: str | None, request, input: bytes = b"") -> Result:
    """Send ``request`` to the privileged ``lvmsnap-<command>`` on ``host`` (None: here)."""
    return remote.call_privileged(inv.runner.on(host), f"lvmsnap-{request.COMMAND}",
                                  request.to_json(),
                                  program=front_end(inv.config, "PRIVILEGED"), payload=input)


# --- reading oned's arguments and the VM -------------------------------------------------------

def read_vm(inv: Invocation, vmid: int) -> VM:
    """``onevm show -x VMID`` on the front-end, the way stock drivers read VM data."""
    argv = [*front_end(inv.config, "ONEVM"), "show", "-x", str(vmid)]
    try:
        out = inv.runner.on(None).output(argv)
    except CommandError as err:
        raise DriverError(f"cannot read VM {vmid}: {err.reason}") from None
    return VM.from_element(parse_xml(out, f"onevm show -x {vmid}"))


def host_of(path: HostPath, what: str) -> str:
    if path.host is None:
        raise ProtocolError(f"{what} {path} has no host: expected host:/path")
    return path.host


def start(inv: Invocation, log: DriverLog, names: list[str], vmid_name: str = "VMID"):
    """Check arity, parse and announce the VM id (so our log lines reach the VM log)."""
    args = expect_args(inv.args, names, inv.action)
    log.vmid = parse_id(args[vmid_name], "VM id")
    return args, log.vmid


def disk_target(text: str) -> tuple[HostPath, int, int]:
    """A ``host:…/<sys ds>/<vmid>/disk.<i>`` argument: path, disk id, system DS id."""
    dst = parse_host_path(text, "disk path")
    host_of(dst, "disk path")
    return dst, disk_id_from_path(dst.path), system_ds_from_path(dst.path)




# --- actions ---------------------------------------------------------------------------------

def _clone_or_ln(inv: Invocation, log: DriverLog, command: str) -> int:
    args, vmid = start(inv, log, ["SRC", "DST", "VMID", "DSID"])
    parse_id(args["DSID"], "datastore id")
    src = parse_host_path(args["SRC"], "image source")
    dst, disk_id, sys_ds = disk_target(args["DST"])
    size_mb = read_vm(inv, vmid).disk(disk_id).size_mb
    kind = rq.Clone if command == "clone" else rq.Ln
    host_call(inv, dst.host, kind(settings(inv), vmid, sys_ds, src=src.path, dst=dst.path,
                                  disk_id=disk_id, size_mb=size_mb))
    return 0


def clone(inv: Invocation, log: DriverLog) -> int:
    """``clone fe:SRC host:DST VMID DSID``: a snapshot of the host's cache of the image."""
    return _clone_or_ln(inv, log, "clone")


def ln(inv: Invocation, log: DriverLog) -> int:
    """``ln fe:SRC host:DST VMID DSID``: a persistent image gets its own volume."""
    return _clone_or_ln(inv, log, "ln")


#: xfsprogs 5.19 and later refuse filesystems under 300 MB
XFS_MIN_MB = 300
#: what a small disk gets when XFS is only the default (no DISK/FS): ext4 works at any size
SMALL_DISK_FS = "ext4"


def mkimage_fs(fmt: str, disk_fs: str | None, default_fs: str, size_mb: int = XFS_MIN_MB) -> str:
    """The filesystem of a volatile disk: DISK/FS, else a legacy FORMAT naming one, else the
    conf default (``xfs``); ``raw`` leaves the volume unformatted.

    XFS cannot be smaller than 300 MB: a disk under that size whose XFS is only the default
    gets ext4; one whose DISK/FS asks for XFS is refused with the reason.
    """
    # FORMAT is the image format (raw, qcow2) since 4.x; in 3.x it named the filesystem
    legacy = fmt if fmt in SUPPORTED_FS else None
    for candidate, explicit in ((disk_fs, True), (legacy, True), (default_fs, False)):
        if candidate:
            lowered = candidate.lower()
            if lowered not in MKIMAGE_FS:
                raise DriverError(f"unsupported filesystem {candidate!r} for a volatile disk "
                                  f"(supported: {', '.join(MKIMAGE_FS)})")
            if lowered == "xfs" and size_mb < XFS_MIN_MB:
                if explicit:
                    raise DriverError(f"XFS needs at least {XFS_MIN_MB} MB (xfsprogs refuses "
                                      f"smaller filesystems); this disk has {size_mb} MB: "
                                      "use FS=ext4 or a larger SIZE")
                return SMALL_DISK_FS
            return lowered
    return "raw"


def _make_volume(inv: Invocation, log: DriverLog, size_text: str, dst_text: str, vmid: int,
                 fs_type: str) -> int:
    size_mb = parse_size_mb(size_text, "disk size")
    dst, disk_id, sys_ds = disk_target(dst_text)
    host_call(inv, dst.host, rq.Mkimage(settings(inv), vmid, sys_ds, dst=dst.path,
                                        disk_id=disk_id, size_mb=size_mb, fs=fs_type))
    return 0


def mkimage(inv: Invocation, log: DriverLog) -> int:
    """``mkimage SIZE FORMAT host:DST VMID DSID``: a scratch disk (XFS unless asked otherwise)."""
    args, vmid = start(inv, log, ["SIZE", "FORMAT", "DST", "VMID", "DSID"])
    disk_id = disk_id_from_path(parse_host_path(args["DST"], "disk path").path)
    fmt = args["FORMAT"].lower()
    disk_fs = None if fmt == "swap" else read_vm(inv, vmid).disk(disk_id).fs
    size_mb = parse_size_mb(args["SIZE"], "disk size")
    fs_type = "swap" if fmt == "swap" else mkimage_fs(
        fmt, disk_fs, front_end(inv.config, "MKIMAGE_DEFAULT_FS"), size_mb)
    return _make_volume(inv, log, args["SIZE"], args["DST"], vmid, fs_type)


def mkswap(inv: Invocation, log: DriverLog) -> int:
    """``mkswap SIZE host:DST VMID DSID``."""
    args, vmid = start(inv, log, ["SIZE", "DST", "VMID", "DSID"])
    return _make_volume(inv, log, args["SIZE"], args["DST"], vmid, "swap")


def delete(inv: Invocation, log: DriverLog) -> int:
    """``delete host:PATH VMID DSID``: a disk's volume and link, or the VM directory."""
    args, vmid = start(inv, log, ["PATH", "VMID", "DSID"])
    path = parse_host_path(args["PATH"], "path")
    sys_ds = system_ds_from_path(path.path)
    host_call(inv, host_of(path, "path"), rq.Delete(settings(inv), vmid, sys_ds,
                                                    path=path.path,
                                                    is_disk=is_disk_path(path.path)))
    return 0


def mv(inv: Invocation, log: DriverLog) -> int:
    """``mv SRC DST VMID DSID`` within one host (the VG is host-local)."""
    args, vmid = start(inv, log, ["SRC", "DST", "VMID", "DSID"])
    src = parse_host_path(args["SRC"], "source")
    dst = parse_host_path(args["DST"], "destination")
    if src.host != dst.host:
        raise DriverError(f"lvmsnap keeps VM disks in host-local volume groups: cannot move "
                          f"{src} to another host (use live migration)")
    if system_ds_from_path(src.path) != system_ds_from_path(dst.path):
        raise DriverError("lvmsnap cannot move a VM between system datastores")
    request = rq.Mv(settings(inv), vmid, system_ds_from_path(dst.path), src=src.path,
                    dst=dst.path, is_disk=is_disk_path(src.path))
    host_call(inv, host_of(dst, "destination"), request)
    return 0


def mvds(inv: Invocation, log: DriverLog) -> int:
    """``mvds host:SRC DST VMID DSID``: write a persistent disk back to its image."""
    args, vmid = start(inv, log, ["SRC", "DST", "VMID", "DSID"])
    return _save(inv, args["SRC"], args["DST"], vmid, rq.Mvds)


def cpds(inv: Invocation, log: DriverLog) -> int:
    """``cpds host:SRC DST SNAPID VMID DSID``: save a disk as a new image."""
    args, vmid = start(inv, log, ["SRC", "DST", "SNAPID", "VMID", "DSID"])
    if args["SNAPID"] not in ("-1", "-"):
        parse_id(args["SNAPID"], "snapshot id")
        raise DriverError("lvmsnap has no disk snapshots: cannot save a snapshot")
    return _save(inv, args["SRC"], args["DST"], vmid, rq.Cpds)


def _save(inv: Invocation, src_text: str, dst_text: str, vmid: int, kind) -> int:
    src, disk_id, sys_ds = disk_target(src_text)
    dst = parse_host_path(dst_text, "image path")
    host_call(inv, src.host, kind(settings(inv), vmid, sys_ds, src=src.path, dst=dst.path,
                                  disk_id=disk_id))
    return 0


def resize(inv: Invocation, log: DriverLog) -> int:
    """``resize host:DISK SIZE VMID DSID``: grow a thin or persistent disk."""
    args, vmid = start(inv, log, ["DISK", "SIZE", "VMID", "DSID"])
    disk, _, sys_ds = disk_target(args["DISK"])
    host_call(inv, disk.host, rq.Resize(settings(inv), vmid, sys_ds, path=disk.path,
                                        size_mb=parse_size_mb(args["SIZE"], "disk size")))
    return 0


def context(inv: Invocation, log: DriverLog) -> int:
    """``context CTX [FILES...] host:DST VMID DSID``: the CONTEXT ISO as ``disk.<N>``."""
    args = expect_args(inv.args, ["DST", "VMID", "DSID"], "context", variadic="SOURCES")
    log.vmid = vmid = parse_id(args["VMID"], "VM id")
    sources = args["SOURCES"]
    if not sources:
        raise ProtocolError("context expects the context.sh path before the destination")
    dst, _, sys_ds = disk_target(args["DST"])
    iso = build_context_iso(inv, sources)
    host_call(inv, dst.host, rq.Context(settings(inv), vmid, sys_ds, dst=dst.path), input=iso)
    return 0


def context_file(source: str) -> tuple[str, str]:
    """``/path`` or ``/path:'name'`` (FILES_DS) → (path on the front-end, name in the ISO)."""
    path, sep, name = source.partition(":")
    name = name.strip("'") if sep else os.path.basename(path)
    if not path.startswith("/") or not name or "/" in name or name in (".", ".."):
        raise ProtocolError(f"invalid context file {source!r}")
    return path, name


def build_context_iso(inv: Invocation, sources: list[str]) -> bytes:
    tool = find_iso_tool(front_end(inv.config, "MKISOFS"))
    if tool is None:
        raise DriverError("neither genisoimage nor xorriso is installed on the front-end")
    with tempfile.TemporaryDirectory(prefix="vaf-context-") as work:
        tree = os.path.join(work, "iso")
        os.mkdir(tree)
        for source in sources:
            path, name = context_file(source)
            try:
                shutil.copyfile(path, os.path.join(tree, name))
            except OSError as err:
                raise DriverError(f"cannot read context file {path}: {err.strerror}") from None
        output = os.path.join(work, "context.iso")
        inv.runner.on(None).run(iso_argv(tool, output, tree))
        with open(output, "rb") as handle:
            return handle.read()


def _migrate_args(inv: Invocation, log: DriverLog):
    names = ["SRC_HOST", "DST_HOST", "SYSDIR", "VMID", "DSID"]
    # migrate_other passes the calling TM's name as a 6th word: accept and ignore it
    argv = inv.args[:5] if len(inv.args) == 6 else inv.args
    args = expect_args(argv, names, inv.action)
    log.vmid = vmid = parse_id(args["VMID"], "VM id")
    sysdir = parse_host_path(args["SYSDIR"], "VM directory").path
    sys_ds = system_ds_from_path(sysdir)
    return (parse_host(args["SRC_HOST"], "source host"),
            parse_host(args["DST_HOST"], "destination host"), sysdir, vmid, sys_ds)


def migrate_disks(data: bytes) -> list[list[int]]:
    """``[[disk id, size MB or 0], ...]`` from the base64 VM XML on stdin."""
    vm = VM.from_element(decode_payload(data, "VM payload"))
    return [[d.disk_id, d.size_mb or 0] for d in vm.disks]


def premigrate(inv: Invocation, log: DriverLog) -> int:
    """Make the VM's disks exist on the destination host before the hypervisor copies them."""
    _, dst_host, sysdir, vmid, sys_ds = _migrate_args(inv, log)
    disks = migrate_disks(inv.read_stdin("VM payload"))
    host_call(inv, dst_host, rq.Premigrate(settings(inv), vmid, sys_ds, sysdir=sysdir,
                                           disks=disks))
    return 0


def _after_migration(inv: Invocation, log: DriverLog, kind, on_source: bool) -> int:
    src_host, dst_host, sysdir, vmid, sys_ds = _migrate_args(inv, log)
    inv.read_stdin("VM payload")  # oned sends it; these steps need only the VM dir
    host_call(inv, src_host if on_source else dst_host,
              kind(settings(inv), vmid, sys_ds, sysdir=sysdir))
    return 0


def postmigrate(inv: Invocation, log: DriverLog) -> int:
    """Drop the VM's volumes on the source host once it runs on the destination."""
    return _after_migration(inv, log, rq.Postmigrate, on_source=True)


def failmigrate(inv: Invocation, log: DriverLog) -> int:
    """Undo premigrate on the destination host."""
    return _after_migration(inv, log, rq.Failmigrate, on_source=False)


def monitor(inv: Invocation, log: DriverLog) -> int:
    """``monitor DSID`` with the base64 DS_DRIVER_ACTION_DATA on stdin (system datastore).

    oned runs this only for a *shared* system datastore; for lvmsnap's non-shared one the
    scheduler's figures come from each host's probe (:mod:`.probe`). Like fs_lvm, asks the
    first host of BRIDGE_LIST, or this machine. Prints what is free for new disks (the pool's
    under THIN_OVERCOMMIT, see :mod:`.monitor`), the cache, pool and snapshot fullness.
    """
    args = expect_args(inv.args, ["DSID"], "monitor")
    ds_id = parse_id(args["DSID"], "datastore id")
    action = DsDriverAction.from_payload(inv.read_stdin("datastore payload"))
    if action.datastore.ds_id != ds_id:
        raise ProtocolError(f"monitor called for datastore {ds_id} with the payload of "
                            f"datastore {action.datastore.ds_id}")
    hosts = action.datastore.template.get("BRIDGE_LIST", "").split()
    request = rq.Monitor(settings(inv), None, ds_id,
                         warn_percent=front_end(inv.config, "MONITOR_WARN_PERCENT"))
    result = host_call(inv, hosts[0] if hosts else None, request)
    sys.stdout.write(result.stdout)
    return 0


def noop(inv: Invocation, log: DriverLog) -> int:
    """Nothing to do: LVM activates caches and VM volumes itself at boot (no skip flag)."""
    return 0


def not_supported(inv: Invocation, log: DriverLog) -> int:
    raise DriverError(f"lvmsnap does not support {inv.action} (no disk snapshots or backups "
                      "on lvmsnap datastores)")


Action = Callable[[Invocation, DriverLog], int]

ACTIONS: dict[str, Action] = {
    "clone": clone,
    "ln": ln,
    "mkimage": mkimage,
    "mkswap": mkswap,
    "context": context,
    "delete": delete,
    "mv": mv,
    "mvds": mvds,
    "cpds": cpds,
    "resize": resize,
    "premigrate": premigrate,
    "postmigrate": postmigrate,
    "failmigrate": failmigrate,
    "monitor": monitor,
    "activate": noop,
    **{name: not_supported for name in (
        "snap_create", "snap_create_live", "snap_delete", "snap_revert", "restore",
        "prebackup", "prebackup_live", "postbackup", "postbackup_live")},
}

