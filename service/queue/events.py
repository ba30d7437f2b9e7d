"""What the queue reports as it works, for whoever counts it (the service wires Prometheus in).

The queue library imports no metrics module: its users pass a :class:`QueueEvents` in. The base class
counts nothing, so a queue built without one works the same, only silently.
"""

from __future__ import annotations


class QueueEvents:
    """Hooks called by the queue; override the ones worth counting. Each must be cheap and never raise."""

    def late_reply(self) -> None:
        """A reply arrived after its caller stopped waiting (deadline, disconnect) and was dropped."""

    def redelivered(self, count: int) -> None:
        """``count`` jobs of a dead or stalled worker were taken over by another worker."""

    def dead_lettered(self, count: int) -> None:
        """``count`` jobs exceeded their delivery limit and were moved to the dead-letter stream."""

    def malformed(self, kind: str) -> None:
        """A value read back from Redis could not be decoded and was set aside; ``kind`` is "job" (a stream
        entry, dead-lettered), "heartbeat" (ignored) or "reply" (dropped)."""


#: The default: nothing is counted.
SILENT = QueueEvents()
