# Driven by scenarios/nbd_clients.rs (test libnbd_python_commands).
# usage: /usr/bin/python3 libnbd_commands.py URI SIZE IS_URBD(0|1)
# Exercises what qemu-io cannot: structured reads with DF, NBD_CMD_CACHE,
# fast zero, NO_HOLE zeroes, block status, and (strict mode off) requests the
# server must refuse with specific errno values. Exits non-zero on failure.
import errno
import sys

import nbd

uri, size, is_urbd = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
M = 1 << 20


def check(cond, msg):
    if not cond:
        print("FAIL:", msg, file=sys.stderr)
        sys.exit(1)


def errno_of(e):
    # nbd.Error.errno is the symbolic name ("EINVAL") in this binding.
    v = e.errno
    return v if isinstance(v, int) else getattr(errno, str(v), v)


def expect_errno(fn, want, what):
    try:
        fn()
    except nbd.Error as e:
        got = errno_of(e)
        check(got == want or not is_urbd, f"{what}: errno {e.errno} ({got}), want {want}")
        return
    check(False, f"{what}: succeeded")


def pattern(n, seed):
    return bytes(((i * 131 + seed) >> 3) & 0xFF for i in range(n))


h = nbd.NBD()
h.add_meta_context("base:allocation")
h.set_opt_mode(False)
h.connect_uri(uri)
check(h.get_size() == size, f"size {h.get_size()} != {size}")
check(h.get_structured_replies_negotiated(), "structured replies not negotiated")
check(h.can_meta_context("base:allocation"), "base:allocation not negotiated")
for name in ["can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero",
             "can_multi_conn", "can_cache", "can_df"]:
    check(getattr(h, name)(), f"{name} is false")
check(not h.is_read_only(), "read-only")
if is_urbd:
    check(h.get_block_size(nbd.SIZE_MINIMUM) == 512, "min block size")
    check(h.get_block_size(nbd.SIZE_PREFERRED) == 4096, "preferred block size")
    check(h.get_block_size(nbd.SIZE_MAXIMUM) == 32 * M, "max block size")

# Plain write/read, FUA.
a = pattern(256 * 1024, 1)
h.pwrite(a, 1 * M, nbd.CMD_FLAG_FUA)
check(h.pread(len(a), 1 * M) == a, "read back after FUA write")

# Structured read with DF: one data chunk covering everything.
chunks = []


def chunk(subbuf, offset, status, err):
    chunks.append((offset, len(subbuf), status))
    return 0


buf = h.pread_structured(len(a), 1 * M, chunk, nbd.CMD_FLAG_DF)
check(bytes(buf) == a, "DF read data")
check(sum(c[1] for c in chunks) == len(a), f"DF read chunks {chunks}")
check(len(chunks) == 1, f"DF read must be one chunk, got {chunks}")

# Structured read without DF across data and a hole: data must be right
# whatever the chunking.
b = pattern(64 * 1024, 2)
h.pwrite(b, 4 * M)
chunks.clear()
buf = h.pread_structured(2 * M, 3 * M, chunk)
want = bytearray(2 * M)
want[1 * M:1 * M + len(b)] = b
check(bytes(buf) == bytes(want), "structured read over data+hole")

# CACHE.
h.cache(256 * 1024, 1 * M)
check(h.pread(len(a), 1 * M) == a, "read after cache")

# Zeroes: plain, NO_HOLE, FAST_ZERO (may fail fast with ENOTSUP only).
h.zero(64 * 1024, 1 * M)
check(h.pread(64 * 1024, 1 * M) == bytes(64 * 1024), "zero")
check(h.pread(64 * 1024, 1 * M + 64 * 1024) == a[64 * 1024:128 * 1024], "after zero")
h.zero(64 * 1024, 1 * M + 64 * 1024, nbd.CMD_FLAG_NO_HOLE)
check(h.pread(64 * 1024, 1 * M + 64 * 1024) == bytes(64 * 1024), "zero NO_HOLE")
try:
    h.zero(64 * 1024, 1 * M + 128 * 1024, nbd.CMD_FLAG_FAST_ZERO)
    check(h.pread(64 * 1024, 1 * M + 128 * 1024) == bytes(64 * 1024), "fast zero")
except nbd.Error as e:
    check(errno_of(e) in (errno.ENOTSUP, errno.EOPNOTSUPP), f"fast zero failed: {e}")
check(h.pread(64 * 1024, 1 * M + 192 * 1024) == a[192 * 1024:], "after zeroes")

# Trim keeps the neighbours, flush.
h.trim(32 * 1024, 4 * M)
check(h.pread(32 * 1024, 4 * M + 32 * 1024) == b[32 * 1024:], "after trim")
h.flush()

# Block status over the whole disk: extents tile it, data where written.
extents = []


def extent(metacontext, offset, entries, err):
    if metacontext == "base:allocation":
        extents.append((offset, list(entries)))
    return 0


pos = 0
while pos < size:
    extents.clear()
    h.block_status(size - pos, pos, extent)
    check(len(extents) == 1, f"block status at {pos}: {extents}")
    off, ents = extents[0]
    check(off == pos, f"block status offset {off} != {pos}")
    check(len(ents) >= 2 and len(ents) % 2 == 0, f"entries {ents}")
    for i in range(0, len(ents), 2):
        length, flags = ents[i], ents[i + 1]
        check(length > 0, f"zero-length extent {ents}")
        # Written data [1M+192k, 1M+256k) must not be reported as a hole
        # that reads as zero.
        lo, hi = pos, pos + length
        if lo < 1 * M + 256 * 1024 and hi > 1 * M + 192 * 1024:
            check(not (flags & nbd.STATE_ZERO), f"data extent [{lo},{hi}) flagged zero")
        pos = hi
check(pos >= size, "block status did not reach the end")

# REQ_ONE: exactly one extent, not longer than asked; at an unaligned
# (512-aligned) offset inside written data it must say "not zero".
for off, count in ((1 * M + 192 * 1024, 64 * 1024), (1 * M + 200 * 1024 + 512, 4096),
                   (10 * M, 1 * M)):
    extents.clear()
    h.block_status(count, off, extent, nbd.CMD_FLAG_REQ_ONE)
    check(len(extents) == 1, f"REQ_ONE at {off}: {extents}")
    eoff, ents = extents[0]
    check(eoff == off and len(ents) == 2, f"REQ_ONE at {off}: {extents}")
    check(0 < ents[0] <= count, f"REQ_ONE at {off}: length {ents[0]} > {count}")
    if off < 2 * M:
        check(not (ents[1] & nbd.STATE_ZERO), f"REQ_ONE at {off}: data flagged zero")
    else:
        check(ents[1] & nbd.STATE_ZERO, f"REQ_ONE at {off}: never-written flagged non-zero")

# Strict mode off: requests the server itself must refuse.
h.set_strict_mode(0)
expect_errno(lambda: h.pread(4096, size - 512), errno.EINVAL, "read past end")
expect_errno(lambda: h.pwrite(bytes(4096), size - 512), errno.ENOSPC, "write past end")
expect_errno(lambda: h.zero(4096, size - 512), errno.ENOSPC, "zero past end")
expect_errno(lambda: h.pread(32 * M + 512, 0), errno.EINVAL, "read > 32 MiB")
expect_errno(lambda: h.block_status(4096, size - 512, extent), errno.EINVAL,
             "block status past end")
check(h.pread(512, size - 512) == bytes(512), "last sector after refused requests")
h.shutdown()
print("OK")
