"""Markdown section of BENCHMARKS.md for benchmarks/federated_bench.py (numbers only from results.json)."""
from __future__ import annotations

from pathlib import Path

SECTION = "federated-bench"      # BENCHMARKS.md markers <!-- federated-bench:start/end -->
MOT = ["MoT gated, untrained", "MoT gated (central)", "MoT gated (federated)", "MoT LoRA streams (central)"]
ORDER = ["base", "oracle", "oracle gated", "untuned router", "federated tuned", "central tuned", "federated + central DP",
         "federated + local DP", *MOT, "FedAvg LoRA"]
REFERENCES = ("base", "oracle", "oracle gated")     # evaluated, never trained: no cost row
LABEL = {"oracle": "oracle: own expert, fixed weight 1 (needs the domain label)",
         "oracle gated": "oracle gated: own expert behind its two-way gate {public, expert}"}


def _mean(d: dict) -> float:
    return sum(d.values()) / len(d)


def _table(results: dict, key: str, names: list[str]) -> list[str]:
    methods = results["methods"]
    domains = list(next(iter(methods.values()))[key])
    ref = _mean(methods["untuned router"][key]) if "untuned router" in methods else None
    lines = [f"| method | {' | '.join(domains)} | mean | vs untuned |", "|---" * (len(domains) + 3) + "|"]
    for name in names:
        if name not in methods:
            continue
        m = methods[name][key]
        mean = _mean(m)
        delta = f"{mean - ref:+.4f}" if ref is not None and name != "untuned router" else ""
        lines.append(f"| {LABEL.get(name, name)} | " + " | ".join(f"{m[d]:.4f}" for d in domains)
                     + f" | {mean:.4f} | {delta} |")
    return lines


def _gain_notes(results: dict) -> list[str]:
    m = {k: _mean(v["all"]) for k, v in results["methods"].items()}
    notes = []
    if {"untuned router", "federated tuned", "central tuned"} <= set(m):
        gap = m["untuned router"] - m["central tuned"]
        got = m["untuned router"] - m["federated tuned"]
        share = f"{100 * got / gap:.0f}%" if abs(gap) > 1e-9 else "n/a"
        notes.append(f"- Federated tuning changes the mean held-out loss by {-got:+.4f} vs untuned; central (pooled) "
                     f"tuning by {-gap:+.4f}; federated recovers {share} of the central gain.")
    for dp in ("federated + central DP", "federated + local DP"):
        if dp in m and "federated tuned" in m:
            c = results["costs"].get(dp, {})
            notes.append(f"- {dp}: mean {m[dp] - m['federated tuned']:+.4f} vs federated without DP "
                         f"(noise std per coordinate {c.get('dp_noise_std', float('nan')):.3g}, clipping norm 1.0; "
                         f"median un-clipped update norm {c.get('median_update_norm', float('nan')):.3g}).")
    if "FedAvg LoRA" in m and "untuned router" in m:
        notes.append(f"- FedAvg single LoRA: mean {m['FedAvg LoRA']:.4f} vs "
                     f"untuned composition {m['untuned router']:.4f} and oracle {m.get('oracle', float('nan')):.4f}.")
    a = {k: _mean(v["after_prefix"]) for k, v in results["methods"].items()}
    for name in (n for n in MOT if n in a and "untuned router" in a):
        notes.append(f"- {name} (positions after the {results['config']['select_tokens']}-token selector prefix): "
                     f"mean {a[name]:.4f} vs untuned router {a['untuned router']:.4f}"
                     + (f", central-tuned router {a['central tuned']:.4f}" if "central tuned" in a else "")
                     + f", oracle {a.get('oracle', float('nan')):.4f}.")
        c, r = results["costs"].get(name, {}), results["methods"][name]
        base_tps = results["methods"].get("untuned router", {}).get("eval_tokens_per_second")
        if c.get("train_tokens") and base_tps and r.get("eval_tokens_per_second"):
            notes.append(f"- {name} cost: {c.get('parameters')} trained parameters on {c['train_tokens']} tokens "
                         f"({c.get('seconds')} s; router tuning trained on "
                         f"{results['costs'].get('central tuned', {}).get('train_tokens', '?')}); evaluation at {r['eval_tokens_per_second'] / base_tps:.2f}x "
                         f"the untuned router's tokens/s (K streams per token).")
        share = results["methods"][name].get("primary_share")
        if share:
            notes.append(f"- {name}, primary per held-out domain: " + "; ".join(
                f"{d}: " + ", ".join(f"{n} {v:.0%}" for n, v in s.items() if v > 0) for d, s in share.items()) + ".")
    return notes


