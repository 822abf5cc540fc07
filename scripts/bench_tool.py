#!/usr/bin/env python3
"""Helpers of scripts/bench.sh (Python 3 standard library only).

  bench_tool.py fixture DIR full|quick|dirs   build the layered fixture in DIR (must not exist);
                                         dirs: the directory-heavy one (fixture_dirs)
  bench_tool.py write-each ROOT LIST     open each file of LIST (paths relative to ROOT)
                                         O_WRONLY|O_APPEND, write 1 byte, close: first writes
  bench_tool.py create ROOT N            create N files of 1000 bytes in ROOT/dNN/ (new tree)
  bench_tool.py fio-iops JSON            read IOPS from fio's JSON output
  bench_tool.py rss PID                  VmRSS of PID in MiB

Fixture layout (counts for `full`; `quick` is about a tenth, with smaller large files):

  base/  the distro-like first layer, ~55k small files in a deep tree
    usr/share/dNN/sN/fileK        18k files, wide          (walk half A, sha256sum)
    usr/lib/pkgNN/a/b/.../libK.so 18k files, deep          (walk half B)
    usr/src/hdr/dNN/fK.h          10k files                (first write to 10k lower files)
    var/lib/rmtree/dNN/fK         4k files                 (rm -rf of a lower subtree)
    usr/share/dir10k/eK           5k entries of the 10k-entry directory
    opt/large/gN/fK.bin           16 x 32 MiB              (chmod -R / chown -R)
    big.img                       1 GiB of random data     (sequential/random reads, copy-up)
  mid/   3k new files, char 0/0 whiteouts over base files, usr/share/d7 opaque
         (trusted.overlay.opaque=y), 3k dir10k entries and whiteouts of 200 base ones
  top/   2.5k new files, 500 replacing base files, 2.2k new and 200 replacing dir10k entries
  untar.tar                       20k files, ~110 MB
  lists/copyup-small.txt          the 10k lower files written by `write-each`
"""

import io
import json
import os
import sys
import tarfile

SCALES = {
    # name: (small-file factor, large files, large file size, big file size, tar files)
    "full": (1.0, 16, 32 << 20, 1 << 30, 20000),
    "quick": (0.1, 4, 4 << 20, 64 << 20, 2000),
}


