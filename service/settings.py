"""Service configuration: one pydantic-settings class read from `FACESR_*` environment variables.

`facesr serve`, `facesr worker` and the ASGI app factory all build their configuration through
`ServiceSettings`, which also makes the queue's and the worker's settings objects (`queue_settings()`,
`worker_settings()`): nothing else has defaults of its own. Command-line flags are passed as keyword
arguments, which take priority over the environment. Bad values are refused when the object is built
(i.e. at start-up), never later in the request path: `settings_error_message` turns the validation error
into one readable line per offending variable.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from facesr.service.queue.keys import check_name
from facesr.service.queue.settings import REDIS_SCHEMES, QueueSettings, redacted_url
from facesr.service.worker.layout import CUDA_DEFAULT_BATCH, DEFAULT_TRIAL_S
from facesr.service.worker.settings import WorkerSettings

ENV_PREFIX = "FACESR_"
# FACESR_* variables that belong to other parts of the project, not to the service (the test suite's).
_FOREIGN_VARIABLES = frozenset({"FACESR_SHARED_DIR", "FACESR_CHROMIUM", "FACESR_TEST_ARTIFACTS"})
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_MIN_API_KEY_LENGTH = 16


def _split_comma_list(value: object) -> object:
    """Environment values arrive as one string: `a,b , c` -> ["a", "b", "c"] (blank items dropped)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


# A runner-layout setting: a number, or "auto" (chosen for the device at warm-up, see worker/layout.py).
LayoutChoice = Annotated[int, Field(ge=1, le=512)] | Literal["auto"]


