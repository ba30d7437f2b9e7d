"""The model worker: takes batches from a job source, runs the model, answers every job.

Modules: ``settings`` (its knobs, built by the service settings), ``engine`` (what it needs from a model,
and loading checkpoints into engines), ``isolation`` (failure isolation in a batch), ``loop`` (the
:class:`~facesr.service.worker.loop.Worker`), ``process`` (a Redis worker process as `facesr worker` runs
it). Only ``settings`` is free of torch; nothing is imported here, so importing it costs nothing.
"""
