#!/bin/bash
# Build the vaf test hypervisor: a small Debian guest with a real kernel (device-mapper, 9p,
# bridge, ebtables) that tests boot under qemu.  See shared/reference/testbed.md, section 2.
#
# Everything goes into ${VAF_TESTBED_DIR:-/var/cache/vaf-testbed}, outside the repository, so
# it survives between runs.  Each step is skipped when its output is current; the whole build
# holds an exclusive flock on the build dir so concurrent test sessions never race.
#
# Environment:
#   VAF_TESTBED_DIR             build dir (default /var/cache/vaf-testbed)
#   VAF_TESTBED_KERNEL_META     kernel metapackage (default linux-image-amd64, see below)
#   VAF_TESTBED_SUITE           Debian suite of the guest (default: the host's codename)
#   VAF_TESTBED_MIRROR          Debian archive URL (default: taken from the host's apt sources)
#   VAF_TESTBED_EXTRA_PACKAGES  comma-separated extra packages for the guest rootfs
#
# Output: vmlinuz (+ vmlinux when the kernel can boot it), initrd.img, root.img,
# id_ed25519{,.pub}, kver, kpkg.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GUEST_SRC="$HERE/guest"
DIR=${VAF_TESTBED_DIR:-/var/cache/vaf-testbed}

# The generic kernel, not linux-image-cloud-amd64: the cloud flavour is built without
# CONFIG_NET_9P, and the shared datastore directory needs 9p.  Both have dm-thin-pool,
# dm-snapshot, bridge, ebtables and nf_tables-bridge as modules.
KERNEL_META=${VAF_TESTBED_KERNEL_META:-linux-image-amd64}

# Bump ROOTFS_VERSION (or change the package list) to force a new debootstrap.
ROOTFS_VERSION=1
ROOTFS_PACKAGES="lvm2,thin-provisioning-tools,xfsprogs,e2fsprogs,openssh-server,python3,\
ebtables,iptables,nftables,arping,iproute2,kmod,udev,sudo,procps,bridge-utils,iputils-ping,\
util-linux"
if [[ -n ${VAF_TESTBED_EXTRA_PACKAGES:-} ]]; then
    ROOTFS_PACKAGES="$ROOTFS_PACKAGES,$VAF_TESTBED_EXTRA_PACKAGES"
fi
HOST_PACKAGES=(qemu-system-x86 debootstrap busybox-static cpio openssh-client e2fsprogs)

# Module trees nobody needs in a headless storage/network test guest; pruning them keeps
# root.img (and mkfs time) small.  Paths are relative to lib/modules/<kver>/kernel.
PRUNED_MODULE_DIRS=(sound drivers/gpu drivers/media drivers/infiniband drivers/staging
    drivers/iio drivers/comedi drivers/usb drivers/hid drivers/net/wireless
    drivers/net/ethernet drivers/bluetooth drivers/isdn drivers/hwmon drivers/mtd
    drivers/video net/wireless net/mac80211 net/bluetooth)

# The virtio root disk chain plus ext4 (a module in the generic kernel, and it cannot mount
# without a crc32c driver, which it does not declare as a dependency); dependencies are
# resolved from modules.dep so the load order is always right (testbed.md pitfall 3).
INITRAMFS_MODULES=(virtio_pci virtio_blk crc32c_generic ext4)

GUEST_NAME=testhv
ONEADMIN_UID=9869

