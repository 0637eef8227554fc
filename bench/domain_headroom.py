"""How much the issue-20 domain can gain at all from the shipped model's features.

``bench.flywheel --scenario domain`` teaches the shipped model a team's short
review snippets (SST-2 train phrases of 2-5 words, binary, judged on the 3-class
answer) from ~1,200 labels. This measures the room it has: the correction
(``training.correction``, the default recipe) fitted exactly as training fits it,
on the champion's fp32 features, with ``--rows`` labelled snippets (933 is what
1,200 labels leave to training after the feedback holdout and validation split),
each on ``--samples`` disjoint random draws, judged on the flywheel's 800
held-out snippets with and without its gate. Optionally (``--fine-tune-rows``) a
fine-tune of every encoder weight on that many snippets, the upper end of what
forgetting buys, alone and averaged with the correction of the same rows (two
encoders served). If the correction stops gaining as the labels grow tenfold, its
ceiling is the champion's features, not the number of labels.

With ``--alternatives``, four other ways to read the same champion on each
draw of the smallest size, to see whether the ceiling is the linear residual's or
the features': a linear residual over richer features (the pooled states of the
upper half of the layers, concatenated), today's residual with a 0/1 bag of the
labelled rows' tokens beside the features (the domain's words), a small MLP
residual over today's features, and today's residual blended with a vote of the
nearest labelled rows (k-nearest neighbours on a middle layer's pooled states).

    python -m bench.domain_headroom [--rows 933 2000 4000 12000] [--fine-tune-rows N]
                                    [--alternatives]

Prints a table and writes bench/results/domain-headroom.json. fp32 on torch (the
served int8 file answers within a point of it on these snippets:
``bench.quantization``).
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import machine, sst2, write_result
from core.logs import configure_logging
from core.settings import Settings
from model import correction_modules
from model.labels import LABEL_TO_ID
from model.shipped import materialize, shipped_for_base
from model.templates import TemplateRegistry
from model.tokenization import ChunkTokenizer
from training.config import TrainingArguments
from training.correction import features_of, fit_module, fit_residual, radius
from training.evaluate import evaluate
from training.examples import Example
from training.finetune import class_weights, fine_tune

logger = logging.getLogger(__name__)

THREE_CLASS = ("negative", "neutral", "positive")
BINARY = ("negative", "positive")
HOLDOUT = 800  # as bench.flywheel --scenario domain


def domain_figures(rows: list[Example], logits: torch.Tensor) -> dict[str, float]:
    """The flywheel's domain figure: the 3-class answer, F1 over the two classes."""
    probabilities = torch.softmax(logits, dim=-1).tolist()
    scores = [dict(zip(THREE_CLASS, row, strict=True)) for row in probabilities]
    metrics = evaluate([e.label for e in rows], scores, labels=THREE_CLASS)
    answers = logits.argmax(dim=-1)
    return {
        "macro_f1": round(sum(metrics["per_class"][c]["f1"] for c in BINARY) / 2, 4),
        "accuracy": round(metrics["accuracy"], 4),
        "neutral_answers": round(float((answers == LABEL_TO_ID["neutral"]).float().mean()), 4),
    }


@torch.inference_mode()
def pooled_layers(model: Any, tokenizer: ChunkTokenizer, texts: list[str]) -> torch.Tensor:
    """Every layer's normalized mean-pooled states of ``texts``: [texts, layers + 1, hidden]."""
    layers: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    for chunk, inputs in tokenizer.chunks(texts, 16):
        tensors = {name: torch.from_numpy(array) for name, array in inputs.items()}
        states = model(**tensors, output_hidden_states=True).hidden_states
        mask = tensors["attention_mask"].unsqueeze(-1).float()
        stacked = torch.stack([(h * mask).sum(1) / mask.sum(1) for h in states], dim=1)
        for row, index in enumerate(chunk):
            layers[index] = torch.nn.functional.normalize(stacked[row], dim=-1)
    return torch.stack(layers)


def fit_mlp_residual(
    logits: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    args: TrainingArguments,
    hidden: int = 256,
) -> torch.nn.Module:
    """As ``fit_residual``, with one hidden layer (GELU, dropout 0.1), its output from zero
    (in eval mode when returned)."""
    torch.manual_seed(args.seed)
    output = torch.nn.Linear(hidden, len(THREE_CLASS))
    torch.nn.init.zeros_(output.weight)
    torch.nn.init.zeros_(output.bias)
    net = torch.nn.Sequential(
        torch.nn.Dropout(0.1),
        torch.nn.Linear(features.shape[1], hidden),
        torch.nn.GELU(),
        output,
    )
    fit_module(net, logits, features, labels, weights, args)
    return net


def neighbour_vote(
    keys: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, k: int = 10
) -> torch.Tensor:
    """Log of the similarity-weighted label shares of each query's ``k`` nearest keys
    (smoothed so no class is impossible)."""
    nearest = (queries @ keys.T).topk(min(k, len(keys)), dim=-1)
    weights = torch.softmax(nearest.values * 20, dim=-1).unsqueeze(-1)
    votes = torch.nn.functional.one_hot(labels[nearest.indices], len(THREE_CLASS)).float()
    return torch.log((weights * votes).sum(dim=1) + 0.05)


