#!/usr/bin/env bash
# The main job: build urbd and export a disk image over NBD on 127.0.0.1.
# (Replicated pairs come with `urbdadm`; until then this serves one local disk.)
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${URBD_DEMO_DIR:-$PWD/.urbd-demo}
size=${URBD_DEMO_SIZE:-1G}
listen=${URBD_DEMO_LISTEN:-127.0.0.1:10809}
mkdir -p "$dir"
cargo build --release -p urbd
[ -f "$dir/disk.img" ] || truncate -s "$size" "$dir/disk.img"
host=${listen%:*}; port=${listen##*:}
cat <<TXT

urbd is exporting $dir/disk.img ($size) on $listen, export name "urbd". Try, in another shell:
  nbdinfo nbd://$host:$port/urbd
  qemu-io -f raw nbd://$host:$port/urbd -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M'
  qemu-img convert -n -O raw some.img nbd://$host:$port/urbd
  mkdir -p /tmp/nbd && nbdfuse /tmp/nbd/disk nbd://$host:$port/urbd &   # a file view; losetup it
  nbd-client $host $port /dev/nbd0 -N urbd     # on a kernel with nbd.ko
Stop with Ctrl-C.

TXT
exec target/release/urbd serve --disk "$dir/disk.img" --listen "$listen"
