from __future__ import annotations

from model.language import (
    CANDIDATE_LANGUAGES,
    ISO_639_1,
    METRIC_LANGUAGES,
    OTHER,
    UNDETERMINED,
    LanguageDetector,
    is_supported,
    metric_language,
)

DETECTOR = LanguageDetector()


def test_common_languages_are_detected_as_iso_639_1() -> None:
    texts = {
        "en": "My order number is 12345, when will it ship?",
        "de": "Das Produkt ist schrecklich",
        "fr": "C'est nul, je suis très déçu",
        "es": "Mi pedido llegó tarde y roto",
        "ja": "最悪の商品でした",
        "zh": "这个产品很好，我很满意",
        "pt": "Muito bom, recomendo",
    }
    assert {code: DETECTOR.detect(text) for code, text in texts.items()} == {
        code: code for code in texts
    }


def test_texts_too_short_or_without_words_are_undetermined() -> None:
    for text in ("ok", "12345", "!!!", "👍", "yes", "merci", "danke", "😍😍😍", "thx"):
        assert DETECTOR.detect(text) == UNDETERMINED, text


def test_a_short_review_in_a_trained_language_is_not_undetermined() -> None:
    """A new user's Spanish review came back ``und`` (Spanish 0.49, Galician 0.23,
    Portuguese 0.18), so it was counted as an unsupported language."""
    assert DETECTOR.detect("¡Me encanta este restaurante, volveré pronto!") == "es"
    assert DETECTOR.detect("Me encanta este restaurante, volveré pronto") == "es"


def test_short_replies_are_told_among_the_languages_the_models_read() -> None:
    """A new user's "hello there" was Sesotho (st 0.43 among py3langid's 140
    languages), a language outside XLM-R's, counted as unsupported; a text in a
    language outside the candidates is und or a close relative, never a trained one."""
    assert DETECTOR.detect("hello there") == "en"
    assert DETECTOR.detect("thank you so much") == "en"
    assert DETECTOR.detect("gracias por todo") == "es"
    assert DETECTOR.detect("merci beaucoup") == "fr"
    assert CANDIDATE_LANGUAGES <= ISO_639_1 and {"en", "fr", "de", "es"} <= CANDIDATE_LANGUAGES
    for outside in ("Il-servizz kien tajjeb ħafna u l-ikel delizzjuż",  # Maltese
                    "Merci vill mol fir d'Hëllef",  # Luxembourgish
                    "Murakoze cyane ku bufasha bwanyu"):  # Kinyarwanda  # fmt: skip
        told = DETECTOR.detect(outside)
        assert told not in {"en", "fr", "de", "es"}, outside
        assert told == UNDETERMINED or told in CANDIDATE_LANGUAGES, outside


def test_metric_labels_stay_bounded() -> None:
    assert metric_language("de") == "de" and metric_language(UNDETERMINED) == UNDETERMINED
    assert metric_language("xh") == OTHER and "xh" not in METRIC_LANGUAGES


def test_support_follows_the_model_languages() -> None:
    assert is_supported("de", ["en", "de"]) and not is_supported("ja", ["en", "de"])
    assert is_supported("ja", None)  # a model that recorded no languages


def test_an_undetermined_language_is_not_supported() -> None:
    """Issue 24, item 8: "ok" or "12345" (und) is never flagged supported."""
    assert not is_supported(UNDETERMINED, ["en"])
    assert not is_supported(UNDETERMINED, None)


def test_telling_fewer_languages_holds_less_memory_than_all() -> None:
    """py3langid's own set_languages kept the whole model beside the candidates'
    copy: a model process grew 17 MiB, past issue 23's 400 MiB. Each identifier is
    loaded in a fresh interpreter and its growth of RSS compared."""
    import subprocess
    import sys

    def growth(candidates: str) -> float:
        script = (
            "import gc\n"
            "def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
            "import numpy\n"
            "from model import language\n"
            "before = rss()\n"
            f"told = language.identifier({candidates})\n"
            "gc.collect(); told.classify('hello there')\n"
            "print(rss() - before)\n"
        )
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return int(run.stdout) / 2**20

    every, candidates = growth("None"), growth("")
    assert candidates < every - 3, (candidates, every)  # the model is 27 MiB, 10 dropped
