"""One form for the expert mask from request to gate: a [N] bool tensor per row, names checked once (at
submit), withdrawal applied where the plan is made."""
from __future__ import annotations

import pytest
import torch

from expertmesh.errors import UnknownExpertError
from expertmesh.serving.composition import Selection
from tests.serving.conftest import run_sync


def test_row_plan_mask_is_a_bool_tensor_in_member_order(make_comp):
    comp = make_comp()

    plan = comp.plan_row("the patient", Selection(include=["law", "code"]), withdrawn={"code"})

    assert plan.allowed.dtype == torch.bool and plan.allowed.tolist() == [n == "law" for n in comp.members]
    assert any("code is withdrawn" in n for n in plan.notes)


def test_names_are_checked_once_at_submit_and_never_again(make_engine, monkeypatch):
    import expertmesh.compose.plan as plan_mod

    engine = make_engine()
    calls = []
    real = plan_mod._check_known
    monkeypatch.setattr(plan_mod, "_check_known", lambda *a: calls.append(a) or real(*a))

    run_sync(engine, "the licensee", max_tokens=2, selection=Selection(include=["law"], exclude=["code"]))
    with pytest.raises(UnknownExpertError, match="astrology"):
        run_sync(engine, "the licensee", max_tokens=2, selection=Selection(include=["astrology"]))

    assert calls == []                               # the plan did not check the names a second time


def test_engine_stacks_row_masks_without_converting_them(make_engine):
    engine = make_engine()
    seen = []
    model = engine.comp.model
    real = model.routing

    def spy(batch, **kw):
        seen.append(kw.get("allowed"))
        return real(batch, **kw)

    model.routing = spy
    try:
        run_sync(engine, "the patient was", max_tokens=3, selection=Selection(include=["medicine"]), ignore_eos=True)
    finally:
        del model.routing
    masks = [m for m in seen if m is not None]
    assert masks and all(m.dtype == torch.bool and m.shape[-1] == len(engine.comp.members) for m in masks)
    assert all(m[..., engine.comp.members.index("medicine")].all() and int(m.sum()) == m.shape[0] for m in masks)
