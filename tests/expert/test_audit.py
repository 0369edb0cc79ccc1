"""The owner-side leakage audit, canaries and DP-SGD training, on the tiny config-built base."""
import contextlib
import json
import math
import random

import pytest
import torch

from expertmesh.corpora.records import write_records
from expertmesh.errors import DataError, PackageError
from expertmesh.expert.audit import AuditConfig, audit_expert, extraction_rate, record_audit, roc_auc
from expertmesh.expert.canaries import canary_path, insert_canaries, load_canaries, make_canaries
from expertmesh.expert.package import verify_package
from tests.conftest import train_tiny_expert

WORDS = ("the patient was given aspirin for chest pain and fever licensee shall not sublicense software "
         "without written permission kernel scheduler assigns process cpu core daemon logs").split()
TINY_AUDIT = dict(prefix_tokens=4, continuation_tokens=8, match_tokens=6, extraction_samples=8, mia_blocks=8,
                  min_mia_blocks=4, canary_candidates=50, batch_size=4)


def _random_docs(seed: int, n: int, words: int = 24) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


@pytest.fixture(scope="module")
def audit_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("audit-corpus")
    for split, seed in (("train", 1), ("heldout", 2)):
        write_records(d / f"{split}.jsonl", [{"id": f"{split}/{i}", "domain": "mix", "source": "t", "text": t}
                                              for i, t in enumerate(_random_docs(seed, 12))])
    return d


@pytest.fixture(scope="module")
def canary_expert(tmp_path_factory, tiny_base_dir, audit_corpus):
    out = tmp_path_factory.mktemp("canary-expert") / "mix"
    train_tiny_expert(tiny_base_dir, audit_corpus, out, "mix", steps=40, lr=2e-2, canaries=2, canary_repeats=20)
    return out


def test_roc_auc_is_the_mann_whitney_probability():
    assert roc_auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert roc_auc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    assert roc_auc(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])) == 0.5
    assert roc_auc(torch.tensor([1.0, 3.0]), torch.tensor([2.0])) == 0.5


def test_extraction_counts_leading_matches_of_at_least_match_tokens():
    cfg = AuditConfig(**TINY_AUDIT)
    windows = torch.arange(24).view(2, 12)              # prefix 4 + continuation 8

    def half_right(prefix):                           # row 0 reproduced for 7 tokens, row 1 for 5
        full = windows.clone()
        full[0, 4 + 7:] = -1
        full[1, 4 + 5:] = -1
        return full
    rate, mean_len = extraction_rate(half_right, windows, cfg)
    assert rate == 0.5 and mean_len == 6.0


def test_canaries_are_seeded_inserted_and_saved_beside_the_package(canary_expert):
    saved = load_canaries(canary_path(canary_expert))
    assert saved.secrets == make_canaries(2, seed=0, repeats=20).secrets
    stream = insert_canaries(["a", "b"], saved)
    assert len(stream) == 2 + 2 * 20 and stream.count(saved.texts[0]) == 20
    manifest = verify_package(canary_expert)
    assert manifest.training["canaries"] == {"count": 2, "repeats": 20, "sha256": saved.digest()}
    assert not any("secret" in p.name for p in canary_expert.iterdir())   # the secrets never enter the package


def test_scoring_only_the_secret_positions_equals_the_full_logits(canary_expert, tiny_base_dir):
    """The audit's shortcuts (logits of the secret's positions only; [B*T, V] cross-entropy rows) change no figure."""
    from expertmesh.base import load_base
    from expertmesh.expert.audit import block_losses
    from expertmesh.expert.canaries import PREFIX, secret_log_perplexities
    from expertmesh.mixture.lora_io import load_expert
    from expertmesh.mixture.model import ComposedModel

    base = load_base(str(tiny_base_dir))
    model = ComposedModel(base.model, [load_expert(canary_expert)])
    tok, secrets = base.tokenizer, load_canaries(canary_path(canary_expert)).secrets + ["1 2 3 4 5 6 7 8 9"]
    fast = secret_log_perplexities(lambda ids, keep=0: model(ids, logits_to_keep=keep).logits, tok, secrets)
    n_prefix = len(tok(PREFIX, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([tok(PREFIX + s, add_special_tokens=False)["input_ids"] for s in secrets])
    with torch.inference_mode():
        logp = torch.log_softmax(model(ids).logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        blocks = torch.randint(0, tok.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))
        logits = model(blocks).logits.float()
    reference = -logp[:, n_prefix - 1:].sum(1) / math.log(2)
    assert torch.allclose(fast, reference, atol=1e-4), (fast, reference)
    per_block = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), blocks[:, 1:],
                                                  reduction="none").mean(1)
    assert torch.allclose(block_losses(lambda x: model(x).logits, blocks, 2), per_block, atol=1e-5)
    model.close()


