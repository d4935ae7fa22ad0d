#!/bin/bash
# install.sh: install vaf on one machine of an OpenNebula cloud, in one of three roles.
#
# Usage: sudo ./install.sh frontend|host|head [options]
#
# Roles:
#   frontend  the OpenNebula front-end: the Python packages vaf needs, the vaf package and the
#             drivers in the remotes tree (/var/lib/one/remotes, or $ONE_LOCATION/var/remotes),
#             the drivers' conf files (an edited one is kept, the new default goes beside it
#             as *.dist), the hook templates in /usr/share/vaf/hooks and `onehook create` for
#             them, the admin command /usr/local/bin/vaf, and the oned.conf changes of every
#             driver: printed as additions to your own lines, or merged with --apply.
#             Then run `onehost sync -f` as oneadmin.
#   host      each KVM hypervisor: the host packages (lvm2, thin-provisioning-tools, xfsprogs,
#             the firewall of the isolation conf's BACKEND, python3, sudo), the sudoers file
#             /etc/sudoers.d/vaf (checked with visudo first), the root-owned privileged entry
#             point in /usr/lib/vaf, the lock and state directories, the isolation sweep's
#             cron line, and a check of the volume groups of the system datastores.
#   head      the batch head / access node: the vaf package and commands, the gate's account
#             (vafgate) with its config and key line, the services' systemd units and their
#             config files in /etc/vaf.
#
# Options:
#   --uninstall        remove what this role installed (including the programs it added to
#                      stock drivers' post.d); data (cache LVs, VMs' rules, accounts' homes,
#                      state, edited confs) stays unless --purge; it says what it kept
#   --purge            with --uninstall: also remove the data it would keep
#   --dry-run          print every change and make none
#   --apply            frontend: write the oned.conf changes (timestamped backup first; the
#                      result must parse, or nothing is written); with --uninstall: take them out
#   --oned-conf FILE   frontend: oned.conf (default /etc/one/oned.conf, or
#                      $ONE_LOCATION/etc/oned.conf)
#   --remotes DIR      frontend: the remotes tree (default as above)
#   --isolation FORM   frontend and host: vnm (network driver VN_MAD=vaf_isolation, default)
#                      or hook (the vaf-isolation state hooks); picks the hooks to create, the
#                      conf whose BACKEND the host's firewall package follows, and the sweep's
#   --vg NAME          host: a volume group to check (repeatable; default: every
#                      vg-one-<id>, and a warning when there is none)
#   --gate-key FILE    head: the workers' public key; with --gate-from, the gate's
#                      authorized_keys line is written (else the command to make it is printed)
#   --gate-from PATTERN  head: address or network the workers connect from (repeatable)
#   --no-deps          install no distribution packages (say which are missing)
#   --root DIR         stage everything below DIR (packaging, tests): no packages, no owners,
#                      no onehook, no systemctl
#   --owner USER:GROUP owner of the remotes tree's files (default oneadmin:oneadmin)
#   -h, --help         this text
#
# Supported systems: Debian 11 and 12, Ubuntu 22.04 and 24.04 (apt), AlmaLinux and RHEL 9
# (dnf). Run it again at any time: it changes only what differs, and says what it changed.
set -euo pipefail
umask 022

SRC="$(cd "$(dirname "$0")" && pwd)"
# the directories of remotes/ that hold files oned runs (tests/test_install.py reads this line)
KINDS="tm vnm hooks im"
ROLES="frontend host head"
HOST_REMOTES=/var/tmp/one   # where `onehost sync` puts the remotes on hypervisors
ADMIN_LIB=/usr/local/lib/vaf/lib        # the root-owned package the admin commands use
PRIV_DIR=/usr/lib/vaf                   # vaf-privileged, its conf and its package copy
SHARE_DIR=/usr/share/vaf
STATE_DIR_INSTALL=/var/lib/vaf/install  # what each role installed (manifests)
GATE_USER=vafgate
GATE_HOME=/var/lib/vafgate
ONEADMIN=oneadmin

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "install.sh: $*" >&2; exit 1; }
warn() { echo "install.sh: WARNING: $*" >&2; }

ROLE=""
UNINSTALL=no PURGE=no DRY=no APPLY=no DEPS=yes
ROOT="" OWNER="" ONED_CONF="" REMOTES="" ISOLATION=vnm GATE_KEY=""
VGS=() GATE_FROM=()
while [ $# -gt 0 ]; do
  case "$1" in
    frontend|host|head) [ -z "$ROLE" ] || die "one role at a time (got $ROLE and $1)"; ROLE=$1; shift ;;
    --uninstall) UNINSTALL=yes; shift ;;
    --purge) PURGE=yes; shift ;;
    --dry-run) DRY=yes; shift ;;
    --apply) APPLY=yes; shift ;;
    --no-deps) DEPS=no; shift ;;
    --oned-conf|--remotes|--isolation|--vg|--gate-key|--gate-from|--root|--owner)
      [ $# -ge 2 ] || die "$1 needs a value"
      case "$1" in
        --oned-conf) ONED_CONF=$2 ;; --remotes) REMOTES=$2 ;; --isolation) ISOLATION=$2 ;;
        --vg) VGS+=("$2") ;; --gate-key) GATE_KEY=$2 ;; --gate-from) GATE_FROM+=("$2") ;;
        --root) ROOT=$2 ;; --owner) OWNER=$2 ;;
      esac
      shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage 1 >&2 ;;
  esac
done