class ServiceSettings(BaseSettings):
    """Every knob of the HTTP API, the embedded queue and the Redis worker.

    The field name in upper case with the `FACESR_` prefix is the environment variable
    (`max_batch_size` <- `FACESR_MAX_BATCH_SIZE`). `docs/service.md` documents each one.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    # --- where the models and the queue live -------------------------------------------------
    redis_url: str = Field(
        "",
        description="Redis URL of the shared queue (redis://, rediss:// or unix://). Empty: the embedded "
        "mode, where `facesr serve` runs the queue and the model in its own process.",
    )
    checkpoint: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated .safetensors checkpoints to serve; empty: the bundled default.",
    )
    default_model: str = Field(
        "",
        description="Model name used when a request names none; empty: the only model served "
        "(requests must then name one when several are served).",
    )
    device: str = Field("auto", description="Torch device of the model: auto, cpu, cuda, cuda:N or mps.")
    dtype: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Inference precision; bf16/fp16 only on CUDA."
    )

    graph: Literal["auto", "eager", "trace", "compile"] = Field(
        "auto",
        description="How the network is executed: eager, trace (TorchScript; no Python per layer) or "
        "compile (torch.compile with fixed batch buckets, CUDA graphs on CUDA); auto: trace on CPU in fp32, "
        "else eager.",
    )

    # --- batching and admission --------------------------------------------------------------
    warmup: Literal["all", "pow2"] = Field(
        "all", description="Batch sizes the worker runs once before serving: all of 1..B, or powers of 2."
    )
    max_batch_size: LayoutChoice = Field(
        "auto",
        description="Largest batch a runner computes at once; auto: measured at warm-up on CPU (1, 2, 4 "
        "or 8), 64 on CUDA (lowered at warm-up when it does not fit).",
    )
    layout_trial_s: float = Field(
        DEFAULT_TRIAL_S,
        ge=0.05,
        le=30,
        description="How long each candidate runner layout runs when the layout is measured at warm-up (s).",
    )
    runners: LayoutChoice = Field(
        "auto",
        description="Model runners per worker process, computing batches side by side; auto: measured at "
        "warm-up on CPU (one per core usually wins), 1 on CUDA.",
    )
    threads_per_runner: LayoutChoice = Field(
        "auto",
        description="Intra-op CPU threads of each runner; auto: measured at warm-up on CPU, PyTorch's "
        "default on CUDA.",
    )
    max_wait_ms: float = Field(
        5.0,
        ge=0,
        le=10_000,
        description="How long the worker waits for more jobs after the first one of a batch (ms).",
    )
    max_queue: int = Field(
        256, ge=1, le=1_000_000, description="Jobs waiting or running before new ones get 429."
    )
    max_deliveries: int = Field(
        3, ge=1, le=100, description="Deliveries of one job before it is dead-lettered (Redis mode)."
    )
    claim_idle_ms: int = Field(
        15_000,
        ge=100,
        le=3_600_000,
        description="A job unacknowledged this long is reclaimed from a dead worker (Redis mode, ms).",
    )
    heartbeat_ttl_s: float = Field(
        10.0, ge=1, le=600, description="A worker silent this long stops counting as ready (Redis mode, s)."
    )
    batch_timeout_s: float = Field(
        60.0,
        ge=1,
        le=3_600,
        description="A batch running longer than this marks its worker stalled: not ready, and its jobs "
        "are taken over by other workers (s).",
    )
    reply_ttl_s: float = Field(
        120.0, gt=0, le=86_400, description="Lifetime of an unread reply list in Redis (s)."
    )
    job_ttl_s: float = Field(
        600.0,
        gt=0,
        le=86_400,
        description="Lifetime of cancel marks in Redis; covers the longest deadline (s).",
    )
    queue_prefix: str = Field("facesr", description="Prefix of every Redis key the service uses.")

    # --- request limits ----------------------------------------------------------------------
    max_upload_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, le=1024**3, description="Largest accepted image file (bytes)."
    )
    # 2048 x 2048: far more than a face crop needs (the model takes 16 x 16), and a quarter of the decoding
    # work an upload could cost at 4096 x 4096 (about 0.3 CPU-s and 48 MiB for one PNG).
    max_pixels: int = Field(
        4_194_304,
        ge=256,
        le=80_000_000,
        description="Largest accepted width x height, checked from the header before decoding.",
    )
    max_request_pixels: int = Field(
        16_777_216,
        ge=256,
        le=320_000_000,
        description="Pixels one request may have decoded in all (the images of a batch share it).",
    )
    max_batch_images: int = Field(
        16, ge=1, le=256, description="Most images in one POST /v1/super-resolve/batch request."
    )
    default_deadline_ms: int = Field(
        30_000, ge=1, description="Time budget of a request without an X-Deadline-Ms header (ms)."
    )
    max_deadline_ms: int = Field(
        120_000, ge=1, le=3_600_000, description="Cap on the X-Deadline-Ms header (ms)."
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys for /v1/*; empty: no authentication.",
    )

    # --- HTTP server limits (per `facesr serve` process) ---------------------------------------
    http_max_header_bytes: int = Field(
        16_384,
        ge=1024,
        le=1024 * 1024,
        description="Largest request line plus headers; a longer head gets 400 and the connection is "
        "closed before the rest is read (bytes).",
    )
    http_max_headers: int = Field(
        100, ge=8, le=10_000, description="Most header fields in one request; more get 431."
    )
    http_keepalive_timeout_s: int = Field(
        5,
        ge=1,
        le=600,
        description="A connection with no request under way (new, or after a response) is closed after "
        "this long (s).",
    )
    http_header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="The request line and headers must arrive within this long of the request's first "
        "byte, or the connection is closed (s).",
    )
    http_body_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3_600,
        description="The whole request body must arrive within this long of the end of the headers, "
        "or the connection is closed (s).",
    )
    http_max_connections: int = Field(
        512,
        ge=2,
        le=1_000_000,
        description="Open connections (or running requests) per process at which requests get 503 "
        "(uvicorn's limit_concurrency).",
    )

    # --- processes ---------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface `facesr serve` listens on.")
    port: int = Field(8000, ge=1, le=65_535, description="Port `facesr serve` listens on.")
    workers: int = Field(
        1, ge=1, le=64, description="uvicorn worker processes of `facesr serve` (Redis mode only)."
    )
    metrics_port: int = Field(
        9100, ge=0, le=65_535, description="Port of the worker's /metrics endpoint; 0 turns it off."
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Interface of the worker's /metrics endpoint; containers set 0.0.0.0 so that "
        "Prometheus and probes reach it.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level of the service processes."
    )

    # --- pages for people ----------------------------------------------------------------------
    demo_page: bool = Field(
        True,
        description="Serve the demo page at `/` (upload a face, see the result, the bicubic baseline, "
        "the steps and the landmarks); off: `/` is 404.",
    )

    # --- validators ----------------------------------------------------------------------------
    _split_lists = field_validator("checkpoint", "api_keys", mode="before")(_split_comma_list)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(REDIS_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(REDIS_SCHEMES)} (or be empty)")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE_PATTERN.match(value):
            raise ValueError("must be auto, cpu, mps, cuda or cuda:N")
        return value

    @field_validator("queue_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        return check_name("queue prefix", value)  # the rule the Redis keys enforce, so no later crash

    @field_validator("default_model")
    @classmethod
    def _check_default_model(cls, value: str) -> str:
        return check_name("model name", value) if value else value

    @field_validator("checkpoint")
    @classmethod
    def _check_checkpoints(cls, paths: list[Path]) -> list[Path]:
        if any(path.suffix != ".safetensors" for path in paths):
            raise ValueError("checkpoints must be .safetensors files")
        return paths

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for key in keys:
            secret = key.get_secret_value()
            if len(secret) < _MIN_API_KEY_LENGTH or any(ch.isspace() for ch in secret):
                raise ValueError(
                    f"every key must be at least {_MIN_API_KEY_LENGTH} characters without spaces"
                )
        return keys

    @model_validator(mode="after")
    def _check_consistency(self) -> ServiceSettings:
        if self.default_deadline_ms > self.max_deadline_ms:
            raise ValueError(
                f"FACESR_DEFAULT_DEADLINE_MS ({self.default_deadline_ms}) must not exceed "
                f"FACESR_MAX_DEADLINE_MS ({self.max_deadline_ms})"
            )
        if self.job_ttl_s * 1000 < self.max_deadline_ms:
            raise ValueError(
                f"FACESR_JOB_TTL_S ({self.job_ttl_s}) must cover "
                f"FACESR_MAX_DEADLINE_MS ({self.max_deadline_ms})"
            )
        if self.workers > 1 and not self.redis_url:
            raise ValueError(
                "FACESR_WORKERS > 1 needs FACESR_REDIS_URL: each embedded process would load its own model "
                "and queue"
            )
        return self

    # --- derived values ----------------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: queue and model run inside the API process."""
        return not self.redis_url

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @property
    def torch_device(self) -> str | None:
        """FACESR_DEVICE as the model package expects it (None = CUDA when available, else CPU)."""
        return None if self.device == "auto" else self.device

    @property
    def graph_mode(self) -> Literal["eager", "trace", "compile"] | None:
        """FACESR_GRAPH as the model package takes it (None: the device's default)."""
        return None if self.graph == "auto" else self.graph

    @property
    def batch_ceiling(self) -> int:
        """The largest batch a worker may choose: FACESR_MAX_BATCH_SIZE, or the ceiling of "auto"."""
        return self.max_batch_size if isinstance(self.max_batch_size, int) else CUDA_DEFAULT_BATCH

    def checkpoint_paths(self) -> list[Path | None]:
        """The checkpoints to serve; [None] stands for the bundled default."""
        return list(self.checkpoint) or [None]

    def queue_settings(self) -> QueueSettings:
        """The queue's settings, for the API side (RedisQueue) and the worker side (RedisJobSource)."""
        return QueueSettings(
            url=self.redis_url,
            prefix=self.queue_prefix,
            max_queue=self.max_queue,
            max_batch_size=self.batch_ceiling,
            max_deliveries=self.max_deliveries,
            claim_idle_ms=self.claim_idle_ms,
            reply_ttl_s=self.reply_ttl_s,
            job_ttl_s=self.job_ttl_s,
        )

    def worker_settings(self) -> WorkerSettings:
        """The worker's settings (the same for a Redis worker process and the embedded one).

        The heartbeat also refreshes in-flight jobs, so it beats well within ``claim_idle_ms``; the
        housekeeping that takes over dead workers' jobs runs four times per ``claim_idle_ms``.
        """
        return WorkerSettings(
            max_batch_size=_fixed(self.max_batch_size),
            runners=_fixed(self.runners),
            threads_per_runner=_fixed(self.threads_per_runner),
            layout_trial_s=self.layout_trial_s,
            max_wait_ms=self.max_wait_ms,
            warmup=self.warmup,
            heartbeat_interval_s=min(self.heartbeat_ttl_s / 4, self.claim_idle_ms / 3000),
            heartbeat_ttl_s=self.heartbeat_ttl_s,
            maintenance_interval_s=max(0.2, self.claim_idle_ms / 4000),
            batch_timeout_s=self.batch_timeout_s,
        )


