#!/usr/bin/env bash
# The main job: build urbd and run a replicated pair (nodes "alpha" and "beta") on this machine,
# with file-backed disks under .urbd-demo/, do the initial sync, and print how to use it.
# Stop it with: scripts/main.sh down
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${URBD_DEMO_DIR:-$PWD/.urbd-demo}
size=${URBD_DEMO_SIZE:-1G}
res=r0
adm=target/release/urbdadm
mkdir -p "$dir/etc" "$dir/run/alpha" "$dir/run/beta"
on() { local node=$1; shift; "$adm" --config-dir "$dir/etc" --node "$node" --run-dir "$dir/run/$node" "$@"; }

if [ "${1:-}" = down ]; then
    on alpha down "$res" || true
    on beta down "$res" || true
    exit 0
fi

cargo build --release -p urbd
[ -f "$dir/etc/$res.toml" ] || "$adm" example-config "$res" --dir "$dir" > "$dir/etc/$res.toml"
fresh=0
for node in alpha beta; do
    img="$dir/$res-$node.img"
    if [ ! -f "$img" ]; then
        truncate -s "$size" "$img"
        on "$node" create-md "$res"
        fresh=1
    fi
done
on alpha up "$res"
on beta up "$res"
on alpha wait-connect "$res" --timeout-s 30
if [ "$fresh" = 1 ]; then
    # Two fresh disks: make alpha's data the truth; beta receives a full initial sync.
    on alpha primary --force "$res"
    on alpha wait-sync "$res" --timeout-s 600
else
    on alpha primary "$res"
fi
on alpha status "$res"
uri=$(on alpha status "$res" --json | sed -n 's/.*"address": *"\([^"]*\)".*/\1/p' | head -n 1)
cat <<TXT

The pair is up: alpha is Primary and exports resource $res over NBD at $uri (export "$res").
  nbdinfo nbd://$uri/$res
  qemu-io -f raw nbd://$uri/$res -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M'
  mkdir -p /tmp/nbd && nbdfuse /tmp/nbd/disk nbd://$uri/$res &     # a file view; losetup it
  nbd-client ${uri%:*} ${uri##*:} /dev/nbd0 -N $res                # on a kernel with nbd.ko
Every write lands on both $dir/$res-alpha.img and $dir/$res-beta.img before it is acknowledged.
Admin:   $adm --config-dir $dir/etc --node beta --run-dir $dir/run/beta status $res
Stop:    scripts/main.sh down
TXT
