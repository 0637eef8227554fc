from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.examples import DataFileError, load_examples, parse_label_map


def pairs(path: Path, **options: object) -> list[tuple[str, str]]:
    return [(e.text, e.label) for e in load_examples(path, **options).examples]  # type: ignore[arg-type]


def test_loads_jsonl_csv_tsv_and_parquet(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "good", "label": 2}\n{"text": " ", "label": 0}\n')
    (tmp_path / "a.csv").write_text('review,label\n"bad, really",negative\n')
    (tmp_path / "a.tsv").write_text("label\tsentence\r\n0\tmeh\r\n")
    pq.write_table(
        pa.table({"text": ["fine", ""], "label": ["Neutral", "positive"]}), tmp_path / "a.parquet"
    )
    loaded = load_examples(tmp_path / "a.jsonl")
    assert [(e.text, e.label) for e in loaded.examples] == [("good", "positive")]
    assert (loaded.rows, dict(loaded.dropped)) == (2, {"empty_text": 1})
    assert pairs(tmp_path / "a.csv") == [("bad, really", "negative")]
    assert pairs(tmp_path / "a.tsv") == [("meh", "negative")]
    parquet = load_examples(tmp_path / "a.parquet")
    assert [(e.text, e.label) for e in parquet.examples] == [("fine", "neutral")]
    assert parquet.dropped["empty_text"] == 1


def test_headerless_star_ratings_by_column_position(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text("101,Great product,5\n102,Broke after a day,1\n103,It is a phone,3\n104,,4\n")
    stars = parse_label_map("stars5")
    assert pairs(path, header=False, text_field="2", label_field="3", label_map=stars) == [
        ("Great product", "positive"),
        ("Broke after a day", "negative"),
        ("It is a phone", "neutral"),
    ]
    with pytest.raises(DataFileError, match=r"--label-field '9' is no column position \(1 to 3\)"):
        load_examples(path, header=False, text_field="2", label_field="9")


def test_a_headerless_file_read_with_a_header_suggests_no_header(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text("101,Great product,5\n102,Broke after a day,1\n")
    with pytest.raises(DataFileError) as caught:
        load_examples(path)
    message = str(caught.value)
    assert "no text column" in message and "--no-header --text-field 2 --label-field 3" in message


def test_unknown_labels_are_listed_with_a_preset_to_fix_them(tmp_path: Path) -> None:
    path = tmp_path / "stars.csv"
    path.write_text("text,label\na,5\nb,4\nc,5\nd,1\n")
    with pytest.raises(DataFileError) as caught:
        load_examples(path)
    message = str(caught.value)
    assert "3 rows have labels that are not negative, neutral or positive" in message
    assert "'5' (2 rows, first row 2)" in message and "'4' (1 rows, first row 3)" in message
    assert "--label-map stars5" in message and "--drop-unknown-labels" in message
    dropped = load_examples(path, drop_unknown_labels=True)
    assert [e.label for e in dropped.examples] == ["neutral"]  # "1": the class id
    assert dropped.dropped["unknown_label"] == 3


def test_label_maps_presets_and_pairs(tmp_path: Path) -> None:
    (tmp_path / "b.tsv").write_text("label\tcontent\n0\tno\n1\tyes\n")
    assert [
        label for _, label in pairs(tmp_path / "b.tsv", label_map=parse_label_map("binary"))
    ] == [
        "negative",
        "positive",
    ]
    assert parse_label_map("0=negative,1=positive") == parse_label_map("binary")
    (tmp_path / "c.tsv").write_text("label\tcontent\n2\tmaybe\n")
    with pytest.raises(DataFileError, match="'2' \\(1 rows, first row 2\\)"):
        load_examples(tmp_path / "c.tsv", label_map=parse_label_map("binary"))
    with pytest.raises(DataFileError, match="RAW=LABEL, or name a preset: stars5"):
        parse_label_map("0negative")


def test_zero_one_labels_without_a_map_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "b.csv").write_text("text,label\nno,0\nyes,1\n")
    with caplog.at_level(logging.WARNING, logger="training"):
        load_examples(tmp_path / "b.csv")
    assert "--label-map binary" in caplog.text


def test_bad_files_are_explained(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match=r"nope\.csv: no such file"):
        load_examples(tmp_path / "nope.csv")
    (tmp_path / "a.xlsx").write_text("")
    with pytest.raises(
        DataFileError, match=r"unsupported file type '\.xlsx'; use .csv, .tsv, .jsonl or .parquet"
    ):
        load_examples(tmp_path / "a.xlsx")
    (tmp_path / "b.csv").write_text("text,stars\nx,5\n")
    with pytest.raises(DataFileError, match="no column 'label' for --label-field"):
        load_examples(tmp_path / "b.csv")
