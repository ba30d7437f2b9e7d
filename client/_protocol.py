"""The facesr HTTP protocol, without I/O: the requests of every operation and how one call unfolds.

Every operation is a plan (`facesr.client._plan`) built here once and driven by both clients. The
pieces it uses each live in their own module: `_timeouts` (client timeout and deadline), `_retry` (what
is retried and after how long) and `_parse` (answers into typed results and errors).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

import httpx

from facesr.client._images import ImageInput, Upload, to_upload
from facesr.client._parse import (
    connection_error,
    error_from_response,
    parse_batch,
    parse_health,
    parse_models,
    parse_readiness,
    parse_single,
)
from facesr.client._plan import FilePart, Plan, Send, Wait
from facesr.client._retry import RetryPolicy, is_retryable
from facesr.client._timeouts import DEADLINE_SLACK_S, Deadline, as_timeout, capped
from facesr.client.errors import FaceSRConnectionError, ProblemError, ServiceUnavailableError
from facesr.client.results import BatchResult, Health, ModelInfo, Readiness, SuperResolution

SINGLE_PATH = "/v1/super-resolve"
BATCH_PATH = "/v1/super-resolve/batch"
MODELS_PATH = "/v1/models"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"

DEADLINE_HEADER = "X-Deadline-Ms"
#: Carries the API key as ``Authorization: Bearer <key>``.
AUTH_HEADER = "Authorization"
USER_AGENT = "facesr-client"


class Protocol:
    """Builds the plans of every client operation; shared by `Client` and `AsyncClient`.

    Args:
        api_key: sent as ``Authorization: Bearer <key>`` to ``/v1/*`` (None: no key).
        timeout: client-side limits of one HTTP attempt; a request with a deadline gets the limits of
            `Deadline.timeout` instead.
        retry: the `RetryPolicy`.
    """

    def __init__(self, *, api_key: str | None, timeout: httpx.Timeout, retry: RetryPolicy) -> None:
        self.timeout = timeout
        self.retry = retry
        self.headers = {"User-Agent": USER_AGENT}
        self._auth = {AUTH_HEADER: f"Bearer {api_key}"} if api_key else {}

    # -- the shared exchange: deadline, timeouts and retries ---------------------------------------------
    def exchange(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        files: Sequence[FilePart] | None = None,
        headers: Mapping[str, str] | None = None,
        deadline_ms: int | None = None,
        timeout: httpx.Timeout | None = None,
        retry: bool = True,
    ) -> Plan[httpx.Response]:
        """Send a request until it gets a success answer; returns that response.

        Retries (when `retry`) 429 and 503 answers after their Retry-After (or a backoff without one) and
        connection failures after a backoff, at most `max_retries` times, waiting at most `max_wait_s` in
        all, and never past the deadline: the whole call, retries included, has `deadline_ms`, and each
        attempt sends what is left of it in ``X-Deadline-Ms`` and waits for an answer at most that plus
        `DEADLINE_SLACK_S`. `timeout` replaces the client's limits for this call. Raises the typed error
        of the last answer.
        """
        deadline = Deadline.start(deadline_ms)
        base = self.timeout if timeout is None else timeout
        if deadline is None:
            limit = "the client timeout"
        else:
            limit = f"the {deadline.budget_ms} ms deadline plus {DEADLINE_SLACK_S:g} s"
        waited = 0.0
        retries = 0
        while True:
            attempt_headers = {**self.headers, **(headers or {})}
            if path.startswith("/v1/"):
                attempt_headers.update(self._auth)
            attempt_timeout = base
            if deadline is not None:
                attempt_headers[DEADLINE_HEADER] = deadline.header(first=retries == 0)
                attempt_timeout = deadline.timeout(base)
            reply = yield Send(
                method=method,
                path=path,
                headers=attempt_headers,
                timeout=attempt_timeout,
                params=params,
                files=files,
            )
            error: FaceSRConnectionError | ProblemError
            if isinstance(reply, httpx.Response):
                if reply.is_success:
                    return reply
                error = error_from_response(reply)
                retry_after = error.retry_after
            elif isinstance(reply, httpx.TransportError):
                error = connection_error(reply, f"{method} {path}", limit)
                retry_after = None
            else:  # pragma: no cover - a driver bug
                raise TypeError(f"a driver answered a Send with {reply!r}")
            if not retry or not is_retryable(reply):
                raise error
            delay = self.retry.next_wait(retries=retries, waited_s=waited, retry_after=retry_after)
            if delay is None or (deadline is not None and not deadline.allows_wait(delay)):
                raise error
            yield Wait(delay)
            waited += delay
            retries += 1

    # -- operations --------------------------------------------------------------------------------------
    @staticmethod
    def options(
        *,
        landmarks: bool,
        steps: bool,
        compare: bool,
        fit: str | None,
        model: str | None,
        output_format: str | None,
        quality: int | None,
    ) -> dict[str, str]:
        """Query parameters; options at their server default are left out, so that a server which does
        not know an option yet (it refuses unknown ones) still serves requests that do not use it."""
        params: dict[str, str] = {}
        if not landmarks:
            params["landmarks"] = "false"
        if steps:
            params["steps"] = "true"
        if compare:
            params["compare"] = "true"
        if fit is not None:
            params["fit"] = fit
        if model is not None:
            params["model"] = model
        if output_format is not None:
            params["format"] = output_format
        if quality is not None:
            params["quality"] = str(quality)
        return params

    def super_resolve(
        self, image: ImageInput, *, deadline_ms: int | None, params: Mapping[str, str]
    ) -> Plan[SuperResolution]:
        upload = to_upload(image)
        response = yield from self.exchange(
            "POST",
            SINGLE_PATH,
            params=params,
            files=[("image", upload.part())],
            headers={"Accept": "application/json"},
            deadline_ms=deadline_ms,
        )
        return parse_single(response)

    def super_resolve_batch(
        self, images: Iterable[ImageInput], *, deadline_ms: int | None, params: Mapping[str, str]
    ) -> Plan[BatchResult]:
        uploads: list[Upload] = [to_upload(image, name=f"image-{i}") for i, image in enumerate(images)]
        if not uploads:
            raise ValueError("a batch needs at least one image")
        response = yield from self.exchange(
            "POST",
            BATCH_PATH,
            params=params,
            files=[("images", upload.part()) for upload in uploads],
            headers={"Accept": "application/json"},
            deadline_ms=deadline_ms,
        )
        return parse_batch(response)

    def models(self) -> Plan[tuple[ModelInfo, ...]]:
        response = yield from self.exchange("GET", MODELS_PATH, headers={"Accept": "application/json"})
        return parse_models(response)

    def health(self) -> Plan[Health]:
        response = yield from self.exchange("GET", HEALTH_PATH, retry=False)
        return parse_health(response)

    def ready(self, *, limit_s: float | None = None) -> Plan[Readiness]:
        """Readiness; a 503 "not ready" answer is a `Readiness` with ``ready=False``, not an error.

        `limit_s` caps every phase of the attempt (the client timeout applies as well).
        """
        timeout = None if limit_s is None else capped(self.timeout, limit_s)
        try:
            response = yield from self.exchange("GET", READY_PATH, timeout=timeout, retry=False)
        except ServiceUnavailableError as error:
            return Readiness(ready=False, detail=error.detail or error.title)
        return parse_readiness(response)

    def wait_ready(self, timeout_s: float, interval_s: float) -> Plan[Readiness]:
        """Poll readiness until ready, tolerating refused connections while the server starts; each
        attempt waits for its answer at most the time left of `timeout_s`.

        Raises `ServiceUnavailableError` (not ready in time) or `FaceSRConnectionError` (never answered).
        """
        give_up_at = time.monotonic() + timeout_s
        while True:
            last: FaceSRConnectionError | ServiceUnavailableError
            try:
                readiness = yield from self.ready(limit_s=give_up_at - time.monotonic())
            except FaceSRConnectionError as error:
                last = error
            else:
                if readiness.ready:
                    return readiness
                last = ServiceUnavailableError(
                    status=503,
                    title="Service not ready",
                    detail=f"not ready after {timeout_s:g} s: {readiness.detail}",
                )
            if time.monotonic() + interval_s > give_up_at:
                raise last
            yield Wait(interval_s)


def build_protocol(
    *,
    api_key: str | None,
    timeout: float | httpx.Timeout | None,
    max_retries: int,
    max_retry_wait: float,
) -> Protocol:
    """The `Protocol` for a client's constructor arguments (see `facesr.client.Client`)."""
    return Protocol(
        api_key=api_key,
        timeout=as_timeout(timeout),
        retry=RetryPolicy(max_retries=max_retries, max_wait_s=max_retry_wait),
    )
