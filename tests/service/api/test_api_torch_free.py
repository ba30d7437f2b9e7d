"""In Redis mode the API process never runs a model, so it must never import torch (about 230 MB)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# Run in a fresh interpreter: this test session has imported torch long ago.
PROBE = textwrap.dedent(
    """
    import io, json, sys

    import numpy as np
    from fastapi.testclient import TestClient
    from PIL import Image

    import facesr.service.cli  # what `facesr serve` imports first
    from facesr.service.api.app import create_app
    from facesr.service.queue.redis_source import RedisJobSource
    from facesr.service.queue.source import WorkerInfo
    from facesr.service.settings import ServiceSettings

    settings = ServiceSettings(redis_url=sys.argv[1], queue_prefix=sys.argv[2], default_deadline_ms=500)
    # A worker that advertises a ready model but never computes: requests are admitted, encoded into the
    # stream, waited for and expired at their deadline, the whole API-side path of a job.
    silent_worker = RedisJobSource(settings.queue_settings())
    silent_worker.open("silent", ["tiny"])
    silent_worker.heartbeat(WorkerInfo(worker_id="silent", ready=True, models={"tiny": {"name": "tiny"}}), 60)
    face = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(face, format="PNG")
    statuses = {}
    with TestClient(create_app(settings)) as client:  # the lifespan connects the Redis queue
        statuses["healthz"] = client.get("/healthz").status_code
        statuses["readyz"] = client.get("/readyz").status_code
        statuses["metrics"] = client.get("/metrics").status_code
        statuses["models"] = client.get("/v1/models").status_code
        files = {"image": ("face.png", face.getvalue(), "image/png")}
        statuses["super_resolve"] = client.post("/v1/super-resolve", files=files).status_code
    heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "safetensors"))
    print(json.dumps({"statuses": statuses, "heavy": heavy}))
    """
)


@pytest.mark.redis
def test_the_api_process_in_redis_mode_imports_no_torch(redis_url: str) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", PROBE, redis_url, "torchfree"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    # The app really served, and a job went through the queue.
    assert report["statuses"] == {
        "healthz": 200,
        "readyz": 200,  # the silent worker is ready
        "metrics": 200,
        "models": 200,
        "super_resolve": 504,  # admitted and queued, never computed: expired at its deadline
    }
    assert report["heavy"] == [], f"the API process imported {report['heavy'][:5]}"


QUEUE_PROBE = textwrap.dedent(
    """
    import json, sys
    import facesr.service.queue
    import facesr.service.queue.memory_backend
    import facesr.service.queue.redis_backend
    import facesr.service.queue.redis_source
    print(json.dumps(sorted(sys.modules)))
    """
)


def test_the_queue_library_imports_no_torch_no_web_framework_and_no_metrics() -> None:
    """The queue is a library its users hand settings, events and a worker to; it imports none of them."""
    finished = subprocess.run(
        [sys.executable, "-c", QUEUE_PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert finished.returncode == 0, finished.stderr
    loaded = json.loads(finished.stdout.strip().splitlines()[-1])
    assert "facesr.service.queue.redis_backend" in loaded  # the probe did import the backends
    forbidden = ("torch", "fastapi", "starlette", "prometheus_client", "facesr.service.metrics")
    offending = [name for name in loaded if name.split(".")[0] in forbidden or name in forbidden]
    assert offending == []
    assert not [name for name in loaded if name.startswith(("facesr.service.worker.", "facesr.service.api"))]
