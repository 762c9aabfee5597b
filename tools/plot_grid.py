#!/usr/bin/env python3
"""Draw etap-bench --grid results: GB/s against context length, one line per batch size.

usage: plot_grid.py RESULTS.json OUT.png

RESULTS.json is what `etap-bench --grid --json RESULTS.json` writes. The plot shows the
h_q=16, s_q=1 cases (the ETAP paper's TP8 case), the streaming-read ceiling measured in
the same run as a horizontal line, and, where PEERS-H200.md has figures, the best of
FlashMLA / FlashMLA-ETAP / FA3 on an H200 as a dotted line of the same colour.
Without matplotlib it says so and exits 0, so that a benchmark run never fails on a plot.
"""
import json
import sys


def best_peer_us(case):
    peers = case.get("peers") or {}
    times = [peers.get(k) for k in ("flashmla_us", "etap_paper_us", "fa3_us")]
    times = [t for t in times if t]
    return min(times) if times else None


def main(argv):
    if len(argv) != 3 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr if len(argv) != 2 else sys.stdout)
        return 0 if len(argv) == 2 else 2
    json_path, png_path = argv[1], argv[2]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_grid.py: matplotlib is not installed here, so no plot "
              f"(the numbers are in {json_path})", file=sys.stderr)
        return 0

    with open(json_path) as f:
        data = json.load(f)
    cases = [c for c in data["cases"]
             if c["seqlen_q"] == 1 and c["heads_q"] == 16 and c["heads_kv"] == 1
             and not c["varlen"] and c.get("gbps") is not None]
    if not cases:
        print(f"plot_grid.py: no timed h_q=16, s_q=1 case in {json_path}: nothing to plot",
              file=sys.stderr)
        return 1

    by_batch = {}
    for c in cases:
        by_batch.setdefault(c["batch"], []).append(c)

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    any_peer = False
    for i, batch in enumerate(sorted(by_batch)):
        rows = sorted(by_batch[batch], key=lambda c: c["seqlen_k"])
        color = colors[i % len(colors)]
        ax.plot([c["seqlen_k"] for c in rows], [c["gbps"] for c in rows], marker="o",
                color=color, label=f"etap b={batch}")
        peer = [(c["seqlen_k"], c["bytes"] / best_peer_us(c) * 1e-3)
                for c in rows if best_peer_us(c)]
        if peer:
            ax.plot([p[0] for p in peer], [p[1] for p in peer], ls=":", marker=".",
                    color=color)
            any_peer = True
    if any_peer:  # one legend entry for every dotted line
        ax.plot([], [], ls=":", marker=".", color="gray",
                label="dotted: best of FlashMLA / ETAP / FA3 on H200 (PEERS-H200.md)")

    ceiling = data["ceiling"]["gbps"]
    ax.axhline(ceiling, color="black", ls="--", lw=1,
               label=f"read ceiling {ceiling:.0f} GB/s (same run)")
    ks = sorted({c["seqlen_k"] for c in cases})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks)
    ax.set_xticklabels([f"{k // 1024}K" if k % 1024 == 0 else str(k) for k in ks])
    ax.set_ylim(0, ceiling * 1.08)
    ax.set_xlabel("context length s_k (tokens)")
    ax.set_ylabel("GB/s (KV + q + out bytes / time)")
    backend = data.get("backend", "?")
    device = data.get("device", "")
    ax.set_title(f"etap MLA decode, h_q=16 s_q=1 bf16 page 64 - {backend}: {device}",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(png_path, dpi=150)
    print(f"plot_grid.py: wrote {png_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
