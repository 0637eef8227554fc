from __future__ import annotations

from pathlib import Path

import pytest

from sentiloop.input_files import InputFileError, read_texts


def test_reads_txt_csv_and_jsonl_with_the_line_of_each_text(tmp_path: Path) -> None:
    """Empty texts are left out and counted; each text keeps the line it starts on,
    so scores written in order can be matched back to the file."""
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    (tmp_path / "a.csv").write_text('id,body\n1,"hello,\nworld"\n2,\n3,bye\n')
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n\n{"text": " "}\n{"text": "y"}\n')
    txt = read_texts(tmp_path / "a.txt")
    assert (txt.lines, txt.empty) == ([(1, "one"), (3, "two")], 1)
    csv = read_texts(tmp_path / "a.csv", "body")
    assert (csv.lines, csv.empty) == ([(2, "hello,\nworld"), (5, "bye")], 1)
    assert csv.texts == ["hello,\nworld", "bye"]
    jsonl = read_texts(tmp_path / "a.jsonl")
    assert (jsonl.lines, jsonl.empty) == ([(1, "x"), (4, "y")], 2)


def test_missing_column_and_unknown_type_are_clear(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,body\n1,x\n")
    with pytest.raises(InputFileError, match="no column 'text'"):
        read_texts(tmp_path / "a.csv")
    (tmp_path / "a.xlsx").write_text("")
    with pytest.raises(InputFileError, match="unsupported file type"):
        read_texts(tmp_path / "a.xlsx")
