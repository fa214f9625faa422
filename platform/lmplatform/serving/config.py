"""The serving config: registry, HTTP, batching, limits, autoscaling, shared encoders."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmplatform.config import StrictModel
from lmplatform.serving.security import AuthConfig, exposure_problem
from lmplatform.train.config import CompileBackend


class AutoscalingConfig(StrictModel):
    min_replicas: int = Field(1, ge=0)
    """Replicas kept when idle."""
    max_replicas: int = Field(2, ge=1)
    """Upper bound on replicas."""
    target_ongoing_requests: float = Field(4.0, gt=0)
    """Ongoing requests per replica that autoscaling aims for."""
    upscale_delay_s: float = Field(3.0, ge=0)
    """Load must stay high this long before a replica is added."""
    downscale_delay_s: float = Field(60.0, ge=0)
    """Load must stay low this long before a replica is removed."""

    @model_validator(mode="after")
    def _check(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas={self.min_replicas} exceeds max_replicas={self.max_replicas}"
            )
        return self


MAX_BATCH_SIZE = 16
"""Dynamic batching: most inputs per model call, unless a serve config says otherwise."""
BATCH_WAIT_S = 0.01
"""Dynamic batching: longest wait for a batch to fill, unless a serve config says otherwise."""


class ServeConfig(StrictModel):
    registry: str = "registry"
    """Model registry root the deployments load from (each deployment opens it: the ingress
    process imports no storage libraries)."""
    host: str = "127.0.0.1"
    """HTTP bind address. Anything but loopback needs `auth` keys (or
    `auth.allow_unauthenticated`)."""
    auth: AuthConfig = AuthConfig()
    """API keys for every route but /healthz (serving/security.py)."""
    cors_origins: list[str] = []
    """Browser origins allowed to call the API (CORS); empty: none."""
    port: int = Field(8000, ge=1, le=65535)
    """HTTP port."""
    tasks: list[str] | None = None
    """Tasks to serve (null: every task with a promoted `best`)."""
    fill_mask_model: str | None = None
    """Pretrained BERT 'name[@version]' for /v1/fill-mask."""
    generate_model: str | None = None
    """Pretrained GPT 'name[@version]' for /v1/generate."""
    max_batch_size: int = Field(MAX_BATCH_SIZE, ge=1, le=4096)
    """Dynamic batching: most inputs per model call."""
    batch_wait_timeout_s: float = Field(BATCH_WAIT_S, ge=0.0, le=10.0)
    """Dynamic batching: longest wait for a batch to fill."""
    compile: CompileBackend | None = None
    """torch.compile each task model with this backend (null: eager); shapes are dynamic, so a
    replica does not recompile per input length. Shared-encoder groups run eager."""
    quantize: dict[str, Literal["int8"]] = {}
    """Per task (`"*"`: every task served on its own): `int8` serves it dynamically quantized
    on CPU replicas (torch.ao: every Linear layer's weights in int8, its inputs quantized per
    batch); measured 1.35x the fp32 throughput at 32 clients for sst2 BERT-mini, +0.11 points
    (docs/serving.md#int8). Refused on GPU replicas, with `compile`, for a task of a
    shared-encoder group and for a task `tasks` does not serve."""
    max_inputs: int = Field(64, ge=1)
    """Most inputs per request (413 above)."""
    max_body_bytes: int = Field(1_000_000, ge=1024)
    """Largest request body (413 above)."""
    max_queued_requests: int = Field(256, ge=1, le=100_000)
    """POSTs in progress per ingress replica; more get an immediate 503 `overloaded` with
    Retry-After instead of waiting."""
    request_timeout_s: float = Field(30.0, gt=0, le=3600)
    """A POST not answered in this time gets 504 `timeout` (its work is cancelled)."""
    retry_after_s: int = Field(1, ge=0, le=3600)
    """The Retry-After of an `overloaded` 503."""
    autoscaling: AutoscalingConfig = AutoscalingConfig()
    """Replica autoscaling per deployment."""
    shared_encoder_groups: list[list[str]] = Field(default_factory=list)
    """Groups of frozen-feature tasks from the same pretrained model that share one encoder
    deployment (one encoder forward per batch for all of them); each task at most once."""
    adapter_groups: list[list[str]] = Field(default_factory=list)
    """Groups of tasks whose bests are LoRA adapter versions on the same pretrained model: one
    deployment holds that base once and every task's adapters, answers them all in shared
    forwards, and swaps a promoted task's adapters without reloading the base; each task at
    most once (here or in shared_encoder_groups)."""
    replica_cpus: float = Field(1.0, ge=0)
    """CPUs per model replica."""
    replica_gpus: float = Field(0.0, ge=0)
    """GPUs per model replica (on a GPU cluster: 1, or a fraction to pack replicas)."""
    ingress_cpus: float = Field(0.0, ge=0)
    """CPUs per HTTP ingress replica (it only routes)."""
    refresh_s: float = Field(2.0, ge=0)
    """Seconds between registry checks for a new `best` (hot swap); 0: only on --refresh."""
    refresh_token: str = ""
    """Any new value makes running replicas check the registry now (jobs/deploy.py --refresh)."""
    health_check_period_s: float = Field(10.0, gt=0)
    """Seconds between Serve health checks of model replicas."""
    one_hop: bool = True
    """Each task's model replica answers its HTTP route itself: a Serve application per task
    at `<route_prefix>/v1/predict/<task>` (named `<app_name>-<task>`), so a request crosses
    no replica-to-replica hop. `false`: every task behind the one ingress (one application,
    what a single `serve deploy` entry can hold; a hop more per request). Shared-encoder
    groups always sit behind the ingress."""
    app_name: str = "lmplatform"
    """Serve application name."""
    route_prefix: str = "/"
    """Serve route prefix."""

    def groups(self) -> list[list[str]]:
        """Every group of tasks served by one deployment (shared encoders, then adapters)."""
        return [*self.shared_encoder_groups, *self.adapter_groups]

    def grouped(self) -> set[str]:
        return {t for g in self.groups() for t in g}

    def quantize_of(self, task: str) -> str | None:
        """How `task`'s model is quantized (None: as trained; a group always is)."""
        if task in self.grouped():
            return None
        return self.quantize.get(task, self.quantize.get("*"))

    def _check_quantize(self) -> None:
        from lmplatform.registry.store import check_name

        if not self.quantize:
            return
        for t in self.quantize:
            if t != "*":
                check_name(t, "quantize task name")
        unserved = sorted(set(self.quantize) - {"*", *(self.tasks or self.quantize)})
        if unserved:
            raise ValueError(f"quantize names {unserved}, which `tasks` does not serve")
        why = (
            "int8 runs on CPU replicas: set replica_gpus=0"
            if self.replica_gpus
            else "torch.compile of a quantized model is not supported: drop compile"
            if self.compile
            else None
        )
        if why:
            raise ValueError(f"quantize {self.quantize}: {why}")
        grouped = sorted(self.grouped().intersection(self.quantize))
        if grouped:
            raise ValueError(
                f"quantize: {grouped} are served in a group (shared_encoder_groups, "
                "adapter_groups), as trained; quantize a task served on its own"
            )

    @model_validator(mode="after")
    def _groups(self) -> ServeConfig:
        from lmplatform.registry.store import check_name, check_ref

        problem = exposure_problem(self.host, self.auth)
        if problem:
            raise ValueError(problem)

        # every name becomes a registry path: no traversal through a served name
        for t in [*(self.tasks or []), *self.grouped()]:
            check_name(t, "task name")
        for what in ("fill_mask_model", "generate_model"):
            if getattr(self, what) is not None:
                check_ref(getattr(self, what), what)
        self._check_quantize()
        seen: set[str] = set()
        for g in self.groups():
            if not g:
                raise ValueError("shared_encoder_groups / adapter_groups: a group is empty")
            dup = seen.intersection(g) or {t for t in g if g.count(t) > 1}
            if dup:
                raise ValueError(
                    f"shared_encoder_groups / adapter_groups: {sorted(dup)} in more than one place"
                )
            seen.update(g)
        return self
