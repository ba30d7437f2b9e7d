"""`AsyncClient`: the asyncio facesr client (httpx.AsyncClient); the protocol itself is in `_protocol`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import TypeVar

import httpx

from facesr.client._images import ImageInput
from facesr.client._plan import Plan, Reply, Send, Wait
from facesr.client._protocol import build_protocol
from facesr.client._timeouts import DEFAULT_TIMEOUT_S
from facesr.client.results import BatchResult, Health, ModelInfo, Readiness, SuperResolution

T = TypeVar("T")


class AsyncClient:
    """asyncio client of a facesr service: the same methods, arguments, results and errors as
    `facesr.client.Client`, awaited. Use ``async with AsyncClient(...) as client:`` (or `aclose`).

    Concurrent calls share one connection pool; waits between retries are `asyncio.sleep`, so other
    tasks run meanwhile.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT_S,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._protocol = build_protocol(
            api_key=api_key, timeout=timeout, max_retries=max_retries, max_retry_wait=max_retry_wait
        )
        self._http = httpx.AsyncClient(base_url=base_url, timeout=self._protocol.timeout, transport=transport)

    # -- the driver ----------------------------------------------------------------------------------------
    async def _send(self, step: Send) -> Reply:
        try:
            return await self._http.request(
                step.method,
                step.path,
                params=step.params,
                headers=step.headers,
                files=step.files,
                timeout=step.timeout,
            )
        except httpx.TransportError as error:
            return error

    async def _run(self, plan: Plan[T]) -> T:
        reply: Reply = None
        try:
            while True:
                try:
                    step = plan.send(reply)
                except StopIteration as done:
                    return done.value
                if isinstance(step, Wait):
                    await asyncio.sleep(step.seconds)
                    reply = None
                else:
                    reply = await self._send(step)
        finally:
            plan.close()

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- operations (documented on `Client`) ---------------------------------------------------------------
    async def super_resolve(
        self,
        image: ImageInput,
        *,
        landmarks: bool = True,
        steps: bool = False,
        compare: bool = False,
        fit: str | None = None,
        model: str | None = None,
        deadline_ms: int | None = None,
        output_format: str | None = None,
        quality: int | None = None,
    ) -> SuperResolution:
        """Super-resolve one face; see `Client.super_resolve`."""
        params = self._protocol.options(
            landmarks=landmarks,
            steps=steps,
            compare=compare,
            fit=fit,
            model=model,
            output_format=output_format,
            quality=quality,
        )
        return await self._run(self._protocol.super_resolve(image, deadline_ms=deadline_ms, params=params))

    async def super_resolve_batch(
        self,
        images: Iterable[ImageInput],
        *,
        landmarks: bool = True,
        steps: bool = False,
        compare: bool = False,
        fit: str | None = None,
        model: str | None = None,
        deadline_ms: int | None = None,
        output_format: str | None = None,
        quality: int | None = None,
    ) -> BatchResult:
        """Several faces in one request; see `Client.super_resolve_batch`."""
        params = self._protocol.options(
            landmarks=landmarks,
            steps=steps,
            compare=compare,
            fit=fit,
            model=model,
            output_format=output_format,
            quality=quality,
        )
        return await self._run(
            self._protocol.super_resolve_batch(images, deadline_ms=deadline_ms, params=params)
        )

    async def models(self) -> tuple[ModelInfo, ...]:
        """The models served now; see `Client.models`."""
        return await self._run(self._protocol.models())

    async def health(self) -> Health:
        """Liveness; see `Client.health`."""
        return await self._run(self._protocol.health())

    async def ready(self) -> Readiness:
        """Readiness; see `Client.ready`."""
        return await self._run(self._protocol.ready())

    async def wait_ready(self, timeout_s: float = 60.0, *, interval_s: float = 0.25) -> Readiness:
        """Poll readiness until the service can serve; see `Client.wait_ready`."""
        return await self._run(self._protocol.wait_ready(timeout_s, interval_s))
