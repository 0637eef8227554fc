from __future__ import annotations

from pathlib import Path

import pytest

from sentiloop.input_files import InputFileError, read_texts


def test_reads_txt_csv_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    (tmp_path / "a.csv").write_text('id,body\n1,"hello, world"\n2,bye\n')
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n\n{"text": "y"}\n')
    assert read_texts(tmp_path / "a.txt") == ["one", "two"]
    assert read_texts(tmp_path / "a.csv", "body") == ["hello, world", "bye"]
    assert read_texts(tmp_path / "a.jsonl") == ["x", "y"]


def test_missing_column_and_unknown_type_are_clear(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,body\n1,x\n")
    with pytest.raises(InputFileError, match="no column 'text'"):
        read_texts(tmp_path / "a.csv")
    (tmp_path / "a.xlsx").write_text("")
    with pytest.raises(InputFileError, match="unsupported file type"):
        read_texts(tmp_path / "a.xlsx")
