#!/usr/bin/env python3
"""strata push/pull against skopeo copy, on a local docker-registry (Python 3 stdlib; the chart
needs gnuplot). Run through scripts/bench-registry.sh, which builds strata and installs what
this needs.

  bench_registry.py --strata BIN --out DIR [--reps N] [--mb TOTAL_MB] [--work DIR]

The image: three gzip layers, about TOTAL_MB (default 300) uncompressed in all: a base of the
host's /usr files (real, compressible data) up to 2/3 of it, a middle layer of pseudo-random
files (incompressible) and a small top layer. A second image shares base and middle and has
another top layer. Each measurement gets a fresh registry storage (or a fresh store / OCI
directory) so the candidates never profit from each other:

  push (empty registry)   strata push IMG          | skopeo copy oci:LAYOUT docker://REG
  re-push                 the same again           | the same again (both only HEAD)
  pull (empty)            strata pull into a new store (verifies, unpacks)
                                                   | skopeo copy docker://REG oci:NEWDIR (no unpack)
  shared-base pull        strata pull :2 into the store holding :1
                                                   | skopeo copy :2 into the OCI dir holding :1
  the two pulls again     (the same strata samples) | skopeo copy docker://REG
                                                     containers-storage:[vfs|overlay@DIR]REF
                                                     (unpacks, as `podman pull` does)

Writes DIR/results.md, DIR/results.json and (with gnuplot) DIR/times.svg.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def add_file(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def host_files(budget):
    """(name, data) of host /usr files up to `budget` bytes."""
    total = 0
    for root in ("/usr/lib", "/usr/share", "/usr/bin"):
        for dirpath, _, files in os.walk(root):
            for f in sorted(files):
                p = os.path.join(dirpath, f)
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                try:
                    with open(p, "rb") as fh:
                        data = fh.read()
                except OSError:
                    continue
                if total + len(data) > budget:
                    return
                total += len(data)
                yield p.lstrip("/"), data


def random_files(budget, seed, prefix):
    rng = random.Random(seed)
    n = 0
    while budget > 0:
        size = min(budget, 4 << 20)
        yield f"{prefix}/f{n:04d}", rng.randbytes(size)
        budget -= size
        n += 1


def layer(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            add_file(tar, name, data)
    raw = buf.getvalue()
    return raw, gzip.compress(raw, compresslevel=1, mtime=0)


def write_layout(path, layers, tag):
    """An OCI layout of one image; returns {manifest digest, layer sizes}."""
    blobs = os.path.join(path, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data):
        d = sha(data)
        with open(os.path.join(blobs, d[7:]), "wb") as f:
            f.write(data)
        return d

    descs, diff_ids = [], []
    for raw, gz in layers:
        diff_ids.append(sha(raw))
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      "digest": put(gz), "size": len(gz)})
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(config), "size": len(config)},
        "layers": descs}).encode()
    md = put(manifest)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
            "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}, f)
    return {"manifest": md, "sizes": [d["size"] for d in descs]}


class Registry:
    def __init__(self, work):
        self.dir = tempfile.mkdtemp(dir=work, prefix="registry-")
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{s.getsockname()[1]}"
        s.close()
        conf = os.path.join(self.dir, "config.yml")
        with open(conf, "w") as f:
            f.write("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
                    f"storage:\n  filesystem:\n    rootdirectory: {self.dir}/data\n"
                    f"  delete:\n    enabled: true\nhttp:\n  addr: {self.host}\n")
        self.proc = subprocess.Popen(["docker-registry", "serve", conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                h, p = self.host.split(":")
                socket.create_connection((h, int(p)), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    sys.exit("docker-registry did not start")
                time.sleep(0.05)

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


LOADS = []


def timed(cmd, env):
    # The machine is shared: the 1-minute load average before each timed run goes in the results.
    LOADS.append(loadavg())
    t = time.monotonic()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.monotonic() - t
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    return dt, r.stderr


def fetched_bytes(stderr):
    """strata pull's summary: 'NAME: K of N layers fetched (B bytes), manifest D'."""
    for line in stderr.splitlines():
        if "layers fetched (" in line:
            return int(line.split("layers fetched (")[1].split(" ")[0])
    return None


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ext4 without a journal (this VM's root filesystem) skips inodes freed less than 30 s ago
# when it allocates new ones (fs/ext4/ialloc.c, recently_deleted): creating thousands of files
# right after removing thousands scans them again for each new inode. A pull that unpacks pays
# it after the previous measurement's store was removed; skopeo's copy to an OCI directory
# (three blobs) does not. Every timed pull therefore starts 31 s after the last removal.
SETTLE = 31.0
last_removal = [0.0]


def remove(path):
    shutil.rmtree(path, ignore_errors=True)
    last_removal[0] = time.monotonic()


def settle():
    wait = last_removal[0] + SETTLE - time.monotonic()
    if wait > 0:
        time.sleep(wait)


def rep(args, work, env, layouts, result):
    strata = [args.strata]
    sk = ["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false"]
    for cand in ("strata", "skopeo"):
        reg = Registry(work)
        conf = os.path.join(reg.dir, "registries.conf")
        with open(conf, "w") as f:
            f.write(f'[[registry]]\nlocation = "{reg.host}"\ninsecure = true\n')
        e = dict(env, CONTAINERS_REGISTRIES_CONF=conf)
        root = tempfile.mkdtemp(dir=work, prefix="store-")
        ref1, ref2 = f"{reg.host}/bench/app:1", f"{reg.host}/bench/app:2"
        try:
            if cand == "strata":
                src = tempfile.mkdtemp(dir=work, prefix="src-")
                for layout, name in ((layouts[0], "app:1"), (layouts[1], "app:2")):
                    subprocess.run(strata + ["--root", src, "image", "import", layout,
                                             "--name", name], env=e, check=True,
                                   capture_output=True)
                push = strata + ["--root", src, "push", "-q", "app:1", ref1]
                result("push (empty registry) (s)", cand, timed(push, e)[0])
                result("re-push, HEAD only (s)", cand, timed(push, e)[0])
                subprocess.run(strata + ["--root", src, "push", "-q", "app:2", ref2], env=e,
                               check=True, capture_output=True)
                settle()
                dt, _ = timed(strata + ["--root", root, "pull", ref1], e)
                result("pull (empty store) (s)", cand, dt)
                for driver in STORAGE_DRIVERS:
                    result(storage_metric("pull (empty store)", driver), cand, dt)
                dt, err = timed(strata + ["--root", root, "pull", ref2], e)
                result("shared-base pull (s)", cand, dt)
                for driver in STORAGE_DRIVERS:
                    result(storage_metric("shared-base pull", driver), cand, dt)
                result("shared-base pull, bytes fetched (count)", cand, fetched_bytes(err))
                remove(src)
            else:
                push = sk + [f"oci:{layouts[0]}:1", f"docker://{ref1}"]
                result("push (empty registry) (s)", cand, timed(push, e)[0])
                result("re-push, HEAD only (s)", cand, timed(push, e)[0])
                subprocess.run(sk + [f"oci:{layouts[1]}:2", f"docker://{ref2}"], env=e,
                               check=True, capture_output=True)
                out = os.path.join(root, "oci")
                settle()
                dt, _ = timed(sk + [f"docker://{ref1}", f"oci:{out}:1"], e)
                result("pull (empty store) (s)", cand, dt)
                dt, _ = timed(sk + [f"docker://{ref2}", f"oci:{out}:2"], e)
                result("shared-base pull (s)", cand, dt)
                for driver in STORAGE_DRIVERS:
                    storage_pulls(work, e, sk, driver, (ref1, ref2), result)
        finally:
            reg.stop()
            remove(root)


# skopeo into containers-storage unpacks every layer into a store (what `podman pull` does):
# the like-for-like comparison with strata's pull. overlay is podman's default driver as root.
STORAGE_DRIVERS = ("vfs", "overlay")


def storage_metric(kind, driver):
    return f"{kind}, skopeo into containers-storage {driver} (s)"


def storage_pulls(work, env, sk, driver, refs, result):
    """skopeo copy docker://REF containers-storage:[DRIVER@graph+run]REF into a new store,
    then the shared-base image into the same store. strata's pull samples go in these rows
    too (the strata column), so each row compares the same strata runs with one skopeo."""
    root = tempfile.mkdtemp(dir=work, prefix=f"storage-{driver}-")
    graph, run = os.path.join(root, "graph"), os.path.join(root, "run")
    conf = os.path.join(root, "storage.conf")
    with open(conf, "w") as f:
        f.write(f'[storage]\ndriver = "{driver}"\ngraphroot = "{graph}"\nrunroot = "{run}"\n')
    e = dict(env, CONTAINERS_STORAGE_CONF=conf)
    try:
        settle()
        for kind, ref in zip(("pull (empty store)", "shared-base pull"), refs):
            dt, _ = timed(sk + [f"docker://{ref}",
                                f"containers-storage:[{driver}@{graph}+{run}]{ref}"], e)
            result(storage_metric(kind, driver), "skopeo", dt)
    finally:
        unmount_below(root)
        remove(root)


def unmount_below(root):
    """containers-storage's overlay driver leaves its graph directory bind-mounted."""
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f]
    for p in sorted((p for p in points if p.startswith(root + "/")), key=len, reverse=True):
        subprocess.run(["umount", p], check=False)