def test_audit_reports_base_and_expert_and_travels_in_the_manifest(canary_expert, audit_corpus, tiny_base_dir):
    cfg = AuditConfig(**TINY_AUDIT)
    audit = audit_expert(canary_expert, audit_corpus, base=str(tiny_base_dir), cfg=cfg)
    for key in ("extraction_rate_base", "extraction_rate_expert", "mia_auc_base", "mia_auc_expert",
                "mia_auc_calibrated", "canary_exposure_base", "canary_exposure_expert", "heldout_loss_expert"):
        assert key in audit, key
    assert all(0.0 <= audit[k] <= 1.0 for k in ("extraction_rate_expert", "mia_auc_expert", "mia_auc_calibrated"))
    # A canary seen 20 times is far more likely under the expert than under the base that never saw it.
    assert audit["canary_exposure_expert"] > audit["canary_exposure_base"] + 1.0
    assert audit["data_matches_training"] is True and audit["warnings"] == []
    assert audit["settings"]["seed"] == 0 and audit["mia_blocks_per_side"] == 8
    before = (canary_expert / "manifest.json").read_bytes()
    record_audit(canary_expert, audit)
    manifest = verify_package(canary_expert)            # other files' hashes unchanged
    assert manifest.audit["mia_auc_calibrated"] == audit["mia_auc_calibrated"]
    assert (canary_expert / "manifest.json").read_bytes() != before
    again = audit_expert(canary_expert, audit_corpus, base=str(tiny_base_dir), cfg=cfg)
    assert {k: v for k, v in again.items() if k != "created_at"} == \
        {k: v for k, v in audit.items() if k != "created_at"}       # seeded: the same figures again


def test_audit_on_another_corpus_warns_that_it_is_not_the_training_data(canary_expert, tmp_path, tiny_base_dir):
    for split, seed in (("train", 7), ("heldout", 8)):
        write_records(tmp_path / f"{split}.jsonl", [{"id": f"{split}/{i}", "domain": "mix", "source": "t", "text": t}
                                                   for i, t in enumerate(_random_docs(seed, 12))])
    audit = audit_expert(canary_expert, tmp_path, base=str(tiny_base_dir), cfg=AuditConfig(**TINY_AUDIT))
    assert audit["data_matches_training"] is False
    assert "does not match the training data recorded in the manifest" in audit["warnings"][0]


def test_audit_on_too_little_data_is_a_clear_error(canary_expert, tmp_path, tiny_base_dir):
    for split in ("train", "heldout"):
        write_records(tmp_path / f"{split}.jsonl", [{"id": f"{split}/0", "domain": "m", "source": "t",
                                                    "text": _random_docs(3, 1)[0]}])
    with pytest.raises(DataError, match="too little data for membership inference"):
        audit_expert(canary_expert, tmp_path, base=str(tiny_base_dir), cfg=AuditConfig(**TINY_AUDIT))


def test_manifest_refuses_an_oversized_audit(canary_expert):
    from expertmesh.expert.manifest import ExpertManifest

    d = json.loads((canary_expert / "manifest.json").read_text())
    d["audit"] = {"blob": "x" * 10_000}
    with pytest.raises(PackageError, match="audit must be a JSON object"):
        ExpertManifest.from_dict(d)


def test_dp_training_records_the_accounted_budget_and_clips_per_sample(tiny_base_dir, audit_corpus, tmp_path):
    res = train_tiny_expert(tiny_base_dir, audit_corpus, tmp_path / "dp", "dp", steps=6, batch_size=4,
                            dp_epsilon=8.0, dp_delta=1e-3, dp_clip=0.5)
    dp = res.manifest.training["dp"]
    assert dp["accountant"] == "opacus-rdp" and dp["clipping_norm"] == 0.5 and dp["delta"] == 1e-3
    assert 0 < dp["epsilon"] <= 8.0 + 1e-6 and dp["noise_multiplier"] > 0
    assert dp["not_covered"] == ["pilots"]


