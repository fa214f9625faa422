"""The HTTP ingress deployment: the API (serving/api.py) over handles to the model deployments.

It routes and checks requests only, so it imports no model, tokenizer or data library: an
ingress replica starts fast and stays small.
"""

from __future__ import annotations

import asyncio

from ray import serve

from lmplatform.serving.api import ApiError, Limits, make_app
from lmplatform.serving.security import AuthConfig


@serve.deployment(max_ongoing_requests=512)
@serve.ingress()
class Ingress:
    def __init__(
        self,
        routes: dict,
        shared: list[str],
        fill_mask=None,
        generate=None,
        max_inputs: int = 64,
        max_body_bytes: int = 1_000_000,
        auth: dict | None = None,
        cors_origins: list[str] | None = None,
        limits: dict | None = None,
    ):
        self.auth = AuthConfig.model_validate(auth or {})
        self.cors_origins = cors_origins or []
        self.limits = Limits.model_validate(limits or {})
        # a task with its own application (one hop) comes as (app, deployment) names
        self.routes = {
            t: serve.get_deployment_handle(h[1], app_name=h[0])
            if isinstance(h, tuple | list)
            else h
            for t, h in routes.items()
        }
        self.shared = set(shared)
        self.fill = fill_mask
        self.gen = generate
        self._gen_model: dict | None = None
        self.max_inputs = max_inputs
        self.max_body_bytes = max_body_bytes

    def __serve_build_asgi_app__(self):
        # built in the replica, after __init__: the routes call this instance's methods
        return make_app(
            self,
            self.max_body_bytes,
            auth=self.auth,
            cors_origins=self.cors_origins,
            limits=self.limits,
        )

    async def ready(self) -> bool:
        try:
            calls = [self._info(t) for t in self.routes]
            calls += [h.stats.remote() for h in (self.fill, self.gen) if h is not None]
            await asyncio.gather(*calls)
            return True
        except Exception:
            return False

    async def problems(self) -> list[str]:
        from lmplatform.serving.deployments import task_problems

        return task_problems(await self.tasks())

    async def _info(self, task: str) -> dict:
        h = self.routes[task]
        return await (h.info.remote(task) if task in self.shared else h.info.remote())

    async def tasks(self) -> list[dict]:
        return list(await asyncio.gather(*[self._info(t) for t in sorted(self.routes)]))

    async def predict(self, task: str, inputs: list, options: dict) -> dict:
        h = self.routes.get(task)
        if h is None:
            known = ", ".join(sorted(self.routes)) or "none"
            raise ApiError(404, "not_found", f"unknown task {task!r} (served: {known})")
        if task in self.shared:
            out = await _call(lambda: h.predict.remote(task, inputs, options), task)
        else:
            out = await _call(lambda: h.predict.remote(inputs, options), task)
        return raise_error(out)

    async def fill_mask(self, inputs: list[str], top_k: int) -> dict:
        if self.fill is None:
            raise ApiError(
                404, "not_found", "no fill-mask model is deployed (serve.fill_mask_model)"
            )
        return raise_error(
            await _call(lambda: self.fill.predict.remote(inputs, top_k), "fill-mask")
        )

    async def generate(self, inputs: list[str], **params) -> dict:
        if self.gen is None:
            raise ApiError(
                404, "not_found", "no generation model is deployed (serve.generate_model)"
            )
        return raise_error(
            await _call(lambda: self.gen.predict.remote(inputs, **params), "generate")
        )

    async def generate_stream(self, text: str, **params):
        """The model's events for one streamed input; a bad input is an ApiError before any
        event is sent. (A replica dying mid-stream ends the stream: it is not re-sent.)"""
        if self.gen is None:
            raise ApiError(
                404, "not_found", "no generation model is deployed (serve.generate_model)"
            )
        events = self.gen.options(stream=True).stream.remote(text, **params)
        first = raise_error(await events.__anext__())

        async def all_events():
            try:
                yield first
                async for event in events:
                    yield event
            finally:  # closed early (the client left): the replica stops decoding too
                events.cancel()

        return all_events()

    async def generation_model(self) -> dict | None:
        """The served GPT's name, version, registration time and context (None: none)."""
        if self.gen is None:
            return None
        if self._gen_model is None:  # fixed for the deployment's life: asked once
            self._gen_model = await _call(lambda: self.gen.model.remote(), "generate")
        return self._gen_model

    async def stats(self) -> dict:
        out = {}
        for t, h in self.routes.items():
            out[t] = await h.stats.remote()
        return out


RETRIES = 3  # attempts after the first when no replica could take a request
AFTER_A_DEATH = 1  # attempts after a replica died while it held the request
RETRY_WAIT_S = 0.2


async def _call(request, what: str):
    """A model deployment's answer. A replica that is unreachable or restarting is not the
    client's problem: predictions have no side effects, so the request is sent again (Serve's
    router picks a live replica). A replica that died *while answering* may have been killed
    by the request itself (out of memory): it is sent once more, and if that replica dies
    too, or Ray says the memory monitor killed it, it is not sent again (503 `unavailable`),
    so that one request cannot take down every replica in turn. Errors raised by our own
    code are not retried."""
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import DeploymentUnavailableError

    deaths = 0
    for attempt in range(RETRIES + 1):
        try:
            return await request()
        except (ActorUnavailableError, DeploymentUnavailableError) as e:
            last, died = e, False
        except RayActorError as e:
            last, died = e, True
            deaths += 1
        if died and (deaths > AFTER_A_DEATH or _killed_for_memory(last)):
            raise ApiError(
                503,
                "unavailable",
                f"{what}: the replica answering this request died ({_why(last)}); not sent "
                "again, since the request itself may be what kills replicas",
            ) from None
        if attempt == RETRIES:
            break
        await asyncio.sleep(RETRY_WAIT_S * (attempt + 1))
    raise ApiError(
        503, "unavailable", f"{what}: no replica could answer ({type(last).__name__}); retry"
    ) from None


# Ray's memory monitor's own words when it kills a worker; every unexpected death's message
# also lists "killed by the OOM killer" among possible causes, so that phrase proves nothing
MEMORY_KILL = ("killed by the memory monitor", "running low on memory")


def _killed_for_memory(e: Exception) -> bool:
    text = str(e).lower()
    return any(phrase in text for phrase in MEMORY_KILL)


def _why(e: Exception) -> str:
    return "out of memory" if _killed_for_memory(e) else type(e).__name__


def raise_error(out: dict) -> dict:
    if "error" in out:
        e = out["error"]
        default = "invalid_input" if e["status"] == 422 else "not_found"
        raise ApiError(e["status"], e.get("type", default), e["message"])
    return out
