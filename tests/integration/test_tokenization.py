"""ChunkTokenizer gives the model exactly what the transformers tokenizer would, and
so does the tokenizer a model serves with on ONNX Runtime (``serving_tokenizer``:
from the model directory's files, the multilingual vocabulary by ``model.unigram``)."""

import json
import sys
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from core.cache_entry import defect, file_marker
from model import unigram
from model.base_models import e5_tokenizer_file, write_e5_tokenizer
from model.tokenization import UNIGRAM_FILE, ChunkTokenizer, serving_tokenizer, unigram_file
from model.unigram import UnigramEncoder, compact, layout_problem
from tests.support import shared_data

TEXTS = [
    "fine, thanks",
    "",
    "Le service était lent 😡 mais le produit est très bien",
    "word " * 300,  # longer than max_length: truncated like the reference
    "ok",
    "an order that arrived two weeks late and broken, and support never answered",
    "   spaces   around   ",
]
# Hand-written texts where a tokenizer can go wrong: scripts without spaces, emoji
# sequences, every kind of whitespace, the metaspace itself, the special tokens
# written in the text (full-width ones normalize to them), runs of one character
# (ties between segmentations), characters outside the vocabulary.
MULTILINGUAL = [
    "Das Paket kam beschädigt an, und niemand antwortet auf meine E-Mails!!!",
    "¿Dónde está mi pedido? Llevo esperando tres semanas…",
    "サービスは遅かったが、スタッフは親切でした。",
    "服务很慢，但是员工很友好。退款什么时候到账？",
    "배송이 너무 늦어요 ㅠㅠ",
    "Обслуживание было медленным, но персонал — вежливым.",
    "الخدمة كانت بطيئة جداً ولكن الموظفين لطفاء",
    "השירות היה איטי אבל הצוות היה נחמד",
    "सेवा धीमी थी लेकिन कर्मचारी विनम्र थे",
    "บริการช้ามากแต่พนักงานใจดี",
    "Ο σερβιτόρος ήταν ευγενικός αλλά αργός",
    "😀😡👍🔥 👨‍👩‍👧‍👦 🇫🇷🇩🇪 ❤️‍🔥 1️⃣",
    "tab\there\nnew line\r\nand\u3000ideographic\u00a0no-break\u2028line\u2029para\x85nel",
    "\u200bzero\u200bwidth\u200d joiner \ufeffbom\u00adsoft hyphen",
    "\u2581metaspace at the start, in▁the▁middle, and at the end▁ ▁ ▁▁",
    "<s>written</s> <pad> <unk> <mask>tokens<mask> ＜s＞ ＜unk＞ ＜mask＞",
    "sooooo goooood.... !!!!!!!! ?!?!?! hahahahaha lolololol ...... ----- =====",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ ① ﬁ ﬂ Ⅻ ㌀ ｶﾀｶﾅ",
    "e\u0301 a\u0308 n\u0303 combining ḉ ǅ Å",
    "\x00\x01\x1c\x1d\x1e\x1f control \x7f \x9f characters",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝓂𝒶𝓉𝒽 𐍈 𓀀 🜁 \U0010fffd",
    "",
    " ",
    "\n\t ",
    "x" * 700,
    "mixed English et français und Deutsch y español " * 20,
]


def xlmr_tokenizer_dir(destination: Path) -> Path:
    """The tokenizer files of the shipped multilingual model, as transformers saves
    them beside a model it trained or merged (model.shipped.merge_adapter)."""
    source = destination.with_name(destination.name + "-source")
    source.mkdir()
    write_e5_tokenizer(e5_tokenizer_file(), source)
    AutoTokenizer.from_pretrained(str(source), local_files_only=True).save_pretrained(destination)
    return destination


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return xlmr_tokenizer_dir(tmp_path_factory.mktemp("xlmr"))


@pytest.fixture(scope="module")
def xlmr_reference(xlmr_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(xlmr_dir), local_files_only=True)


