"""lm-evaluation-harness task files over local JSONL (no hub): one writer for benchmarks/lm_eval_bench.py and
tests/serving/test_lm_eval.py, so the benchmark and its test run tasks of one shape.

Rows are {"context", "choices", "label"} for ``multiple_choice`` and {"context", "answer"} for ``generate_until``.
lm-eval scores a choice as loglikelihood(context + target_delimiter + choice); its default delimiter is " ".
"""
from __future__ import annotations

from pathlib import Path

_FIELDS = {
    "multiple_choice": {"doc_to_text": "{{context}}", "doc_to_choice": "{{choices}}", "doc_to_target": "label"},
    "generate_until": {"doc_to_text": "{{context}}", "doc_to_target": "{{answer}}"},
}


def write_task(path: str | Path, task: str, data: str | Path, *, output_type: str = "multiple_choice",
               metrics: tuple[str, ...] = ("acc",), target_delimiter: str | None = None,
               generation_kwargs: dict | None = None) -> Path:
    """Write the YAML of task ``task`` over the JSONL file ``data`` to ``path``; returns ``path``."""
    import yaml

    if output_type not in _FIELDS:
        raise ValueError(f"output_type={output_type!r} is not one of {sorted(_FIELDS)}")
    doc: dict = {"task": task, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
                 "test_split": "test", "output_type": output_type, **_FIELDS[output_type]}
    if target_delimiter is not None:
        doc["target_delimiter"] = target_delimiter
    if generation_kwargs is not None:
        doc["generation_kwargs"] = generation_kwargs
    doc["metric_list"] = [{"metric": m} for m in metrics]
    class Dumper(yaml.SafeDumper):
        """Strings with control characters double-quoted ("\\n"), not folded over two lines."""

    Dumper.add_representer(str, lambda d, s: d.represent_scalar(
        "tag:yaml.org,2002:str", s, style='"' if any(c < " " for c in s) else None))
    path = Path(path)
    path.write_text(yaml.dump(doc, Dumper=Dumper, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path
