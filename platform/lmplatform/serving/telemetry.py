"""Prometheus metrics of the model deployments, through Ray Serve's metrics API (exported by
every node's metrics agent with Ray's own, prefixed `ray_`; Serve adds deployment, replica and
application tags):

- `lmplatform_requests_total{task, version, outcome}`: requests answered, `outcome` ok or
  invalid (a 4xx from the task's own checks);
- `lmplatform_request_latency_ms{task, version}`: time in the replica, parsing to answer
  (histogram);
- `lmplatform_batch_inputs{task, version}`: inputs per model call, after dynamic batching
  (histogram: how full batches are);
- `lmplatform_model_version{task, version}`: 1 for the version a replica serves, 0 for one it
  swapped out;
- `lmplatform_model_load_failures_total{task, version}`: a promoted version a replica could not
  load (it keeps serving the one before: alert on this).

`task` is the task name, or the route (`fill-mask`, `generate`) for pretrained models.
"""

from __future__ import annotations

import time

LATENCY_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
BATCH_INPUTS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


class ServingMetrics:
    """One per replica (Ray metrics are per process)."""

    def __init__(self):
        from ray.serve import metrics

        tags = ("task", "version")
        self._version_set: dict[str, float] = {}  # task -> when its version gauge was last set
        self.requests = metrics.Counter(
            "lmplatform_requests_total",
            description="Requests answered, by task, model version and outcome (ok, invalid).",
            tag_keys=(*tags, "outcome"),
        )
        self.latency = metrics.Histogram(
            "lmplatform_request_latency_ms",
            description="Milliseconds in the replica from parsing to the answer.",
            boundaries=LATENCY_MS,
            tag_keys=tags,
        )
        self.batch = metrics.Histogram(
            "lmplatform_batch_inputs",
            description="Inputs per model call after dynamic batching.",
            boundaries=BATCH_INPUTS,
            tag_keys=tags,
        )
        self.version = metrics.Gauge(
            "lmplatform_model_version",
            description="1 for the model version a replica serves, 0 after it was swapped out.",
            tag_keys=tags,
        )

        self.load_failures = metrics.Counter(
            "lmplatform_model_load_failures_total",
            description="Promoted versions a replica could not load (it serves the one before).",
            tag_keys=tags,
        )

    def load_failed(self, task: str, version: str) -> None:
        self.load_failures.inc(1, tags={"task": task, "version": version})

    def answered(self, task: str, version: str, ok: bool, since: float) -> None:
        tags = {"task": task, "version": version}
        self.requests.inc(1, tags={**tags, "outcome": "ok" if ok else "invalid"})
        self.latency.observe(1000 * (time.perf_counter() - since), tags=tags)
        # a gauge set only while the replica starts was never exported (seen with Ray 2.60
        # when no swap followed): set it again now and then while the replica answers
        now = time.monotonic()
        if now - self._version_set.get(task, 0.0) > 5.0:
            self.version.set(1, tags=tags)
            self._version_set[task] = now

    def model_call(self, task: str, version: str, inputs: int) -> None:
        self.batch.observe(inputs, tags={"task": task, "version": version})

    def serving(self, task: str, version: str, replaced: str | None = None) -> None:
        if replaced is not None:
            self.version.set(0, tags={"task": task, "version": replaced})
        self.version.set(1, tags={"task": task, "version": version})
