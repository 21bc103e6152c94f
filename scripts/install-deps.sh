#!/usr/bin/env bash
# Installs the Debian packages urbd's tests and benchmarks use, when they are missing.
set -euo pipefail

missing=()
want() { # want COMMAND-OR-CHECK PACKAGE
    if ! eval "$1" >/dev/null 2>&1; then missing+=("$2"); fi
}
want 'command -v fio' fio
want 'command -v nbdinfo' libnbd-bin
want 'command -v nbdcopy' libnbd-bin
want 'command -v nbdfuse' nbdfuse
want 'command -v nbdkit' nbdkit
want 'command -v qemu-io' qemu-utils
want 'command -v qemu-nbd' qemu-utils
want '/usr/bin/python3 -c "import nbd"' python3-libnbd
want 'command -v mkfs.ext4' e2fsprogs
want 'command -v fusermount3' fuse3
want 'command -v losetup' mount
want 'command -v ip' iproute2
want 'command -v nft' nftables

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
# De-duplicate while keeping order.
mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | awk '!seen[$0]++')
echo "installing: ${pkgs[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
