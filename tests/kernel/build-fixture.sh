#!/usr/bin/env bash
# build-fixture.sh — the guest for the kernel NBD client tests (tests/scenarios/kernel_client.rs).
#
# Builds, from Debian packages only, everything needed to boot a stock Debian 12 kernel under
# qemu-system-x86_64 (TCG) with the real Linux NBD client (nbd.ko + nbd-client) in an initramfs
# whose /init is tests/kernel/guest-init.sh. Nothing here is committed: packages are fetched
# with `apt-get download`, unpacked with `dpkg -x` into the cache dir and reused by later runs.
#
#   tests/kernel/build-fixture.sh [FIXTURE_DIR]      (default: <workspace>/target/kernel-fixture)
#
# On success prints nothing on stdout but writes FIXTURE_DIR/fixture.env (KEY=VALUE lines):
# QEMU, QEMU_MODULE_DIR, QEMU_DATA_DIRS (':'-separated -L dirs), VMLINUZ, INITRD, KVER.
# Exit 77 with a `SKIPPED: ...` line on stdout when the guest cannot be built here (not root
# and nothing cached, no apt); any other non-zero exit is a real failure.
#
# Traps (learnt from ../shared/reference/kernel-nbd-smoke.sh):
# - qemu-system-x86 is extracted, never installed: installing Debian 12's qemu-system-common
#   (7.2) would remove a backported qemu-utils (10.x) that Breaks qemu-system-common << 8.0.
# - Debian builds qemu's TCG accelerator as a loadable module (accel-tcg-x86_64.so in
#   qemu-system-common): QEMU_MODULE_DIR must point into the extracted tree.
# Only shared libraries that are missing on the host are apt-installed (`--no-remove`, never an
# upgrade): qemu's and nbd-client's lib* dependencies. Only Debian's registry is contacted.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
WORKSPACE=$(cd "$HERE/../.." && pwd)
FIX=${1:-${URBD_KERNEL_FIXTURE:-$WORKSPACE/target/kernel-fixture}}
mkdir -p "$FIX/debs" "$FIX/x"
FIX=$(cd "$FIX" && pwd)

log() { echo "[kernel-fixture] $*" >&2; }
die() { echo "[kernel-fixture] ERROR: $*" >&2; exit 1; }
skip() { echo "SKIPPED: kernel client tests: $*"; exit 77; }

# One builder at a time (two test binaries, or two cargo invocations, may race here).
exec 9>"$FIX/.lock"
flock -w 900 9 || die "could not lock $FIX/.lock within 900 s"

IS_ROOT=0; [ "$(id -u)" = 0 ] && IS_ROOT=1
APT_OPTS=(-o APT::Sandbox::User=root -q)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
apt_updated=0
apt_update_once() {
  [ "$apt_updated" = 1 ] && return 0
  # Refresh the lists at most once a day (cached marker), and whenever a download fails.
  if [ "${1:-}" = force ] || [ -z "$(find "$FIX/.apt-updated" -mmin -1440 2>/dev/null)" ]; then
    log "apt-get update"
    apt-get "${APT_OPTS[@]}" update >/dev/null || die "apt-get update failed"
    touch "$FIX/.apt-updated"
  fi
  apt_updated=1
}
apt_install_missing() {   # install only what is missing; never upgrade or remove anything
  local p missing=()
  for p in "$@"; do installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$IS_ROOT" = 1 ] || skip "needs root to apt-get install ${missing[*]}"
  apt_update_once
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" install -y --no-install-recommends \
    --no-remove "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}
