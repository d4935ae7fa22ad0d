#!/bin/bash
# Install vaf into OpenNebula's remotes tree on the front-end (then run `onehost sync -f`).
#
#   ./install.sh                     # system-wide OpenNebula: /var/lib/one/remotes
#   ./install.sh --remotes DIR       # another remotes tree (self-contained: $ONE_LOCATION/var/remotes)
#   ./install.sh --root DIR          # stage everything below DIR (packaging, tests)
#   ./install.sh --no-deps           # do not apt-get the front-end's Python packages
#   ./install.sh --owner USER:GROUP  # owner of installed files (default oneadmin:oneadmin if it exists)
#
# What it does, idempotently:
#  * copies every vaf executable (the launcher under each action name oned calls) into
#    <remotes>/{tm,vnm,hooks}/..., keeping symlinks as symlinks (no vmm/: the KVM driver
#    stays stock, docs/cpu-priority.md);
#  * copies the vaf package into <remotes>/vaf/lib/vaf, so hosts get it with `onehost sync`
#    and need no pip install;
#  * installs configuration files under <remotes>/etc/ only where none exists (never
#    overwrites an admin's edits; the shipped version is left beside it as *.dist);
#  * installs /usr/local/bin/vaf (the admin command) pointing at that package;
#  * prints the oned.conf entries to add.
set -euo pipefail

SRC="$(cd "$(dirname "$0")" && pwd)"
# the directories of remotes/ that hold files oned runs (tests/test_install.py reads this line)
KINDS="tm vnm hooks im"
REMOTES=/var/lib/one/remotes
ROOT=""
DEPS=yes
OWNER=""

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --remotes) [ $# -ge 2 ] || die "--remotes needs a directory"; REMOTES="$2"; shift 2 ;;
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT="$2"; shift 2 ;;
    --no-deps) DEPS=no; shift ;;
    --owner) [ $# -ge 2 ] || die "--owner needs USER:GROUP"; OWNER="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage 1 ;;
  esac
done

case "$REMOTES" in /*) ;; *) die "--remotes must be an absolute path" ;; esac
DEST="$ROOT$REMOTES"
BIN="$ROOT/usr/local/bin"
if [ -z "$OWNER" ] && [ -z "$ROOT" ] && id oneadmin >/dev/null 2>&1; then
  OWNER=oneadmin:oneadmin
fi

install_deps() {
  [ "$DEPS" = yes ] && [ -z "$ROOT" ] || return 0
  command -v apt-get >/dev/null || { echo "install.sh: not Debian: install python3-lxml and python3-click yourself" >&2; return 0; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    python3 python3-lxml python3-click genisoimage >/dev/null
}

# Copy one directory of the repo's remotes tree, symlinks kept (they point at the launcher).
copy_tree() {
  local rel="$1"
  [ -e "$SRC/remotes/$rel" ] || return 0
  mkdir -p "$DEST/$rel"
  (cd "$SRC/remotes/$rel" && find . -mindepth 1 \( -type f -o -type l \) -printf '%P\0') |
    while IFS= read -r -d '' item; do
      mkdir -p "$DEST/$rel/$(dirname "$item")"
      cp -P --remove-destination "$SRC/remotes/$rel/$item" "$DEST/$rel/$item"
    done
}

# Configuration: install only what is missing; ship the new default as .dist.
install_confs() {
  [ -d "$SRC/remotes/etc" ] || return 0
  (cd "$SRC/remotes/etc" && find . -type f -printf '%P\0') | while IFS= read -r -d '' conf; do
    local target="$DEST/etc/${conf#./}"  # find prints ./x: name the file plainly
    mkdir -p "$(dirname "$target")"
    if [ -e "$target" ] && ! cmp -s "$SRC/remotes/etc/$conf" "$target"; then
      cp "$SRC/remotes/etc/$conf" "$target.dist"
      echo "kept your $target (new default: $target.dist)"
    else
      cp "$SRC/remotes/etc/$conf" "$target"
    fi
  done
}

install_package() {
  mkdir -p "$DEST/vaf/lib"
  rm -rf "$DEST/vaf/lib/vaf.new"
  # a real copy (hosts get it through `onehost sync`), replaced in one rename
  cp -rL "$SRC/vaf" "$DEST/vaf/lib/vaf.new"
  find "$DEST/vaf/lib/vaf.new" -name __pycache__ -prune -exec rm -rf {} +
  rm -rf "$DEST/vaf/lib/vaf.new/lab"  # the lab (test hosts, stand-ins) never goes to hosts
  rm -rf "$DEST/vaf/lib/vaf.old"
  [ -e "$DEST/vaf/lib/vaf" ] && mv "$DEST/vaf/lib/vaf" "$DEST/vaf/lib/vaf.old"
  mv "$DEST/vaf/lib/vaf.new" "$DEST/vaf/lib/vaf"
  rm -rf "$DEST/vaf/lib/vaf.old"
  find "$SRC/remotes/vaf" -maxdepth 1 -type f -exec cp {} "$DEST/vaf/" \;
}

install_cli() {
  mkdir -p "$BIN"
  cat > "$BIN/vaf" <<EOF
#!/usr/bin/env python3
# vaf admin command, installed by vaf's install.sh; the package lives in the remotes tree.
import sys
sys.path.insert(0, "$REMOTES/vaf/lib")
from vaf.cli import main
sys.exit(main())
EOF
  chmod 755 "$BIN/vaf"
}

print_oned_conf() {
  cat <<EOF

vaf installed in $DEST.
Next steps (see docs/ for each driver):
  1. /etc/one/oned.conf: add "lvmsnap" to TM_MAD's -d list and DATASTORE_MAD's -s list, and
       TM_MAD_CONF = [ NAME = "lvmsnap", LN_TARGET = "SYSTEM", CLONE_TARGET = "SYSTEM",
                       SHARED = "NO", DRIVER = "raw", DISK_TYPE = "BLOCK", ALLOW_ORPHANS = "YES" ]
  2. restart oned, then: onehost sync -f
EOF
}

install_deps
for kind in $KINDS; do copy_tree "$kind"; done
install_package
install_confs
install_cli
if [ -n "$OWNER" ]; then
  chown -R "$OWNER" "$DEST/vaf" "$DEST/etc" 2>/dev/null || true
fi
print_oned_conf
