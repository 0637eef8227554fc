"""A model process's memory is small and does not grow with traffic or with hot swaps.

The models here are tiny encoders with the shipped model's multilingual tokenizer
(250k pieces): its vocabulary is most of what loading a shipped-size model
allocates besides the model, and a tiny encoder exports to ONNX in seconds.
"""

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import storage
from core import database
from core.settings import Settings
from model import model_store
from model.base_models import e5_tokenizer_file, write_e5_tokenizer
from model.loader import prepare_model
from service.inference.model_process import ModelProcess
from service.inference.scoring import ScoreItem
from storage import model_roles

METADATA = {"base_model": "tiny", "template_versions": ["v1"], "data_sha256": "x", "metrics": {}}
# Texts of many scripts, cut to lengths up to 5,000 characters: every chunk the
# tokenizer pads reaches the serving max length.
PIECES = [
    "The service was slow but the staff were kind. ",
    "Le service était lent, mais le personnel aimable. ",
    "サービスは遅かったが親切だった。",
    "服务很慢，但是员工很友好。",
    "Обслуживание было медленным. ",
    "الخدمة كانت بطيئة ",
    "😀😡👍🔥 ",
]


def build_multilingual_tiny_model(directory: Path, *, seed: int) -> Path:
    """A tiny encoder with the shipped model's tokenizer, saved as training saves one."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from model.labels import LABELS

    torch.manual_seed(seed)
    source = directory.with_name(f"{directory.name}-tokenizer")
    source.mkdir()
    write_e5_tokenizer(e5_tokenizer_file(), source)
    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        id2label={index: str(label) for index, label in enumerate(LABELS)},
        label2id={str(label): index for index, label in enumerate(LABELS)},
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tags(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return [
        model_store.save_model(
            build_multilingual_tiny_model(tmp_path_factory.mktemp(f"model-{seed}"), seed=seed),
            name="memory-test",
            metadata=METADATA,
        ).tag
        for seed in (0, 1)
    ]


@pytest.fixture(scope="module")
def settings(tags: list[str], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings(home=tmp_path_factory.mktemp("home"))
    storage.upgrade(settings.resolved_database_url)
    for tag in tags:  # as a promotion does: the model process finds the exports made
        prepare_model(settings, tag)
    return settings


def assign_champion(settings: Settings, tag: str) -> None:
    sessions = database.make_session_factory(database.make_engine(settings.resolved_database_url))
    with sessions() as session:
        model_roles.assign(session=session, role="champion", model_tag=tag, reason="memory test")
        session.commit()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.run_until_complete(asyncio.sleep(0.1))  # closed streams finish closing
    event_loop.close()


@pytest.fixture
def process(
    settings: Settings, tags: list[str], loop: asyncio.AbstractEventLoop
) -> Iterator[ModelProcess]:
    assign_champion(settings, tags[0])
    handle = ModelProcess(settings, "memory", start_timeout_s=300, call_timeout_s=25)
    yield handle
    handle.close()


def large_batch(rng: random.Random) -> list[ScoreItem]:
    """64 texts: 16 chunks padded to the max length (more only costs time)."""
    texts = []
    for _ in range(64):
        length = rng.randint(1, 5000)
        text = ""
        while len(text) < length:
            text += rng.choice(PIECES)
        texts.append(text[:length])
    return [ScoreItem(text=text, template_version="v1") for text in texts]


def rss_mb(handle: ModelProcess) -> float:
    assert handle.pid is not None
    return psutil.Process(handle.pid).memory_info().rss / 2**20


# Slow: two models exported and five loads of a 250k-token tokenizer (~45 s of CPU).
@pytest.mark.slow
def test_memory_stays_flat_through_traffic_and_hot_swaps(
    process: ModelProcess,
    settings: Settings,
    tags: list[str],
    loop: asyncio.AbstractEventLoop,
) -> None:
    process.wait_started()
    rng = random.Random(0)
    for _ in range(2):
        loop.run_until_complete(process.score(large_batch(rng)))
    after_traffic = rss_mb(process)
    for _ in range(2):
        loop.run_until_complete(process.score(large_batch(rng)))
    after_more_traffic = rss_mb(process)
    for swap in range(4):
        assign_champion(settings, tags[(swap + 1) % 2])
        assert process.call("refresh", 120)["changes"]
        loop.run_until_complete(process.score(large_batch(rng)))
    after_swaps = rss_mb(process)
    # Bounds from measurement (RSS in MB; these models, 2 cores): two more rounds
    # of traffic moved it by 0-9. Four swaps moved it by -4 with the freed heap
    # handed back, by +365 without (glibc kept what each load freed: the
    # transformers tokenizer copied from, the replaced model). After traffic, 272
    # without torch and transformers and with the light Unigram vocabulary
    # (model.unigram); ~0.9 GB with them: torch and transformers took ~240, the
    # tokenizers trie of the vocabulary ~270.
    assert after_traffic < 350, after_traffic
    assert after_more_traffic - after_traffic < 30, (after_traffic, after_more_traffic)
    assert after_swaps - after_traffic < 60, (after_traffic, after_swaps)