def test_dp_step_clips_each_sample_before_summing():
    from expertmesh.expert.dp import DPPlan, dp_step

    w = torch.nn.Parameter(torch.zeros(3))
    x = torch.tensor([[1.0, 0, 0], [0, 100.0, 0]])       # sample 2's gradient is 100x larger
    reads = {"w": w}

    @contextlib.contextmanager
    def per_sample(params, n):
        copies = [p.detach().expand(n, *p.shape).clone().requires_grad_() for p in params]
        reads["w"] = copies[0]
        yield copies
        reads["w"] = w

    def loss_of(ids):
        return (reads["w"] * x[ids[:, 0]]).sum(-1).mean()
    plan = DPPlan(epsilon=1.0, delta=1e-5, clip=1.0, noise_multiplier=0.0, sample_rate=1.0, steps=1)
    dp_step(loss_of, torch.tensor([[0], [1]]), [w], plan, num_blocks=2, gen=torch.Generator().manual_seed(0),
            per_sample=per_sample)
    assert torch.allclose(w.grad, torch.tensor([0.5, 0.5, 0.0]), atol=1e-5)   # both clipped to norm 1, mean


def test_batched_per_sample_gradients_equal_one_backward_per_sample(tiny_base):
    """ComposedModel.per_sample: one batched backward gives each block the gradient a backward of that block
    alone gives, for the LoRA factors and the router row (what DP-SGD clips)."""
    from torch import nn

    from expertmesh.mixture.lora_io import ExpertWeights
    from expertmesh.mixture.model import ComposedModel, adaptable_modules, resolve_targets

    # Prepare
    model = tiny_base.model
    g = torch.Generator().manual_seed(0)
    L, d = model.config.num_hidden_layers, model.config.hidden_size
    linears = adaptable_modules(model)
    lora = {p: (nn.Parameter(0.3 * torch.randn(2, linears[p].in_features, generator=g)),
                nn.Parameter(0.3 * torch.randn(linears[p].out_features, 2, generator=g)))
            for p in resolve_targets(model, ["q_proj", "v_proj"])}
    anchor, rows = torch.randn(L, d, generator=g), torch.randn(L, d, generator=g)
    row = nn.Parameter(rows[:, None, :].clone())
    expert = ExpertWeights(name="e", lora=lora, scaling=2.0, router_rows=rows, anchor_rows=anchor,
                           pilots=torch.zeros(1, 1))
    composed = ComposedModel(model, [expert], top_k=2, anchor_rows=anchor, expert_rows=row)
    params = [p for pair in lora.values() for p in pair] + [row]
    ids = torch.randint(0, model.config.vocab_size, (3, 12), generator=g)
    # Execute
    with composed.per_sample(params, len(ids)) as copies:
        (composed(ids, labels=ids).loss * len(ids)).backward()
    batched = [c.grad for c in copies]
    single = [torch.autograd.grad(composed(ids[s:s + 1], labels=ids[s:s + 1]).loss, params) for s in range(3)]
    composed.close()
    # Assert
    for k, p in enumerate(params):
        assert batched[k].shape == (3, *p.shape)
        for s in range(3):
            assert torch.allclose(batched[k][s], single[s][k], atol=1e-5), (k, s)
    assert all(float(c.abs().sum()) > 0 for c in batched)      # every tensor, the row included, got a gradient
    assert composed.router.expert_rows is row                    # the shared tensors are back after the block


def test_dp_delta_must_be_below_one_over_n(tiny_base_dir, audit_corpus, tmp_path):
    from expertmesh.errors import ConfigError

    with pytest.raises(ConfigError, match="dp_delta"):
        train_tiny_expert(tiny_base_dir, audit_corpus, tmp_path / "dp", "dp", steps=2, dp_epsilon=8.0, dp_delta=0.05)


