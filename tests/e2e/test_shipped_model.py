"""A fresh install's default: the shipped multilingual model serves from the first
request (merged onto the converted base on first start, ONNX Runtime int8), every
prediction carries its language, and languages it was not trained on are flagged."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from model.shipped import shipped_for_base
from tests.support import ServerProcess

pytestmark = pytest.mark.slow

COMPLAINTS = {
    "de": "Das Produkt ist schrecklich, ich bin sehr enttäuscht.",
    "fr": "C'est nul, je suis très déçu.",
    "es": "El pedido llegó roto y nadie responde, un desastre.",
    "en": "The app keeps crashing and support never answers. Terrible.",
    "ja": "最悪の商品でした。二度と買いません。",
}


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("shipped-server")
    # What a fresh clone serves: the default base preset (the suite pins the small
    # English one elsewhere) and its shipped model as the cold-start champion.
    server = ServerProcess(
        {
            "SENTILOOP_HOME": str(tmp / "home"),
            "SENTILOOP_BASE_MODEL": "multilingual-e5-small",
            "SENTILOOP_TEXT_STORAGE": "raw",
        },
        tmp / "server.log",
    )
    try:
        # A machine that never converted the base nor exported the model does it now.
        server.wait_ready(timeout_s=600)
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


def predict(server: ServerProcess, **body: Any) -> list[dict[str, Any]]:
    response = httpx.post(f"{server.url}/v1/predict", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return list(response.json()["predictions"])


def test_complaints_in_five_languages_are_negative(shipped_server: ServerProcess) -> None:
    shipped = shipped_for_base("multilingual-e5-small")
    assert shipped is not None
    predictions = predict(shipped_server, texts=list(COMPLAINTS.values()))
    for language, prediction in zip(COMPLAINTS, predictions, strict=True):
        assert prediction["model_version"] == shipped.version
        assert prediction["label"] == "negative", (language, prediction["scores"])
        assert prediction["language"] == language
    praise = predict(shipped_server, text="Merci beaucoup, le service était parfait !")[0]
    assert praise["label"] == "positive" and praise["language"] == "fr"


def test_models_names_the_shipped_model_with_its_card_metrics(
    shipped_server: ServerProcess,
) -> None:
    shipped = shipped_for_base("multilingual-e5-small")
    assert shipped is not None
    models = httpx.get(f"{shipped_server.url}/v1/models", timeout=30).json()["models"]
    champion = next(m for m in models if m["reference"] == "champion")
    assert champion["model_version"] == shipped.version
    assert champion["runtime"] == "onnx-int8"
    metadata = champion["metadata"]
    assert metadata["shipped"] == shipped.name
    assert metadata["languages"] == ["en", "fr", "de", "es"]
    served = metadata["metrics"]["serving"]
    assert served == shipped.card["metrics"]["serving"]
    assert {"tweet_test", "sst2_dev_binary", "xlmt_val_de"} <= set(served)


def test_language_is_detected_overridable_flagged_logged_and_counted(
    shipped_server: ServerProcess,
) -> None:
    japanese, german = predict(shipped_server, texts=[COMPLAINTS["ja"], COMPLAINTS["de"]])
    assert (japanese["language"], japanese["language_supported"]) == ("ja", False)
    assert (german["language"], german["language_supported"]) == ("de", True)
    short = predict(shipped_server, text="ok")[0]
    assert (short["language"], short["language_supported"]) == ("und", False)
    forced = predict(shipped_server, text=COMPLAINTS["ja"], language="it")[0]
    assert (forced["language"], forced["language_supported"]) == ("it", False)
    bad = httpx.post(
        f"{shipped_server.url}/v1/predict", json={"text": "hi", "language": "english"}, timeout=30
    )
    assert bad.status_code == 400 and "language" in bad.text

    database = Path(shipped_server.log_path).parent / "home" / "sentiloop.db"
    deadline = time.monotonic() + 10
    stored: list[tuple[str]] = []
    while time.monotonic() < deadline and not stored:
        with sqlite3.connect(database) as connection:
            stored = connection.execute(
                "SELECT language FROM predictions WHERE id = ?", (japanese["prediction_id"],)
            ).fetchall()
        time.sleep(0.1)
    assert stored == [("ja",)]
    feedback = httpx.post(
        f"{shipped_server.url}/v1/feedback",
        json={"prediction_id": japanese["prediction_id"], "label": "negative"},
        timeout=30,
    )
    assert feedback.status_code == 201, feedback.text
    export = httpx.get(f"{shipped_server.url}/v1/feedback/export?format=jsonl", timeout=30)
    assert '"language": "ja"' in export.text

    metrics = httpx.get(f"{shipped_server.url}/metrics", timeout=30).text
    unsupported = re.findall(
        r'^sentiloop_unsupported_language_predictions_total\{[^}]*language="ja"[^}]*\} (\S+)$',
        metrics,
        re.M,
    )
    assert unsupported and float(unsupported[0]) >= 1
    assert re.search(  # counted as the flag says: und is not supported
        r'^sentiloop_unsupported_language_predictions_total\{[^}]*language="und"', metrics, re.M
    )
    assert re.search(r'^sentiloop_predictions_total\{[^}]*language="de"', metrics, re.M)
