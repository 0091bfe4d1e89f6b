#!/usr/bin/env python3
"""Bar chart of benchmarks/e2e.py's ratios against the original driver.

    .venv/bin/python benchmarks/plot.py e2e.json [-o e2e.png]

One group of bars per workload, one bar per driver: its rate divided by the original
driver's rate in the same run (1.0 = the original driver, drawn as a line), with the
issue's targets marked. Needs matplotlib (``.venv/bin/pip install matplotlib``); without
it the script says so and exits with status 0, drawing nothing.
"""
import argparse
import json
import os
import sys

LABELS = {"c": "fastamqp C", "python": "fastamqp pure-Py", "orig": "original 14.9.3",
          "rabbit": "rabbit:// (0-9-1)", "c-rabbit": "fastamqp C / RabbitMQ"}
WL_LABELS = {"call1": "call\n1 client", "call10": "call\n10 clients",
             "cast10": "cast\n10 clients", "fanout": "fanout\n10 cl. -> 2 srv",
             "notify": "notify\n10 cl. (broker)"}
TARGETS = {"call1": 4.0, "call10": 4.0, "cast10": 3.0, "notify": 3.0}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", help="the file written by e2e.py --json")
    ap.add_argument("-o", "--output", help="PNG to write (default: JSON name + .png)")
    a = ap.parse_args(argv)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot: matplotlib is not installed (.venv/bin/pip install matplotlib); "
              "no chart drawn")
        return 0
    with open(a.json) as f:
        data = json.load(f)
    ratios = data.get("ratios") or {}
    if not ratios:
        print("plot: %s has no ratios (the original driver was not part of the run)"
              % a.json)
        return 1
    workloads = [w for w in WL_LABELS if w in ratios]
    drivers = [d for d in LABELS if any(d in ratios[w] for w in workloads)]
    width = 0.8 / max(1, len(drivers))
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for k, d in enumerate(drivers):
        xs = [i + (k - (len(drivers) - 1) / 2) * width for i in range(len(workloads))]
        ys = [ratios[w].get(d, {}).get("rate", 0.0) for w in workloads]
        bars = ax.bar(xs, ys, width, label=LABELS[d])
        for b, y in zip(bars, ys):
            ax.annotate("%.1f" % y, (b.get_x() + b.get_width() / 2, y),
                        ha="center", va="bottom", fontsize=7)
    for i, w in enumerate(workloads):
        if w in TARGETS:
            ax.hlines(TARGETS[w], i - 0.45, i + 0.45, colors="red", linestyles="dashed",
                      label="target" if i == 0 else None)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels([WL_LABELS[w] for w in workloads])
    ax.set_ylabel("rate / original driver's rate (same run)")
    c = data.get("conditions", {})
    ax.set_title("oslo.messaging end to end, 1 KiB payload: ratios to the original amqp "
                 "driver\n%s, %s CPUs, load %.1f-%.1f" % (
                     c.get("date_utc", "?"), c.get("cpu_count", "?"),
                     (c.get("loadavg_start") or [0])[0],
                     (c.get("loadavg_end") or [0])[0]), fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    fig.tight_layout()
    out = a.output or os.path.splitext(a.json)[0] + ".png"
    fig.savefig(out, dpi=110)
    print("plot: wrote %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
