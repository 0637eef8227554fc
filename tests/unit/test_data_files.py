from __future__ import annotations

from pathlib import Path

import pytest

from training.examples import DataFileError, load_examples, parse_label_map


def test_loads_jsonl_csv_and_tsv(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "good", "label": 2}\n{"text": " ", "label": 0}\n')
    (tmp_path / "a.csv").write_text('review,label\n"bad, really",negative\n')
    (tmp_path / "a.tsv").write_text("label\tsentence\r\n0\tmeh\r\n")
    assert [(e.text, e.label) for e in load_examples(tmp_path / "a.jsonl")] == [
        ("good", "positive")
    ]
    assert [(e.text, e.label) for e in load_examples(tmp_path / "a.csv")] == [
        ("bad, really", "negative")
    ]
    assert [(e.text, e.label) for e in load_examples(tmp_path / "a.tsv")] == [("meh", "negative")]


def test_label_map_for_binary_data(tmp_path: Path) -> None:
    (tmp_path / "b.tsv").write_text("label\tcontent\n0\tno\n1\tyes\n")
    mapping = parse_label_map("0=negative,1=positive")
    assert [e.label for e in load_examples(tmp_path / "b.tsv", label_map=mapping)] == [
        "negative",
        "positive",
    ]
    (tmp_path / "c.tsv").write_text("label\tcontent\n2\tmaybe\n")
    with pytest.raises(DataFileError, match="not in the label map"):
        load_examples(tmp_path / "c.tsv", label_map=mapping)


def test_bad_files_are_explained(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("body,label\nx,positive\n")
    with pytest.raises(DataFileError, match="no text column"):
        load_examples(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("text,label\nx,mixed\n")
    with pytest.raises(DataFileError, match="row 1"):
        load_examples(tmp_path / "b.csv")
    with pytest.raises(DataFileError, match="RAW=LABEL"):
        parse_label_map("0negative")
