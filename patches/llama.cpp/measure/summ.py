import json, statistics as st, sys, collections
rows = collections.defaultdict(lambda: {"base": [], "win": [], "base_w": [], "win_w": []})
for line in open(sys.argv[1]):
    try: d = json.loads(line)
    except Exception: continue
    r = d["r"]; k = (r["w"], r["h"], r["tokens"], r["patches"], r["fa"])
    rows[k][d["build"]] += r["cpu_ms"]; rows[k][d["build"] + "_w"] += r["ms"]
def f(v): return f"{st.median(v)/1e3:.1f} s ({min(v)/1e3:.1f}–{max(v)/1e3:.1f}, n={len(v)})" if v else "—"
print("| image | tokens | patches | FA | unpatched CPU s | patched CPU s | patched/unpatched (medians) | wall ratio |")
print("|---|---|---|---|---|---|---|---|")
for k, v in rows.items():
    ratio = st.median(v["win"]) / st.median(v["base"]) if v["win"] and v["base"] else float("nan")
    wr = st.median(v["win_w"]) / st.median(v["base_w"]) if v["win_w"] and v["base_w"] else float("nan")
    print(f"| {k[0]}×{k[1]} | {k[2]} | {k[3]} | {'on' if k[4] else 'off'} | {f(v['base'])} | {f(v['win'])} | {ratio:.3f} | {wr:.2f} |")
