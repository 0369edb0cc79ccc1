"""``expert train --quiet``: one progress line per report (step, loss, tokens/s, ETA), in a log file off a terminal."""
from __future__ import annotations

import io

from click.testing import CliRunner

from cli.main import cli


def test_progress_line_reports_every_step_on_a_terminal_and_the_last_in_a_file():
    from expertmesh.expert.progress import ProgressLine

    tty, log = io.StringIO(), io.StringIO()
    on_tty = ProgressLine("law", 3, 512, tty, tty=True)
    in_file = ProgressLine("law", 3, 512, log, tty=False, every_s=3600)
    for step, loss in enumerate([3.5, 3.1, 2.9]):
        on_tty(step, loss)
        in_file(step, loss)

    assert tty.getvalue().count("\r") == 3 and tty.getvalue().endswith("\n")
    assert "law step 3/3  loss 2.900" in tty.getvalue() and "ETA" in tty.getvalue()
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("law step 1/3  loss 3.500") and lines[-1].startswith("law step 3/3  loss 2.900")
    assert len(lines) == 2                  # the first report, then (after every_s) only the last


def test_quiet_train_writes_its_progress_to_the_log_file(tmp_path, tiny_base_dir, tiny_corpora):
    out = tmp_path / "law"
    r = CliRunner().invoke(cli, ["expert", "train", "--data", str(tiny_corpora["law"]), "--name", "law", "--owner",
                                 "acme", "--out", str(out), "--base", str(tiny_base_dir), "--steps", "2",
                                 "--batch-size", "2", "--seq-len", "16", "--rank", "2", "--pilots", "2",
                                 "--threads", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "step 2/2" in (tmp_path / "law.train.log").read_text()
    assert "step" not in r.output


def test_an_empty_data_file_fails_before_the_base_loads(tmp_path, monkeypatch):
    import expertmesh.expert.train as train_mod

    def no_base(*_a, **_k):
        raise AssertionError("the base was loaded before the data was checked")

    monkeypatch.setattr(train_mod, "load_base", no_base)
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    r = CliRunner().invoke(cli, ["expert", "train", "--data", str(tmp_path / "empty.jsonl"), "--name", "law",
                                 "--owner", "acme", "--out", str(tmp_path / "out")])
    assert r.exit_code == 1 and r.output.startswith("error: ") and "empty" in r.output