lib_deps_of_deb() {       # the lib* packages a .deb depends on (first alternative)
  dpkg-deb -f "$1" Depends | tr ',' '\n' | sed 's/(.*//; s/|.*//; s/ //g' | grep '^lib' || true
}
fetch_deb() {             # fetch_deb PKG -> path of the cached .deb
  local f
  f=$(ls "$FIX"/debs/"$1"_*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$f" ]; then
    [ "$IS_ROOT" = 1 ] || skip "needs root to apt-get download $1"
    apt_update_once
    if ! (cd "$FIX/debs" && apt-get "${APT_OPTS[@]}" download "$1" >/dev/null 2>&1); then
      apt_update_once force
      (cd "$FIX/debs" && apt-get "${APT_OPTS[@]}" download "$1" >/dev/null 2>&1) \
        || die "apt-get download $1 failed"
    fi
    f=$(ls "$FIX"/debs/"$1"_*.deb | head -n1)
  fi
  echo "$f"
}
extract() {               # extract PKG -> unpacked under $FIX/x/PKG (once)
  local deb
  [ -e "$FIX/x/$1/.done" ] && return 0
  deb=$(fetch_deb "$1")
  rm -rf "$FIX/x/$1"; mkdir -p "$FIX/x/$1"
  dpkg -x "$deb" "$FIX/x/$1"
  touch "$FIX/x/$1/.done"
}

command -v apt-get >/dev/null || skip "no apt-get (a Debian host is needed to fetch the guest)"
command -v dpkg-deb >/dev/null || skip "no dpkg-deb"

# Host tools: depmod (kmod), mke2fs for the guest (e2fsprogs), gzip, cpio comes from busybox.
apt_install_missing kmod e2fsprogs gzip

# ------------------------------------------------------------------ packages
if [ -s "$FIX/kernel-package" ]; then
  KPKG=$(cat "$FIX/kernel-package")
else
  KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  if [ -z "$KPKG" ]; then apt_update_once force
    KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  fi
  [ -n "$KPKG" ] || die "cannot resolve linux-image-amd64"
  echo "$KPKG" >"$FIX/kernel-package"
fi
KVER=${KPKG#linux-image-}
for p in "$KPKG" nbd-client busybox-static libnl-genl-3-200 libnl-3-200 \
         qemu-system-x86 qemu-system-common qemu-system-data seabios; do
  extract "$p"
done
# So that the host's loader resolves the extracted binaries (libgnutls30, libslirp0, ...).
apt_install_missing $(lib_deps_of_deb "$(fetch_deb nbd-client)") \
                    $(lib_deps_of_deb "$(fetch_deb qemu-system-x86)")

KDIR=$FIX/x/$KPKG
BB=$FIX/x/busybox-static/bin/busybox
NBDCLIENT=$FIX/x/nbd-client/sbin/nbd-client
VMLINUZ=$KDIR/boot/vmlinuz-$KVER
QEMU=$FIX/x/qemu-system-x86/usr/bin/qemu-system-x86_64
QEMU_MODULE_DIR=$FIX/x/qemu-system-common/usr/lib/x86_64-linux-gnu/qemu
QEMU_DATA_DIRS=$FIX/x/qemu-system-data/usr/share/qemu:$FIX/x/seabios/usr/share/seabios
[ -s "$VMLINUZ" ] || die "no $VMLINUZ"
[ -x "$QEMU" ] || die "no $QEMU"
[ -e "$QEMU_MODULE_DIR/accel-tcg-x86_64.so" ] || die "no accel-tcg-x86_64.so in $QEMU_MODULE_DIR"
[ -e "$KDIR/lib/modules/$KVER/modules.dep" ] || depmod -b "$KDIR" "$KVER"
QEMU_MODULE_DIR=$QEMU_MODULE_DIR "$QEMU" --version | head -n1 >&2

# ------------------------------------------------------------------ initramfs
# Rebuilt when this script, the guest init or the packages change (cheap: a few seconds).
STAMP=$( { cat "$0" "$HERE/guest-init.sh"; echo "$KPKG"; ls "$FIX/debs"; command -v mke2fs e2fsck; } \
         | sha256sum | cut -c1-16)
INITRD=$FIX/initrd-$STAMP.gz
if [ ! -s "$INITRD" ]; then
  R=$FIX/initramfs.tmp
  rm -rf "$R"
  mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,usr/local/sbin,dev,proc,sys,mnt,tmp,etc,run} \
           "$R"/{lib/x86_64-linux-gnu,lib64,lib/modules/$KVER}
  cp "$BB" "$R/bin/busybox"
  cp "$NBDCLIENT" "$R/usr/local/sbin/nbd-client"
  MKE2FS=$(command -v mke2fs || echo /sbin/mke2fs)
  cp "$MKE2FS" "$R/usr/local/sbin/mke2fs"
  ln -s mke2fs "$R/usr/local/sbin/mkfs.ext4"
  E2FSCK=$(command -v e2fsck || echo /sbin/e2fsck)
  cp "$E2FSCK" "$R/usr/local/sbin/e2fsck"
  cp /etc/mke2fs.conf "$R/etc/" 2>/dev/null || true
  LIBPATH=$FIX/x/libnl-genl-3-200/lib/x86_64-linux-gnu:$FIX/x/libnl-3-200/lib/x86_64-linux-gnu
  for bin in "$R/usr/local/sbin/nbd-client" "$R/usr/local/sbin/mke2fs" "$R/usr/local/sbin/e2fsck"; do
    out=$(LD_LIBRARY_PATH=$LIBPATH ldd "$bin")
    ! grep -q 'not found' <<<"$out" || die "unresolved libraries for $bin: $out"
    awk '$2=="=>" && $3 ~ /^\// {print $1, $3}' <<<"$out" | while read -r soname path; do
      cp -L "$path" "$R/lib/x86_64-linux-gnu/$soname"
    done
  done
  cp -L /lib64/ld-linux-x86-64.so.2 "$R/lib64/"

  # Kernel modules: the closure from modules.dep, dependencies first.
  MODDIR=$KDIR/lib/modules/$KVER
  ORDER=()
  add_mod() {
    local rel=$1 line i deps=()
    for i in "${ORDER[@]:-}"; do [ "$i" = "$rel" ] && return 0; done
    line=$(grep "^$rel:" "$MODDIR/modules.dep") || die "module $rel not in modules.dep"
    read -r -a deps <<<"${line#*:}"
    for (( i=${#deps[@]}-1; i>=0; i-- )); do add_mod "${deps[$i]}"; done
    ORDER+=("$rel")
  }
  for m in virtio_pci virtio_net nbd crc32c_generic crc32c-intel ext4; do
    rel=$(grep -E "(^|/)${m}\.ko(\.xz|\.zst|\.gz)?:" "$MODDIR/modules.dep" | cut -d: -f1 | head -n1)
    if [ -z "$rel" ]; then
      grep -qE "(^|/)${m}\.ko" "$MODDIR/modules.builtin" && continue
      die "module $m not found in $KPKG"
    fi
    add_mod "$rel"
  done
  : >"$R/etc/modules.order"
  for rel in "${ORDER[@]}"; do
    b=$(basename "$rel"); src=$MODDIR/$rel
    case $b in   # busybox insmod wants plain .ko
      *.ko.xz) xz -dc "$src" >"$R/lib/modules/$KVER/${b%.xz}"; b=${b%.xz} ;;
      *.ko.zst) zstd -dcq "$src" >"$R/lib/modules/$KVER/${b%.zst}"; b=${b%.zst} ;;
      *) cp "$src" "$R/lib/modules/$KVER/$b" ;;
    esac
    echo "$b" >>"$R/etc/modules.order"
  done
  echo "$KVER" >"$R/etc/kver"
  cp "$HERE/guest-init.sh" "$R/init"
  chmod +x "$R/init"
  (cd "$R" && find . | "$BB" cpio -o -H newc 2>/dev/null | gzip -1) >"$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  rm -rf "$R"
  # Old initrds (other stamps) are not needed any more.
  find "$FIX" -maxdepth 1 -name 'initrd-*.gz' ! -name "initrd-$STAMP.gz" -delete
  log "initrd $INITRD ($(du -h "$INITRD" | cut -f1), ${#ORDER[@]} modules)"
fi

{
  echo "QEMU=$QEMU"
  echo "QEMU_MODULE_DIR=$QEMU_MODULE_DIR"
  echo "QEMU_DATA_DIRS=$QEMU_DATA_DIRS"
  echo "VMLINUZ=$VMLINUZ"
  echo "INITRD=$INITRD"
  echo "KVER=$KVER"
} >"$FIX/fixture.env.tmp"
mv "$FIX/fixture.env.tmp" "$FIX/fixture.env"