@pytest.fixture(scope="module")
def xlmr_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the compact vocabulary is made once for the module (beside the export)."""
    return tmp_path_factory.mktemp("xlmr-cache")


def assert_same_chunks(
    tokenizer: ChunkTokenizer, reference: ChunkTokenizer, texts: list[str], size: int
) -> None:
    mine = list(tokenizer.chunks(texts, size))
    theirs = list(reference.chunks(texts, size))
    assert [chunk for chunk, _ in mine] == [chunk for chunk, _ in theirs]
    for (chunk, inputs), (_, expected) in zip(mine, theirs, strict=True):
        assert sorted(inputs) == sorted(expected)
        for name, array in inputs.items():
            assert array.dtype == np.int64
            np.testing.assert_array_equal(
                array, expected[name], err_msg=f"{name} of {[texts[i][:60] for i in chunk]}"
            )


@pytest.mark.parametrize("size", [1, 3, 4, 64])
def test_chunks_match_the_transformers_tokenizer(tiny_model_dir: Path, size: int) -> None:
    reference = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    tokenizer = ChunkTokenizer.from_transformers(reference, max_length=32)
    seen: list[int] = []
    for chunk, inputs in tokenizer.chunks(TEXTS, size):
        assert 1 <= len(chunk) <= size
        seen += chunk
        expected = reference(
            [TEXTS[index] for index in chunk],
            padding=True, truncation=True, max_length=32, return_tensors="np",
        )  # fmt: skip
        assert sorted(inputs) == sorted(expected)
        for name, array in inputs.items():
            assert array.dtype == np.int64
            np.testing.assert_array_equal(array, expected[name], err_msg=name)
    assert sorted(seen) == list(range(len(TEXTS)))


def test_chunks_group_texts_of_similar_length(tiny_model_dir: Path) -> None:
    reference = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    texts = ["a " * n for n in (30, 1, 20, 2, 31, 3)]
    tokenizer = ChunkTokenizer.from_transformers(reference, max_length=64)
    widths = [inputs["input_ids"].shape[1] for _, inputs in tokenizer.chunks(texts, 3)]
    assert widths == sorted(widths)
    assert widths[0] < 10  # the three short texts share a chunk, padded to their own length


def test_a_wordpiece_model_serves_with_tokenizers_from_its_files(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The English model's vocabulary is small: ``tokenizers`` reads it as it is."""
    reference = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    tokenizer = serving_tokenizer(tiny_model_dir, tmp_path, 32, input_names=names)
    assert unigram_file(tiny_model_dir, tmp_path) is None
    assert not list(tmp_path.iterdir())  # nothing cached for it
    expected = ChunkTokenizer.from_transformers(reference, 32)
    assert_same_chunks(tokenizer, expected, TEXTS + MULTILINGUAL, 4)


@pytest.mark.parametrize("max_length", [8, 32, 512])
def test_the_multilingual_model_serves_with_the_light_unigram_exactly(
    xlmr_dir: Path, xlmr_reference: Any, xlmr_cache: Path, max_length: int
) -> None:
    reference = xlmr_reference
    assert reference.model_input_names == ["input_ids", "attention_mask"]
    tokenizer = serving_tokenizer(
        xlmr_dir, xlmr_cache, max_length, input_names=reference.model_input_names
    )
    assert isinstance(tokenizer.encoder, UnigramEncoder)
    expected = ChunkTokenizer.from_transformers(reference, max_length)
    for size in (1, 4, 64):
        assert_same_chunks(tokenizer, expected, MULTILINGUAL + TEXTS, size)


def test_the_compact_vocabulary_is_cached_beside_the_export_and_sealed(
    xlmr_dir: Path, tmp_path: Path
) -> None:
    path = unigram_file(xlmr_dir, tmp_path)
    assert path == tmp_path / UNIGRAM_FILE
    assert defect(file_marker(path), checksums=True) is None
    built = path.stat().st_mtime_ns
    assert unigram_file(xlmr_dir, tmp_path) == path and path.stat().st_mtime_ns == built
    # A truncated file (a full disk, a half copy) is made again, not trusted.
    path.write_text(path.read_text(encoding="utf-8")[:1000], encoding="utf-8")
    assert unigram_file(xlmr_dir, tmp_path) == path
    assert defect(file_marker(path), checksums=True) is None
    data = json.loads(path.read_text(encoding="utf-8"))
    assert len(data["pieces"]) == len(data["scores"]) == 250_002


