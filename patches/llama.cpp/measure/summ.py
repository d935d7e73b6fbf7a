"""Median (min–max, n) table of encode CPU time, unpatched vs patched, from bench.sh output.

usage: summ.py LABEL=results.jsonl[,more.jsonl] ...   (LABEL names the model file used)
"""
import collections, json, statistics as st, sys

print("| model | image | tokens | patches | FA | unpatched cpu s | patched cpu s | cpu ratio | wall ratio | peak RSS MB |")
print("|---|---|---|---|---|---|---|---|---|---|")
for arg in sys.argv[1:]:
    label, files = arg.split("=", 1)
    rows = collections.defaultdict(lambda: collections.defaultdict(list))
    for f in files.split(","):
        for line in open(f):
            try:
                d = json.loads(line)
            except ValueError:
                continue
            r = d["r"]; k = (r["w"], r["h"], r["tokens"], r["patches"], r["fa"]); b = d["build"]
            rows[k][b] += r["cpu_ms"]; rows[k][b + "_w"] += r["ms"]
            if "maxrss_mb" in r:
                rows[k][b + "_rss"].append(r["maxrss_mb"])
    for k, v in rows.items():
        if not (v["base"] and v["win"]):
            continue
        fmt = lambda x: f"{st.median(x)/1e3:.1f} ({min(x)/1e3:.1f}–{max(x)/1e3:.1f}, n={len(x)})"
        ratio = st.median(v["win"]) / st.median(v["base"])
        wr = st.median(v["win_w"]) / st.median(v["base_w"])
        rss = f"{max(v['base_rss']):.0f} → {max(v['win_rss']):.0f}" if v["base_rss"] and v["win_rss"] else "—"
        print(f"| {label} | {k[0]}×{k[1]} | {k[2]} | {k[3]} | {'on' if k[4] else 'off'} | {fmt(v['base'])} | {fmt(v['win'])} | **{ratio:.2f}** | {wr:.2f} | {rss} |")