def test_cli_audit_records_prints_side_by_side_and_publish_requires_it(canary_expert, audit_corpus, tiny_base_dir,
                                                                      tmp_path):
    import shutil

    from click.testing import CliRunner

    from cli.main import cli

    pkg = tmp_path / "mix"
    shutil.copytree(canary_expert, pkg)
    shutil.copy(canary_path(canary_expert), canary_path(pkg))
    m = verify_package(pkg)
    m.audit = {}
    from expertmesh.expert.package import finalize_manifest
    finalize_manifest(pkg, m)
    refused = CliRunner().invoke(cli, ["publish", str(pkg), "--require-audit"])
    assert refused.exit_code != 0 and "has no leakage audit" in refused.output
    args = ["expert", "audit", "--expert", str(pkg), "--data", str(audit_corpus), "--base", str(tiny_base_dir),
            "--extraction-samples", "8", "--mia-blocks", "8", "--canary-candidates", "50"]
    small = CliRunner().invoke(cli, args)
    assert small.exit_code != 0 and "error:" in small.output      # defaults need 16 blocks a side: clear error
    assert not verify_package(pkg).audit                          # nothing half-written


def test_audit_help_has_an_example():
    from click.testing import CliRunner

    from cli.main import cli

    for cmd in (["expert", "audit"], ["expert", "train"], ["publish"]):
        res = CliRunner().invoke(cli, cmd + ["--help"])
        assert res.exit_code == 0 and "Example" in res.output
    assert "--dp-epsilon" in CliRunner().invoke(cli, ["expert", "train", "--help"]).output


@pytest.mark.parametrize("dp_epsilon", [None, 8.0])
def test_frozen_a_keeps_its_init_and_only_b_trains(tiny_base_dir, audit_corpus, tmp_path, dp_epsilon):
    from expertmesh.base import load_base
    from expertmesh.expert.train import _init_lora
    from expertmesh.mixture.lora_io import ADAPTER_WEIGHTS_FILE, read_peft_adapter
    from expertmesh.mixture.model import resolve_targets

    res = train_tiny_expert(tiny_base_dir, audit_corpus, tmp_path / "ffa", "ffa", steps=3, batch_size=4,
                            train_lora_a=False, dp_epsilon=dp_epsilon, dp_delta=1e-3, dp_clip=0.5)
    model = load_base(str(tiny_base_dir)).model
    init = _init_lora(model, resolve_targets(model, ["q_proj", "v_proj"]), 4, 0)
    trained = read_peft_adapter(res.out / ADAPTER_WEIGHTS_FILE)
    assert set(trained) == set(init)
    for path, (a, b) in trained.items():
        assert torch.equal(a.float(), init[path][0].detach().float()), path
        assert float(b.abs().sum()) > 0, path                 # B starts at zero: it moved
    assert res.manifest.training["config"]["train_lora_a"] is False


def test_micro_batches_give_the_whole_batch_gradient(tiny_base_dir, audit_corpus, tmp_path, monkeypatch):
    """A batch split into micro-batches (expert/blocks.py) takes the same step as the batch in one pass; SGD
    instead of AdamW so the step is the gradient itself, not its sign; no LoRA dropout, whose masks follow the
    pass's shape."""
    import expertmesh.expert.blocks as blocks
    from expertmesh.expert.manifest import LoraSpec
    from expertmesh.mixture.lora_io import ADAPTER_WEIGHTS_FILE, read_peft_adapter

    monkeypatch.setattr(torch.optim, "AdamW", torch.optim.SGD)
    trained = {}
    for tokens in (32, 10 ** 6):                        # one 32-token block per pass, then the whole batch
        monkeypatch.setattr(blocks, "MICRO_BATCH_TOKENS", tokens)
        res = train_tiny_expert(tiny_base_dir, audit_corpus, tmp_path / str(tokens), "mb", steps=2, batch_size=4,
                                precision="fp32", lr=0.5,
                                lora=LoraSpec(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
        trained[tokens] = read_peft_adapter(res.out / ADAPTER_WEIGHTS_FILE)
    split, whole = trained[32], trained[10 ** 6]
    assert any(float(b.abs().sum()) > 0 for _, b in whole.values())
    for path in whole:
        for x, y in zip(split[path], whole[path]):
            assert torch.allclose(x, y, atol=1e-5), path