[ -n "$ROLE" ] || { echo "install.sh: name a role: $ROLES" >&2; usage 1 >&2; }
case "$ISOLATION" in vnm|hook) ;; *) die "--isolation must be vnm or hook, got $ISOLATION" ;; esac
[ "$PURGE" = no ] || [ "$UNINSTALL" = yes ] || die "--purge only goes with --uninstall"
if [ -n "$ROOT" ]; then
  case "$ROOT" in /*) ;; *) die "--root must be an absolute path" ;; esac
  DEPS=no
fi
if [ -n "${ONE_LOCATION:-}" ]; then
  : "${REMOTES:=$ONE_LOCATION/var/remotes}" "${ONED_CONF:=$ONE_LOCATION/etc/oned.conf}"
fi
: "${REMOTES:=/var/lib/one/remotes}" "${ONED_CONF:=/etc/one/oned.conf}"
case "$REMOTES" in /*) ;; *) die "--remotes must be an absolute path" ;; esac
# one spelling of each path (the scan of what is on disk is keyed by path)
[ "${#ROOT}" -le 1 ] || ROOT=${ROOT%/}
[ "${#REMOTES}" -le 1 ] || REMOTES=${REMOTES%/}
if [ "$(id -u)" != 0 ] && [ -z "$ROOT" ] && [ "$DRY" = no ]; then
  die "run as root (or look first with --dry-run)"
fi

# -- the system ------------------------------------------------------------------------------

PKG=""
check_system() {
  local release=${VAF_OS_RELEASE:-/etc/os-release} ID="" VERSION_ID="" PRETTY_NAME=""
  [ -r "$release" ] || die "cannot read $release: unsupported system"
  # shellcheck disable=SC1090  # os-release is shell assignments by definition
  . "$release"
  case "$ID:$VERSION_ID" in
    debian:11|debian:12|ubuntu:22.04|ubuntu:24.04) PKG=apt ;;
    almalinux:9*|rhel:9*) PKG=dnf ;;
    *) die "unsupported system: ${PRETTY_NAME:-$ID $VERSION_ID} (vaf supports Debian 11 and 12, Ubuntu 22.04 and 24.04, AlmaLinux and RHEL 9)" ;;
  esac
  if [ -z "$ROOT" ] && ! command -v "${PKG/apt/apt-get}" >/dev/null; then
    die "$ID $VERSION_ID without ${PKG/apt/apt-get}: unsupported system"
  fi
}

# -- recording every change ------------------------------------------------------------------

CHANGES=0
MANIFEST_NEW=()     # "<type> <path or name> [checksum]" of what this run installed
KEPT=()
KEPT_ENTRIES=()     # manifest lines of what stays, so that a later --purge finds them
SHARED_KEPT=0       # files another role installed too (the package of frontend and head)

change() {
  CHANGES=$((CHANGES + 1))
  if [ "$DRY" = yes ]; then echo "would $*"; else echo "$*"; fi
}
real() { [ "$DRY" = no ]; }
RECORD=yes          # put_conf records its file itself (as a conf, with the shipped checksum)
record() { [ "$RECORD" = no ] || MANIFEST_NEW+=("$*"); }
manifest() { echo "$ROOT$STATE_DIR_INSTALL/$ROLE.manifest"; }

# Where a file the other roles installed too must stay (frontend and head share the package).
declare -A OTHER_ROLES_PATHS=()
load_other_manifests() {
  local role kind path
  for role in $ROLES; do
    [ "$role" != "$ROLE" ] && [ -f "$ROOT$STATE_DIR_INSTALL/$role.manifest" ] || continue
    while read -r kind path _; do OTHER_ROLES_PATHS[$path]=1; done <"$ROOT$STATE_DIR_INSTALL/$role.manifest"
  done
}
used_by_other_role() { [ -n "${OTHER_ROLES_PATHS[$1]:-}" ]; }

# directories a dry run would have made (so it reports each once)
declare -A DRY_DIRS=()

# What is on disk under the trees about to be installed, read once per tree (one find, one
# sha256sum) instead of a stat and a cmp per file: on a slow machine the forks dominate a run.
# SEEN[path]="<mode> <user:group> <link target>", SUMS[file]=sha256. Existence is always asked
# of the disk (builtin tests); a path this run changes is forgotten (asked again if needed).
declare -A SEEN=() SUMS=() SCANNED=()
scan() {
  local dir entry sum path done
  for dir in "$@"; do
    [ -d "$dir" ] || continue
    for done in "${!SCANNED[@]}"; do  # already read, as part of a tree read before
      [ "$dir" = "$done" ] || [ "${dir#"$done"/}" != "$dir" ] && continue 2
    done
    SCANNED[$dir]=1
    while IFS= read -r -d '' entry; do
      SEEN[${entry#*|}]=${entry%%|*}
    done < <(find -H "$dir" -name __pycache__ -prune -o -printf '%m %u:%g %l|%p\0')
    while read -r sum path; do
      SUMS[$path]=$sum
    done < <(find -H "$dir" -name __pycache__ -prune -o -type f -print0 | xargs -0r sha256sum --)
  done
}
forget() { unset "SEEN[$1]" "SUMS[$1]"; }
# state PATH (an existing path): HAVE_MODE, HAVE_OWNER (user:group), HAVE_LINK (its target)
state() {
  local have=${SEEN[$1]:-}
  [ -n "$have" ] || have=$(find "$1" -maxdepth 0 -printf '%m %u:%g %l')
  HAVE_MODE=${have%% *}; have=${have#* }
  HAVE_OWNER=${have%% *}; HAVE_LINK=${have#* }
}
same_content() {  # same_content SRC TARGET (both regular files)
  if [ -n "${SUMS[$1]:-}" ] && [ -n "${SUMS[$2]:-}" ]; then [ "${SUMS[$1]}" = "${SUMS[$2]}" ]
  else cmp -s "$1" "$2"
  fi
}
parent() { PARENT=${1%/*}; PARENT=${PARENT:-/}; }

# ensure_dir PATH MODE OWNER: a directory vaf made is recorded (removed when empty at uninstall)
ensure_dir() {
  local dir=$1 mode=$2 owner=${3:-} real_dir="$ROOT$1"
  # made by another role: this one needs it too, so the last uninstall removes it
  if [ -d "$real_dir" ] && used_by_other_role "$dir"; then
    record "d $dir"
    parent "$dir"; ensure_dir "$PARENT" 755 ""
  fi
  if [ ! -d "$real_dir" ] && [ -z "${DRY_DIRS[$dir]:-}" ]; then
    parent "$dir"; ensure_dir "$PARENT" 755 ""
    change "create directory $real_dir"
    if real; then mkdir -m "$mode" "$real_dir"; else DRY_DIRS[$dir]=1; fi
    record "d $dir"
  fi
  [ -n "$ROOT" ] && owner=""
  # a parent made on the way keeps whatever mode it has
  [ "$mode" != 755 ] || [ -n "$owner" ] || return 0
  [ -d "$real_dir" ] || return 0
  state "$real_dir"
  if [ "$HAVE_MODE" != "$mode" ]; then
    change "chmod $mode $real_dir"
    if real; then chmod "$mode" "$real_dir"; forget "$real_dir"; fi
  fi
  if [ -n "$owner" ] && [ "$HAVE_OWNER" != "$owner" ]; then
    change "chown $owner $real_dir"
    if real; then chown "$owner" "$real_dir"; forget "$real_dir"; fi
  fi
}

# put_file SRC DEST MODE [OWNER]: copy when missing or different
put_file() {
  local src=$1 dest=$2 mode=$3 owner=${4:-} target="$ROOT$2"
  [ -n "$ROOT" ] && owner=""
  ensure_dir "${dest%/*}" 755 ""
  if [ -L "$target" ] || [ ! -f "$target" ] || ! same_content "$src" "$target"; then
    change "install $target"
    if real; then
      rm -f "$target"
      cp "$src" "$target.vaf-new" && chmod "$mode" "$target.vaf-new"
      [ -z "$owner" ] || chown "$owner" "$target.vaf-new"
      mv -f "$target.vaf-new" "$target"
      forget "$target"
    fi
  else
    state "$target"
    if [ "$HAVE_MODE" != "$mode" ]; then
      change "chmod $mode $target"; if real; then chmod "$mode" "$target"; forget "$target"; fi
    fi
    if [ -n "$owner" ] && [ "$HAVE_OWNER" != "$owner" ]; then
      change "chown $owner $target"; if real; then chown "$owner" "$target"; forget "$target"; fi
    fi
  fi
  record "f $dest"
}

# put_text DEST MODE OWNER < content
put_text() {
  local tmp
  tmp=$(mktemp)
  cat >"$tmp"
  put_file "$tmp" "$@"
  rm -f "$tmp"
}

# put_link TARGET DEST [OWNER]: a symlink (the launcher under each action name oned calls)
put_link() {
  local target=$1 dest=$2 owner=${3:-} path="$ROOT$2"
  parent "$dest"; ensure_dir "$PARENT" 755 ""
  [ ! -L "$path" ] || state "$path"
  if [ ! -L "$path" ] || [ "$HAVE_LINK" != "$target" ]; then
    change "link $path -> $target"
    if real; then ln -sfn "$target" "$path.vaf-new" && mv -fT "$path.vaf-new" "$path"; fi
    forget "$path"
  fi
  [ -z "$ROOT" ] || owner=""
  if [ -n "$owner" ]; then
    state "$path" 2>/dev/null  # a dry run made no link: no owner then
    if [ "$HAVE_OWNER" != "$owner" ]; then
      change "chown -h $owner $path"; if real; then chown -h "$owner" "$path"; forget "$path"; fi
    fi
  fi
  record "l $dest"
}

# put_conf SRC DEST MODE [OWNER]: install only where none exists; an edited one is kept and
# the shipped default goes beside it as DEST.dist
put_conf() {
  local src=$1 dest=$2 mode=$3 owner=${4:-} target="$ROOT$2"
  if [ -f "$target" ] && ! cmp -s "$src" "$target"; then
    echo "kept your $target (new default: $target.dist)"
    put_file "$src" "$dest.dist" "$mode" "$owner"
  else
    parent "$dest"; ensure_dir "$PARENT" 755 ""
    RECORD=no put_file "$src" "$dest" "$mode" "$owner"
    if [ -e "$target.dist" ]; then
      change "remove $target.dist (your conf is the default again)"
      if real; then rm -f "$target.dist"; fi
    fi
  fi
  record "c $dest $(sha256sum <"$src" | cut -d' ' -f1)"
}

# put_tree SRC DEST FILEMODE OWNER [PRUNE...]: a copy of a directory; files that are no
# longer in SRC are removed (pruned names are neither copied nor kept)
put_tree() {
  local src=$1 dest=$2 mode=$3 owner=$4 rel extra
  shift 4
  local prune=(-name __pycache__)
  for extra in "$@"; do prune+=(-o -path "./$extra"); done
  scan "$src" "$ROOT$dest"
  ensure_dir "$dest" 755 "$owner"
  while IFS= read -r -d '' rel; do
    rel=${rel#./}
    if [ -d "$src/$rel" ]; then ensure_dir "$dest/$rel" 755 "$owner"
    else put_file "$src/$rel" "$dest/$rel" "$mode" "$owner"; fi
  done < <(cd "$src" && find . -mindepth 1 \( "${prune[@]}" \) -prune -o -print0 | sort -z)
  [ -d "$ROOT$dest" ] || return 0
  local gone=""
  while IFS= read -r -d '' rel; do
    rel=${rel#./}
    # inside a directory already removed
    if [ -n "$gone" ] && [ "${rel#"$gone"/}" != "$rel" ]; then continue; fi
    if [ ! -e "$src/$rel" ] && [ ! -L "$src/$rel" ] || is_pruned "${rel%%/*}" "$@"; then
      change "remove $ROOT$dest/$rel (not in this version)"
      if real; then rm -rf "$ROOT$dest/${rel:?}"; fi
      gone=$rel
    fi
  done < <(cd "$ROOT$dest" && find . -mindepth 1 -name __pycache__ -prune -o -print0 | sort -z)
}

is_pruned() {
  local name=$1 p
  shift
  for p in "$@"; do [ "$p" = "$name" ] && return 0; done
  return 1
}

# -- packages --------------------------------------------------------------------------------

pkg_installed() {
  if [ "$PKG" = apt ]; then
    dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed$'
  else
    rpm -q "$1" >/dev/null 2>&1
  fi
}

install_packages() {
  [ -z "$ROOT" ] || return 0   # staging for another machine: its packages are its business
  local missing=() p
  for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -gt 0 ] || { echo "packages present: $*"; return 0; }
  if [ "$DEPS" = no ]; then
    warn "not installed (--no-deps): ${missing[*]}"
    return 0
  fi
  change "install packages: ${missing[*]}"
  real || return 0
  if [ "$PKG" = apt ]; then
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
      apt-get update -q >/dev/null || die "apt-get update failed"
      apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
    fi
  else
    dnf install -y -q "${missing[@]}" || die "dnf install ${missing[*]} failed"
  fi
}

# Each role's packages, by package manager.
frontend_packages() {
  local iso=genisoimage
  # lvmsnap's context ISO: genisoimage or xorriso, whichever is there
  if command -v xorriso >/dev/null || command -v genisoimage >/dev/null; then iso=""; fi
  echo python3 python3-click python3-lxml $iso
}

isolation_conf_rel() {
  if [ "$ISOLATION" = vnm ]; then echo etc/vnm/vaf_isolation/vaf_isolation.conf
  else echo etc/hooks/ebtables/ebtables.conf; fi
}

# BACKEND of the isolation conf this host will get: the synced one, else the shipped one.
isolation_backend() {
  local conf backend
  conf="$ROOT$HOST_REMOTES/$(isolation_conf_rel)"
  [ -f "$conf" ] || conf="$SRC/remotes/$(isolation_conf_rel)"
  backend=$(sed -n -E 's/^[[:space:]]*BACKEND=["'\'']?([A-Za-z]+).*/\1/p' "$conf" | tail -n1)
  echo "${backend:-ebtables}"
}

