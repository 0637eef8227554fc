"""How much a text's served scores move with the texts it is batched with.

The served int8 file quantizes its activations at run time, one scale per model
call (ONNX Runtime's ``DynamicQuantizeLinear``), so the other texts of a call
(their values and the padding they bring) change a text's scores. Under load the
batcher puts whatever requests arrive together into one call, so this is what a
client sees: the same text scored twice can differ.

For ``--texts`` tweets of the test split, each is scored alone and then in a call
with ``--mates`` random other tweets, through the loader serving uses (length-sorted
chunks, as served); printed: the largest change of any class score (median, p90,
p99, max) and how many answers (the top label) changed. ``--quantize none`` runs
the fp32 file for contrast.

    python -m bench.batch_dependence [--texts 300] [--mates 7] [--quantize int8|none]

Prints the figures and writes bench/results/batch-dependence-<quantize>.json.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine, tweets, write_result
from core.logs import configure_logging
from core.settings import Settings
from model.loader import load_classifier
from model.shipped import shipped_for_base
from model.templates import TemplateRegistry

logger = logging.getLogger(__name__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--mates", type=int, default=7, help="other texts in the call")
    parser.add_argument("--quantize", choices=["int8", "none"], default="int8")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    configure_logging()
    with tempfile.TemporaryDirectory(prefix="sentiloop-batch-dependence-") as home:
        settings = Settings(home=Path(home), quantize=args.quantize)
        shipped = shipped_for_base(settings.base_model)
        assert shipped is not None, "no shipped model for the default base model"
        classifier, _ = load_classifier(settings, shipped.version)
        template = TemplateRegistry.load(settings.resolved_templates_dir).get(
            shipped.card["template_versions"][0]
        )
    rows = [example.text for example in tweets("test")]
    rng = random.Random(args.seed)
    targets = rng.sample(rows, args.texts)
    changes: list[float] = []
    flipped = 0
    for text in targets:
        alone = classifier.predict([template.render(text)], template)[0]
        mates = [template.render(mate) for mate in rng.sample(rows, args.mates)]
        together = classifier.predict([template.render(text), *mates], template)[0]
        changes.append(max(abs(together[label] - score) for label, score in alone.items()))
        flipped += max(together, key=together.__getitem__) != max(alone, key=alone.__getitem__)
    spread = np.asarray(changes)
    result: dict[str, Any] = {
        "machine": machine(),
        "arguments": vars(args),
        "runtime": classifier.runtime,
        "largest_score_change": {
            "median": round(float(np.median(spread)), 4),
            "p90": round(float(np.percentile(spread, 90)), 4),
            "p99": round(float(np.percentile(spread, 99)), 4),
            "max": round(float(spread.max()), 4),
        },
        "answers_changed": flipped,
        "texts": args.texts,
    }
    write_result(f"batch-dependence-{args.quantize}", result)
    figures = result["largest_score_change"]
    print(f"{classifier.runtime}: a tweet scored alone, then with {args.mates} other tweets "
          f"in one call ({args.texts} tweets): largest score change median "
          f"{figures['median']:.4f}, p90 {figures['p90']:.4f}, p99 {figures['p99']:.4f}, "
          f"max {figures['max']:.4f}; answers changed {flipped} of {args.texts}")  # fmt: skip


if __name__ == "__main__":
    main()
