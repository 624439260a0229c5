#!/usr/bin/env python3
"""Where does a RADOS object's data lie on a bluestore OSD's disk image?

    find-object-sectors.py IMAGE OBJFILE...

IMAGE is the backing file of the OSD's block device (for a faultfs disk: the image that
faultfs serves, not MOUNT/disk). OBJFILE is a local copy of what was written with
`rados put` (random bytes, so every 4 KiB block is unique). For each OBJFILE it prints the
extents, in 512-byte sectors of the device, as faultfs `fail`/`fail-reads` commands:

    o4 fail-reads 603408 2048    # 1048576 bytes, 1 extent(s)

This works because bluestore stores object data uncompressed and unencrypted by default and a
loop device maps sector S to byte S*512 of the image. Only data blocks that are not all zeroes
are found. If a block appears more than once (an old copy left after bluestore rewrote the
object elsewhere, e.g. after `ceph pg repair`), the line says so and lists the first copy:
pick fresh objects instead. Sparse holes are skipped (SEEK_DATA), so a 4 GiB image with a
few hundred MiB of data takes well under a second.
"""
import os
import sys

BLOCK = 4096


def index_image(path):
    """first 64 bytes of every non-zero 4 KiB block -> [byte offsets]"""
    blocks = {}
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        off = 0
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            pos = start
            os.lseek(fd, pos, os.SEEK_SET)
            while pos < end:
                buf = os.read(fd, min(1 << 24, end - pos))
                if not buf:
                    break
                for i in range(0, len(buf) - BLOCK + 1, BLOCK):
                    b = buf[i:i + BLOCK]
                    if b.count(0) != BLOCK:
                        blocks.setdefault(b[:64], []).append(pos + i)
                pos += len(buf)
            off = end
    finally:
        os.close(fd)
    return blocks


def main():
    if len(sys.argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    blocks = index_image(sys.argv[1])
    rc = 0
    for path in sys.argv[2:]:
        data = open(path, "rb").read()
        firsts, dups, missing = [], 0, 0
        for i in range(0, len(data), BLOCK):
            locs = blocks.get(data[i:i + 64], [])
            if not locs:
                missing += 1
                continue
            dups += len(locs) > 1
            firsts.append(locs[0])
        runs = []
        for x in firsts:
            if runs and x == runs[-1][1]:
                runs[-1][1] = x + BLOCK
            else:
                runs.append([x, x + BLOCK])
        name = os.path.basename(path)
        if not runs:
            print(f"{name}: not found in {sys.argv[1]}")
            rc = 1
            continue
        cmds = "; ".join(f"fail-reads {a // 512} {(b - a) // 512}" for a, b in runs)
        note = f"    # {len(data)} bytes, {len(runs)} extent(s)"
        if missing:
            note += f", {missing} block(s) not found"
        if dups:
            note += f", {dups} block(s) found more than once (old copies)"
        print(f"{name} {cmds}{note}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