def put(path, size, fill=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        if size:
            f.write(fill * size)


def random_file(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n


def whiteout(path):
    """A kernel-format whiteout: char device 0/0 (what every candidate reads)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mknod(path, 0o600 | 0o020000, os.makedev(0, 0))


def share(root, i):
    return f"{root}/usr/share/d{i % 60}/s{i % 10}"


def fixture(root, scale):
    f, nlarge, large_size, big_size, ntar = SCALES[scale]
    n = lambda count: max(1, int(count * f))  # noqa: E731
    base, mid, top = (f"{root}/{layer}" for layer in ("base", "mid", "top"))
    for layer in (base, mid, top):
        os.makedirs(layer)

    # ---- base
    for i in range(n(18000)):
        put(f"{share(base, i)}/file{i}", (i * 37) % 4000)
    for i in range(n(18000)):
        deep = "/".join("abcdefgh"[: 1 + i % 8])
        put(f"{base}/usr/lib/pkg{i % 60}/{deep}/lib{i}.so", (i * 53) % 8192)
    small = []
    for i in range(n(10000)):
        rel = f"usr/src/hdr/d{i % 100}/f{i}.h"
        put(f"{base}/{rel}", 200 + (i * 13) % 2000)
        small.append(rel)
    for i in range(n(4000)):
        put(f"{base}/var/lib/rmtree/d{i % 40}/f{i}", (i * 7) % 3000)
    n_base10k = n(5000)
    for i in range(n_base10k):
        put(f"{base}/usr/share/dir10k/e{i}", i % 100)
    for g in range(nlarge):
        random_file(f"{base}/opt/large/g{g % 4}/f{g}.bin", large_size)
    random_file(f"{base}/big.img", big_size)

    # ---- mid: new files, whiteouts, an opaque directory
    for i in range(n(3000)):
        put(f"{share(mid, i)}/mid{i}", (i * 41) % 4000)
    for i in range(0, n(18000), 59):  # ~300 whiteouts over base files, spread over the dirs
        whiteout(f"{share(mid, i)}/file{i}")
    os.makedirs(f"{mid}/usr/share/d7", exist_ok=True)
    os.setxattr(f"{mid}/usr/share/d7", "trusted.overlay.opaque", b"y")
    for i in range(20):
        put(f"{mid}/usr/share/d7/opaque{i}", 100)
    for i in range(n(3000)):
        put(f"{mid}/usr/share/dir10k/m{i}", i % 100)
    for i in range(n(200)):
        whiteout(f"{mid}/usr/share/dir10k/e{i}")
    for i in range(n(500)):
        put(f"{mid}/var/lib/rmtree/d{i % 40}/mid{i}", 100)
    for i in range(0, n(4000), 40):
        whiteout(f"{mid}/var/lib/rmtree/d{i % 40}/f{i}")

    # ---- top: new files and replacements
    for i in range(n(2500)):
        put(f"{share(top, i)}/top{i}", (i * 43) % 4000)
    for i in range(1, n(1000), 2):
        put(f"{share(top, i)}/file{i}", 100, b"t")
    for i in range(n(2200)):
        put(f"{top}/usr/share/dir10k/t{i}", i % 100)
    for i in range(n(200), min(n(400), n_base10k)):
        put(f"{top}/usr/share/dir10k/e{i}", 50, b"t")
    for i in range(n(500)):
        put(f"{top}/var/lib/rmtree/d{i % 40}/top{i}", 100)

    untar_tarball(root, ntar)

    os.makedirs(f"{root}/lists")
    with open(f"{root}/lists/copyup-small.txt", "w") as out:
        out.write("\n".join(small) + "\n")


def dir_tree(layer, packages, first, files_per_dir):
    """node_modules-like packages: 10 directories each, a few files per directory."""
    subdirs = ("", "lib", "lib/util", "lib/core", "src", "src/impl", "test", "test/fixtures",
               "docs", "dist")
    for p in range(first, first + packages):
        half = "usr/share" if p % 2 == 0 else "usr/lib"  # the two halves of `parallel`
        for d in subdirs:
            base = f"{layer}/{half}/node_modules/pkg{p}/{d}".rstrip("/")
            os.makedirs(base, exist_ok=True)
            for k in range(files_per_dir):
                put(f"{base}/f{k}.js", (p * 31 + k * 97) % 3000)


def fixture_dirs(root):
    """Directory-heavy: ~13k directories in ~65k entries (one per five, as node_modules),
    over three layers, with the 10k-entry directory, an rm tree and the untar tarball."""
    base, mid, top = (f"{root}/{layer}" for layer in ("base", "mid", "top"))
    for layer in (base, mid, top):
        os.makedirs(layer)
    dir_tree(base, 1000, 0, 4)
    dir_tree(mid, 130, 1000, 4)
    dir_tree(top, 130, 1130, 4)
    for p in range(0, 1000, 7):  # upper layers add to and delete from base packages
        half = "usr/share" if p % 2 == 0 else "usr/lib"
        put(f"{mid}/{half}/node_modules/pkg{p}/lib/added.js", 10)
        whiteout(f"{top}/{half}/node_modules/pkg{p}/src/f0.js")
    for i in range(5000):
        put(f"{base}/usr/share/dir10k/e{i}", i % 100)
    for i in range(3000):
        put(f"{mid}/usr/share/dir10k/m{i}", i % 100)
    for i in range(2000):
        put(f"{top}/usr/share/dir10k/t{i}", i % 100)
    for i in range(900):  # rm tree: 300 directories of 3 files over the layers
        layer = (base, mid, top)[i % 3]
        put(f"{layer}/var/lib/rmtree/d{i % 100}/e{i // 100}/f{i}", 100)
    untar_tarball(root, 20000)
    os.makedirs(f"{root}/lists")


def untar_tarball(root, ntar):
    """The tarball for untar (built in memory: no tree on disk)."""
    with tarfile.open(f"{root}/untar.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        dirs = set()
        for i in range(ntar):
            d = f"src/pkg{i % 50}/m{i % 200}"
            for k in range(1, 4):
                p = "/".join(d.split("/")[:k])
                if p not in dirs:
                    dirs.add(p)
                    ti = tarfile.TarInfo(p)
                    ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(ti)
            size = (i * 7919) % 11000
            ti = tarfile.TarInfo(f"{d}/file{i}.c")
            ti.size, ti.mode = size, 0o644
            tar.addfile(ti, io.BytesIO(b"u" * size))


def write_each(root, listfile):
    with open(listfile) as f:
        names = [line.rstrip("\n") for line in f if line.strip()]
    for name in names:
        fd = os.open(f"{root}/{name}", os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"w")
        finally:
            os.close(fd)


def create(root, count):
    data = b"c" * 1000
    for d in range(100):
        os.makedirs(f"{root}/d{d}")
    for i in range(count):
        with open(f"{root}/d{i % 100}/f{i}", "wb") as f:
            f.write(data)


def fio_iops(path):
    with open(path) as f:
        text = f.read()
    # fio may print notes before the JSON object.
    doc = json.loads(text[text.index("{") :])
    print(round(sum(job["read"]["iops"] for job in doc["jobs"]), 1))


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                print(round(int(line.split()[1]) / 1024, 2))
                return
    raise SystemExit(f"bench_tool.py: no VmRSS for pid {pid}")


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "fixture" and len(args) == 2 and args[1] == "dirs":
        fixture_dirs(args[0])
    elif cmd == "fixture" and len(args) == 2 and args[1] in SCALES:
        fixture(args[0], args[1])
    elif cmd == "write-each" and len(args) == 2:
        write_each(*args)
    elif cmd == "create" and len(args) == 2:
        create(args[0], int(args[1]))
    elif cmd == "fio-iops" and len(args) == 1:
        fio_iops(args[0])
    elif cmd == "rss" and len(args) == 1:
        rss(args[0])
    else:
        raise SystemExit(f"bench_tool.py: bad arguments: {' '.join(argv[1:])}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)
