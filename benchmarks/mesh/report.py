"""results.json -> PNG plots (matplotlib Agg) and the BENCHMARKS.md mesh-bench section."""
from __future__ import annotations

import math
from pathlib import Path

ORDER = ["base", "oracle", "domain-router-k1", "domain-router-k2", "retriever-top1", "retriever-top2-gate", "uniform-merge", "ties-merge",
         "btm-ensemble", "federated-tuned-router", "mot", "fedavg-lora", "central-pooled-lora"]


def ordered_rows(results: dict) -> list[str]:
    rows = results.get("rows", {})
    experts = sorted(r for r in rows if r.startswith("expert:"))
    known = [r for r in ORDER if r in rows]
    rest = sorted(r for r in rows if r not in known and r not in experts)
    return known[:2] + experts + known[2:] + rest


def write_plots(results: dict, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    files = {}
    rows = results.get("rows", {})
    domains = results.get("domains", {}).get("available", [])
    names = ordered_rows(results)
    if rows and domains:
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(min(18, max(9, 0.2 * len(domains) * len(names) + 3)), 8.5),
                                      sharex=True)
        width = 0.8 / len(names)
        x = np.arange(len(domains))
        cmap = plt.get_cmap("tab20")
        base_l = rows.get("base", {}).get("losses", {})
        for i, n in enumerate(names):
            r = rows[n]
            off = x + i * width - 0.4 + width / 2
            hatch = "//" if "scored_from_token" in r else None
            kw = dict(color=cmap(i % 20), edgecolor="black" if n == "base" else None, linewidth=0.6, hatch=hatch)
            ax.bar(off, [r["ppl"].get(d, float("nan")) for d in domains], width, label=n, **kw)
            if base_l:
                ax2.bar(off, [r["losses"].get(d, float("nan")) - base_l.get(d, float("nan")) for d in domains],
                        width, **kw)
        unc = set(results["domains"].get("uncovered", []))
        ax2.set_xticks(x, [f"{d}\n(no expert)" if d in unc else d for d in domains])
        ax.set_ylabel("held-out perplexity (lower is better)")
        ax.set_title("Perplexity by method and domain" + (" (hatched: MoT, scored after its prefix)"
                                                          if "mot" in rows else ""))
        ax.legend(fontsize=7, ncol=1, bbox_to_anchor=(1.01, 1), loc="upper left")
        ax2.axhline(0, color="black", linewidth=0.8)
        ax2.set_ylabel("loss - base loss (nats; < 0 = better than base)")
        fig.tight_layout()
        p = out / "perplexity_by_method.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files["perplexity"] = p.name
    hm = results.get("heatmap")
    if hm:
        entries = hm["entries"]
        ds = list(hm["by_domain"])
        M = np.array([hm["by_domain"][d] for d in ds])
        fig, ax = plt.subplots(figsize=(1.2 * len(entries) + 2, 0.6 * len(ds) + 1.6))
        im = ax.imshow(M, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(entries)), entries, rotation=30, ha="right")
        ax.set_yticks(range(len(ds)), ds)
        for i in range(len(ds)):
            for j in range(len(entries)):
                ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if M[i, j] < 0.5 else "black")
        ax.set_xlabel("gate entry (expert)")
        ax.set_ylabel("held-out domain")
        ax.set_title("Routing heat map: mean gate mass (domain router, k=2)")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        p = out / "routing_heatmap.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files["heatmap"] = p.name
    sc = results.get("scaling", {}).get("rows")
    if sc:
        n = [r["experts"] for r in sc]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(n, [r["build_ms"] for r in sc], "o-", label="router build (ms)")
        ax.plot(n, [r["select_ms_median"] for r in sc], "s-", label="selection latency, median (ms)")
        ax.plot(n, [r["gate_us_per_token_layer"] / 1e3 for r in sc], "^-", label="gate over top-m candidates, per token-layer (ms)")
        ax.plot(n, [r["gate_all_rows_us_per_token_layer"] / 1e3 for r in sc], "v--", label="gate over all N rows, per token-layer (ms)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("number of experts")
        ax.set_ylabel("time (ms)")
        ax.set_title("Router scaling (synthetic pilots and rows)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / "router_scaling.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files["scaling"] = p.name
    return files


def _f(v, nd=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{nd}f}"


def render_markdown(results: dict, plot_dir: Path | str, plot_prefix: str | None = None) -> str:
    from benchmarks.mesh.config import EXPECTED_TIME

    cfg = results["config"]
    m = results["machine"]
    dom = results["domains"]
    domains = dom["available"]
    rows = results["rows"]
    pre = plot_prefix if plot_prefix is not None else str(plot_dir).rstrip("/") + "/"
    L = ["## mesh-bench: composition methods on multi-domain data", ""]
    L.append(f"Produced by `{results['command']}` on {results['date']} (git {m.get('git_commit')}), "
             f"total {results['total_seconds']:.0f} s. Every number below comes from that run's "
             f"`results.json`.")
    L.append("")
    v = m["versions"]
    L.append(f"Machine: {m['nproc']} CPU cores ({m['cpu']}), {m['ram_gb']} GB RAM, torch threads "
             f"{m['torch_threads']}, load average at start {m.get('load_average_1min_at_start')} (shared with "
             f"other work), {m['platform']}. Versions: "
             + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".")
    L.append("")
    b = results["base"]
    L.append(f"Base: `{b['spec']}` ({b['params'] / 1e6:.1f}M params, {b['layers']} layers, fingerprint "
             f"`{b['fingerprint'][:12]}`). Mode `{cfg['mode']}`: experts of equal budget, {cfg['steps']} steps x "
             f"{cfg['batch_size']} x {cfg['seq_len']} tokens = {cfg['steps'] * cfg['batch_size'] * cfg['seq_len']:,}"
             f" tokens each, LoRA r={cfg['rank']}; corpora capped at {cfg['max_docs']} documents per domain; "
             f"held-out evaluation on {results['eval']['blocks']} blocks of {cfg['seq_len']} tokens "
             f"(whole held-out documents). Expected time: quick {EXPECTED_TIME['quick']}, full "
             f"{EXPECTED_TIME['full']}.")
    L.append("")
    L.append(f"Experts on: {', '.join(dom['expert_domains'])}. Uncovered (no expert): "
             f"{', '.join(dom['uncovered']) or 'none'}."
             + (" Skipped domains: " + "; ".join(f"{d} ({r})" for d, r in dom["skipped"].items()) + "."
                if dom["skipped"] else ""))
    L.append("")
    L.append("### Held-out perplexity (lower is better)")
    L.append("")
    L.append("`mixture` = mean loss over the expert domains, shown as perplexity; `*` = uncovered domain.")
    L.append("")
    hdr = [f"{d}*" if d in dom["uncovered"] else d for d in domains]
    L.append("| method | " + " | ".join(hdr) + " | mixture |")
    L.append("|---|" + "---:|" * (len(domains) + 1))
    for n in ordered_rows(results):
        r = rows[n]
        label = f"{n} †" if "scored_from_token" in r else n
        L.append(f"| {label} | " + " | ".join(_f(r["ppl"].get(d), 2) for d in domains)
                 + f" | {_f(r['mixture_ppl'], 2)} |")
    L.append("")
    na = {k: s for k, s in results["methods"].items() if s["status"] != "ok"}
    if na:
        L.append("Methods without numbers in this run:")
        L.append("")
        for k, s in na.items():
            L.append(f"- **{k}** ({s['status']}): {s['reason']}")
        L.append("")
    L.append("Method definitions: " + "; ".join(f"**{k}**: {s['description']}" for k, s in results["methods"].items())
             + ".")
    L.append("")
    mot = (rows.get("mot") or {}).get("domain_router_k2_same_positions")
    if mot:
        st = rows["mot"]["scored_from_token"]
        L.append(f"† MoT is scored on positions after its {st}-token selector prefix (the selector reads it); the "
                 "domain router on those same positions, for a like-for-like comparison:")
        L.append("")
        L.append("| method | " + " | ".join(domains) + " |")
        L.append("|---|" + "---:|" * len(domains))
        L.append("| mot | " + " | ".join(_f(math.exp(rows['mot']['losses'][d]), 2) for d in domains) + " |")
        L.append("| domain-router-k2 | " + " | ".join(_f(math.exp(mot[d]), 2) for d in domains) + " |")
        L.append("")
    plots = results.get("plots", {})
    if "perplexity" in plots:
        L.append(f"![perplexity by method and domain]({pre}{plots['perplexity']})")
        L.append("")
    ra = results.get("routing_accuracy")
    if ra:
        L.append("### Sequence-level routing accuracy (retriever top-1 = true domain)")
        L.append("")
        L.append("| domain | accuracy |")
        L.append("|---|---:|")
        for d, a in ra["by_domain"].items():
            if a is not None:
                L.append(f"| {d} | {a:.2f} |")
        L.append(f"| **mean** | **{_f(ra['mean'], 2)}** |")
        L.append("")
    if "heatmap" in plots:
        L.append(f"![routing heat map]({pre}{plots['heatmap']})")
        L.append("")
    unc = results.get("uncovered_domain")
    if unc:
        L.append("### Domain no expert covers (must not be worse than the base)")
        L.append("")
        L.append("MoT is compared with the base on the same positions (after its selector prefix).")
        L.append("")
        L.append("| domain | method | loss | base loss | delta | not worse |")
        L.append("|---|---|---:|---:|---:|:---:|")
        for d, v in unc.items():
            for k, x in v.items():
                if k == "base_loss":
                    continue
                L.append(f"| {d} | {k} | {x['loss']:.4f} | {x.get('base_loss', v['base_loss']):.4f} | "
                         f"{x['delta_vs_base']:+.4f} | "
                         f"{'yes' if x['not_worse_than_base'] else '**no**'} |")
        L.append("")
    oo = results.get("opt_out", {})
    if "max_abs_logit_diff" in oo:
        L.append("### Opt-out exactness")
        L.append("")
        L.append(f"{oo['what']} (k={oo['top_k']}): max |logit diff| = {oo['max_abs_logit_diff']:.3g}.")
        L.append("")
        L.append("| excluded expert | max abs logit diff | gate mass on excluded |")
        L.append("|---|---:|---:|")
        for k, x in oo["by_expert"].items():
            L.append(f"| {k} | {x['max_abs_logit_diff']:.3g} | {x['gate_mass_on_excluded']:.3g} |")
        L.append("")
    g = results.get("generation", {})
    if "tokens_per_second" in g:
        L.append(f"### Generation speed (greedy, batch {g['batch']}, {g['new_tokens']} new tokens, best of 2)")
        L.append("")
        L.append("| model | tokens/s |")
        L.append("|---|---:|")
        for k, x in g["tokens_per_second"].items():
            L.append(f"| {k} | {x:.1f} |")
        L.append("")
    sc = results.get("scaling", {})
    if "rows" in sc:
        L.append("### Router build time and selection latency vs number of experts")
        L.append("")
        L.append(f"{sc['what']}; {sc['pilots_per_expert']} pilots per expert, top-{sc['candidates']} candidates; "
                 f"selector: {sc.get('implementation')}.")
        L.append("")
        L.append("| experts | build (ms) | select median (ms) | select p95 (ms) | gate top-m (us/token/layer) | "
                 "gate all N (us/token/layer) |")
        L.append("|---:|---:|---:|---:|---:|---:|")
        for r in sc["rows"]:
            L.append(f"| {r['experts']} | {r['build_ms']:.2f} | {r['select_ms_median']:.3f} | "
                     f"{r['select_ms_p95']:.3f} | {r['gate_us_per_token_layer']:.2f} | "
                     f"{r['gate_all_rows_us_per_token_layer']:.2f} |")
        L.append("")
        if "scaling" in plots:
            L.append(f"![router scaling]({pre}{plots['scaling']})")
            L.append("")
    ex = results.get("experts") or {}
    if ex:
        L.append("### Expert training")
        L.append("")
        if any(x.get("cached") for x in ex.values()):
            L.append("Cached experts were trained by an earlier invocation of the same command with the identical "
                     "config (the cache key is the TrainConfig digest + base fingerprint + training-data digest); "
                     "seconds are that training's.")
            L.append("")
        L.append("| expert | steps | tokens | cached | seconds | loss first -> last (one batch) |")
        L.append("|---|---:|---:|:---:|---:|---|")
        for k, x in ex.items():
            L.append(f"| {k} | {x['steps']} | {x['tokens']:,} | {'yes' if x['cached'] else 'no'} | "
                     f"{_f(x.get('train_seconds'), 0)} | {x.get('first_loss', '–')} -> {x.get('final_loss', '–')} |")
        L.append("")
    t = results.get("timings_s", {})
    L.append("Stage timings (s): " + ", ".join(f"{k} {val}" for k, val in t.items()) + ".")
    return "\n".join(L) + "\n"