def test_other_layouts_keep_tokenizers(xlmr_dir: Path) -> None:
    spec = json.loads((xlmr_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert layout_problem(spec) is None
    # The e5 package's own file (as the base encoder's directory holds it) collapses
    # runs of spaces in its normalizer: another layout, which tokenizers keeps.
    packaged = json.loads(e5_tokenizer_file().read_text(encoding="utf-8"))
    assert layout_problem(packaged) == "its normalizer is not a precompiled charsmap alone"
    assert "falls back to bytes" in str(
        layout_problem({**spec, "model": {**spec["model"], "byte_fallback": True}})
    )


def test_the_word_cache_stays_bounded_and_exact(
    xlmr_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(unigram, "CACHED_WORDS", 8)
    spec = json.loads((xlmr_dir / "tokenizer.json").read_text(encoding="utf-8"))
    light = UnigramEncoder(compact(spec), 512)
    reference = Tokenizer.from_file(str(xlmr_dir / "tokenizer.json"))
    texts = [f"word{n} and again word{n % 7}" for n in range(100)] * 2
    for text in texts:
        assert light.encode(text)[0] == reference.encode(text).ids
        assert len(light._recent) <= 8 and len(light._older) <= 8


def code_points() -> list[str]:
    """Every code point where whitespace, control and format characters or the
    normalizer could split words differently, and a sample of all the others."""
    chosen = []
    for point in range(sys.maxunicode + 1):
        character = chr(point)
        if 0xD800 <= point <= 0xDFFF:
            continue
        category = unicodedata.category(character)
        special = category[0] == "Z" or category in ("Cc", "Cf") or character.isspace()
        if point < 0x3400 or point % 61 == 0 or special:
            chosen.append(character)
    return chosen


def test_every_kind_of_character_tokenizes_alike(xlmr_dir: Path) -> None:
    """Against tokenizers itself, each character alone, inside a word, doubled and
    beside a space (unknown characters fuse, whitespace splits, the normalizer maps)."""
    reference = Tokenizer.from_file(str(xlmr_dir / "tokenizer.json"))
    reference.enable_truncation(512)
    spec = json.loads((xlmr_dir / "tokenizer.json").read_text(encoding="utf-8"))
    light = UnigramEncoder(compact(spec), 512)
    characters = code_points()
    assert 25_000 < len(characters) < 40_000
    for start in range(0, len(characters), 16):
        group = characters[start : start + 16]
        text = " ".join(f"a{c}b{c}{c} {c}x" for c in group)
        if light.encode(text)[0] != reference.encode(text).ids:
            for c in group:
                single = f"a{c}b{c}{c} {c}x"
                assert light.encode(single)[0] == reference.encode(single).ids, hex(ord(c))


# Slow: ~108,000 texts, each tokenized by two tokenizers at the serving length (and
# every fourth again at a short length).
@pytest.mark.slow
def test_every_text_of_the_benchmark_corpora_tokenizes_alike(
    xlmr_dir: Path, xlmr_reference: Any, xlmr_cache: Path
) -> None:
    """The light tokenizer the multilingual model serves with gives the ids and masks
    of the transformers tokenizer on every text of the corpora (all splits and
    languages), as sent and wrapped by the template, at the serving max length; and on
    every fourth text at a short one that truncates most of them (truncation is the
    same cut whatever the text; all of them made the test 34 s instead of 23)."""
    from training.corpora import XLMT_LANGUAGES, sst2, tweets, xlmt

    data = shared_data()
    texts = [e.text for split in ("train", "test") for e in tweets(data, split)]
    texts += [e.text for split in ("train", "dev") for e in sst2(data, split)]
    for language in XLMT_LANGUAGES:
        texts += [e.text for split in ("train", "val") for e in xlmt(data, language, split)]
    assert len(texts) > 100_000
    texts += [f"Customer message: {text}" for text in texts[::10]]
    reference = xlmr_reference
    for max_length, every in ((128, 1), (24, 4)):
        tokenizer = serving_tokenizer(
            xlmr_dir, xlmr_cache, max_length, input_names=reference.model_input_names
        )
        assert isinstance(tokenizer.encoder, UnigramEncoder)
        expected = ChunkTokenizer.from_transformers(reference, max_length)
        assert_same_chunks(tokenizer, expected, texts[::every], 64)
