"""A light, exact stand-in for the ``tokenizers`` Unigram model of a SentencePiece
vocabulary: XLM-R's 250,002 pieces, the tokenizer of the multilingual models.

``tokenizers`` keeps such a vocabulary in a byte trie that holds ~270 MB in every
process (``tokenizers.models.Unigram`` alone, measured), more than the int8 model's
ONNX Runtime session. ``UnigramEncoder`` keeps the pieces in a dict (~45 MB) and
runs the search of ``tokenizers``' Unigram model in Python: Viterbi over the pieces
that match at each character, scores summed in f64 in the same order, a tie kept by
the path found first, runs of unknown characters fused into one token. SentencePiece's
own library was measured first (57 MB, 8x faster), but it sums the scores in
float32: it broke 114 near ties differently in the 107,887 texts of the benchmark
corpora.

The search costs ~20 µs of CPU for a word of 8 characters; a cache of the words
seen lately (two generations of 32,768) spares it for most words. CPU per text
rendered by the v1 template, measured against ``tokenizers`` on 2 shared cores:
16 µs instead of 52-74 once the words are cached; the same (76 vs 74 µs) over one
pass through the 27,480 tweets of tweet_sentiment_extraction train from an empty
cache; 23% more (146 vs 119 µs) over the 7,356 XLM-T tweets in four languages, and
2-3x more for texts whose words are all new (~200 µs, a few % of the shipped
model's ~2.6 ms a text).

What comes around the model is replicated for one layout, the one transformers
saves for XLM-R tokenizers (``layout_problem`` tells any other apart, which then
keeps ``tokenizers``): the special tokens cut out of the raw text first,
``tokenizers``' own normalizer (the precompiled charsmap), a split at Unicode
whitespace, the metaspace prefix and split, truncation, then the template's special
tokens. Tests compare both on every text of the benchmark corpora, on texts of many
scripts and on every code point (tests/integration/test_tokenization.py).

The vocabulary is read from a compact file (``compact``) cached beside the model's
ONNX export: JSON of a few MB that loads in a fraction of a second, where parsing
tokenizer.json takes a second or more.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

FORMAT = 1
METASPACE = "\u2581"
PRE_TOKENIZER = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "WhitespaceSplit"},
        {"type": "Metaspace", "replacement": METASPACE, "prepend_scheme": "always", "split": True},
    ],
}
# What tokenizers' WhitespaceSplit splits at: Rust's char::is_whitespace (the Unicode
# White_Space property; Python's str.split also splits at U+001C..U+001F).
_WHITESPACE = re.compile(
    "[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+"
)
_METASPACE_WORDS = re.compile(f"{METASPACE}[^{METASPACE}]*")
# tokenizers' K_UNK_PENALTY: an unknown character scores the lowest piece's score less this.
_UNKNOWN_PENALTY = 10.0
# Words whose pieces one generation of the cache remembers (two generations: ~15 MB).
CACHED_WORDS = 1 << 15


def _template(spec: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    """The ids of the special tokens the post-processor puts before and after a text."""
    processor = spec["post_processor"]
    special = processor.get("special_tokens", {})
    before: list[int] = []
    after: list[int] = []
    seen_text = False
    for item in processor["single"]:
        if "Sequence" in item:
            seen_text = True
        else:
            (after if seen_text else before).extend(special[item["SpecialToken"]["id"]]["ids"])
    return before, after


def layout_problem(spec: Mapping[str, Any]) -> str | None:
    """Why ``UnigramEncoder`` cannot stand in for the tokenizer ``spec`` (the content of
    a tokenizer.json), or None when it can."""
    model = spec.get("model") or {}
    if model.get("type") != "Unigram":
        return f"its model is {model.get('type')!r}, not Unigram"
    if model.get("byte_fallback") or model.get("unk_id") is None:
        return "its Unigram model falls back to bytes or has no unknown token"
    if (spec.get("normalizer") or {}).get("type") != "Precompiled":
        return "its normalizer is not a precompiled charsmap alone"
    if spec.get("pre_tokenizer") != PRE_TOKENIZER:
        return "its pre-tokenizer is not a whitespace split then a metaspace"
    processor = spec.get("post_processor") or {}
    single = processor.get("single", [])
    texts = sum("Sequence" in item for item in single)
    if processor.get("type") != "TemplateProcessing" or texts != 1:
        return "its post-processor is not a template around one text"
    if any(part.get("type_id", 0) != 0 for item in single for part in item.values()):
        return "its template gives a text other token type ids than 0"
    for token in spec.get("added_tokens", []):
        if any(token.get(flag) for flag in ("normalized", "lstrip", "rstrip", "single_word")):
            return f"its added token {token.get('content')!r} is normalized or strips spaces"
    return None


def compact(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What ``UnigramEncoder`` needs of a tokenizer.json that ``layout_problem`` accepts."""
    vocab = spec["model"]["vocab"]
    before, after = _template(spec)
    return {
        "format": FORMAT,
        "pieces": [piece for piece, _ in vocab],
        "scores": [float(score) for _, score in vocab],
        "unk_id": int(spec["model"]["unk_id"]),
        "added_tokens": {token["content"]: int(token["id"]) for token in spec["added_tokens"]},
        "precompiled_charsmap": spec["normalizer"]["precompiled_charsmap"],
        "prefix": before,
        "suffix": after,
    }


