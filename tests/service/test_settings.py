"""`ServiceSettings`: FACESR_* variables in, bad values refused with a message naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from facesr.service.api.backends import StartupError, build_backend
from facesr.service.queue.keys import Keys
from facesr.service.settings import ServiceSettings, settings_error_message, unknown_environment_settings
from facesr.service.worker.layout import LayoutRequest


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from no FACESR_* service variables, whatever the developer's shell has."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("FACESR_") and name.upper() != "FACESR_SHARED_DIR":
            monkeypatch.delenv(name)


def refusal(**env: str) -> str:
    """The start-up message for an environment that must be refused."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with pytest.raises(ValidationError) as caught:
            ServiceSettings()
    return settings_error_message(caught.value)


def test_defaults_are_the_embedded_mode():
    settings = ServiceSettings()

    assert settings.embedded
    assert settings.checkpoint == []
    assert not settings.auth_enabled
    # The runner layout is chosen for the device at warm-up unless fixed.
    assert (settings.max_batch_size, settings.runners, settings.threads_per_runner) == ("auto",) * 3
    assert settings.worker_settings().layout_request() == LayoutRequest(None, None, None)


def test_layout_settings_take_numbers_or_auto(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FACESR_RUNNERS", "2")
    monkeypatch.setenv("FACESR_THREADS_PER_RUNNER", "auto")
    monkeypatch.setenv("FACESR_MAX_BATCH_SIZE", "3")

    request = ServiceSettings().worker_settings().layout_request()

    assert request == LayoutRequest(runners=2, threads_per_runner=None, max_batch_size=3)
    for bad in ("0", "many", "-1"):
        monkeypatch.setenv("FACESR_RUNNERS", bad)
        with pytest.raises(ValidationError, match="runners"):
            ServiceSettings()


def test_network_defaults_are_bounded_and_loopback_only():
    """Every HTTP limit is on by default, and no endpoint listens beyond this host unless told to."""
    settings = ServiceSettings()

    assert (settings.host, settings.metrics_host) == ("127.0.0.1", "127.0.0.1")
    assert settings.http_max_header_bytes <= 64 * 1024
    assert settings.http_max_headers <= 1000
    assert settings.http_keepalive_timeout_s <= 60
    assert settings.http_header_timeout_s <= 60
    assert settings.http_body_timeout_s <= 600
    assert settings.http_max_connections <= 4096


def test_environment_is_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FACESR_REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("FACESR_CHECKPOINT", "a.safetensors, b.safetensors")
    monkeypatch.setenv("FACESR_MAX_BATCH_SIZE", "32")
    monkeypatch.setenv("FACESR_MAX_WAIT_MS", "2.5")
    monkeypatch.setenv("FACESR_MAX_QUEUE", "1000")
    monkeypatch.setenv("FACESR_API_KEYS", "first-key-0123456789, second-key-0123456789")

    settings = ServiceSettings()

    assert not settings.embedded
    assert settings.checkpoint == [Path("a.safetensors"), Path("b.safetensors")]
    assert (settings.max_batch_size, settings.max_wait_ms, settings.max_queue) == (32, 2.5, 1000)
    assert [key.get_secret_value() for key in settings.api_keys] == [
        "first-key-0123456789",
        "second-key-0123456789",
    ]
    assert "first-key" not in repr(settings)  # keys never end up in logs


def test_keyword_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FACESR_MAX_BATCH_SIZE", "32")
    assert ServiceSettings(max_batch_size=4).max_batch_size == 4


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"FACESR_MAX_BATCH_SIZE": "0"}, "FACESR_MAX_BATCH_SIZE"),
        ({"FACESR_MAX_BATCH_SIZE": "many"}, "FACESR_MAX_BATCH_SIZE"),
        ({"FACESR_MAX_WAIT_MS": "-1"}, "FACESR_MAX_WAIT_MS"),
        ({"FACESR_MAX_QUEUE": "0"}, "FACESR_MAX_QUEUE"),
        ({"FACESR_REDIS_URL": "http://localhost:6379"}, "FACESR_REDIS_URL"),
        ({"FACESR_DEVICE": "gpu"}, "FACESR_DEVICE"),
        ({"FACESR_DTYPE": "int8"}, "FACESR_DTYPE"),
        ({"FACESR_CHECKPOINT": "model.pt"}, "FACESR_CHECKPOINT"),
        ({"FACESR_API_KEYS": "short"}, "FACESR_API_KEYS"),
        ({"FACESR_QUEUE_PREFIX": "has spaces"}, "FACESR_QUEUE_PREFIX"),
        ({"FACESR_QUEUE_PREFIX": "team:facesr"}, "FACESR_QUEUE_PREFIX"),  # a colon would split the keys
        ({"FACESR_DEFAULT_MODEL": "two words"}, "FACESR_DEFAULT_MODEL"),
        ({"FACESR_HEARTBEAT_TTL_S": "0.01"}, "FACESR_HEARTBEAT_TTL_S"),  # readiness would flap
        ({"FACESR_PORT": "70000"}, "FACESR_PORT"),
        ({"FACESR_MAX_PIXELS": "10"}, "FACESR_MAX_PIXELS"),
        ({"FACESR_HTTP_MAX_HEADER_BYTES": "100"}, "FACESR_HTTP_MAX_HEADER_BYTES"),
        ({"FACESR_HTTP_MAX_HEADERS": "0"}, "FACESR_HTTP_MAX_HEADERS"),
        ({"FACESR_HTTP_KEEPALIVE_TIMEOUT_S": "0"}, "FACESR_HTTP_KEEPALIVE_TIMEOUT_S"),
        ({"FACESR_HTTP_HEADER_TIMEOUT_S": "0"}, "FACESR_HTTP_HEADER_TIMEOUT_S"),
        ({"FACESR_HTTP_BODY_TIMEOUT_S": "-1"}, "FACESR_HTTP_BODY_TIMEOUT_S"),
        ({"FACESR_HTTP_MAX_CONNECTIONS": "1"}, "FACESR_HTTP_MAX_CONNECTIONS"),  # would refuse everything
    ],
)
def test_bad_values_are_refused_naming_the_variable(env: dict[str, str], variable: str):
    message = refusal(**env)
    assert variable in message
    assert message.startswith("invalid service configuration")


