"""Held-out loss of a composition under a request policy, next to the public base on the same blocks.

Each block is its own request: its text is what the retriever sees (the whole block, as a server would see a
document-length prompt), so selection is judged on the same context the loss is measured on.
"""
from __future__ import annotations

from pathlib import Path

import torch


def block_losses(rt, blocks: torch.Tensor, *, batch_size: int = 8, plan_for=None, trace: bool = False,
                 **plan_kwargs) -> tuple[float, torch.Tensor | None]:
    """Mean next-token loss over ``blocks`` [n, T]; ``plan_for(prompts) -> RoutingPlan`` or rt.plan(**kwargs).
    Returns (loss, mean gate mass [E] over blocks when ``trace``)."""
    tok = rt.base.tokenizer
    total, count, mass = 0.0, 0, None
    for i in range(0, len(blocks), batch_size):
        ids = blocks[i:i + batch_size]
        prompts = tok.batch_decode(ids, skip_special_tokens=True)
        plan = plan_for(prompts) if plan_for is not None else rt.plan(prompts, **plan_kwargs)
        out = rt.forward(ids, None, plan, trace=trace)
        logits = out.logits.float()
        total += float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                         ids[:, 1:].reshape(-1), reduction="sum"))
        count += ids[:, 1:].numel()
        if trace and rt.model.last_trace is not None:
            m = rt.model.last_trace.mass.sum(0)
            mass = m if mass is None else mass + m
    return total / max(count, 1), (mass / len(blocks) if mass is not None else None)


def evaluate_composition(rt, data: str, *, seq_len: int = 256, max_blocks: int = 16, **plan_kwargs) -> dict:
    from pathlib import Path

    from expertmesh.corpora.records import load_texts
    from expertmesh.expert.blocks import pack_blocks

    path = Path(data)
    if path.is_dir() and (path / "heldout.jsonl").is_file():
        path = path / "heldout.jsonl"
    blocks = pack_blocks(rt.base.tokenizer, load_texts(str(path)), seq_len, max_blocks=max_blocks,
                         what=f"held-out data {path}")
    base_loss, _ = block_losses(rt, blocks, exclude=rt.member_names, selection="token")
    loss, mass = block_losses(rt, blocks, trace=True, **plan_kwargs)
    entries = ["public"] + rt.member_names
    return {"data": str(path), "blocks": len(blocks), "seq_len": seq_len, "base_loss": round(base_loss, 4),
            "composition_loss": round(loss, 4),
            "gate_mass": {n: round(float(mass[e]), 4) for e, n in enumerate(entries)} if mass is not None else {}}


def corpora_by_name(datas) -> dict[str, str]:
    """{name: path} for ``--data`` corpora: a corpus is named by its dir or file name without .jsonl/.txt/.md, the
    name of the expert or domain tag expected to answer it (routing accuracy reads it). Two corpora of one name
    are refused: the second would silently replace the first."""
    from expertmesh.errors import ConfigError

    named: dict[str, str] = {}
    for d in datas:
        name = Path(d).name
        for suffix in (".jsonl", ".txt", ".md"):
            name = name.removesuffix(suffix)
        if name in named:
            raise ConfigError(f"two --data corpora are named {name!r} ({named[name]} and {d}); the name says which "
                              "expert should answer it")
        named[name] = str(d)
    return named


def compare_on_corpora(rt, corpora: dict[str, str], *, seq_len: int = 256, max_blocks: int = 16,
                       batch_size: int = 8, opt_out_blocks: int = 2, singles: bool = True) -> dict:
    """The owner's table on their own held-out corpora: per corpus the loss of the public base, of each member
    alone, of the oracle (the best single member on that corpus) and of the composition as it routes (retriever
    selection included, via ``rt.plan``), plus sequence routing accuracy: the share of blocks whose largest
    gate mass falls on the member named (or tagged) like the corpus. Corpora are {domain: corpus dir or file}.

    "opt_out" checks, per member, that excluding it per request gives the logits of the composition without it
    (see compose/exactness.py), on the first ``opt_out_blocks`` blocks of every corpus (0 skips it: the check
    costs two forwards per member). ``singles=False`` leaves out base, experts alone and oracle (None and {}):
    ``bench --own`` measures them once for several compositions of the same experts."""
    from expertmesh.compose.exactness import opt_out_exactness
    from expertmesh.corpora.records import load_texts
    from expertmesh.expert.blocks import pack_blocks

    members = rt.member_names
    tags = {m.name: set(m.domain_tags) | {m.name} for m in rt.spec.members}
    rows, probe = [], []
    for domain, data in corpora.items():
        path = Path(data)
        if path.is_dir() and (path / "heldout.jsonl").is_file():
            path = path / "heldout.jsonl"
        blocks = pack_blocks(rt.base.tokenizer, load_texts(str(path)), seq_len, max_blocks=max_blocks,
                             what=f"held-out data {path}")
        alone = {n: block_losses(rt, blocks, include=[n], selection="token")[0] for n in members} if singles else {}
        comp_loss, hits = _composition_with_accuracy(rt, blocks, {n for n in members if domain in tags[n]},
                                                     batch_size)
        oracle = min(alone, key=alone.get) if alone else None
        probe.append(blocks[:opt_out_blocks])
        rows.append({"domain": domain, "blocks": len(blocks),
                     "base": round(block_losses(rt, blocks, exclude=members, selection="token")[0], 4)
                     if singles else None,
                     "experts": {n: round(v, 4) for n, v in alone.items()},
                     "oracle": {"expert": oracle, "loss": round(alone[oracle], 4)} if oracle else None,
                     "composition": round(comp_loss, 4),
                     "routing_accuracy": None if hits is None else round(hits / len(blocks), 4)})
    opt_out = opt_out_exactness(rt, torch.cat(probe), batch_size=batch_size) if opt_out_blocks > 0 else None
    return {"composition": rt.spec.ref, "router_type": rt.spec.router_type, "selection": rt.spec.selection,
            "seq_len": seq_len, "corpora": rows, "opt_out": opt_out}


