#!/bin/busybox sh
# guest-init.sh — /init of the test guest (built into the initramfs by build-fixture.sh).
#
# Runs the real Linux NBD client (nbd.ko + Debian's nbd-client 3.24) against servers on the
# host, which qemu's user networking shows as 10.0.2.2. Parameters come from the kernel command
# line (urbd.KEY=VALUE); every result line on the console starts with "KT: " and the host
# (tests/scenarios/kernel_client.rs) parses them. The guest always powers off at the end.
#
#   urbd.mode=serve urbd.ports=P1,P2,P3 urbd.export=NAME
#       three variants in sequence, each on its own server and device: plain (P1, /dev/nbd0),
#       multi-connection `-C 4` (P2, /dev/nbd1), block size `-b 4096` (P3, /dev/nbd2); each:
#       nbd-client, mkfs.ext4, mount, write files, sync, fstrim, umount, drop caches, remount
#       read-only, verify, umount, nbd-client -d.
#       Lines: "KT: VARIANT <name> PASS data_sha=<sha256> files=<n>" per variant.
#   urbd.mode=failover urbd.port=P urbd.ctl=C urbd.export=NAME urbd.timeout=T
#       nbd-client in persist mode (-nonetlink -persist -timeout T) to the "virtual IP" on P,
#       mkfs.ext4, mount, then a writer: file w/N (256 KiB) written with fsync, then syncfs,
#       then "KT: SYNCED N t0=<uptime> t1=<uptime> sha=<sha256>", until http://10.0.2.2:C/
#       answers "stop". On an I/O error ("KT: IOERROR N"), it recovers as a cluster would
#       (see recover: "VIP-MOVED", "PERSIST-RECONNECTED yes|no", "DEVICE-BACK", "FSCK rc=",
#       "REMOUNTED") and writes on. At the end: umount, drop caches, remount read-only and
#       verify every synced file against its recorded sha256 ("KT: VERIFIED <n> files").
# Always last: "KT: RESULT PASS" or "KT: RESULT FAIL <why>".

/bin/busybox --install -s
export PATH=/usr/local/sbin:/sbin:/usr/sbin:/bin:/usr/bin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run /tmp
echo

