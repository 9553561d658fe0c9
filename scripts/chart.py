#!/usr/bin/env python3
"""Draws docs/benchmarks.png from the figures `make bench` wrote (docs/benchmarks.json):
every ratio against its target, and the replication lag distribution of both systems."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, out = sys.argv[1], sys.argv[2]
data = json.load(open(src))
ratios = [r for r in data["ratios"] if r["target"] is not None]

fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6.5), gridspec_kw={"width_ratios": [3, 2]})
names = [r["name"] for r in ratios]
values = [r["value"] for r in ratios]
met = [(r["value"] >= r["target"]) if r["at_least"] else (r["value"] <= r["target"]) for r in ratios]
ys = range(len(ratios))
left.barh(ys, values, color=["#3a7d44" if m else "#c0392b" for m in met])
for y, r in zip(ys, ratios):
    left.plot([r["target"], r["target"]], [y - 0.4, y + 0.4], color="black", linewidth=2)
    left.text(r["value"], y, f" {r['value']:.2f}", va="center", fontsize=8)
left.set_yticks(list(ys))
left.set_yticklabels(names, fontsize=8)
left.invert_yaxis()
left.set_xlabel("ratio (black line: target; green: met, red: not met)")
left.set_title("mmr ratios, one make bench run")

for series in data["lags"]:
    ms = series["ms"]
    if not ms:
        continue
    right.plot(ms, [i / (len(ms) - 1 or 1) for i in range(len(ms))], label=series["system"])
right.set_xscale("log")
right.set_xlabel("lag (ms, log scale)")
right.set_ylabel("fraction of rows seen on the peer")
right.set_title("replication lag at half load")
right.grid(True, which="both", alpha=0.3)
right.legend()
fig.tight_layout()
fig.savefig(out, dpi=90)
