"""The registry's audit policy: experts without an audit, or over the thresholds, are refused with a 422."""
from __future__ import annotations

import json

import pytest

from expertmesh.errors import ConfigError
from expertmesh.expert.manifest import AUDIT_FORMAT
from expertmesh.expert.package import finalize_manifest, read_manifest
from registry.audit_policy import AuditPolicy
from registry.settings import RegistrySettings
from tests.registry.conftest import assert_error, make_expert_package

POLICY = {"required": True, "max_extraction_rate": 0.05, "max_mia_auc_calibrated": 0.6}


def _with_audit(pkg, **figures):
    m = read_manifest(pkg)
    m.audit = {"format": AUDIT_FORMAT, "extraction_rate_expert": 0.0, "mia_auc_calibrated": 0.52, **figures}
    finalize_manifest(pkg, m)
    return pkg


@pytest.fixture
def policy_api(settings):
    from fastapi.testclient import TestClient

    from registry.app import create_app
    from tests.registry.conftest import Api

    app = create_app(settings.with_(audit_policy=AuditPolicy(**POLICY)))
    with TestClient(app) as client:
        yield Api(client, app)


def test_unaudited_expert_is_refused_with_a_clear_422(policy_api, tmp_path):
    h = policy_api.owner("alice")
    err = assert_error(policy_api.publish(make_expert_package(tmp_path / "p", "law-expert"), h), 422, "audit_policy")
    assert "requires a leakage audit" in err["message"] and "expert audit" in err["message"]


def test_expert_over_a_threshold_is_refused_naming_the_figure(policy_api, tmp_path):
    h = policy_api.owner("alice")
    pkg = _with_audit(make_expert_package(tmp_path / "p", "law-expert"), mia_auc_calibrated=0.81)
    err = assert_error(policy_api.publish(pkg, h), 422, "audit_policy")
    assert "mia_auc_calibrated=0.81 is over this registry's limit 0.6" in err["message"]


def test_audited_expert_within_limits_is_published_and_its_audit_served(policy_api, tmp_path):
    h = policy_api.owner("alice")
    pkg = _with_audit(make_expert_package(tmp_path / "p", "law-expert"))
    r = policy_api.publish(pkg, h)
    assert r.status_code == 201, r.text
    shown = policy_api.client.get("/v1/experts/law-expert/versions/1", headers=h).json()
    assert shown["manifest"]["audit"]["mia_auc_calibrated"] == 0.52


def test_default_registry_accepts_unaudited_experts(api, tmp_path):
    r = api.publish(make_expert_package(tmp_path / "p", "law-expert"), api.owner("alice"))
    assert r.status_code == 201, r.text


def test_policy_from_env_is_validated(tmp_path):
    s = RegistrySettings.from_env({"EXPERTMESH_REGISTRY_AUDIT_POLICY": json.dumps(POLICY)}, data_dir=tmp_path)
    assert s.audit_policy == AuditPolicy(**POLICY) and s.describe()["audit_policy"]["required"] is True
    with pytest.raises(ConfigError, match="fields from"):
        RegistrySettings.from_env({"EXPERTMESH_REGISTRY_AUDIT_POLICY": '{"max_auc": 1}'}, data_dir=tmp_path)
    with pytest.raises(ConfigError, match="max_extraction_rate"):
        AuditPolicy(max_extraction_rate=-1)
