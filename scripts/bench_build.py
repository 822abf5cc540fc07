#!/usr/bin/env python3
"""strata build against buildah bud --layers, side by side, in one run.

Candidates: strata; buildah with overlay storage and fuse-overlayfs as mount program (its
rootless setup); buildah with vfs. Projects: the course quickstart, a two-stage build on a base
of ~20k files, a COPY of a 10k-file context. Cases: cold build (empty cache), rebuild with no
change, rebuild after one source file changed. Also: a RUN touching one file over bases of 1k
and 60k files (the commit must not grow with the base). Medians of --reps runs.

Called by scripts/bench-build.sh (which installs what is needed and builds strata).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time


def sh(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"bench-build: {' '.join(map(str, cmd))} failed:\n{r.stderr[-2000:]}")
    return r.stdout


def timed(cmd, **kw):
    t = time.monotonic()
    sh(cmd, **kw)
    return time.monotonic() - t


class Strata:
    name = "strata"

    def __init__(self, exe, work):
        self.exe, self.root = exe, os.path.join(work, "strata-store")
        self.env = dict(os.environ, STRATA_RUN_DIR=os.path.join(work, "run"))
        os.makedirs(self.env["STRATA_RUN_DIR"], exist_ok=True)

    def cmd(self, *a):
        return [self.exe, "--root", self.root, *a]

    def import_base(self, layout, name):
        sh(self.cmd("image", "import", layout, "--name", name), env=self.env)

    def build(self, ctx, tag, cache=True):
        extra = [] if cache else ["--no-cache"]
        return timed(self.cmd("build", "-q", *extra, "-t", tag, ctx), env=self.env)

    def drop_cache(self):
        sh(self.cmd("image", "prune"), env=self.env)


class Buildah:
    def __init__(self, name, work, driver, opts=()):
        self.name = name
        self.base = [
            "buildah", "--root", os.path.join(work, name, "root"),
            "--runroot", os.path.join(work, name, "run"), "--storage-driver", driver,
        ]
        for o in opts:
            self.base += ["--storage-opt", o]

    def import_base(self, layout, name):
        sh(self.base + ["pull", "oci:" + layout])
        img = sh(self.base + ["images", "-q"]).split()[0]
        sh(self.base + ["tag", img, name])

    def build(self, ctx, tag, cache=True):
        extra = [] if cache else ["--no-cache"]
        return timed(self.base + ["bud", "--layers", "--pull-never", "--isolation", "chroot",
                                  "-q", *extra, "-t", tag, ctx])

    def drop_cache(self):
        pass


def busybox_root(path, extra_files=0):
    """A busybox root, with extra_files small files under usr/share/bench (a bigger base)."""
    os.makedirs(os.path.join(path, "bin"), exist_ok=True)
    for d in ["etc", "tmp", "root"]:
        os.makedirs(os.path.join(path, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(path, "bin/busybox"))
    for a in "sh echo cat ls true mkdir touch rm sed date cp".split():
        link = os.path.join(path, "bin", a)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    with open(os.path.join(path, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    for i in range(extra_files):
        d = os.path.join(path, "usr/share/bench", f"d{i // 500}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i}"), "w") as f:
            f.write(f"file {i}\n")


def make_base(strata, work, name, extra_files):
    """A base image built by strata (FROM scratch, COPY the root), exported as an OCI layout
    for the other candidates."""
    ctx = os.path.join(work, "base-" + name.replace("/", "-"))
    if not os.path.exists(ctx):
        busybox_root(os.path.join(ctx, "root"), extra_files)
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write("FROM scratch\nCOPY root/ /\nCMD [\"/bin/sh\"]\n")
    strata.build(ctx, name)
    layout = os.path.join(work, "layout-" + name.replace("/", "-"))
    shutil.rmtree(layout, ignore_errors=True)
    sh(strata.cmd("image", "export", name, layout), env=strata.env)
    return layout


def projects(work, quick):
    """name -> (context dir, the file a "one change" rebuild edits)."""
    out = {}
    q = os.path.join(work, "p-quickstart")
    os.makedirs(q, exist_ok=True)
    with open(os.path.join(q, "quickstart.sh"), "w") as f:
        f.write('#!/bin/sh\necho "Hello, world! The time is $(date)."\n')
    os.chmod(os.path.join(q, "quickstart.sh"), 0o755)
    with open(os.path.join(q, "Dockerfile"), "w") as f:
        f.write('FROM bench/small\nCOPY quickstart.sh /\nCMD ["/quickstart.sh"]\n')
    out["quickstart"] = (q, "quickstart.sh")
    m = os.path.join(work, "p-multistage")
    os.makedirs(os.path.join(m, "src"), exist_ok=True)
    with open(os.path.join(m, "src/main.c.in"), "w") as f:
        f.write('int main(void) { return @RET@; }\n')
    # busybox has no C compiler: the build step is a sed "compile" (see the README).
    with open(os.path.join(m, "Dockerfile"), "w") as f:
        f.write("FROM bench/big AS builder\nCOPY src /src\n"
                "RUN sed 's/@RET@/0/' /src/main.c.in > /src/main.c && cp /src/main.c /app\n"
                "FROM bench/small\nCOPY --from=builder /app /app\nCMD [\"cat\", \"/app\"]\n")
    out["multi-stage (20k-file base)"] = (m, "src/main.c.in")
    c = os.path.join(work, "p-copy10k")
    n = 1000 if quick else 10000
    for i in range(n):
        d = os.path.join(c, "ctx", f"d{i // 250}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i}"), "w") as f:
            f.write(f"{i}\n")
    with open(os.path.join(c, "Dockerfile"), "w") as f:
        f.write("FROM bench/small\nCOPY ctx /ctx\n")
    out[f"COPY {n // 1000}k-file context"] = (c, "ctx/d0/f0")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--strata", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    strata = Strata(a.strata, a.work)
    cands = [
        strata,
        Buildah("buildah-overlay-fuse", a.work, "overlay",
                ["overlay.mount_program=/usr/bin/fuse-overlayfs"]),
        Buildah("buildah-vfs", a.work, "vfs"),
    ]
    sizes = {"bench/small": 0, "bench/big": 2000 if a.quick else 20000,
             "bench/1k": 1000, "bench/60k": 6000 if a.quick else 60000}
    for name, n in sizes.items():
        layout = make_base(strata, a.work, name, n)
        for c in cands[1:]:
            c.import_base(layout, name)
    results = []  # (project, case, candidate, median seconds)
    for proj, (ctx, edit) in projects(a.work, a.quick).items():
        for c in cands:
            times = {"cold build": [], "rebuild, no change": [], "rebuild, one file changed": []}
            for r in range(a.reps):
                c.drop_cache()
                times["cold build"].append(c.build(ctx, f"bench/p{r}", cache=False))
                times["rebuild, no change"].append(c.build(ctx, f"bench/p{r}"))
                with open(os.path.join(ctx, edit), "a") as f:
                    f.write(f"// {time.time()}\n" if edit.endswith(".in") else f"# {time.time()}\n")
                times["rebuild, one file changed"].append(c.build(ctx, f"bench/p{r}"))
            for case, ts in times.items():
                results.append((proj, case, c.name, statistics.median(ts)))
    for base in ["bench/1k", "bench/60k"]:
        ctx = os.path.join(a.work, f"p-commit-{base[6:]}")
        os.makedirs(ctx, exist_ok=True)
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write(f"FROM {base}\nRUN touch /one-file\n")
        for c in cands:
            ts = [c.build(ctx, "bench/commit", cache=False) for _ in range(a.reps)]
            results.append((f"RUN touching one file, base {base[6:]} files", "build", c.name,
                            statistics.median(ts)))
    report(results, [c.name for c in cands], a)


def report(results, names, a):
    rows = {}
    for proj, case, cand, t in results:
        rows.setdefault((proj, case), {})[cand] = t
    lines = ["| project | case | " + " | ".join(f"{n} (s)" for n in names)
             + " | buildah best / strata |", "|---|---|" + "---|" * len(names) + "---|"]
    for (proj, case), v in rows.items():
        best = min(v[n] for n in names[1:])
        lines.append(f"| {proj} | {case} | " + " | ".join(f"{v[n]:.3f}" for n in names)
                     + f" | {best / v[names[0]]:.1f}x |")
    table = "\n".join(lines)
    kind = "quick (small fixtures: a smoke test, not numbers)" if a.quick else "full"
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(f"# strata build vs buildah bud --layers ({kind}, medians of {a.reps})\n\n"
                f"{table}\n")
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump([{"project": p, "case": c, "candidate": n, "seconds": t}
                   for p, c, n, t in results], f, indent=1)
    dat = os.path.join(a.out, "chart.dat")
    with open(dat, "w") as f:
        f.write("case " + " ".join(names) + "\n")
        for (proj, case), v in rows.items():
            label = f"{proj}: {case}".replace(" ", "_")
            f.write(label + " " + " ".join(f"{v[n]:.4f}" for n in names) + "\n")
    if shutil.which("gnuplot"):
        plot = (f"set terminal svg size 1100,600; set output '{a.out}/chart.svg';"
                "set style data histograms; set style fill solid; set logscale y;"
                "set ylabel 'seconds (log)'; set xtics rotate by -40 font ',8';"
                f"plot for [i=2:{len(names) + 1}] '{dat}' using i:xtic(1) title columnhead")
        subprocess.run(["gnuplot", "-e", plot], check=False)
    print(table)


if __name__ == "__main__":
    main()