def test_api_keys_are_not_echoed_in_the_refusal():
    message = refusal(FACESR_API_KEYS="tiny-secret")
    assert "tiny-secret" not in message


@pytest.mark.parametrize(
    ("env", "mentions"),
    [
        ({"FACESR_DEFAULT_DEADLINE_MS": "5000", "FACESR_MAX_DEADLINE_MS": "1000"}, "FACESR_MAX_DEADLINE_MS"),
        ({"FACESR_JOB_TTL_S": "1", "FACESR_MAX_DEADLINE_MS": "60000"}, "FACESR_JOB_TTL_S"),
        ({"FACESR_WORKERS": "4"}, "FACESR_REDIS_URL"),
    ],
)
def test_inconsistent_combinations_are_refused(env: dict[str, str], mentions: str):
    assert mentions in refusal(**env)


def test_unknown_variables_are_reported_with_a_suggestion():
    notes = unknown_environment_settings(
        {"FACESR_MAX_BATCH": "8", "FACESR_SHARED_DIR": "/data", "FACESR_PORT": "1", "HOME": "/root"}
    )
    assert notes == ["FACESR_MAX_BATCH is not a setting (did you mean FACESR_MAX_BATCH_SIZE?)"]


def test_every_setting_is_documented():
    """docs/service.md has a row for each variable, with the default the code uses."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "service.md").read_text()
    for name, field in ServiceSettings.model_fields.items():
        row = next(
            (line for line in docs.splitlines() if line.startswith(f"| `FACESR_{name.upper()}` |")), None
        )
        assert row is not None, f"FACESR_{name.upper()} is not in docs/service.md"
        default = field.get_default(call_default_factory=True)
        if default not in ("", []):
            assert f"`{default}`" in row, f"docs/service.md gives another default for FACESR_{name.upper()}"


@pytest.mark.parametrize("prefix", ["facesr", "facesr-staging", "team_a.v2"])
def test_an_accepted_queue_prefix_makes_valid_redis_keys(prefix: str):
    keys = Keys(ServiceSettings(queue_prefix=prefix).queue_prefix)
    assert keys.jobs("tiny") == f"{prefix}:jobs:tiny"


def test_embedded_mode_refuses_a_default_model_it_does_not_load(tiny_checkpoint: Path):
    """Otherwise /readyz says ready while every request without `model` gets a 503."""
    settings = ServiceSettings(checkpoint=[tiny_checkpoint], default_model="not-loaded", device="cpu")
    with pytest.raises(StartupError, match="FACESR_DEFAULT_MODEL"):
        build_backend(settings)