host_packages() {
  local firewall
  case "$(isolation_backend):$PKG" in
    nft:*) firewall=nftables ;;
    ebtables:apt) firewall=iptables ;;   # iptables ships ebtables-nft as `ebtables`
    ebtables:dnf) firewall=iptables-ebtables ;;
    *) die "isolation BACKEND must be ebtables or nft, got $(isolation_backend)" ;;
  esac
  echo lvm2 thin-provisioning-tools xfsprogs "$firewall" python3 sudo
}

# -- the package and the admin commands ------------------------------------------------------

PY_SRC() { python3 -S -c "import sys; sys.path.insert(0, sys.argv[1]); $1" "$SRC" "${@:2}"; }

# The console scripts of setup.cfg, "name module:function" per line.
console_scripts() {
  awk '/^\[options.entry_points\]/ {s=1; next} /^\[/ {s=0}
       s && /^[[:space:]]+[A-Za-z0-9_-]+[[:space:]]*=/ {
         line=$0; sub(/^[[:space:]]+/, "", line); split(line, kv, /[[:space:]]*=[[:space:]]*/)
         print kv[1], kv[2] }' "$SRC/setup.cfg"
}

# vaf's commands need click 8 (setup.cfg); Debian 11 ships python3-click 7.1
check_click() {
  [ -z "$ROOT" ] && real || return 0
  local version
  if ! version=$(python3 -c 'import importlib.metadata as m; print(m.version("click"))' 2>/dev/null); then
    warn "python3 cannot import click: vaf's commands need python3-click 8.0 or later"
    return 0
  fi
  case "$version" in
    [0-7].*) warn "python3-click $version is older than vaf needs (8.0): install click 8 for /usr/bin/python3" ;;
  esac
}