def skopeo_version():
    r = subprocess.run(["skopeo", "--version"], capture_output=True, text=True)
    return r.stdout.strip() or "skopeo"


def chart(out, medians, names):
    if not shutil.which("gnuplot"):
        print("chart: gnuplot not found (scripts/setup.sh installs gnuplot-nox); no chart")
        return
    rows = [m for m in names if m.endswith("(s)")]
    dat = os.path.join(out, "times.dat")
    with open(dat, "w") as f:
        for m in rows:
            f.write('"%s" %s %s\n' % (m.replace(" (s)", ""), medians[m].get("strata", 0),
                                       medians[m].get("skopeo", 0)))
    script = f"""set terminal svg size 1200,480 dynamic
set output '{out}/times.svg'
set style data histogram
set style histogram cluster gap 1
set style fill solid 0.8 border -1
set ylabel 'seconds (median)'
set xtics rotate by -20 font ',9'
set key top right
plot '{dat}' using 2:xtic(1) title 'strata', '' using 3 title 'skopeo copy'
"""
    r = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
    os.remove(dat)
    if r.returncode != 0:
        print(f"chart: gnuplot failed: {r.stderr.strip()[:300]}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--strata", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mb", type=int, default=300)
    ap.add_argument("--work", default="/var/tmp")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(dir=args.work, prefix="strata-bench-registry-")
    env = dict(os.environ, REGISTRY_AUTH_FILE=os.path.join(work, "auth.json"))
    try:
        total = args.mb << 20
        print(f"building the images (~{args.mb} MB in three layers)...", flush=True)
        base = layer(host_files(total * 2 // 3))
        middle = layer(random_files(total * 3 // 10, 1, "opt/middle"))
        tops = [layer(random_files(max(total // 30, 1 << 20), s, "opt/top")) for s in (2, 3)]
        layouts, infos = [], []
        for i, top in enumerate(tops):
            p = os.path.join(work, f"layout{i + 1}")
            infos.append(write_layout(p, [base, middle, top], str(i + 1)))
            layouts.append(p)
        samples = {}
        names = []

        def result(metric, cand, value):
            if metric not in names:
                names.append(metric)
            samples.setdefault(metric, {}).setdefault(cand, []).append(value)

        for r in range(args.reps):
            print(f"rep {r + 1}/{args.reps}", flush=True)
            rep(args, work, env, layouts, result)
        medians = {m: {c: statistics.median(v) for c, v in cs.items() if None not in v}
                   for m, cs in samples.items()}
        new_layer = infos[1]["sizes"][2]
        loads = [float(x.split()[0]) for x in LOADS]
        lines = [f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} "
                 f"CPUs, strata `{args.strata}`, `{skopeo_version()}`. The machine was shared "
                 "with other users building and testing: 1-minute load average before the timed "
                 f"runs {min(loads):.2f} to {max(loads):.2f} (median "
                 f"{statistics.median(loads):.2f}); load at start {LOADS[0]}, at end {loadavg()}.",
                 "",
                 f"Image: 3 gzip layers, {args.mb} MB uncompressed in all (host /usr files, "
                 f"pseudo-random files, a small top layer), compressed sizes {infos[0]['sizes']} "
                 f"bytes; the second image's new top layer is {new_layer} bytes. Medians of "
                 f"{args.reps} reps (every sample in results.json). strata's pull verifies and "
                 "unpacks every layer into its store; skopeo's copy to an OCI directory only "
                 "writes the blobs, its copy into containers-storage (what `podman pull` does) "
                 "unpacks them too. Rows naming containers-storage compare the same strata "
                 "samples with that skopeo.", "",
                 "| measurement | strata | skopeo copy | strata / skopeo | target |",
                 "|---|---|---|---|---|"]
        for m in names:
            s, k = medians[m].get("strata"), medians[m].get("skopeo")
            ratio = f"{s / k:.2f}x" if s and k else "-"
            target = ""
            if m.startswith(("push (", "pull (")):
                target = "<= skopeo: " + ("met" if s and k and s <= k else "NOT met")
            elif m.startswith("re-push"):
                target = "< 0.2 s: " + ("met" if s is not None and s < 0.2 else "NOT met")
            elif m.endswith("(count)"):
                target = f"= new layer ({new_layer}): " + ("met" if s == new_layer else "NOT met")
            fmt = (lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
            lines.append(f"| {m} | {fmt(s)} | {fmt(k)} | {ratio} | {target} |")
        md = "\n".join(lines) + "\n"
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(md)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"samples": samples, "medians": medians, "images": infos, "loadavg": LOADS,
                       "reps": args.reps, "mb": args.mb}, f, indent=1)
        chart(args.out, medians, names)
        print(md)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
