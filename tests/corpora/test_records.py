"""Record files: every malformed input is a DataError naming the file and the line or byte offset."""
from __future__ import annotations

import json

import pytest

from expertmesh.corpora.records import load_texts, read_records, write_records
from expertmesh.errors import DataError


def _write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_round_trip_keeps_records(tmp_path):
    recs = [{"id": "a", "domain": "d", "source": "s", "text": "héllo\nworld"}, {"text": "second"}]

    n = write_records(tmp_path / "x.jsonl", recs)

    assert n == 2
    assert read_records(tmp_path / "x.jsonl") == recs
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]     # no temp file left


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_records(tmp_path / "nope.jsonl")


def test_empty_file(tmp_path):
    with pytest.raises(DataError, match="no records"):
        read_records(_write(tmp_path / "e.jsonl", "\n\n"))


def test_malformed_line_names_file_and_line(tmp_path):
    p = _write(tmp_path / "m.jsonl", '{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(DataError, match=r"m\.jsonl:2: not valid JSON"):
        read_records(p)


def test_non_utf8_names_line_and_offset(tmp_path):
    p = _write(tmp_path / "b.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"b\.jsonl:2: not UTF-8 \(byte 0xe9 at byte offset 28\)") as e:
        read_records(p)
    assert e.value.detail == {"path": str(p), "line": 2, "offset": 28}


@pytest.mark.parametrize("line,what", [('{"id": "x"}', "missing"), ('{"text": ""}', "non-empty"),
                                       ('{"text": 3}', "non-empty"), ('["text"]', "JSON object")])
def test_missing_or_bad_text(tmp_path, line, what):
    p = _write(tmp_path / "t.jsonl", '{"text": "fine"}\n' + line + "\n")
    with pytest.raises(DataError, match=rf"t\.jsonl:2: .*{what}"):
        read_records(p)


def test_duplicate_ids_rejected(tmp_path):
    p = _write(tmp_path / "d.jsonl", '{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(DataError, match="duplicate id 'a'.*line 1"):
        read_records(p)


def test_bom_and_blank_lines_accepted(tmp_path):
    p = _write(tmp_path / "ok.jsonl", "\ufeff" + json.dumps({"text": "a"}) + "\n\n" + json.dumps({"text": "b"}))
    assert [r["text"] for r in read_records(p)] == ["a", "b"]


def test_load_texts_accepts_dir_jsonl_and_txt(tmp_path):
    write_records(tmp_path / "corpus" / "train.jsonl", [{"text": "t1"}, {"text": "t2"}])
    write_records(tmp_path / "corpus" / "heldout.jsonl", [{"text": "h1"}])
    _write(tmp_path / "one.txt", "plain text")

    assert load_texts(tmp_path / "corpus") == ["t1", "t2"]
    assert load_texts(tmp_path / "corpus", split="heldout") == ["h1"]
    assert load_texts(tmp_path / "corpus" / "train.jsonl") == ["t1", "t2"]
    assert load_texts(tmp_path / "one.txt") == ["plain text"]


def test_load_texts_errors(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="without train.jsonl"):
        load_texts(tmp_path / "empty_dir")
    with pytest.raises(DataError, match="does not exist"):
        load_texts(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="not UTF-8"):
        load_texts(_write(tmp_path / "bad.txt", b"\xff\xfe"))