def token_bag(token_ids: list[list[int]], rows: torch.Tensor) -> torch.Tensor:
    """Every text's words as 0/1 over the tokens that ``rows`` use: [texts, tokens]."""
    vocabulary = {
        t: j for j, t in enumerate(sorted({t for i in rows.tolist() for t in token_ids[i]}))
    }
    bag = torch.zeros(len(token_ids), len(vocabulary))
    for text, ids in enumerate(token_ids):
        for token in ids:
            if token in vocabulary:
                bag[text, vocabulary[token]] = 1.0
    return bag


def alternatives(
    holdout: list[Example],
    rows: torch.Tensor,
    logits: torch.Tensor,
    features: torch.Tensor,
    layers: torch.Tensor,
    token_ids: list[list[int]],
    labels: torch.Tensor,
    weights: torch.Tensor,
    args: TrainingArguments,
) -> dict[str, dict[str, float]]:
    """Each alternative reading of the champion fitted on ``rows``, judged ungated on
    the first ``HOLDOUT`` rows (the holdout), beside the linear residual of today."""
    held = torch.arange(HOLDOUT)
    upper = layers.shape[1] // 2
    richer = torch.cat([layers[:, upper:].flatten(1), features[:, features.shape[1] // 2 :]], 1)
    lexical = torch.cat([features, token_bag(token_ids, rows)], 1)
    linear, _ = fit_residual(logits[rows], features[rows], labels[rows], weights, args)
    wide, _ = fit_residual(logits[rows], richer[rows], labels[rows], weights, args)
    words, _ = fit_residual(logits[rows], lexical[rows], labels[rows], weights, args)
    mlp = fit_mlp_residual(logits[rows], features[rows], labels[rows], weights, args)
    middle = layers[:, upper]
    with torch.no_grad():
        today = logits[held] + linear(features[held])
        fitted = {
            "linear residual (today)": today,
            f"linear residual, layers {upper}-{layers.shape[1] - 1} pooled + CLS": logits[held]
            + wide(richer[held]),
            "linear residual + the labelled rows' words (token bag)": logits[held]
            + words(lexical[held]),
            "MLP residual (256 hidden)": logits[held] + mlp(features[held]),
            f"today's + 10-nearest vote (layer {upper})": torch.log_softmax(today, -1)
            + neighbour_vote(middle[rows], labels[rows], middle[held]),
        }
    return {name: domain_figures(holdout, scores) for name, scores in fitted.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[933, 2000, 4000, 12000])
    parser.add_argument("--samples", type=int, default=3,
                        help="disjoint draws per size, as many as --pool holds")  # fmt: skip
    parser.add_argument("--pool", type=int, default=12000, help="snippets read for the draws")
    parser.add_argument("--fine-tune-rows", type=int, default=0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--alternatives",
        action="store_true",
        help="also fit three other readings of the champion (smallest size)",
    )
    args = parser.parse_args()
    configure_logging()
    torch.manual_seed(args.seed)
    settings = Settings()
    shipped = shipped_for_base("multilingual-e5-small")
    assert shipped is not None
    model_dir = materialize(shipped, settings.cache_dir)
    template = TemplateRegistry.load(settings.resolved_templates_dir).get("v1")
    # The flywheel's split: the same seed, the same shuffle, the first 800 held out.
    pool = [e for e in sst2("train") if 2 <= len(e.text.split()) <= 5]
    random.Random(args.seed).shuffle(pool)
    holdout, pool = pool[:HOLDOUT], pool[HOLDOUT:]
    pool = pool[: max(args.pool, *args.rows, args.fine_tune_rows)]

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), local_files_only=True
    ).eval()
    tokenizer = ChunkTokenizer.from_transformers(
        AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True), settings.max_length
    )
    gate_layer = correction_modules.gate_layer_of(model)
    started = time.perf_counter()
    texts = [template.render(e.text) for e in holdout + pool]
    logits, gates, features = features_of(model, tokenizer, texts, gate_layer, "cpu")
    logger.info("features of %d texts in %.0f s", len(texts), time.perf_counter() - started)
    h_logits, h_gates, h_features = logits[:HOLDOUT], gates[:HOLDOUT], features[:HOLDOUT]
    labels = torch.tensor([LABEL_TO_ID[e.label] for e in holdout + pool])
    training_args = TrainingArguments()  # the defaults `sentiloop train` uses
    layers = pooled_layers(model, tokenizer, texts) if args.alternatives else None
    words = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    token_ids = [
        words(e.text.lower(), add_special_tokens=False)["input_ids"] for e in holdout + pool
    ]

    result: dict[str, Any] = {
        "machine": machine(),
        "arguments": vars(args),
        "domain": "SST-2 train phrases of 2-5 words (bench.flywheel --scenario domain); "
        "fp32 features of the shipped model",
        "champion": domain_figures(holdout, h_logits),
        "correction": [],
    }
    logger.info("champion: %s", result["champion"])
    for rows in args.rows:
        samples = max(1, min(args.samples, len(pool) // rows))
        for sample in range(samples):
            chosen = torch.arange(HOLDOUT + sample * rows, HOLDOUT + (sample + 1) * rows)
            truth = [(holdout + pool)[i].label for i in chosen.tolist()]
            balance = class_weights(truth)
            weights = torch.tensor([balance.get(label, 1.0) for label in truth])
            residual, _ = fit_residual(
                logits[chosen], features[chosen], labels[chosen], weights, training_args
            )
            keys = torch.unique(gates[chosen], dim=0)
            threshold = radius(keys)
            with torch.no_grad():
                inside = (h_gates @ keys.T).max(dim=-1).values >= threshold
                correction = residual(h_features)
            entry = {
                "rows": rows,
                "sample": sample,
                "inside_gate": round(float(inside.float().mean()), 4),
                "gated": domain_figures(holdout, h_logits + inside.float()[:, None] * correction),
                "ungated": domain_figures(holdout, h_logits + correction),
            }
            if layers is not None and rows == min(args.rows):
                entry["alternatives"] = alternatives(holdout, chosen, logits, features, layers,
                                                     token_ids, labels, weights,
                                                     training_args)  # fmt: skip
            result["correction"].append(entry)
            logger.info("correction on %d rows (draw %d): %s", rows, sample, entry)
    write_result("domain-headroom", result)

    if args.fine_tune_rows:
        train = pool[: args.fine_tune_rows]
        arguments = TrainingArguments(recipe="fine-tune", lora_rank=None, progress=False)
        with tempfile.TemporaryDirectory(prefix="sentiloop-headroom-") as scratch:
            started = time.perf_counter()
            fine_tune(train, [], init_model=model_dir, templates=[template], args=arguments,
                      output_dir=Path(scratch))  # fmt: skip
            seconds = time.perf_counter() - started
            tuned = AutoModelForSequenceClassification.from_pretrained(
                scratch, local_files_only=True
            ).eval()
            tuned_logits, _, _ = features_of(tuned, tokenizer, texts[:HOLDOUT], gate_layer, "cpu")
        # The fine-tuned encoder and the correction of the same rows, averaged: what
        # serving two encoders (the champion's and a domain's) would give.
        same = torch.arange(HOLDOUT, HOLDOUT + args.fine_tune_rows)
        truth = [e.label for e in train]
        balance = class_weights(truth)
        weights = torch.tensor([balance.get(label, 1.0) for label in truth])
        residual, _ = fit_residual(
            logits[same], features[same], labels[same], weights, training_args
        )
        with torch.no_grad():
            corrected = h_logits + residual(h_features)
        blend = (torch.log_softmax(tuned_logits, -1) + torch.log_softmax(corrected, -1)) / 2
        result["fine_tune"] = {
            "rows": args.fine_tune_rows,
            "seconds": round(seconds),
            **domain_figures(holdout, tuned_logits),
            "blended_with_correction": domain_figures(holdout, blend),
        }
        logger.info("fine-tune on %d rows: %s", args.fine_tune_rows, result["fine_tune"])
        write_result("domain-headroom", result)
    print_table(result)


def print_table(result: dict[str, Any]) -> None:
    champion = result["champion"]["macro_f1"]
    print(f"champion: macro-F1 {champion:.3f}")
    print("| labelled rows | draw | inside gate | gated macro-F1 (change) | ungated (change) |")
    print("| --- | --- | --- | --- | --- |")
    for e in result["correction"]:
        gated, ungated = e["gated"]["macro_f1"], e["ungated"]["macro_f1"]
        print(f"| {e['rows']} | {e['sample']} | {e['inside_gate']:.1%} | {gated:.3f} "
              f"({100 * (gated - champion):+.1f}) | {ungated:.3f} "
              f"({100 * (ungated - champion):+.1f}) |")  # fmt: skip
    others = [e for e in result["correction"] if "alternatives" in e]
    if others:
        print("\nother readings of the champion, ungated, on each draw of "
              f"{others[0]['rows']} rows: macro-F1 (change against the champion)")  # fmt: skip
        for name in others[0]["alternatives"]:
            figures = [e["alternatives"][name]["macro_f1"] for e in others]
            print(f"| {name} | " + " | ".join(
                f"{f:.3f} ({100 * (f - champion):+.1f})" for f in figures) + " |")  # fmt: skip
    if "fine_tune" in result:
        tuned = result["fine_tune"]["macro_f1"]
        print(f"fine-tune of every weight on {result['fine_tune']['rows']} rows: {tuned:.3f} "
              f"({100 * (tuned - champion):+.1f}), {result['fine_tune']['seconds']} s")  # fmt: skip
        blend = result["fine_tune"]["blended_with_correction"]["macro_f1"]
        print(f"  averaged with the correction of the same rows (two encoders): {blend:.3f} "
              f"({100 * (blend - champion):+.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
