"""SENTILOOP_MODEL_STORE_URL: an s3:// URL, read into a bucket and a key layout."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.settings import Settings
from model.shared_store import MANIFEST, SharedStore


@pytest.mark.parametrize(
    ("url", "bucket", "key"),
    [
        ("s3://models", "models", "sentiloop-sentiment/abc/manifest.json"),
        ("s3://models/", "models", "sentiloop-sentiment/abc/manifest.json"),
        ("s3://my.models/team/a/", "my.models", "team/a/sentiloop-sentiment/abc/manifest.json"),
    ],
)
def test_a_store_url_gives_the_bucket_and_the_keys_of_a_model(
    url: str, bucket: str, key: str
) -> None:
    shared = SharedStore.from_settings(
        Settings(model_store_url=url, model_store_region="eu-west-1")
    )
    assert shared is not None
    assert (shared.bucket, shared.key("sentiloop-sentiment:abc", MANIFEST)) == (bucket, key)


def test_no_url_no_shared_store() -> None:
    assert SharedStore.from_settings(Settings()) is None


@pytest.mark.parametrize("url", ["https://models/x", "s3://", "s3://Models", "/data/models"])
def test_a_url_that_is_not_s3_is_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(ValidationError, match="model_store_url"):
        Settings(model_store_url=url)
