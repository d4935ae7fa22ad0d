"""The worker's boot steps in a scratch root: every command observed through the runner.

The programs a VM would run (hostname, blkid, swapon, mount, systemctl, curl, and ssh when
no real sshd is involved) are small stubs first on PATH that answer like the real ones and
change the scratch root's /proc files; a guard observer fails the test if anything else
would run, so no test can touch this machine's host name or mounts.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from vaf.guest.context import format_context
from vaf.guest.worker import GuestError, Worker, main, settings_from_context, slurmd_options
from vaf.host.runner import Runner

REPO = Path(__file__).resolve().parent.parent
KEY = b"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"
STUBBED = ("hostname", "blkid", "swapon", "mount", "umount", "systemctl", "curl", "ssh")

STUB = r'''#!{python}
import json, os, sys
name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
state, root = os.environ["STUB_STATE"], os.environ["STUB_ROOT"]
def read(f, default=""):
    p = os.path.join(state, f)
    return open(p).read() if os.path.exists(p) else default
def append(path, line):
    with open(path, "a") as h: h.write(line + "\n")
append(os.path.join(state, "calls.jsonl"), json.dumps([name] + args))
if name == "hostname":
    if args: open(os.path.join(state, "hostname"), "w").write(args[0])
    else: print(read("hostname", "debian"))
elif name == "blkid":
    kind = args[-1].split("=", 1)[1].lower()
    if kind == "context":
        print("/dev/sr0" if os.path.isdir(os.path.join(state, "cd")) else "", end="")
        sys.exit(0 if os.path.isdir(os.path.join(state, "cd")) else 2)
    out = read("blkid." + kind)
    print(out, end=""); sys.exit(0 if out else 2)
elif name == "swapon":
    append(os.path.join(root, "proc/swaps"), args[0] + " partition 1048572 0 -2")
elif name == "mount":
    append(os.path.join(root, "proc/mounts"), args[-2] + " " + args[-1] + " xfs rw 0 0")
    if args[-2] == "/dev/sr0":  # the CONTEXT CD: its files appear under the mount point
        import shutil; shutil.copytree(os.path.join(state, "cd"), args[-1], dirs_exist_ok=True)
elif name == "umount":
    mounts = os.path.join(root, "proc/mounts")
    lines = [l for l in open(mounts).read().splitlines() if l.split()[1] != args[-1]]
    open(mounts, "w").write("".join(l + "\n" for l in lines))
    for entry in os.listdir(args[-1]): os.remove(os.path.join(args[-1], entry))
elif name in ("ssh", "curl"):
    if read(name + ".sleep"):
        os.remove(os.path.join(state, name + ".sleep")); import time; time.sleep(30)
    codes = read(name + ".codes", "0").split()
    if len(codes) > 1: open(os.path.join(state, name + ".codes"), "w").write(" ".join(codes[1:]))
    if name == "ssh" and codes[0] == "0": print("vaf-gate: joined " + args[-1].split()[1])
    if codes[0] != "0":
        sys.stderr.write(read(name + ".err", "ssh: connect: Connection refused") + "\n")
    sys.exit(int(codes[0]))
'''

BLKID_SWAP = "DEVNAME=/dev/vdb\nUUID=1111-swap\nTYPE=swap\n"
BLKID_XFS = ("DEVNAME=/dev/vdc\nUUID=2222-xfs\nBLOCK_SIZE=512\nTYPE=xfs\n\n"
             "DEVNAME=/dev/vda1\nUUID=0000-root\nTYPE=xfs\n")


@pytest.fixture
def vm(tmp_path, monkeypatch):
    """A scratch root with stubbed programs; returns (root, state dir, observed commands)."""
    root, state, bin_dir = tmp_path / "root", tmp_path / "state", tmp_path / "bin"
    for d in (root / "proc", root / "etc", state, bin_dir):
        d.mkdir(parents=True)
    (root / "proc/swaps").write_text("Filename Type Size Used Priority\n")
    (root / "proc/mounts").write_text("/dev/vda1 / xfs rw 0 0\n")
    (state / "blkid.swap").write_text(BLKID_SWAP)
    (state / "blkid.xfs").write_text(BLKID_XFS)
    stub = bin_dir / "stub"
    stub.write_text(STUB.replace("{python}", sys.executable))
    stub.chmod(0o755)
    for name in STUBBED:
        (bin_dir / name).symlink_to(stub)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("STUB_STATE", str(state))
    monkeypatch.setenv("STUB_ROOT", str(root))
    return root, state


def guarded_runner(observed: list) -> Runner:
    def guard(host, argv):
        assert argv[0] in STUBBED, f"would run a real {argv[0]} on the test machine"
        observed.append(argv)
    return Runner().observed_by(guard)


def context(**extra) -> dict[str, str]:
    values = {"SET_HOSTNAME": "worker-17", "VAF_HEAD": "head.vaf", "VAF_CPUS": "4",
              "VAF_PROPERTIES": "cloud", "VMID": "17", "ONEGATE_ENDPOINT": "http://10.1.0.1:5030",
              "ONEGATE_TOKEN": "S3cr3t-T0ken", "VAF_HEAD_HOST_KEY": "ssh-ed25519 AAAAhostkey",
              "VAF_JOIN_KEY_BASE64": base64.b64encode(KEY).decode()}
    values.update(extra)
    return {k: v for k, v in values.items() if v is not None}


def worker(root: Path, observed: list, sleeps: list | None = None, **extra) -> Worker:
    settings = settings_from_context(context(**extra))
    return Worker(settings, root, guarded_runner(observed), log=lambda m: None,
                  sleep=(sleeps if sleeps is not None else []).append)


def programs(observed):
    return [" ".join(argv[:2]) if argv[0] != "ssh" else "ssh" for argv in observed]


def test_first_boot_runs_every_step_in_order(vm):
    root, state = vm
    observed: list = []
    worker(root, observed).run_all()
    assert programs(observed) == [
        "hostname", "hostname worker-17", "blkid -o", "swapon /dev/vdb", "blkid -o",
        "mount -t", "ssh", "systemctl enable", "curl -sS"]
    assert observed[5] == ("mount", "-t", "xfs", "-o", "noatime,nodev,nosuid", "/dev/vdc",
                           str(root / "scratch"))
    assert observed[7] == ("systemctl", "enable", "--now", "pbs_mom")
    assert (root / "etc/hostname").read_text() == "worker-17\n"
    assert (root / "etc/fstab").read_text() == (
        "UUID=1111-swap none swap sw,nofail 0 0\n"
        "UUID=2222-xfs /scratch xfs noatime,nodev,nosuid,nofail 0 0\n")
    assert oct((root / "scratch").stat().st_mode & 0o7777) == "0o1777"
    assert (root / "var/spool/torque/server_name").read_text() == "head.vaf\n"
    assert "$pbsserver head.vaf\n" in (root / "var/spool/torque/mom_priv/config").read_text()
    assert (root / "var/lib/vaf/joined").read_text() == "head.vaf join worker-17 4 cloud\n"


def test_the_join_is_one_ssh_call_with_the_context_key_and_host_key(vm):
    root, _ = vm
    observed: list = []
    worker(root, observed).run_all()
    (ssh,) = [argv for argv in observed if argv[0] == "ssh"]
    assert ssh[-3:] == ("--", "head.vaf", "join worker-17 4 cloud")
    assert "StrictHostKeyChecking=yes" in ssh and "BatchMode=yes" in ssh
    key = root / "run/vaf/join_key"
    assert key.read_bytes() == KEY and key.stat().st_mode & 0o077 == 0
    assert (root / "run/vaf/known_hosts").read_text() == "head.vaf ssh-ed25519 AAAAhostkey\n"


def test_onegate_token_goes_through_a_private_header_file(vm):
    root, _ = vm
    observed: list = []
    worker(root, observed).run_all()
    curl = observed[-1]
    assert curl[-1] == "http://10.1.0.1:5030/vm" and "READY=YES" in curl
    assert not any("S3cr3t-T0ken" in word for word in curl)
    headers = root / "run/vaf/onegate-headers"
    assert headers.read_text() == "X-ONEGATE-TOKEN: S3cr3t-T0ken\nX-ONEGATE-VMID: 17\n"


def test_second_run_is_idempotent(vm):
    root, _ = vm
    worker(root, []).run_all()
    fstab = (root / "etc/fstab").read_text()
    observed: list = []
    worker(root, observed).run_all()
    # no second hostname change, swapon, mount or join: only queries, start and READY
    assert programs(observed) == ["hostname", "blkid -o", "blkid -o", "systemctl enable",
                                  "curl -sS"]
    assert (root / "etc/fstab").read_text() == fstab


def test_unreachable_head_is_retried_with_backoff(vm):
    root, state = vm
    (state / "ssh.codes").write_text("255 6 4 0")  # unreachable, busy (gate), batch failed
    observed: list = []
    sleeps: list = []
    worker(root, observed, sleeps).run_all()
    assert programs(observed).count("ssh") == 4
    assert sleeps == [5.0, 10.0, 20.0]
    assert programs(observed)[-2:] == ["systemctl enable", "curl -sS"]


@pytest.mark.parametrize("code", [2, 3])
def test_a_refusal_is_not_retried_and_the_batch_client_stays_down(vm, code):
    root, state = vm
    (state / "ssh.codes").write_text(f"{code} 0")
    (state / "ssh.err").write_text("vaf-gate: denied: worker-17 resolves to 10.1.0.99")
    observed: list = []
    with pytest.raises(GuestError, match="refused the join: vaf-gate: denied"):
        worker(root, observed).run_all()
    assert programs(observed)[-1] == "ssh"
    assert not (root / "var/lib/vaf/joined").exists()


def test_a_hung_head_node_is_retried_too(vm):
    root, state = vm
    (state / "ssh.sleep").write_text("yes")
    observed: list = []
    w = worker(root, observed)
    w.ssh_timeout = 0.5
    w.join()
    assert programs(observed) == ["ssh", "ssh"]
    assert (root / "var/lib/vaf/joined").exists()


def test_giving_up_after_the_last_attempt(vm):
    root, state = vm
    (state / "ssh.codes").write_text("255 255 255")
    sleeps: list = []
    with pytest.raises(GuestError, match="could not join head.vaf after 3 attempts"):
        worker(root, [], sleeps, VAF_JOIN_ATTEMPTS="3").run_all()
    assert sleeps == [5.0, 10.0]


def test_slurm_client_is_configless_and_claims_its_node(vm):
    root, _ = vm
    observed: list = []
    munge = base64.b64encode(b"m" * 1024).decode()
    worker(root, observed, VAF_BATCH="slurm", VAF_MUNGE_KEY_BASE64=munge).run_all()
    assert (root / "etc/default/slurmd").read_text() == (
        'SLURMD_OPTIONS="-Z -N worker-17 --conf-server head.vaf --conf Feature=cloud"\n')
    key = root / "etc/munge/munge.key"
    assert key.read_bytes() == b"m" * 1024 and key.stat().st_mode & 0o777 == 0o400
    assert ("systemctl", "enable", "--now", "munge", "slurmd") in observed


@pytest.mark.parametrize("mode, properties, expected", [
    ("dynamic", (), ["-Z", "-N", "w3", "--conf-server", "head"]),
    ("dynamic", ("cloud", "big"),
     ["-Z", "-N", "w3", "--conf-server", "head", "--conf", "Feature=cloud,big"]),
    # a State=CLOUD node of slurm.conf: -Z refuses the name, its features are slurm.conf's
    ("cloud", (), ["-N", "w3", "--conf-server", "head"]),
    ("cloud", ("cloud",), ["-N", "w3", "--conf-server", "head"]),
])
def test_slurmd_options(mode, properties, expected):
    assert slurmd_options(mode, "w3", "head", properties) == expected


def test_a_power_saving_node_is_claimed_without_z_and_only_at_the_end(vm):
    root, _ = vm
    observed: list = []
    worker(root, observed, VAF_BATCH="slurm", SET_HOSTNAME=None, VAF_NODE="w3",
           VAF_SLURMD_MODE="cloud").run_all()
    assert (root / "etc/default/slurmd").read_text() == (
        'SLURMD_OPTIONS="-N w3 --conf-server head.vaf"\n')
    # the gate call joins w3, and slurmd starts after it (then only OneGate)
    assert observed[-3][0] == "ssh" and observed[-3][-1] == "join w3 4 cloud"
    assert observed[-2] == ("systemctl", "enable", "--now", "munge", "slurmd")


@pytest.mark.parametrize("extra, reason", [
    ({"VAF_SLURMD_MODE": "static"}, "VAF_SLURMD_MODE must be dynamic or cloud, got 'static'"),
    ({"VAF_SLURMD_MODE": "cloud", "VAF_NODE": "w4"}, "VAF_NODE w4 is not the host name worker-17"),
])
def test_slurmd_mode_refusals(extra, reason):
    with pytest.raises(GuestError, match=reason):
        settings_from_context(context(VAF_BATCH="slurm", **extra))


def test_scratch_by_label_and_no_disks_at_all(vm):
    root, state = vm
    (state / "blkid.xfs").write_text("DEVNAME=/dev/vdc\nLABEL=other\nTYPE=xfs\n\n"
                                     "DEVNAME=/dev/vdd\nLABEL=scratch\nTYPE=xfs\n")
    observed: list = []
    worker(root, observed, VAF_SCRATCH_LABEL="scratch").mount_scratch()
    assert observed[-1][-2:] == ("/dev/vdd", str(root / "scratch"))
    (state / "blkid.swap").write_text("")
    (state / "blkid.xfs").write_text("")
    observed.clear()
    w = worker(root, observed, VAF_SCRATCH_MOUNT="/data")
    w.enable_swap()
    w.mount_scratch()
    assert programs(observed) == ["blkid -o", "blkid -o"]


def test_main_refuses_a_hostile_context_before_running_anything(vm, tmp_path):
    root, state = vm
    path = tmp_path / "context.sh"
    path.write_text(format_context(context()) + "touch /tmp/vaf-pwned\n")
    observed: list = []
    assert main(["network", "--context", str(path), "--root", str(root)],
                guarded_runner(observed)) == 2
    assert observed == []


def test_main_from_the_cd_when_no_agent_copy(vm, tmp_path):
    """The CD is mounted in a root-only directory while it is read, unmounted before any
    step runs (an old world-readable mount of it is taken down too)."""
    root, state = vm
    cd = state / "cd"
    cd.mkdir()
    (cd / "context.sh").write_text(format_context(context(ONEGATE_TOKEN=None)))
    (cd / "token.txt").write_text("cdtoken\n")
    old = root / "run/vaf/context"
    old.mkdir(parents=True)
    with open(root / "proc/mounts", "a") as mounts:
        mounts.write(f"/dev/sr0 {old} iso9660 ro 0 0\n")
    observed: list = []
    assert main(["--root", str(root)], guarded_runner(observed)) == 0
    assert "X-ONEGATE-TOKEN: cdtoken" in (root / "run/vaf/onegate-headers").read_text()
    mounted = [argv for argv in observed if argv[0] == "mount" and "/dev/sr0" in argv]
    assert len(mounted) == 1
    mount_point = Path(mounted[0][-1])
    assert mount_point.parent == root / "run/vaf" and not mount_point.exists()
    umounts = [argv[-1] for argv in observed if argv[0] == "umount"]
    assert umounts == [str(old), str(mount_point)]
    assert programs(observed).index("umount " + str(mount_point)) < programs(observed).index(
        "hostname")
    assert "sr0" not in (root / "proc/mounts").read_text()
    assert (root / "run/vaf").stat().st_mode & 0o777 == 0o700


def test_the_hook_runs_from_an_installed_image_tree_with_the_stdlib_only(vm, tmp_path):
    """install-guest copies the import closure; ``python3 -S`` has no site-packages."""
    image = tmp_path / "image"
    subprocess.run([sys.executable, str(REPO / "contextualization/install-guest"), str(image)],
                   check=True)
    lib = image / "usr/local/lib/vaf"
    assert (image / "etc/one-context.d/net-95-vaf-worker").stat().st_mode & 0o111
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import vaf.guest.worker as w; "
             "print(w.__file__); print(sorted(m for m in sys.modules if m in "
             "('lxml', 'click', 'vaf.one', 'vaf.config')))")
    out = subprocess.run([sys.executable, "-S", "-c", probe, str(lib)], check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert out == [str(lib / "vaf/guest/worker.py"), "[]"]


def test_calls_reach_the_stubs_only(vm):
    root, state = vm
    worker(root, []).run_all()
    calls = [json.loads(line)[0] for line in (state / "calls.jsonl").read_text().splitlines()]
    assert set(calls) <= set(STUBBED)


# -- secrets are root's -------------------------------------------------------------------

def test_secrets_get_their_mode_whatever_the_umask_and_never_follow_a_trap(vm, tmp_path):
    root, state = vm
    w = worker(root, [], VAF_BATCH="slurm",
               VAF_MUNGE_KEY_BASE64=base64.b64encode(b"m" * 32).decode())
    bait = tmp_path / "bait"
    bait.write_text("not yours\n")
    (root / "run/vaf").mkdir(parents=True)
    (root / "run/vaf/.join_key.vaf-tmp").symlink_to(bait)  # someone's trap
    old_umask = os.umask(0)
    try:
        w.install_secrets()
    finally:
        os.umask(old_umask)
    modes = {name: (root / name).stat().st_mode & 0o777
             for name in ("run/vaf", "run/vaf/join_key", "run/vaf/onegate-headers",
                          "etc/munge/munge.key")}
    assert modes == {"run/vaf": 0o700, "run/vaf/join_key": 0o600,
                     "run/vaf/onegate-headers": 0o600, "etc/munge/munge.key": 0o400}
    assert (root / "run/vaf/join_key").read_bytes() == KEY
    assert bait.read_text() == "not yours\n"


PRIVATE_MOUNT_SCRIPT = r'''
import json, os, subprocess, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from vaf.guest.worker import Worker, open_context, settings_from_context
from vaf.guest.context import read_context
from vaf.host.runner import Runner
root, device = Path(sys.argv[2]), sys.argv[3]
def nobody_reads(path):
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "cat", str(path)], capture_output=True).returncode == 0
seen = {}
runner = Runner()
with open_context(root, runner) as context:
    seen["mounted"] = device in open("/proc/self/mounts").read()
    seen["root reads the CD"] = "VAF_HEAD" in context.read_text()
    seen["nobody reads the CD"] = nobody_reads(context)
    settings = settings_from_context(read_context(str(context)), context.parent)
Worker(settings, root, runner, log=lambda m: None).install_secrets()
seen["mounted after"] = device in open("/proc/self/mounts").read()
for name in ("run/vaf/join_key", "run/vaf/onegate-headers", "etc/munge/munge.key"):
    seen[f"root reads {name}"] = (root / name).is_file()
    seen[f"nobody reads {name}"] = nobody_reads(root / name)
print(json.dumps(seen))
'''


def _loop_device_with_a_context_disk(tmp_path: Path, files: dict[str, str]) -> str | None:
    """A real disk labelled CONTEXT, its files world-readable as on OpenNebula's ISO. This
    kernel has no iso9660 driver: an ext4 image carries the same files and label."""
    image = tmp_path / "context.img"
    tree = tmp_path / "cd"
    tree.mkdir()
    for name, text in files.items():
        (tree / name).write_text(text)
        (tree / name).chmod(0o644)
    made = subprocess.run(["mkfs.ext4", "-q", "-L", "CONTEXT", "-d", str(tree), str(image),
                           "4M"], capture_output=True)
    if made.returncode != 0:
        return None
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True,
                          text=True)
    return loop.stdout.strip() if loop.returncode == 0 else None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop device, mount namespace)")
def test_no_secret_is_readable_by_another_user_and_the_cd_is_unmounted(tmp_path):
    """Real mount of a real CONTEXT disk in a private mount namespace; an unprivileged user
    (nobody) tries to read the CD while it is mounted and every secret afterwards."""
    ctx = context(VAF_BATCH="slurm", ONEGATE_TOKEN=None,
                  VAF_MUNGE_KEY_BASE64=base64.b64encode(b"m" * 32).decode(),
                  VAF_JOIN_KEY_BASE64=None, VAF_JOIN_KEY_FILE="join.key")
    device = _loop_device_with_a_context_disk(tmp_path, {
        "context.sh": format_context(ctx), "join.key": KEY.decode(), "token.txt": "t0ken\n"})
    if device is None:
        pytest.skip("no loop device or mkfs.ext4 here")
    try:
        root = Path(tempfile.mkdtemp(prefix="vaf-guest-root-"))  # traversable by nobody
        root.chmod(0o755)
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
             PRIVATE_MOUNT_SCRIPT, str(REPO), str(root), device],
            capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        seen = json.loads(result.stdout)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)
        shutil.rmtree(root, ignore_errors=True)
    assert seen == {
        "mounted": True, "root reads the CD": True, "nobody reads the CD": False,
        "mounted after": False,
        "root reads run/vaf/join_key": True, "nobody reads run/vaf/join_key": False,
        "root reads run/vaf/onegate-headers": True,
        "nobody reads run/vaf/onegate-headers": False,
        "root reads etc/munge/munge.key": True, "nobody reads etc/munge/munge.key": False}
