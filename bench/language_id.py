"""Where language identification gives up: the share of real texts answered ``und``
and the share answered with a wrong language, by confidence threshold.

Every prediction carries the language py3langid tells (``model.language``), or
``und`` when its normalized probability is below ``MIN_CONFIDENCE``. Too high a
threshold flags texts of a trained language as unsupported (a short Spanish
review came back ``und`` at 0.49); too low a one gives words and emoji a random
language. Measured on XLM-T val tweets of the four trained languages (324 each),
on short replies with no language to tell and on short replies in a language, with
every language py3langid knows and with the candidate languages served
(``model.language.CANDIDATE_LANGUAGES``).

    python -m bench.language_id [--thresholds 0.5 0.4 0.3 0.2]

Prints a table and writes bench/results/language-id.json.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.common import machine, write_result, xlmt
from core.logs import configure_logging
from model.language import MIN_CONFIDENCE, identifier

# Replies whose language cannot be told: the answer must stay ``und``.
NO_LANGUAGE = ("ok", "no", "lol", "k", "thx", "yes", "top", "nice", "super", "si", "ja",
               "👍", "😍😍😍", "???", "!!!", "1234", "12345", "bof", "merci", "danke")  # fmt: skip


# Short replies in a language (two to four words), with the language they are in.
SHORT = (("hello there", "en"), ("thank you so much", "en"), ("not good", "en"),
         ("very bad service", "en"), ("love it", "en"), ("great job guys", "en"),
         ("where is my order", "en"), ("still waiting", "en"), ("worst app ever", "en"),
         ("works fine now", "en"), ("hallo zusammen", "de"), ("vielen dank", "de"),
         ("nicht gut", "de"), ("muy bien", "es"), ("gracias por todo", "es"),
         ("no funciona", "es"), ("très bien", "fr"), ("merci beaucoup", "fr"),
         ("pas mal", "fr"), ("c'est nul", "fr"))  # fmt: skip


def measure(identifier: Any, thresholds: list[float]) -> list[dict[str, Any]]:
    """Per threshold: und and wrong shares of XLM-T val, replies given a language,
    short replies told right and wrong."""
    ranked = {
        language: [identifier.classify(example.text) for example in xlmt(language, "val")]
        for language in ("en", "fr", "de", "es")
    }
    replies = [identifier.classify(text) for text in NO_LANGUAGE]
    short = [(identifier.classify(text), language) for text, language in SHORT]
    rows: list[dict[str, Any]] = []
    for threshold in thresholds:
        row: dict[str, Any] = {"threshold": threshold}
        for language, answers in ranked.items():
            told = [code for code, probability in answers if probability >= threshold]
            row[language] = {
                "n": len(answers),
                "und": 1 - len(told) / len(answers),
                "wrong": sum(code != language for code in told) / len(answers),
            }
        row["replies_given_a_language"] = sum(p >= threshold for _, p in replies)
        row["short_right"] = sum(c == lang and p >= threshold for (c, p), lang in short)
        row["short_wrong"] = sum(c != lang and p >= threshold for (c, p), lang in short)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.4, 0.3, 0.2])
    args = parser.parse_args()
    configure_logging()
    sets = {
        "every language py3langid knows": identifier(None),
        "the candidate languages (served)": identifier(),
    }
    served = sets["the candidate languages (served)"]
    results = {name: measure(ident, args.thresholds) for name, ident in sets.items()}
    write_result("language-id", {
        "machine": machine(), "served_threshold": MIN_CONFIDENCE, "rows": results,
        "replies": {text: [code, round(p, 3)] for text, (code, p) in zip(
            NO_LANGUAGE, (served.classify(t) for t in NO_LANGUAGE), strict=True)},
        "short": {text: [*served.classify(text)[:1], language] for text, language in SHORT},
    })  # fmt: skip
    print(f"served threshold: {MIN_CONFIDENCE}")
    for name, rows in results.items():
        print(f"\n{name}")
        print("| threshold | en und / wrong | fr | de | es | replies given a language "
              "| short replies right / wrong |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for row in rows:
            cells = " | ".join(
                f"{row[code]['und']:.1%} / {row[code]['wrong']:.1%}"
                for code in ("en", "fr", "de", "es")
            )
            print(f"| {row['threshold']} | {cells} | "
                  f"{row['replies_given_a_language']} of {len(NO_LANGUAGE)} | "
                  f"{row['short_right']} / {row['short_wrong']} of {len(SHORT)} |")  # fmt: skip


if __name__ == "__main__":
    main()