log() { printf '[build] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

CURRENT_STEP=""
# Name the step that broke, whatever broke it (a failed command under set -e, or die).
on_exit() {
    local rc=$?
    if [[ $rc != 0 ]]; then log "FAILED in step '${CURRENT_STEP:-setup}' (exit $rc)"; fi
}
trap on_exit EXIT

# Each step NAME has current_NAME (true when its output is up to date) and build_NAME.
# step NAME: build it unless current, and print how long that took.
STEPS=(host kernel vmlinux rootfs customise initramfs image)
STEP_RESULT=""
step() {
    local name=$1 start ms
    CURRENT_STEP=$name
    start=$(date +%s%N)
    if "current_$name"; then STEP_RESULT="skipped (current)"; else "build_$name"; fi
    ms=$((($(date +%s%N) - start) / 1000000))
    log "$(printf '%-10s %4d.%01ds  %s' "$name" $((ms / 1000)) $((ms % 1000 / 100)) \
        "${STEP_RESULT:-done}")"
    STEP_RESULT=""
}

all_current() {
    local name
    for name in "${STEPS[@]}"; do "current_$name" || return 1; done
}

# ---------------------------------------------------------------------------------------
# Step 1: host packages
host_has_packages() {
    local p
    for p in "${HOST_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
            return 1
    done
}

apt_updated=0
apt_update_once() {
    # Stale package lists name .debs the archive no longer has (testbed.md 2.2).
    if [[ $apt_updated == 0 ]]; then
        apt-get update -q >/dev/null
        apt_updated=1
    fi
}

current_host() { host_has_packages; }

build_host() {
    [[ $(id -u) == 0 ]] || die "installing host packages needs root: ${HOST_PACKAGES[*]}"
    apt_update_once
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${HOST_PACKAGES[@]}" >/dev/null
}

# ---------------------------------------------------------------------------------------
# Step 2: kernel, only unpacked (never installed on the host)
current_kernel() {
    [[ -s $DIR/vmlinuz && -s $DIR/kver ]] &&
        [[ -d $DIR/kernel/x/lib/modules/$(cat "$DIR/kver") ]]
}

build_kernel() {
    apt_update_once
    local kpkg kver tmp
    # Resolve the metapackage's current dependency: never pin a version.
    kpkg=$(apt-cache depends "$KERNEL_META" 2>/dev/null |
        awk '/Depends: linux-image-/{print $2; exit}') || true
    [[ -n $kpkg ]] || die "cannot resolve a kernel package from $KERNEL_META"
    tmp="$DIR/kernel.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if ! (cd "$tmp" && apt-get download -q "$kpkg" 2>"$tmp/apt.err"); then
        cat "$tmp/apt.err" >&2
        die "apt-get download $kpkg failed"
    fi
    # It warns about _apt sandboxing when downloading into a root-only dir: harmless.
    grep -v 'unsandboxed' "$tmp/apt.err" >&2 || true
    rm -f "$tmp/apt.err"
    compgen -G "$tmp/${kpkg}_*.deb" >/dev/null || die "apt-get download $kpkg produced no .deb"
    dpkg -x "$tmp/${kpkg}"_*.deb "$tmp/x"
    kver=$(ls "$tmp/x/lib/modules")
    [[ -f $tmp/x/boot/vmlinuz-$kver ]] || die "no vmlinuz-$kver in $kpkg"
    rm -f "$tmp/${kpkg}"_*.deb
    rm -rf "$DIR/kernel"
    mv "$tmp" "$DIR/kernel"
    cp "$DIR/kernel/x/boot/vmlinuz-$kver" "$DIR/vmlinuz.tmp"
    mv "$DIR/vmlinuz.tmp" "$DIR/vmlinuz"
    echo "$kpkg" >"$DIR/kpkg"
    echo "$kver" >"$DIR/kver"
}

# ---------------------------------------------------------------------------------------
# Step 2b: the uncompressed kernel.  Under TCG, decompressing the xz bzImage takes 4-15 s of
# every boot; qemu boots an ELF vmlinux directly through its PVH entry point in well under
# a second.  Only for kernels built with CONFIG_PVH; otherwise tests boot vmlinuz.
# Print "<magic bytes as \x escapes> <decompressor argv>" for the kernel's compression.
kernel_payload_magic() {
    local config=$1
    case $(grep -E '^CONFIG_KERNEL_(XZ|ZSTD|GZIP)=y' "$config") in
        CONFIG_KERNEL_XZ=y) printf '%s\n' '\xfd7zXZ xz -dc --single-stream' ;;
        CONFIG_KERNEL_ZSTD=y) printf '%s\n' '\x28\xb5\x2f\xfd zstd -qdc' ;;
        CONFIG_KERNEL_GZIP=y) printf '%s\n' '\x1f\x8b\x08 gzip -dc' ;;
    esac
}

kernel_config() { echo "$DIR/kernel/x/boot/config-$(cat "$DIR/kver")"; }

vmlinux_possible() {
    local config
    config=$(kernel_config)
    grep -q '^CONFIG_PVH=y' "$config" && [[ -n $(kernel_payload_magic "$config") ]]
}

current_vmlinux() {
    [[ -s $DIR/vmlinux && $DIR/vmlinux -nt $DIR/vmlinuz ]] ||
        { [[ ! -e $DIR/vmlinux ]] && ! vmlinux_possible; }
}

