"""Every Redis key the queue uses, derived from one configurable prefix.

```
{p}:jobs:{model}     stream of jobs for one model; consumer group "workers"
{p}:reply:{api_id}   list of encoded replies for one API process (TTL refreshed on every push)
{p}:cancel:{rid}     present when the job's caller went away (TTL)
{p}:hb:{worker_id}   JSON heartbeat of one worker: readiness, models, throughput (TTL)
{p}:workers          sorted set worker_id -> heartbeat expiry time, to list workers without SCAN
{p}:dead             stream of jobs that exhausted their deliveries (capped length)
```
The small input image rides inside the stream entry, so no separate input blob (and no claim-check) is needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

GROUP: Final = "workers"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(kind: str, value: str) -> str:
    """Refuse names that could escape their key (colons, spaces, wildcards) with a clear error."""
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"invalid {kind} {value!r}: use 1-128 characters from letters, digits, '.', '_' and '-'"
        )
    return value


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix; several deployments can share a Redis with different prefixes."""

    prefix: str

    def __post_init__(self) -> None:
        check_name("queue prefix", self.prefix)

    def jobs(self, model: str) -> str:
        return f"{self.prefix}:jobs:{check_name('model name', model)}"

    def reply(self, api_id: str) -> str:
        return f"{self.prefix}:reply:{api_id}"

    def cancel(self, request_id: str) -> str:
        return f"{self.prefix}:cancel:{request_id}"

    def heartbeat(self, worker_id: str) -> str:
        return f"{self.prefix}:hb:{worker_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"