install_admin_package() {
  check_click
  # root-owned: the admin runs `vaf` as root, so it must not import what oneadmin can write
  put_tree "$SRC/vaf" "$ADMIN_LIB/vaf" 644 root:root lab
  local name target module function
  while read -r name target; do
    module=${target%%:*} function=${target#*:}
    put_text "/usr/local/bin/$name" 755 root:root <<EOF
#!/usr/bin/python3 -I
# $name, installed by vaf's install.sh (frontend and head roles); the package is in $ADMIN_LIB.
import sys
sys.path.insert(0, "$ADMIN_LIB")
from $module import $function
sys.exit($function())
EOF
  done < <(console_scripts)
}

# -- frontend ----------------------------------------------------------------------------------

remotes_owner() {
  if [ -n "$OWNER" ]; then echo "$OWNER"
  elif [ -z "$ROOT" ] && id "$ONEADMIN" >/dev/null 2>&1; then echo "$ONEADMIN:$ONEADMIN"; fi
}

install_remotes() {
  local owner kind rel
  owner=$(remotes_owner)
  ensure_dir "$REMOTES" 755 ""
  scan "$SRC/remotes"
  for kind in $KINDS vaf etc; do scan "$ROOT$REMOTES/$kind"; done
  for kind in $KINDS; do
    [ -d "$SRC/remotes/$kind" ] || continue
    while IFS= read -r -d '' rel; do
      rel=${rel#./}
      if [ -L "$SRC/remotes/$kind/$rel" ]; then
        put_link "$(readlink "$SRC/remotes/$kind/$rel")" "$REMOTES/$kind/$rel" "$owner"
      else
        put_file "$SRC/remotes/$kind/$rel" "$REMOTES/$kind/$rel" 755 "$owner"
      fi
    done < <(cd "$SRC/remotes/$kind" && find . \( -type f -o -type l \) -print0 | sort -z)
  done
  ensure_dir "$REMOTES/vaf" 755 "$owner"
  put_file "$SRC/remotes/vaf/dispatch" "$REMOTES/vaf/dispatch" 755 "$owner"
  put_file "$SRC/remotes/vaf/host-command" "$REMOTES/vaf/host-command" 755 "$owner"
  # a real copy (hosts get it through `onehost sync`); the lab never goes to hosts
  ensure_dir "$REMOTES/vaf/lib" 755 "$owner"
  put_tree "$SRC/vaf" "$REMOTES/vaf/lib/vaf" 644 "$owner" lab
  while IFS= read -r -d '' rel; do
    rel=${rel#./}
    put_conf "$SRC/remotes/etc/$rel" "$REMOTES/etc/$rel" 644 "$owner"
  done < <(cd "$SRC/remotes/etc" && find . -type f -print0 | sort -z)
}

hook_templates() {
  local hook
  for hook in "$SRC"/share/hooks/*.hook; do
    case "$(basename "$hook")" in
      vaf-isolation-*) [ "$ISOLATION" = hook ] || continue ;;
    esac
    echo "$hook"
  done
}

hook_name() { sed -n -E 's/^NAME[[:space:]]*=[[:space:]]*"?([^" ]+)"?.*/\1/p' "$1" | head -n1; }

as_oneadmin() {
  if [ "$(id -u)" = 0 ] && id "$ONEADMIN" >/dev/null 2>&1; then
    runuser -u "$ONEADMIN" -- "$@"
  else
    "$@"
  fi
}

create_hooks() {
  local hook name installed
  for hook in $(hook_templates); do
    installed="$SHARE_DIR/hooks/$(basename "$hook")"
    name=$(hook_name "$hook")
    if [ -n "$ROOT" ] || ! command -v onehook >/dev/null; then
      echo "next: onehook create $installed   (as oneadmin; no onehook here)"
      continue
    fi
    if as_oneadmin onehook show "$name" >/dev/null 2>&1; then
      echo "hook $name exists"
    else
      change "onehook create $installed"
      if real; then as_oneadmin onehook create "$ROOT$installed" >/dev/null; fi
    fi
    record "h $name"
  done
}

oned_conf_step() {
  local mode=$1 conf="$ROOT$ONED_CONF" args=()
  if [ ! -f "$conf" ]; then
    warn "no $conf: add the lines of $SRC/share/oned/*.conf to oned.conf yourself, and lvmsnap to TM_MAD's -d and DATASTORE_MAD's -s lists"
    return 0
  fi
  [ "$APPLY" = yes ] && real && args+=(--write)
  local out rc=0
  out=$(PYTHONPATH="$SRC" python3 -S -m vaf.one.oned_conf "$mode" "$conf" \
        --fragments "$SRC/share/oned" "${args[@]}" 2>&1) || rc=$?
  echo "$out"
  [ $rc = 0 ] || die "oned.conf not changed (see above)"
  case "$out" in *"nothing to change"*) return 0 ;; esac
  if [ "$APPLY" = yes ]; then
    CHANGES=$((CHANGES + 1))
    if real; then echo "then restart oned (systemctl restart opennebula)"; fi
  else
    local again="install.sh $ROLE"
    [ "$UNINSTALL" = no ] || again="$again --uninstall"
    echo "(oned.conf is yours: make these changes by hand, or run $again --apply)"
  fi
}

frontend_install() {
  # shellcheck disable=SC2046  # one word per package
  install_packages $(frontend_packages)
  install_remotes
  install_admin_package
  local hook
  for hook in "$SRC"/share/hooks/*.hook; do
    put_file "$hook" "$SHARE_DIR/hooks/$(basename "$hook")" 644 root:root
  done
  create_hooks
  oned_conf_step add
  echo "next: restart oned if oned.conf changed, then as oneadmin: onehost sync -f"
}

frontend_uninstall_extra() {
  oned_conf_step remove
  local backup
  for backup in "$ROOT$ONED_CONF".vaf-*; do
    [ -e "$backup" ] && KEPT+=("$backup (oned.conf as it was before an --apply)")
  done
  return 0
}

# -- host ------------------------------------------------------------------------------------

conf_value() {  # conf_value FILE KEY DEFAULT: a KEY=value of a vaf conf (data, never sourced)
  local v
  v=$(sed -n -E "s/^[[:space:]]*$2=[\"']?([^\"' #]*).*/\\1/p" "$1" 2>/dev/null | tail -n1)
  echo "${v:-$3}"
}

lvmsnap_conf() {
  local conf="$ROOT$HOST_REMOTES/etc/tm/lvmsnap/lvmsnap.conf"
  [ -f "$conf" ] || conf="$SRC/remotes/etc/tm/lvmsnap/lvmsnap.conf"
  echo "$conf"
}

install_sudoers() {
  local file tmp
  for file in "$SRC"/share/sudoers/*; do
    [ -f "$file" ] || continue
    if [ -z "$ROOT" ] && ! visudo -cqf "$file" >/dev/null 2>&1; then
      visudo -cf "$file" >&2 || true
      die "$file does not pass visudo -c on this sudo ($(sudo -V | head -n1)): nothing installed"
    fi
    put_file "$file" "/etc/sudoers.d/$(basename "$file")" 440 root:root
  done
}

install_privileged() {
  local file roots
  ensure_dir "$PRIV_DIR" 755 root:root
  for file in "$SRC"/share/privileged/*; do
    [ -f "$file" ] || continue
    case "$file" in
      *.conf) put_conf "$file" "$PRIV_DIR/$(basename "$file")" 644 root:root ;;
      *) put_file "$file" "$PRIV_DIR/$(basename "$file")" 755 root:root ;;
    esac
  done
  # the package the privileged program runs: the host closure (vaf/layers.py: the entry
  # points and every module the registry names for hosts, privileged verbs included), root-owned
  local stage
  stage=$(mktemp -d)
  PY_SRC 'from vaf import layers; from vaf.drivers import registry; print("\n".join(layers.closure_files(layers.host_roots(registry))))' |
    while read -r rel; do mkdir -p "$stage/vaf/$(dirname "$rel")"; cp "$SRC/vaf/$rel" "$stage/vaf/$rel"; done
  ensure_dir "$PRIV_DIR/lib" 755 root:root
  put_tree "$stage/vaf" "$PRIV_DIR/lib/vaf" 644 root:root
  rm -rf "$stage"
}

install_host_dirs() {
  local lock_dir state_dir
  lock_dir=$(conf_value "$(lvmsnap_conf)" LOCK_DIR /var/lock/vaf-lvmsnap)
  state_dir=$(conf_value "$ROOT$PRIV_DIR/privileged.conf" STATE_DIR /run/vaf-cpu)
  # /var/lock and /run are emptied at boot: systemd-tmpfiles makes them again
  put_text /etc/tmpfiles.d/vaf.conf 644 root:root <<EOF
# vaf (install.sh host): lvmsnap's locks (oneadmin), CPU priority's state (root only)
d $lock_dir 0755 $ONEADMIN $ONEADMIN -
d $state_dir 0700 root root -
EOF
  local owner=""
  id "$ONEADMIN" >/dev/null 2>&1 && owner="$ONEADMIN:$ONEADMIN"
  [ -n "$owner" ] || [ -n "$ROOT" ] || warn "no $ONEADMIN account yet (install opennebula-node-kvm): $lock_dir is root's"
  ensure_dir "$lock_dir" 755 "$owner"
  record "L $lock_dir"
  ensure_dir "$state_dir" 700 root:root
  record "s $state_dir"
}

install_sweep_cron() {
  local arg=""
  [ "$ISOLATION" = vnm ] && arg=" vaf_isolation"
  put_text /etc/cron.d/vaf-isolation-sweep 644 root:root <<EOF
# vaf (install.sh host): remove the isolation rules of taps that vanished without clean
# (docs/isolation.md); reads the conf of the $ISOLATION form.
*/10 * * * * $ONEADMIN $HOST_REMOTES/hooks/ebtables/vaf-isolation-sweep$arg
EOF
  [ -n "$ROOT" ] || command -v cron >/dev/null || command -v crond >/dev/null ||
    warn "no cron daemon: install cron (cronie) or run $HOST_REMOTES/hooks/ebtables/vaf-isolation-sweep$arg from a systemd timer"
}

check_volume_groups() {
  [ -z "$ROOT" ] || return 0
  local vgs vg
  if ! command -v vgs >/dev/null; then warn "no vgs command: lvm2 missing"; return 0; fi
  vgs=$(vgs --noheadings -o vg_name 2>/dev/null | tr -d ' ')
  if [ ${#VGS[@]} -eq 0 ]; then
    if ! grep -qE '^vg-one-[0-9]+$' <<<"$vgs"; then
      warn "no volume group vg-one-<id> on this host: lvmsnap needs one per system datastore it serves (vgcreate vg-one-<system ds id> <devices>)"
    fi
    for vg in $(grep -E '^vg-one-[0-9]+$' <<<"$vgs"); do echo "volume group $vg present"; done
    return 0
  fi
  for vg in "${VGS[@]}"; do
    if grep -qx "$vg" <<<"$vgs"; then echo "volume group $vg present"
    else warn "volume group $vg is missing: lvmsnap fails every disk of that datastore on this host"; fi
  done
}

host_install() {
  # shellcheck disable=SC2046
  install_packages $(host_packages)
  install_sudoers
  install_privileged
  install_host_dirs
  install_sweep_cron
  check_volume_groups
  echo "next: from the front-end, as oneadmin: onehost sync -f"
}

host_uninstall_extra() {
  KEPT+=("volume groups vg-one-* and their LVs (caches, VM disks): remove them with lvremove/vgremove")
  KEPT+=("isolation rules of running VMs (removed when the VMs leave; vaf isolation sweep)")
}

# -- head ------------------------------------------------------------------------------------

unit_conf_dir() {  # share/<x>/ of a unit vaf-<x>.service
  local base
  base=$(basename "$1"); base=${base%.*}
  echo "$SRC/share/${base#vaf-}"
}

install_gate_account() {
  if ! getent passwd "$GATE_USER" >/dev/null && [ -z "$ROOT" ]; then
    change "create account $GATE_USER (home $GATE_HOME)"
    if real; then
      useradd --system --user-group --create-home --home-dir "$GATE_HOME" --shell /bin/sh \
        --comment "vaf gate, workers join the batch system" "$GATE_USER"
      usermod -p '*' "$GATE_USER"   # no password, yet key logins work ('!' would lock them)
    fi
    record "u $GATE_USER"
  elif [ -z "$ROOT" ]; then
    echo "account $GATE_USER exists"
  fi
  put_text /etc/tmpfiles.d/vaf-gate.conf 644 root:root <<EOF
# vaf (install.sh head): the gate's per-address join locks (LOCK_DIR of gate.conf)
d /run/vaf-gate 0700 $GATE_USER $GATE_USER -
EOF
  [ -z "$ROOT" ] || return 0
  ensure_dir /run/vaf-gate 700 "$GATE_USER:$GATE_USER"
  record "L /run/vaf-gate"
  ensure_dir "$GATE_HOME/.ssh" 700 "$GATE_USER:$GATE_USER"
  if [ -n "$GATE_KEY" ] && [ ${#GATE_FROM[@]} -gt 0 ]; then
    local from=() p line keys="$GATE_HOME/.ssh/authorized_keys"
    for p in "${GATE_FROM[@]}"; do from+=(--from "$p"); done
    if real || [ -x /usr/local/bin/vaf ]; then
      line=$(/usr/local/bin/vaf gate authorized-keys --key "$GATE_KEY" "${from[@]}") ||
        die "vaf gate authorized-keys refused the key (see above)"
      if [ ! -f "$keys" ] || ! grep -qxF "$line" "$keys"; then
        change "add the workers' key line to $keys"
        if real; then
          printf '%s\n' "$line" >>"$keys"; chown "$GATE_USER:$GATE_USER" "$keys"; chmod 600 "$keys"
        fi
      fi
    else
      change "add the workers' key line (vaf gate authorized-keys) to $keys"
    fi
  else
    echo "next: vaf gate authorized-keys --key workers.pub --from <workers' network> >> $GATE_HOME/.ssh/authorized_keys"
  fi
}

install_units() {
  local unit dir conf
  for unit in "$SRC"/share/systemd/*; do
    [ -f "$unit" ] || continue
    put_file "$unit" "/etc/systemd/system/$(basename "$unit")" 644 root:root
    dir=$(unit_conf_dir "$unit")
    for conf in "$dir"/*.conf; do
      [ -f "$conf" ] && put_conf "$conf" "/etc/vaf/$(basename "$conf")" 644 root:root
    done
  done
  if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
    if [ "$CHANGES" -gt 0 ] || [ "$UNINSTALL" = yes ]; then
      change "systemctl daemon-reload"
      if real; then systemctl daemon-reload; fi
    fi
  fi
}

head_install() {
  install_packages python3 python3-click
  install_admin_package
  ensure_dir /etc/vaf 755 root:root
  local gate_conf="$SRC/share/gate/gate.conf"
  put_conf "$gate_conf" /etc/vaf/gate.conf 644 root:root
  install_gate_account
  install_units
  local unit
  for unit in "$SRC"/share/systemd/*.service; do
    [ -f "$unit" ] && echo "next: edit /etc/vaf/, then systemctl enable --now $(basename "$unit" .service)"
  done
}

head_uninstall_extra() {
  if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
    change "systemctl daemon-reload"; if real; then systemctl daemon-reload; fi
  fi
}

# -- uninstall -------------------------------------------------------------------------------

remove_path() {
  local path="$ROOT$1"
  if used_by_other_role "$1"; then SHARED_KEPT=$((SHARED_KEPT + 1)); return; fi
  if [ -e "$path" ] || [ -L "$path" ]; then
    change "remove $path"
    if real; then REMOVALS+=("$path"); fi
  fi
}
REMOVALS=()  # removed together (remove_removals): one rm instead of one per file
remove_removals() {
  [ ${#REMOVALS[@]} -eq 0 ] || rm -f -- "${REMOVALS[@]}"
  REMOVALS=()
}
is_empty_dir() {
  local entry
  for entry in "$1"/* "$1"/.[!.]* "$1"/..?*; do
    if [ -e "$entry" ] || [ -L "$entry" ]; then return 1; fi
  done
}

uninstall_entry() {
  local kind=$1 path=$2 sum=${3:-} real_path="$ROOT$2"
  case "$kind" in
    f|l) remove_path "$path" ;;
    c)
      if [ -f "$real_path" ] && [ "$(sha256sum <"$real_path" | cut -d' ' -f1)" != "$sum" ] &&
         [ "$PURGE" = no ]; then
        KEPT+=("$real_path (edited by you; --purge removes it)"); KEPT_ENTRIES+=("$*")
      else
        remove_path "$path"
      fi ;;
    h)
      if [ -n "$ROOT" ] || ! command -v onehook >/dev/null; then
        echo "next: onehook delete $path   (as oneadmin)"
      elif as_oneadmin onehook show "$path" >/dev/null 2>&1; then
        change "onehook delete $path"; if real; then as_oneadmin onehook delete "$path"; fi
      fi ;;
    L)
      if [ -d "$real_path" ]; then
        change "remove $real_path (lock files)"; if real; then rm -rf "$real_path"; fi
      fi ;;
    s)
      if [ -d "$real_path" ] && [ "$PURGE" = yes ]; then
        change "remove $real_path (state)"; if real; then rm -rf "$real_path"; fi
      elif [ -d "$real_path" ]; then
        KEPT+=("$real_path (state of running VMs; --purge removes it)"); KEPT_ENTRIES+=("$*")
      fi ;;
    u)
      if ! getent passwd "$path" >/dev/null; then return 0; fi
      if [ "$PURGE" = yes ]; then
        change "remove account $path and its home"; if real; then userdel -r "$path" 2>/dev/null || userdel "$path"; fi
      else
        KEPT+=("account $path and its home $(getent passwd "$path" | cut -d: -f6) (--purge removes them)")
        KEPT_ENTRIES+=("$*")
      fi ;;
  esac
}

uninstall() {
  local file
  file=$(manifest)
  if [ ! -f "$file" ]; then
    echo "install.sh: the $ROLE role is not installed here ($file missing): nothing to remove"
  else
    # files first, then directories deepest first (each removed only when empty)
    local kind path sum dirs=()
    while read -r kind path sum; do
      uninstall_entry "$kind" "$path" "$sum"
    done < <(grep -v '^d ' "$file" | tac)
    remove_removals
    mapfile -t dirs < <(awk '$1 == "d" {print $2}' "$file")
    for path in $(printf '%s\n' "${dirs[@]}" | awk 'NF {print length, $0}' | sort -rn | cut -d' ' -f2-); do
      [ -d "$ROOT$path" ] || continue
      # Python's bytecode caches, written when vaf ran from there
      if [ -d "$ROOT$path/__pycache__" ] && ! used_by_other_role "$path"; then
        change "remove $ROOT$path/__pycache__"; if real; then rm -rf "$ROOT${path:?}/__pycache__"; fi
      fi
      if used_by_other_role "$path"; then continue; fi
      if is_empty_dir "$ROOT$path" || { [ "$DRY" = yes ] && only_removed_inside "$path"; }; then
        change "remove directory $ROOT$path"; if real; then rmdir "$ROOT$path"; fi
      elif ! holds_kept "$ROOT$path"; then
        KEPT+=("$ROOT$path (not empty: $(ls -A "$ROOT$path" | head -n3 | tr '\n' ' '))")
      fi
    done
  fi
  "${ROLE}_uninstall_extra"
  if real && [ -f "$file" ]; then
    if [ ${#KEPT_ENTRIES[@]} -gt 0 ]; then
      {
        printf '%s\n' "${KEPT_ENTRIES[@]}"
        # the directories around what stays, for that --purge
        local entry
        while read -r kind path _; do
          [ "$kind" = d ] && [ -d "$ROOT$path" ] || continue
          for entry in "${KEPT_ENTRIES[@]}"; do
            entry=${entry#* }; entry=${entry%% *}
            if [ "${entry#"$path"/}" != "$entry" ]; then echo "d $path"; break; fi
          done
        done <"$file"
      } >"$file.new"
      mv "$file.new" "$file"
      echo "kept: $file (what stays, for a later $ROLE --uninstall --purge)"
    else
      rm -f "$file"
      rmdir "$ROOT$STATE_DIR_INSTALL" "$(dirname "$ROOT$STATE_DIR_INSTALL")" 2>/dev/null || true
    fi
  fi
}

holds_kept() {  # a directory that stays because something kept is inside it
  local kept
  for kept in "${KEPT[@]}"; do [ "${kept#"$1"/}" != "$kept" ] && return 0; done
  return 1
}

# In a dry run nothing is removed, so a directory counts as empty when every entry in it is
# one this uninstall would remove.
only_removed_inside() {
  local entry
  for entry in "$ROOT$1"/* "$ROOT$1"/.[!.]*; do
    [ -e "$entry" ] || [ -L "$entry" ] || continue
    [ "$(basename "$entry")" != __pycache__ ] || continue
    grep -qE "^[flcLd] ${entry#"$ROOT"}( |$)" "$(manifest)" || return 1
  done
}

write_manifest() {
  real || return 0
  local file
  file=$(manifest)
  mkdir -p "$(dirname "$file")"
  {
    [ -f "$file" ] && cat "$file"
    printf '%s\n' "${MANIFEST_NEW[@]}"
  } | awk '!($2 in seen) {order[++n]=$2} {seen[$2]=$0} END {for (i=1;i<=n;i++) print seen[order[i]]}' >"$file.new"
  if cmp -s "$file.new" "$file"; then rm -f "$file.new"; else mv "$file.new" "$file"; fi
}

# -- main ------------------------------------------------------------------------------------

check_system
load_other_manifests
[ "$DRY" = no ] || echo "dry run: nothing is changed"
if [ "$UNINSTALL" = yes ]; then
  uninstall
else
  "${ROLE}_install"
  write_manifest
fi
[ "$SHARED_KEPT" = 0 ] || KEPT+=("$SHARED_KEPT files another role installed too (the admin package, its commands)")
for kept in "${KEPT[@]}"; do echo "kept: $kept"; done
if [ "$CHANGES" = 0 ]; then
  echo "install.sh $ROLE: nothing to change"
elif [ "$DRY" = yes ]; then
  echo "install.sh $ROLE: $CHANGES changes to make (dry run: none made)"
else
  echo "install.sh $ROLE: $CHANGES changes made"
fi