build_vmlinux() {
    local magic decompress offset
    rm -f "$DIR/vmlinux"
    if ! vmlinux_possible; then
        STEP_RESULT="not possible for this kernel: tests boot vmlinuz"
        return
    fi
    read -r magic decompress < <(kernel_payload_magic "$(kernel_config)")
    # The compressed payload starts at the first occurrence of its format's magic bytes.
    offset=$(LC_ALL=C grep -abo "$(printf '%b' "$magic")" "$DIR/vmlinuz" | head -n1 | cut -d: -f1)
    [[ -n $offset ]] || die "no compressed payload in vmlinuz"
    # Trailing bytes after the stream make the decompressor complain: only the ELF check counts.
    tail -c +$((offset + 1)) "$DIR/vmlinuz" | $decompress >"$DIR/vmlinux.tmp" 2>/dev/null || true
    [[ $(head -c 4 "$DIR/vmlinux.tmp" | od -An -c | tr -d ' ') == '177ELF' ]] ||
        die "extracting vmlinux from vmlinuz gave no ELF image"
    mv "$DIR/vmlinux.tmp" "$DIR/vmlinux"
}

# ---------------------------------------------------------------------------------------
# Step 3: debootstrap minbase rootfs
debian_mirror() {
    if [[ -n ${VAF_TESTBED_MIRROR:-} ]]; then echo "$VAF_TESTBED_MIRROR"; return; fi
    local url=""
    # deb822 sources: the URIs of the first stanza that carries the plain suite.
    if compgen -G '/etc/apt/sources.list.d/*.sources' >/dev/null; then
        url=$(awk -v suite="$SUITE" '
            /^$/ {uri=""; ok=0}
            /^URIs:/ {uri=$2}
            /^Suites:/ {for (i = 2; i <= NF; i++) if ($i == suite) ok=1}
            uri != "" && ok {print uri; exit}' /etc/apt/sources.list.d/*.sources)
    fi
    if [[ -z $url && -f /etc/apt/sources.list ]]; then
        url=$(awk -v suite="$SUITE" '$1 == "deb" && $3 == suite {print $2; exit}' \
            /etc/apt/sources.list)
    fi
    [[ -n $url ]] || die "no Debian mirror for suite $SUITE in the apt sources"
    echo "$url"
}

rootfs_stamp() { printf 'v%s %s %s\n' "$ROOTFS_VERSION" "$SUITE" "$ROOTFS_PACKAGES"; }

current_rootfs() {
    [[ -d $DIR/rootfs && "$(cat "$DIR/rootfs.stamp" 2>/dev/null)" == "$(rootfs_stamp)" ]]
}

build_rootfs() {
    local mirror tmp="$DIR/rootfs.tmp"
    mirror=$(debian_mirror)
    rm -rf "$tmp"
    # Quiet unless it fails: then its log names the package that broke.
    if ! debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" \
        "$SUITE" "$tmp" "$mirror" >"$DIR/debootstrap.log" 2>&1; then
        tail -n 30 "$DIR/debootstrap.log" >&2
        die "debootstrap failed (full log: $DIR/debootstrap.log)"
    fi
    rm -f "$tmp"/var/cache/apt/archives/*.deb
    rm -rf "$DIR/rootfs" "$DIR/custom.stamp"
    mv "$tmp" "$DIR/rootfs"
    rootfs_stamp >"$DIR/rootfs.stamp"
}

# ---------------------------------------------------------------------------------------
# Step 4: customise the rootfs (re-run whenever the guest scripts or this script change)
custom_stamp() {
    {
        cat "$DIR/rootfs.stamp" "$DIR/kver" "${BASH_SOURCE[0]}"
        # relative names: a clone elsewhere (CI) must not look changed
        (cd "$GUEST_SRC" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
    } | sha256sum | cut -d' ' -f1
}

install_modules() {
    local kver=$1 r=$DIR/rootfs d
    rm -rf "$r/lib/modules"
    mkdir -p "$r/lib/modules"
    cp -a "$DIR/kernel/x/lib/modules/$kver" "$r/lib/modules/"
    for d in "${PRUNED_MODULE_DIRS[@]}"; do rm -rf "$r/lib/modules/$kver/kernel/$d"; done
    # The .deb ships no modules.dep; use the guest's depmod (the host may lack kmod).
    chroot "$r" depmod "$kver"
}

install_guest_scripts() {
    local r=$DIR/rootfs
    install -m 0755 "$GUEST_SRC/init" "$r/sbin/vaf-init"
    install -m 0755 "$GUEST_SRC/poweroff" "$r/sbin/vaf-poweroff"
}

configure_identity() {
    local r=$DIR/rootfs
    echo "$GUEST_NAME" >"$r/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$GUEST_NAME" >"$r/etc/hosts"
    ln -sf /proc/self/mounts "$r/etc/mtab"
}

configure_oneadmin() {
    local r=$DIR/rootfs
    if ! chroot "$r" getent passwd oneadmin >/dev/null; then
        chroot "$r" useradd -m -u "$ONEADMIN_UID" -U -s /bin/bash oneadmin
    fi
    # '*' rather than useradd's '!': sshd refuses key logins to "locked" accounts.
    chroot "$r" usermod -p '*' oneadmin
    echo 'oneadmin ALL=(ALL) NOPASSWD: ALL' >"$r/etc/sudoers.d/oneadmin"
    chmod 0440 "$r/etc/sudoers.d/oneadmin"
}

authorize_key() {
    local r=$DIR/rootfs home=$1 owner=$2
    install -d -m 0700 "$r$home/.ssh"
    install -m 0600 "$DIR/id_ed25519.pub" "$r$home/.ssh/authorized_keys"
    chroot "$r" chown -R "$owner:$owner" "$home/.ssh"
}

configure_ssh() {
    local r=$DIR/rootfs
    if [[ ! -s $DIR/id_ed25519 ]]; then
        rm -f "$DIR/id_ed25519" "$DIR/id_ed25519.pub"
        ssh-keygen -q -t ed25519 -N '' -C vaf-testbed -f "$DIR/id_ed25519"
    fi
    authorize_key /root root
    authorize_key /home/oneadmin oneadmin
    chroot "$r" ssh-keygen -A >/dev/null
    mkdir -p "$r/etc/ssh/sshd_config.d"
    cat >"$r/etc/ssh/sshd_config.d/vaf-testbed.conf" <<'EOF'
# vaf test hypervisor: key logins only, no reverse DNS (there is no resolver in the guest).
UseDNS no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
EOF
}

configure_lvm() {
    local r=$DIR/rootfs
    # dmeventd monitoring doubles classic snapshot times under TCG (testbed.md pitfall 5).
    sed -i -E 's/^([[:space:]]*)#?[[:space:]]*monitoring = [01]/\1monitoring = 0/' \
        "$r/etc/lvm/lvm.conf"
    # (lvmconfig cannot check it: it needs /proc, which the chroot lacks)
    grep -qE '^[[:space:]]*monitoring = 0' "$r/etc/lvm/lvm.conf" ||
        die "could not set activation/monitoring = 0 in lvm.conf"
}

current_customise() { [[ "$(cat "$DIR/custom.stamp" 2>/dev/null)" == "$(custom_stamp)" ]]; }

build_customise() {
    local stamp kver
    stamp=$(custom_stamp)
    kver=$(cat "$DIR/kver")
    rm -f "$DIR/custom.stamp"
    install_modules "$kver"
    install_guest_scripts
    configure_identity
    configure_oneadmin
    configure_ssh
    configure_lvm
    rm -f "$DIR/rootfs"/var/cache/apt/archives/*.deb
    echo "$stamp" >"$DIR/custom.stamp"
}

# ---------------------------------------------------------------------------------------
# Step 5: initramfs (busybox + the modules to reach the root disk)

# Print the module files (relative to lib/modules/<kver>) needed for module $1, dependencies
# first.  Built-in modules print nothing.
declare -A SEEN_MODULES=()
module_chain() {
    local name=$1 moddir=$2 line path deps dep
    local pattern="^[^:]*/(${name}|${name//_/-})\.ko[^:]*:"
    line=$(grep -E "$pattern" "$moddir/modules.dep" | head -n1) || true
    if [[ -z $line ]]; then
        grep -qE "/(${name}|${name//_/-})\.ko" "$moddir/modules.builtin" && return 0
        die "initramfs module $name is neither in modules.dep nor built in"
    fi
    path=${line%%:*}
    deps=${line#*:}
    for dep in $deps; do
        dep=$(basename "$dep")
        module_chain "${dep%%.ko*}" "$moddir"
    done
    if [[ -z ${SEEN_MODULES[$path]:-} ]]; then
        SEEN_MODULES[$path]=1
        echo "$path"
    fi
}

# Derived outputs carry the customise stamp they were made from.
derived_current() {
    [[ -s $DIR/$1 && -s $DIR/custom.stamp &&
        "$(cat "$DIR/$2" 2>/dev/null)" == "$(cat "$DIR/custom.stamp")" ]]
}

current_initramfs() { derived_current initrd.img initrd.stamp; }

build_initramfs() {
    local stamp kver moddir tmp m f
    stamp=$(cat "$DIR/custom.stamp")
    kver=$(cat "$DIR/kver")
    moddir="$DIR/rootfs/lib/modules/$kver"
    tmp="$DIR/initramfs.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"/{bin,dev,proc,sys,newroot,lib/modules}
    cp /bin/busybox "$tmp/bin/busybox"
    install -m 0755 "$GUEST_SRC/initramfs-init" "$tmp/init"
    SEEN_MODULES=()
    for m in "${INITRAMFS_MODULES[@]}"; do module_chain "$m" "$moddir"; done >"$tmp/modules.path"
    while read -r f; do
        # busybox insmod cannot read compressed modules: store them plain.
        case $f in
            *.ko) cp "$moddir/$f" "$tmp/lib/modules/" ;;
            *.ko.xz) xz -dc "$moddir/$f" >"$tmp/lib/modules/$(basename "${f%.xz}")" ;;
            *.ko.zst) zstd -qdc "$moddir/$f" >"$tmp/lib/modules/$(basename "${f%.zst}")" ;;
            *) die "unknown module format: $f" ;;
        esac
        basename "${f%.ko*}.ko"
    done <"$tmp/modules.path" >"$tmp/modules.list"
    rm "$tmp/modules.path"
    # Uncompressed: qemu loads 4 MB in no time, while gunzip under TCG takes ~0.4 s of boot.
    (cd "$tmp" && find . | cpio -o -H newc --quiet) >"$DIR/initrd.img.tmp"
    rm -rf "$tmp"
    mv "$DIR/initrd.img.tmp" "$DIR/initrd.img"
    echo "$stamp" >"$DIR/initrd.stamp"
}