def _composition_with_accuracy(rt, blocks: torch.Tensor, expected: set[str], batch_size: int):
    """Composition loss over ``blocks`` and how many blocks route most of their gate mass to ``expected``
    (None when no member is named or tagged like the corpus)."""
    tok = rt.base.tokenizer
    total, count, hits = 0.0, 0, 0
    entries = ["public"] + rt.member_names
    for i in range(0, len(blocks), batch_size):
        ids = blocks[i:i + batch_size]
        out = rt.forward(ids, None, rt.plan(tok.batch_decode(ids, skip_special_tokens=True)), trace=True)
        logits = out.logits.float()
        total += float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                         ids[:, 1:].reshape(-1), reduction="sum"))
        count += ids[:, 1:].numel()
        trace = getattr(rt.model, "last_trace", None)
        if trace is not None and expected:
            experts_mass = trace.mass[:, 1:]                    # [B, N]: the public entry is not a routing choice
            top = experts_mass.argmax(1).tolist()
            hits += sum(entries[1 + t] in expected and float(experts_mass[b, t]) > 0 for b, t in enumerate(top))
    return total / max(count, 1), (hits if expected else None)


def compare_table_text(tables: dict | list[dict]) -> str:
    """Text form of one ``compare_on_corpora`` table, or of several over the same corpora (``bench --own``):
    base, experts alone and oracle from the tables that measured them, then loss and routing accuracy of each
    composition, then each composition's opt-out check."""
    tables = [tables] if isinstance(tables, dict) else list(tables)
    one = len(tables) == 1
    singles: dict[str, dict] = {}                      # corpus -> the first row that measured base and experts
    for t in tables:
        for r in t["corpora"]:
            if r["base"] is not None:
                singles.setdefault(r["domain"], r)
    members = list(dict.fromkeys(m for r in singles.values() for m in r["experts"]))
    head = ["corpus", "blocks", "base"] + [f"{m} alone" for m in members] + ["oracle"]
    head += ["composition", "routing acc"] if one else [x for t in tables for x in (t["composition"], "acc")]
    rows = [head]
    for i, first in enumerate(tables[0]["corpora"]):
        s = singles.get(first["domain"], {})
        oracle = s.get("oracle")
        row = [first["domain"], str(first["blocks"]), _num(s.get("base"))]
        row += [_num(s.get("experts", {}).get(m)) for m in members]
        row += [f"{oracle['loss']:.4f} ({oracle['expert']})" if oracle else "n/a"]
        for t in tables:
            r = t["corpora"][i]
            acc = r["routing_accuracy"]
            row += [f"{r['composition']:.4f}", "n/a" if acc is None else f"{acc:.2f}"]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [(f"{tables[0]['composition']} ({tables[0]['router_type']}, selection {tables[0]['selection']})"
              if one else "compositions " + ", ".join(f"{t['composition']} ({t['router_type']})" for t in tables))
             + ": held-out loss"]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    for t in tables:
        opt = t.get("opt_out")
        if opt:
            lines.append(f"opt-out exactness{'' if one else ' of ' + t['composition']} (exclude X per request vs "
                         f"the composition without X, max |logit diff| over {opt['blocks']} blocks, "
                         f"exact <= {opt['tolerance']:g}):")
            lines += [f"  {n}: {r['max_abs_diff']:.2e} {'exact' if r['exact'] else 'NOT EXACT'}"
                      for n, r in opt["experts"].items()]
    return "\n".join(lines)


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"
