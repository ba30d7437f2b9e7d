"""`facesr bench-service`: the service measured against the raw model, in one run.

Modules: ``load`` (closed- and open-loop HTTP load, latency summaries), ``counters`` (the worker's own
Prometheus counters: mean batch, per-phase times), ``stack`` (starting the service embedded or as API +
workers + Redis, in subprocesses), ``raw`` (the model in-process at the service's runner layout),
``report`` (tables, CSV, JSON, the README section), ``run`` (the whole benchmark) and ``command`` (the CLI).
Nothing here is imported by the service itself.
"""