# ---------------------------------------------------------------------------------------
# Step 6: root image, written by mkfs.ext4 -d (no loop mount needed)
current_image() { derived_current root.img image.stamp; }

build_image() {
    local stamp used size
    stamp=$(cat "$DIR/custom.stamp")
    used=$(du -sm "$DIR/rootfs" | cut -f1)
    # Leave room for tests' loop-device backing files and remotes; the file is sparse.
    size=$((used + 1024 > 2048 ? used + 1024 : 2048))
    rm -f "$DIR/root.img.tmp"
    mkfs.ext4 -q -F -L vaf-testhv -d "$DIR/rootfs" "$DIR/root.img.tmp" "${size}M" >/dev/null
    # rename: a guest booting right now keeps its open (old) image
    mv "$DIR/root.img.tmp" "$DIR/root.img"
    echo "$stamp" >"$DIR/image.stamp"
}

# ---------------------------------------------------------------------------------------
main() {
    [[ -d $GUEST_SRC ]] || die "guest scripts not found in $GUEST_SRC"
    mkdir -p "$DIR"
    # shellcheck disable=SC1091  # the host's own os-release
    SUITE=${VAF_TESTBED_SUITE:-$(. /etc/os-release && echo "$VERSION_CODENAME")}
    # Test sessions hold this lock shared while qemu opens the images.  Checking needs only a
    # shared lock too, so sessions starting together do not queue behind each other's boots;
    # building takes it exclusively (one builder at a time) and then re-checks every step.
    exec 9>"$DIR/.lock"
    flock -s 9
    if all_current; then
        log "current: $DIR (kernel $(cat "$DIR/kpkg"))"
        return
    fi
    flock 9
    local t0=$SECONDS name
    for name in "${STEPS[@]}"; do step "$name"; done
    CURRENT_STEP=""
    log "ready in $((SECONDS - t0))s: $DIR (kernel $(cat "$DIR/kpkg"))"
}

main "$@"
