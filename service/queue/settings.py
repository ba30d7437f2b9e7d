"""The queue's knobs as one object, shared by the API side and the worker side of the Redis queue.

`ServiceSettings.queue_settings()` is where they are made; the queue has no defaults of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from facesr.service.queue.keys import check_name

#: URL schemes redis-py accepts for a queue.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


#: Query parameters of a Redis URL that carry credentials (redis-py reads both forms).
_SECRET_PARAMETERS = frozenset({"password", "username"})


def redacted_url(url: str) -> str:
    """``url`` fit for a log line: any password (``user:pass@`` or ``?password=``) replaced by ``***``.

    The host stays, for operators; client-facing messages never carry the URL at all.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user + ':' if user else ':'}***@{host}" if ":" in userinfo else f"***@{host}"
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        redacted = [(key, "***" if key.lower() in _SECRET_PARAMETERS else value) for key, value in pairs]
        query = urlencode(redacted, safe="*")
        return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
    except ValueError:
        return "<unparsable redis url>"


def socket_options(url: str) -> dict[str, bool]:
    """TCP keep-alive for TCP URLs; redis-py refuses the option for a unix socket."""
    return {} if url.startswith("unix://") else {"socket_keepalive": True}


@dataclass(frozen=True, kw_only=True)
class QueueSettings:
    """Admission, delivery and retention rules of the queue.

    Attributes:
        url: Redis URL (redis://, rediss:// or unix://); empty for the in-process queue.
        prefix: prefix of every Redis key (see `keys.py`).
        max_queue: jobs waiting or running before admission is refused (QueueFull, HTTP 429).
        max_batch_size: most entries a worker reads for one batch.
        max_deliveries: deliveries of one job before it is dead-lettered.
        claim_idle_ms: an entry unacknowledged this long is taken over from its (dead) worker.
        reply_ttl_s: lifetime of an unread reply list.
        job_ttl_s: lifetime of cancel marks; covers the longest deadline.
    """

    url: str
    prefix: str
    max_queue: int
    max_batch_size: int
    max_deliveries: int
    claim_idle_ms: int
    reply_ttl_s: float
    job_ttl_s: float

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(REDIS_SCHEMES):
            raise ValueError(f"queue url must start with one of {', '.join(REDIS_SCHEMES)}")
        check_name("queue prefix", self.prefix)
        for name in ("max_queue", "max_batch_size", "max_deliveries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.claim_idle_ms < 100:
            raise ValueError(f"claim_idle_ms must be >= 100, got {self.claim_idle_ms}")
        if self.reply_ttl_s <= 0 or self.job_ttl_s <= 0:
            raise ValueError("reply_ttl_s and job_ttl_s must be > 0")