KVER=$(cat /etc/kver)
MODE=; PORTS=; PORT=; CTL=; EXPORT=urbd; TIMEOUT=30
for kv in $(cat /proc/cmdline); do
  case $kv in
    urbd.mode=*) MODE=${kv#*=} ;;
    urbd.ports=*) PORTS=${kv#*=} ;;
    urbd.port=*) PORT=${kv#*=} ;;
    urbd.ctl=*) CTL=${kv#*=} ;;
    urbd.export=*) EXPORT=${kv#*=} ;;
    urbd.timeout=*) TIMEOUT=${kv#*=} ;;
  esac
done
HOST=10.0.2.2

now() { cut -d' ' -f1 /proc/uptime; }
step() { echo "KT: STEP $(now) $*"; }
info() { echo "KT: INFO $*"; }
finish() {
  sync
  echo "KT: RESULT $*"
  # Give the console a moment to drain, then power off (qemu runs with -no-reboot).
  sleep 1
  poweroff -f
}
fail() {
  echo "KT: FAIL $*"
  dmesg | tail -n 40 | sed 's/^/KT: DMESG /'
  for m in /mnt/*; do umount "$m" 2>/dev/null; done
  finish "FAIL $*"
}

for m in $(cat /etc/modules.order); do
  insmod "/lib/modules/$KVER/$m" 2>/dev/null || case $m in crc32c-intel.ko) ;; *) fail "insmod $m" ;; esac
done
# The kernel's nbd log lines (connection lost, reconnects) and ext4's errors go to the console.
echo 6 >/proc/sys/kernel/printk 2>/dev/null
step "modules loaded, kernel $(uname -r), $(nproc) cpus"
ip link set lo up
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
ip link set eth0 up || fail "no eth0"
ip addr add 10.0.2.15/24 dev eth0 && ip route add default via $HOST || fail "network config"
i=0; while [ ! -b /dev/nbd2 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
[ -b /dev/nbd0 ] || fail "/dev/nbd0 missing"

drop_caches() { blockdev --flushbufs "$1" 2>/dev/null; echo 3 >/proc/sys/vm/drop_caches; }

# wait_size DEV: wait (bounded) until the kernel has sized the device.
wait_size() {
  i=0
  while [ "$(cat /sys/block/$1/size 2>/dev/null || echo 0)" = 0 ] && [ $i -lt 200 ]; do
    sleep 0.1; i=$((i+1))
  done
  [ "$(cat /sys/block/$1/size)" != 0 ] || fail "$1 still has size 0"
}

# Deterministic small files: the host re-creates the text to compare.
small_text() { i=0; while [ $i -lt $2 ]; do echo "urbd kernel test $1 line $i"; i=$((i+1)); done; }

# run_variant NAME DEV PORT NBD-CLIENT-OPTIONS...
run_variant() {
  name=$1 dev=$2 port=$3; shift 3
  mnt=/mnt/$name
  mkdir -p "$mnt"
  step "$name: nbd-client $* -N $EXPORT $HOST $port /dev/$dev"
  nbd-client "$@" -t 60 -N "$EXPORT" $HOST "$port" "/dev/$dev" || fail "$name: nbd-client connect"
  wait_size "$dev"
  info "$name: /dev/$dev size_bytes=$(( $(cat /sys/block/$dev/size) * 512 ))" \
       "logical_block_size=$(cat /sys/block/$dev/queue/logical_block_size)" \
       "max_hw_sectors_kb=$(cat /sys/block/$dev/queue/max_hw_sectors_kb)" \
       "write_cache=$(cat /sys/block/$dev/queue/write_cache | tr ' ' _)" \
       "fua=$(cat /sys/block/$dev/queue/fua 2>/dev/null)" \
       "discard_max_bytes=$(cat /sys/block/$dev/queue/discard_max_bytes)" \
       "write_zeroes_max_bytes=$(cat /sys/block/$dev/queue/write_zeroes_max_bytes 2>/dev/null)"
  mkfs.ext4 -F -q -L "kt-$name" "/dev/$dev" || fail "$name: mkfs.ext4"
  mount -t ext4 "/dev/$dev" "$mnt" || fail "$name: mount"
  echo "hello from the linux kernel nbd client, variant $name" >"$mnt/hello.txt" || fail "$name: write hello"
  dd if=/dev/urandom of="$mnt/data.bin" bs=1M count=16 2>/dev/null || fail "$name: write data.bin"
  mkdir -p "$mnt/small"
  n=0
  while [ $n -lt 40 ]; do small_text "$name/$n" $((n * 7 + 1)) >"$mnt/small/f$n" || fail "$name: small/f$n"; n=$((n+1)); done
  h1=$(sha256sum "$mnt/data.bin" | cut -d' ' -f1)
  sync
  info "$name: fstrim: $(fstrim -v "$mnt" 2>&1)"
  umount "$mnt" || fail "$name: umount"
  drop_caches "/dev/$dev"
  step "$name: written and unmounted; remount read-only and verify (reads go over NBD)"
  mount -t ext4 -o ro "/dev/$dev" "$mnt" || fail "$name: remount"
  h2=$(sha256sum "$mnt/data.bin" | cut -d' ' -f1)
  [ "$h1" = "$h2" ] || fail "$name: data.bin sha256 differs after remount ($h1 vs $h2)"
  grep -qx "hello from the linux kernel nbd client, variant $name" "$mnt/hello.txt" || fail "$name: hello.txt differs"
  n=0
  while [ $n -lt 40 ]; do
    [ "$(small_text "$name/$n" $((n * 7 + 1)) | sha256sum)" = "$(sha256sum <"$mnt/small/f$n")" ] || fail "$name: small/f$n differs"
    n=$((n+1))
  done
  umount "$mnt" || fail "$name: umount 2"
  nbd-client -d "/dev/$dev" || fail "$name: nbd-client -d"
  echo "KT: VARIANT $name PASS data_sha=$h1 files=42"
}

mode_serve() {
  [ -n "$PORTS" ] || fail "urbd.ports missing"
  set -- $(echo "$PORTS" | tr ',' ' ')
  [ $# = 3 ] || fail "urbd.ports wants three ports"
  p_plain=$1 p_multi=$2 p_bs=$3
  run_variant plain nbd0 "$p_plain"
  run_variant multiconn nbd1 "$p_multi" -C 4
  run_variant bs4096 nbd2 "$p_bs" -b 4096
  finish PASS
}

# verify_manifest MNT: every recorded file still has its recorded sha256; prints the count.
verify_manifest() {
  k=0
  while read -r f h; do
    [ "$(sha256sum "$1/w/$f" | cut -d' ' -f1)" = "$h" ] || fail "w/$f differs from what was synced"
    k=$((k+1))
  done </tmp/manifest
  echo $k
}

# nbd_connect: attach /dev/nbd0 to the virtual IP (persist mode, see mode_failover).
nbd_connect() {
  nbd-client -nonetlink -persist -timeout "$TIMEOUT" -N "$EXPORT" $HOST "$PORT" /dev/nbd0
}
readable() { dd if=/dev/nbd0 of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null; }

# recover MNT: what a cluster does on the client after an I/O error on the NBD device.
# 1. wait until the host says the virtual IP points at the new Primary;
# 2. give nbd-client -persist 5 s to reconnect the device by itself (Debian 12's 3.24 does
#    not when the server closes the connection: the kernel's NBD_DO_IT returns 0, which
#    nbd-client takes for a clean disconnect, and exits);
# 3. otherwise: umount, nbd-client -d, nbd-client again (through the virtual IP);
# 4. e2fsck -fy (replays the journal; ext4 aborted it at the I/O error), mount, and check
#    every file synced before the error.
recover() {
  i=0
  until grep -qE "moved|stop" /tmp/ctl 2>/dev/null; do
    i=$((i+1)); [ $i -lt 600 ] || fail "the host did not move the virtual IP within 300 s"
    sleep 0.5
  done
  echo "KT: VIP-MOVED t=$(now)"
  i=0
  until readable; do
    i=$((i+1)); [ $i -lt 10 ] || break
    sleep 0.5
  done
  alive=no; pidof nbd-client >/dev/null && alive=yes
  if readable; then
    echo "KT: PERSIST-RECONNECTED yes t=$(now) nbd_client_alive=$alive"
    umount "$1" || fail "umount after the I/O error"
  else
    echo "KT: PERSIST-RECONNECTED no t=$(now) nbd_client_alive=$alive"
    umount "$1" || fail "umount after the I/O error"
    nbd-client -d /dev/nbd0 >/dev/null 2>&1
    i=0
    until [ "$(cat /sys/block/nbd0/size)" = 0 ] && ! [ -e /sys/block/nbd0/pid ]; do
      i=$((i+1)); [ $i -lt 100 ] || fail "/dev/nbd0 still attached after nbd-client -d"
      sleep 0.1
    done
    i=0
    until nbd_connect; do
      i=$((i+1)); [ $i -lt 30 ] || fail "nbd-client could not reattach /dev/nbd0"
      sleep 1
    done
    wait_size nbd0
    readable || fail "/dev/nbd0 not readable after reattaching"
  fi
  echo "KT: DEVICE-BACK t=$(now)"
  e2fsck -fy /dev/nbd0 >/tmp/fsck.log 2>&1; rc=$?
  sed 's/^/KT: FSCK-OUT /' /tmp/fsck.log | tail -n 15
  echo "KT: FSCK rc=$rc"
  [ $rc -lt 4 ] || fail "e2fsck -fy after the failover: exit $rc"
  mount -t ext4 /dev/nbd0 "$1" || fail "mount after the failover"
  echo "KT: REMOUNTED t=$(now) verified=$(verify_manifest "$1")"
}

mode_failover() {
  [ -n "$PORT" ] && [ -n "$CTL" ] || fail "urbd.port and urbd.ctl are needed"
  mnt=/mnt/fo
  mkdir -p "$mnt"
  # -nonetlink: Debian 12's nbd-client implements -persist (reconnect when the connection
  # dies) only over the ioctl interface; with netlink it configures the device and exits.
  step "nbd-client -nonetlink -persist -timeout $TIMEOUT -N $EXPORT $HOST $PORT /dev/nbd0"
  nbd_connect || fail "nbd-client connect"
  wait_size nbd0
  info "nbd0 size_bytes=$(( $(cat /sys/block/nbd0/size) * 512 )) pid=$(cat /sys/block/nbd0/pid 2>/dev/null)"
  mkfs.ext4 -F -q -L kt-failover /dev/nbd0 || fail "mkfs.ext4"
  mount -t ext4 /dev/nbd0 "$mnt" || fail "mount"
  mkdir -p "$mnt/w" && sync -f "$mnt" || fail "mkdir w"
  # The host says "stop" (over HTTP on the control port) once the failover is over.
  ( while :; do
      r=$(timeout 5 wget -q -O - "http://$HOST:$CTL/" 2>/dev/null)
      [ -n "$r" ] && echo "$r" >/tmp/ctl
      [ "$r" = stop ] && { touch /tmp/stop; break; }
      sleep 1
    done ) &
  poller=$!
  : >/tmp/manifest
  step "writer starts"
  n=0 errors=0
  while [ ! -e /tmp/stop ] && [ $n -lt 3000 ]; do
    n=$((n+1))
    t0=$(now)
    # The data is made (and hashed) in RAM first: after an I/O error even reads may fail.
    dd if=/dev/urandom of=/tmp/blob bs=64k count=4 2>/dev/null
    h=$(sha256sum /tmp/blob | cut -d' ' -f1)
    if dd if=/tmp/blob of="$mnt/w/f$n" bs=64k conv=fsync 2>/dev/null && sync -f "$mnt/w"; then
      t1=$(now)
      echo "f$n $h" >>/tmp/manifest
      echo "KT: SYNCED $n t0=$t0 t1=$t1 sha=$h"
    else
      echo "KT: IOERROR $n t0=$t0 t=$(now)"
      errors=$((errors+1))
      [ $errors -le 3 ] || fail "more than three failovers"
      recover "$mnt"
    fi
  done
  kill $poller 2>/dev/null
  [ -e /tmp/stop ] || fail "the host never said stop"
  step "writer stopped after $n files ($errors I/O error episodes); verify"
  dmesg | grep -E "nbd|EXT4-fs|JBD2|I/O error" | tail -n 40 | sed 's/^/KT: DMESG /'
  umount "$mnt" || fail "umount"
  drop_caches /dev/nbd0
  mount -t ext4 -o ro /dev/nbd0 "$mnt" || fail "remount"
  echo "KT: VERIFIED $(verify_manifest "$mnt") files"
  umount "$mnt" || fail "umount 2"
  nbd-client -d /dev/nbd0 || fail "nbd-client -d"
  finish PASS
}

case $MODE in
  serve) mode_serve ;;
  failover) mode_failover ;;
  *) fail "unknown urbd.mode '$MODE'" ;;
esac