class UnigramEncoder:
    """Token ids of a text, as ``tokenizers.Tokenizer.encode`` gives them with
    truncation to ``max_length`` (special tokens included)."""

    def __init__(self, data: Mapping[str, Any], max_length: int) -> None:
        """``data``: the ``compact`` form of the tokenizer."""
        from tokenizers.normalizers import Precompiled

        if data.get("format") != FORMAT:
            raise ValueError(f"unknown compact Unigram format {data.get('format')!r}")
        pieces: list[str] = data["pieces"]
        self._scores: list[float] = data["scores"]
        # A piece listed twice maps to its last id, as in tokenizers.
        self._ids = {piece: index for index, piece in enumerate(pieces)}
        self._longest = max(map(len, pieces))
        self._unk_id = int(data["unk_id"])
        self._unk_score = min(self._scores) - _UNKNOWN_PENALTY
        self._added: dict[str, int] = dict(data["added_tokens"])
        # Longest first: at a position, the longest added token that matches is cut out.
        alternatives = sorted(self._added, key=len, reverse=True)
        self._added_pattern = (
            re.compile("(" + "|".join(map(re.escape, alternatives)) + ")") if alternatives else None
        )
        charsmap = base64.b64decode(data["precompiled_charsmap"])
        self._normalize = Precompiled(charsmap).normalize_str
        self._prefix: list[int] = list(data["prefix"])
        self._suffix: list[int] = list(data["suffix"])
        self._room = max_length - len(self._prefix) - len(self._suffix)
        if self._room < 0:
            raise ValueError(f"max_length {max_length} leaves no room for the special tokens")
        # The pieces of the words seen lately: those of the current generation of
        # words and of the one before, whose words move up when seen again.
        self._recent: dict[str, list[int]] = {}
        self._older: dict[str, list[int]] = {}

    def token_id(self, token: str) -> int | None:
        added = self._added.get(token)
        return added if added is not None else self._ids.get(token)

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids and token type ids of ``text``."""
        ids: list[int] = []
        if self._added_pattern is not None and self._added_pattern.search(text):
            for index, part in enumerate(self._added_pattern.split(text)):
                if index % 2:
                    ids.append(self._added[part])
                elif part:
                    self._encode_segment(part, ids)
        else:
            self._encode_segment(text, ids)
        ids = [*self._prefix, *ids[: self._room], *self._suffix]
        return ids, [0] * len(ids)

    def _encode_segment(self, segment: str, ids: list[int]) -> None:
        recent = self._recent
        for word in _WHITESPACE.split(self._normalize(segment)):
            if not word:
                continue
            pieces = recent.get(word)
            if pieces is None:
                pieces = self._older.get(word)
                if pieces is None:
                    pieces = self._word_ids(word)
                if len(recent) >= CACHED_WORDS:  # a new generation: the words used since stay
                    self._older, self._recent = recent, {}
                    recent = self._recent
                recent[word] = pieces
            ids += pieces

    def _word_ids(self, word: str) -> list[int]:
        """A word between whitespace: prefixed with the metaspace unless it starts with
        one, and cut before every metaspace inside it."""
        if word[0] != METASPACE:
            word = METASPACE + word
        if METASPACE not in word[1:]:
            return self._viterbi(word)
        ids: list[int] = []
        for part in _METASPACE_WORDS.findall(word):
            ids += self._viterbi(part)
        return ids

    def _viterbi(self, word: str) -> list[int]:
        """The best-scoring pieces of ``word`` (tokenizers' ``encode_optimized``)."""
        size = len(word)
        get, scores, longest = self._ids.get, self._scores, self._longest
        unk_id = self._unk_id
        best = [0.0] * (size + 1)
        starts = [-1] * (size + 1)
        chosen = [0] * (size + 1)
        for start in range(size):
            so_far = best[start]
            stop = start + longest if start + longest < size else size
            known = False
            for end in range(start + 1, stop + 1):
                piece = get(word[start:end])
                if piece is None:
                    continue
                if end == start + 1:
                    known = True
                score = scores[piece] + so_far
                if starts[end] < 0 or score > best[end]:
                    best[end] = score
                    starts[end] = start
                    chosen[end] = piece
            if not known:
                end = start + 1
                score = self._unk_score + so_far
                if starts[end] < 0 or score > best[end]:
                    best[end] = score
                    starts[end] = start
                    chosen[end] = unk_id
        ids: list[int] = []
        end, unknown_end = size, -1
        while end > 0:
            start = starts[end]
            if chosen[end] == unk_id:
                if unknown_end < 0:
                    unknown_end = end
            else:
                if unknown_end >= 0:  # a run of unknown characters, fused
                    ids.append(get(word[end:unknown_end], unk_id))
                    unknown_end = -1
                ids.append(chosen[end])
            end = start
        if unknown_end >= 0:
            ids.append(get(word[:unknown_end], unk_id))
        ids.reverse()
        return ids
