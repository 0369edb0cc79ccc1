"""``expertmesh expert audit``: the owner-side leakage audit (expertmesh/expert/audit.py), run before publishing."""
from __future__ import annotations

import json

import click


@click.command("audit")
@click.option("--expert", "expert_dir", required=True, type=click.Path(), help="Expert package directory.")
@click.option("--data", required=True, type=click.Path(), help="The corpus it was trained on (train.jsonl + heldout.jsonl).")
@click.option("--heldout", type=click.Path(), default=None, help="Held-out .jsonl (default: <data>/heldout.jsonl).")
@click.option("--base", default=None, help="Base model dir (default: the one recorded at training).")
@click.option("--canaries", "canaries", type=click.Path(), default=None,
              help="Canary file (default: <expert>.canaries.json when the expert was trained with --canaries).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every sample the audit draws.")
@click.option("--extraction-samples", default=32, show_default=True, type=int, help="Training windows prompted.")
@click.option("--mia-blocks", default=48, show_default=True, type=int, help="Member and non-member blocks, each.")
@click.option("--canary-candidates", default=500, show_default=True, type=int, help="Random secrets for exposure.")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "bf16", "fp32"]))
@click.option("--no-record", is_flag=True, help="Only print; leave manifest.json unchanged.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def audit_cmd(expert_dir, data, heldout, base, canaries, seed, extraction_samples, mia_blocks, canary_candidates,
              precision, no_record, as_json) -> None:  # noqa: ANN001
    """What the expert gives away of its training text, base vs expert: verbatim extraction, membership-inference
    AUC (plain and base-calibrated), canary exposure. Records the result in manifest.json's audit section.

    Example: expertmesh expert audit --expert experts/law --data data/corpora/law
    """
    from expertmesh.expert.audit import AuditConfig, audit_expert, record_audit

    cfg = AuditConfig(extraction_samples=extraction_samples, mia_blocks=mia_blocks,
                      canary_candidates=canary_candidates, seed=seed, precision=precision)
    result = audit_expert(expert_dir, data, heldout=heldout, base=base, cfg=cfg, canaries=canaries)
    for w in result["warnings"]:
        click.echo(f"warning: {w}", err=True)
    if not no_record:
        record_audit(expert_dir, result)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(format_audit(result))
    if not no_record:
        click.echo(f"recorded in {expert_dir}/manifest.json (audit)")


def format_audit(a: dict) -> str:
    """Base and expert side by side (also used by `expertmesh show`)."""
    rows = [("verbatim extraction rate", "extraction_rate"), ("MIA AUC (loss)", "mia_auc"),
            ("held-out loss", "heldout_loss")]
    if "canary_exposure_expert" in a:
        rows.append((f"canary exposure (bits, of {a['canary_log2_space']})", "canary_exposure"))
    lines = [f"{'':40} {'base':>10} {'expert':>10}"]
    lines += [f"{label:40} {a.get(k + '_base', float('nan')):>10.4f} {a.get(k + '_expert', float('nan')):>10.4f}"
              for label, k in rows]
    lines.append(f"{'MIA AUC calibrated (expert - base loss)':40} {'':>10} {a['mia_auc_calibrated']:>10.4f}")
    return "\n".join(lines)