def _fixed(choice: int | Literal["auto"]) -> int | None:
    """A layout setting as the worker takes it: the number, or None for "choose for the device"."""
    return choice if isinstance(choice, int) else None


def settings_error_message(error: ValidationError) -> str:
    """One line per refused value, naming the environment variable (or the whole-config rule)."""
    lines = ["invalid service configuration:"]
    for problem in error.errors(include_url=False):
        location = [str(part) for part in problem["loc"] if not isinstance(part, int)]
        message = problem["msg"].removeprefix("Value error, ")
        if location:
            variable = ENV_PREFIX + location[0].upper()
            given = problem.get("input")
            if location[0] == "redis_url" and isinstance(given, str):
                given = redacted_url(given)
            shown = "" if location[0] == "api_keys" or isinstance(given, dict) else f" (got {given!r})"
            lines.append(f"  {variable}: {message}{shown}")
        else:
            lines.append(f"  {message}")
    return "\n".join(lines)


def unknown_environment_settings(environ: Mapping[str, str] | None = None) -> list[str]:
    """`FACESR_*` variables that match no setting, each with a close match when there is one.

    A typo such as `FACESR_MAX_BATCH=32` would otherwise be ignored silently.
    """
    environ = os.environ if environ is None else environ
    known = {ENV_PREFIX + name.upper() for name in ServiceSettings.model_fields}
    notes = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or upper in _FOREIGN_VARIABLES:
            continue
        close = difflib.get_close_matches(upper, known, n=1)
        notes.append(f"{variable} is not a setting" + (f" (did you mean {close[0]}?)" if close else ""))
    return notes
