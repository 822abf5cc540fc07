#!/usr/bin/env python3
"""The report of scripts/bench.sh (Python 3 standard library; the chart needs gnuplot).

  bench_report.py --raw RAW.jsonl --out DIR --candidates "kernel fuse-overlayfs strata"
                  [--meta KEY=VALUE ...]

RAW.jsonl has one measurement a line: {"rep", "candidate", "workload", "metric", "value"}.
A metric's unit, in parentheses at the end of its name, says which way is better: s and MiB
lower, GB/s, IOPS and x (scaling factors) higher; (count) marks a sanity check, not a speed.

Writes DIR/results.md (table of medians, ratios to kernel overlayfs and strata vs
fuse-overlayfs, the issue's targets), DIR/results.json (meta, every rep, medians, ratios) and,
when gnuplot is there, DIR/ratios.svg and DIR/ratios.png.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

KERNEL = "kernel"
FUSE = "fuse-overlayfs"
STRATA = "strata"

# metric -> (kind, bound, text): the targets for strata.
#   kernel-max: strata/kernel <= bound (times); kernel-min: strata/kernel >= bound
#   fuse-max: strata/fuse-overlayfs <= bound
TARGETS = {
    "stat walk cold (s)": ("kernel-max", 1.5, "<= 1.5x kernel"),
    "stat walk warm (s)": ("kernel-max", 1.3, "<= 1.3x kernel"),
    "stat walk cold, lowers only (s)": ("kernel-max", 1.5, "<= 1.5x kernel"),
    "stat walk warm, lowers only (s)": ("kernel-max", 1.3, "<= 1.3x kernel"),
    "readdir 10k: ls -f warm (s)": ("kernel-max", 1.3, "<= 1.3x kernel"),
    "readdir+stat 10k: ls -l warm (s)": ("kernel-max", 1.3, "<= 1.3x kernel"),
    "seq read cold (GB/s)": ("kernel-min", 0.9, ">= 0.9x kernel"),
    "seq read warm (GB/s)": ("kernel-min", 0.9, ">= 0.9x kernel"),
    "seq read cold, lowers only (GB/s)": ("kernel-min", 0.9, ">= 0.9x kernel"),
    "seq read warm, lowers only (GB/s)": ("kernel-min", 0.9, ">= 0.9x kernel"),
    "untar 20k files (s)": ("kernel-max", 3.0, "<= 3x kernel"),
    "copy-up big file, 1-byte write (s)": ("kernel-max", 1.2, "<= 1.2x kernel"),
    "chmod -R large files (s)": ("fuse-max", 0.1, ">= 10x faster than fuse-overlayfs"),
    "chown -R large files (s)": ("fuse-max", 0.1, ">= 10x faster than fuse-overlayfs"),
    "walk scaling, 2 concurrent (x)": ("kernel-min", 1.0, ">= kernel's scaling"),
}
RSS = ("daemon RSS after mount (MiB)", "daemon RSS after full walk (MiB)",
       "daemon RSS after forget (MiB)")


def unit(metric):
    return metric.rsplit("(", 1)[-1].rstrip(")") if metric.endswith(")") else ""


def lower_is_better(metric):
    return unit(metric) in ("s", "MiB")


def fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.3f}"
    return f"{v:.4f}"


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--candidates", required=True)
    ap.add_argument("--meta", action="append", default=[])
    a = ap.parse_args()
    cands = a.candidates.split()
    meta = dict(m.split("=", 1) for m in a.meta)
    meta["versions"] = dict(
        v.split("=", 1) for v in meta.get("versions", "").splitlines() if "=" in v
    )

    raw, order, workload_of = {}, [], {}
    with open(a.raw) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            m = r["metric"]
            if m not in raw:
                raw[m] = {}
                order.append(m)
                workload_of[m] = r["workload"]
            raw[m].setdefault(r["candidate"], []).append(r["value"])
    checks = [m for m in order if unit(m) == "count"]
    metrics = [m for m in order if unit(m) != "count"]
    med = {m: {c: statistics.median(v) for c, v in raw[m].items()} for m in order}
    others = [c for c in cands if c != KERNEL]

    def target(m):
        mm = med[m]
        s = mm.get(STRATA)
        if m == RSS[2] and all(k in med and STRATA in med[k] for k in RSS):
            start, walked, forgot = (med[k][STRATA] for k in RSS)
            ok = forgot <= start + 0.25 * max(walked - start, 0) + 1
            return f"near the start after forget: {'yes' if ok else 'NO'}"
        if m not in TARGETS or s is None:
            return ""
        kind, bound, text = TARGETS[m]
        r = ratio(s, mm.get(FUSE if kind == "fuse-max" else KERNEL))
        if r is None:
            return text
        ok = r <= bound if kind.endswith("max") else r >= bound
        return f"{text}: {'met' if ok else 'NOT met'}"

    ratios = {}
    for m in metrics:
        k = med[m].get(KERNEL)
        ratios[m] = {c: ratio(med[m].get(c), k) for c in others}
        if STRATA in cands and FUSE in cands:
            ratios[m]["strata/fuse-overlayfs"] = ratio(med[m].get(STRATA), med[m].get(FUSE))

    # ---- markdown
    reps = meta.get("reps", "?")
    lines = [
        f"# strata benchmark, {meta.get('date', '')}",
        "",
        f"Linux {meta.get('kernel', '?')}, {meta.get('cpus', '?')} CPUs; fixture "
        f"`{meta.get('scale', '?')}` ({int(meta.get('big_file_bytes', 0)) >> 20} MiB big file); "
        f"median of {reps} reps; {meta.get('seconds', '?')} s; load average "
        f"{meta.get('load_at_start', '?')} at start, {meta.get('load_at_end', '?')} at end.",
        "",
    ]
    for c in cands:
        lines.append(f"- {c}: {meta['versions'].get(c, '?')}")
    if STRATA in cands:
        pt = meta.get("strata_real_root") == "true"
        lines.append(
            "- strata ran as real root in the initial user namespace: FUSE passthrough possible"
            if pt
            else "- strata ran in a user namespace: no FUSE passthrough (file data goes through "
            "the daemon's read/write path)"
        )
    lines.append("")
    head = ["workload", "better"] + cands + [f"{c} / kernel" for c in others if KERNEL in cands]
    fuse_col = STRATA in cands and FUSE in cands
    if fuse_col:
        head.append("strata / fuse-overlayfs")
    head.append("target (strata)")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for m in metrics:
        row = [m, "lower" if lower_is_better(m) else "higher"]
        row += [fmt(med[m].get(c)) for c in cands]
        if KERNEL in cands:
            row += [f"{r:.2f}x" if r is not None else "-" for r in
                    (ratios[m][c] for c in others)]
        if fuse_col:
            r = ratios[m]["strata/fuse-overlayfs"]
            worse = r is not None and (r > 1 if lower_is_better(m) else r < 1)
            row.append("-" if r is None else f"{r:.2f}x" + (" (worse)" if worse else ""))
        row.append(target(m))
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("Ratios are of medians: for lower-is-better metrics (s, MiB) a ratio above 1 "
                 "is slower/bigger than the reference; for higher-is-better ones (GB/s, IOPS, "
                 "scaling x) a ratio below 1 is worse.")
    bad = []
    for m in checks:
        vals = {c: med[m][c] for c in cands if c in med[m]}
        lines.append(f"\nCheck, {m}: " + ", ".join(f"{c} {v:g}" for c, v in vals.items()))
        if len(set(vals.values())) > 1:
            bad.append(m)
            lines.append("**WARNING: the candidates disagree: they do not show the same tree.**")
    if meta.get("failures", "0") != "0":
        lines.append(f"\n**{meta['failures']} workload runs FAILED** (see bench.log).")
    md = "\n".join(lines) + "\n"

    os.makedirs(a.out, exist_ok=True)
    with open(f"{a.out}/results.md", "w") as f:
        f.write(md)
    doc = {
        "meta": meta,
        "candidates": cands,
        "metrics": [
            {"name": m, "workload": workload_of[m], "unit": unit(m),
             "better": "lower" if lower_is_better(m) else "higher"}
            for m in metrics
        ],
        "raw": raw,
        "median": med,
        "ratios": ratios,
        "targets": {m: target(m) for m in metrics if target(m)},
        "checks_disagree": bad,
    }
    with open(f"{a.out}/results.json", "w") as f:
        json.dump(doc, f, indent=1)
    print(md)
    chart(a.out, metrics, med, cands)


def chart(out, metrics, med, cands):
    """Cost relative to kernel overlayfs per metric (>1: worse), log scale, one bar per
    candidate."""
    others = [c for c in cands if c != KERNEL]
    rows = []
    for m in metrics:
        k = med[m].get(KERNEL)
        vals = []
        for c in others:
            v = med[m].get(c)
            if not k or not v:
                vals.append("NaN")
            else:
                vals.append(f"{(v / k) if lower_is_better(m) else (k / v):.4f}")
        if any(v != "NaN" for v in vals):
            rows.append((m, vals))
    if not rows or KERNEL not in cands:
        print("chart: no ratios to kernel overlayfs to draw")
        return
    if not shutil.which("gnuplot"):
        print("chart: gnuplot not found (scripts/setup.sh installs gnuplot-nox); no chart")
        return
    dat = f"{out}/ratios.dat"
    with open(dat, "w") as f:
        f.write("metric\t" + "\t".join(others) + "\n")
        for m, vals in rows:
            f.write('"' + m.replace('"', "'") + '"\t' + "\t".join(vals) + "\n")
    # Start the log axis low enough that the best ratios (metacopy's chmod: ~0.01x) show.
    finite = [float(v) for _, vals in rows for v in vals if v not in ("NaN", "")]
    ymin = 0.125
    while finite and ymin > min(finite) * 0.9 and ymin > 1e-4:
        ymin /= 2
    height = 520
    width = max(900, 70 * len(rows) + 200)
    plot = ", ".join(
        f"'{dat}' using {i + 2}:xtic(1) title '{c}'" for i, c in enumerate(others)
    )
    script = f"""
set datafile separator "\\t"
set datafile missing "NaN"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y 2
set yrange [{ymin}:*]
set grid ytics
set ylabel "cost vs kernel overlayfs (log; 1 = kernel; higher = worse)"
set xtics rotate by -40 left font ",9"
set key top left
set bmargin 12
set lmargin 12
set rmargin 12
set arrow from graph 0, first 1 to graph 1, first 1 nohead lc rgb "black" lw 2
set title "Union filesystems vs kernel overlayfs (medians; lower is better)"
"""
    for term, ext in (("svg size {w},{h} dynamic", "svg"), ("pngcairo size {w},{h}", "png")):
        s = (f"set terminal {term.format(w=width, h=height + 200)}\n"
             f"set output '{out}/ratios.{ext}'\n{script}\nplot {plot}\n")
        r = subprocess.run(["gnuplot"], input=s, text=True, capture_output=True)
        if r.returncode != 0:
            print(f"chart: gnuplot failed for {ext}: {r.stderr.strip()[:300]}", file=sys.stderr)


if __name__ == "__main__":
    main()
