"""No secret or internal address of the queue in any response, and no credentials in any log line."""

from __future__ import annotations

import io
import logging

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from facesr.service.api.app import create_app
from facesr.service.queue.settings import redacted_url
from facesr.service.settings import ServiceSettings, settings_error_message
from tests.service.conftest import LiveServer

SECRET = "s3cret-Value"
# Every form redis-py documents for credentials, each pointing at a Redis that is not there.
URL_FORMS = [
    f"redis://:{SECRET}@127.0.0.1:1/3",
    f"redis://user:{SECRET}@127.0.0.1:1/0",
    f"rediss://default:{SECRET}@127.0.0.1:1/0",
    f"unix:///nonexistent/facesr-redis.sock?password={SECRET}&db=2",
    f"redis://127.0.0.1:1/0?password={SECRET}",
]
ADDRESSES = ("127.0.0.1:1", "/nonexistent/facesr-redis.sock")


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("url", URL_FORMS)
def test_responses_name_the_queue_never_its_url(url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = ServiceSettings(redis_url=url, default_deadline_ms=2000)
    server = LiveServer(create_app(settings))
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            bodies = [
                client.get("/readyz"),
                client.get("/v1/models"),
                client.post("/v1/super-resolve", files={"image": ("f.png", _png(), "image/png")}),
                client.get("/readyz"),  # during the known outage: the fast path
            ]
    finally:
        server.stop()
    assert [response.status_code for response in bodies] == [503, 503, 503, 503]
    for response in bodies:
        assert SECRET not in response.text
        assert not any(address in response.text for address in ADDRESSES), response.text
        assert "queue" in response.text  # it still says which dependency is missing
    assert SECRET not in caplog.text, "credentials must never reach a log line"


@pytest.mark.parametrize("url", URL_FORMS)
def test_redacted_urls_keep_the_host_and_drop_every_password(url: str) -> None:
    shown = redacted_url(url)
    assert SECRET not in shown and "***" in shown
    assert shown.split("://")[0] == url.split("://")[0]


def test_a_refused_redis_url_is_shown_without_its_password() -> None:
    with pytest.raises(ValidationError) as refused:
        ServiceSettings(redis_url=f"http://user:{SECRET}@host:6379/0")
    message = settings_error_message(refused.value)
    assert "FACESR_REDIS_URL" in message and SECRET not in message
