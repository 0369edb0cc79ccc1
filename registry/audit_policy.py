"""The registry's audit policy: refuse experts whose owner-side leakage audit is missing or over thresholds.

The audit is the ``audit`` section of manifest.json (expertmesh/expert/audit.py writes it; the manifest's sha256
pins it). The policy reads the figures, never recomputes them: the registry holds no owner data.

    EXPERTMESH_REGISTRY_AUDIT_POLICY='{"required": true, "max_extraction_rate": 0.01,
                                        "max_mia_auc_calibrated": 0.6, "max_canary_exposure": 10}'

A refusal is AuditPolicyError (a PackageError: HTTP 422, code ``audit_policy``) naming the figure, its value and
the threshold, so the owner knows what to fix (more data, fewer steps, or DP training).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from expertmesh.errors import AuditPolicyError, ConfigError
from expertmesh.expert.manifest import AUDIT_FORMAT
from expertmesh.validate import check_float

# policy field -> the audit figure it bounds
THRESHOLDS = {"max_extraction_rate": "extraction_rate_expert",
              "max_mia_auc": "mia_auc_expert",
              "max_mia_auc_calibrated": "mia_auc_calibrated",
              "max_canary_exposure": "canary_exposure_expert"}


@dataclass(frozen=True)
class AuditPolicy:
    required: bool = False
    max_extraction_rate: float | None = None
    max_mia_auc: float | None = None
    max_mia_auc_calibrated: float | None = None
    max_canary_exposure: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.required, bool):
            raise ConfigError(f"audit_policy.required={self.required!r} must be true or false")
        for name in THRESHOLDS:
            if getattr(self, name) is not None:
                check_float(f"audit_policy.{name}", getattr(self, name), lo=0.0)

    @property
    def active(self) -> bool:
        return self.required or any(getattr(self, n) is not None for n in THRESHOLDS)

    @classmethod
    def from_json(cls, text: str) -> "AuditPolicy":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"audit policy is not JSON: {e}") from None
        known = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or set(d) - known:
            raise ConfigError(f"audit policy must be a JSON object with fields from {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self, audit: dict[str, Any] | None) -> None:
        """Raise AuditPolicyError if ``audit`` (manifest["audit"]) is missing while needed or over a threshold."""
        if not self.active:
            return
        if not audit:
            raise AuditPolicyError("this registry requires a leakage audit: run `expertmesh expert audit --expert "
                                   "DIR --data CORPUS` on your machine, then publish again",
                                   detail={"policy": self.to_dict()})
        if audit.get("format") != AUDIT_FORMAT:
            raise AuditPolicyError(f"the manifest's audit is not an {AUDIT_FORMAT} audit; re-run expert audit",
                                   detail={"policy": self.to_dict()})
        over = []
        for name, figure in THRESHOLDS.items():
            limit = getattr(self, name)
            if limit is None:
                continue
            value = audit.get(figure)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                over.append(f"{figure} is missing (the policy bounds it by {limit})")
            elif value > limit:
                over.append(f"{figure}={value} is over this registry's limit {limit}")
        if over:
            raise AuditPolicyError("the expert's leakage audit does not pass this registry's policy: "
                                   + "; ".join(over) + " (train with --dp-epsilon, fewer steps or more data)",
                                   detail={"policy": self.to_dict(), "failed": over})
