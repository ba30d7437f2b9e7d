"""Choosing and building the queue backend (and, in embedded mode, the models) from the settings.

In Redis mode nothing here imports torch: the API process only talks to the queue. The embedded mode
imports the worker (and torch) when it builds it.
"""

from __future__ import annotations

import importlib.util

from facesr.service import metrics
from facesr.service.queue.base import QueueBackend
from facesr.service.settings import ServiceSettings
from facesr.service.startup import StartupError


def build_embedded(settings: ServiceSettings) -> QueueBackend:
    """The in-process queue with a worker thread running the configured checkpoints.

    Raises:
        StartupError: a checkpoint is missing, corrupt, or two share a name; or FACESR_DEFAULT_MODEL is
            not among them. The message names the setting.
    """
    if importlib.util.find_spec("torch") is None:
        raise StartupError(
            "the embedded mode runs the model in this process, and this installation has no torch: "
            "install the model runtime (pip install 'facesr[model]') or set FACESR_REDIS_URL to serve "
            "the API alone in front of `facesr worker` processes"
        )
    from facesr.service.queue.memory_backend import InProcessQueue
    from facesr.service.worker.engine import load_served_engines
    from facesr.service.worker.loop import Worker

    engines = load_served_engines(settings)
    if settings.default_model and settings.default_model not in engines:
        raise StartupError(
            f"FACESR_DEFAULT_MODEL={settings.default_model!r} is not among the loaded models "
            f"({', '.join(sorted(engines))}); name one of them or leave it empty"
        )
    worker_settings = settings.worker_settings()
    return InProcessQueue(
        settings.queue_settings(),
        lambda source: Worker(engines, source, worker_settings),
        events=metrics.PrometheusQueueEvents(),
    )


def build_backend(settings: ServiceSettings) -> QueueBackend:
    """Redis queue when FACESR_REDIS_URL is set; otherwise the embedded queue plus an in-process worker."""
    if settings.embedded:
        return build_embedded(settings)
    from facesr.service.queue.redis_backend import RedisQueue

    return RedisQueue(settings.queue_settings(), events=metrics.PrometheusQueueEvents())