def render(results: dict, *, tiny: bool) -> str:
    cfg, costs = results["config"], results["costs"]
    cmd = ".venv/bin/python benchmarks/federated_bench.py" + (" --tiny --write-tiny" if tiny else "")
    lines = ["## Federated coordinator training (router tuning, MoT, DP, FedAvg LoRA)", "",
             f"Command: `nice {cmd}` · machine: {results['machine']} (shared with other jobs) · date: "
             f"{results['date']} · whole run {results['total_seconds'] / 60:.1f} min.", "",
             f"Setup: base {'tiny config-built Llama (figures meaningless)' if tiny else 'SmolLM2-135M-Instruct'}; "
             f"three owners (law, medicine, code), each with its own corpus and a LoRA expert "
             f"(r={cfg['lora']['r']}, {cfg['expert_steps']} steps x {cfg['batch']} x {cfg['seq_len']} tokens). "
             f"Held-out: {cfg['eval_blocks']} blocks x {cfg['seq_len']} tokens per domain (whole-document split). "
             f"Federated tuning: Flower simulation, {cfg['rounds']} rounds x 3 owners x {cfg['local_steps']} local "
             f"steps (batch {cfg['batch']}); central tuning: the same number of steps on pooled data. MoT: top-"
             f"{cfg['mot']['top_k']}, {cfg['mot']['num_interaction']} interaction layers, latent "
             f"{cfg['mot']['latent_dim']}, {cfg['mot_steps']} steps on pooled data; a gated stream is its expert behind "
             f"the two-way gate {{public, expert}} its owner trained it with, a LoRA stream is the expert's LoRA "
             f"alone at weight 1 (the paper's form). FedAvg LoRA: "
             f"{cfg['lora_rounds']} rounds x 3 owners x {cfg['lora_local_steps']} steps = "
             f"{costs.get('FedAvg LoRA', {}).get('train_tokens', '?')} tokens (the three experts together: "
             f"{costs.get('FedAvg LoRA', {}).get('experts_train_tokens', '?')}).",
             "", "Held-out loss (nats/token, all positions; lower is better):", ""]
    lines += _table(results, "all", [n for n in ORDER if n not in MOT])
    lines += ["", f"Held-out loss on positions after the first {cfg['select_tokens']} tokens (MoT's selector reads "
              "them, so they are not scored for anyone here):", ""]
    lines += _table(results, "after_prefix", ["base", "oracle", "oracle gated", "untuned router", "federated tuned", "central tuned",
                                              *MOT])
    lines += ["", "Cost:", "", "| method | trained parameters | train tokens | wall time (s) | eval tokens/s |",
              "|---|---|---|---|---|"]
    rp = costs.get("router parameters")
    for name in (n for n in ORDER if n not in REFERENCES):
        if name not in results["methods"]:
            continue
        c = costs.get(name, {})
        params = c.get("parameters") if name in MOT else (
            None if name == "FedAvg LoRA" else (0 if name == "untuned router" else rp))
        lines.append(f"| {name} | {params if params is not None else 'LoRA'} | {c.get('train_tokens', 0)} | "
                     f"{c.get('seconds', '')} | {results['methods'][name].get('eval_tokens_per_second', '')} |")
    lines += ["", "Eval tokens/s is forward throughput during the held-out evaluation on a machine shared with other "
              "jobs: compare rows of one run only, and loosely.", "",
              "Observations (computed from the tables above):", ""] + _gain_notes(results)
    return "\n".join(lines) + "\n"


def write_section(path: Path, results: dict, *, tiny: bool = False) -> None:
    from benchmarks.mesh.markdown import replace_section

    replace_section(path, SECTION, render(results, tiny=tiny))
