"""In-process predictors behind the HTTP API, with no Ray: the comparison server of
`bench/serve_load.py`."""

from __future__ import annotations

from lmplatform.serving.api import ApiError
from lmplatform.serving.predictors import InputError


class LocalBackend:
    """In-process predictors behind the same API, one model call per request (no batching):
    the plain FastAPI + uvicorn server that `bench/serve_load.py` compares Ray Serve with."""

    def __init__(self, predictors: dict, max_inputs: int = 64):
        self.predictors, self.max_inputs = predictors, max_inputs

    async def ready(self) -> bool:
        return True

    async def problems(self) -> list[str]:
        return []

    async def tasks(self) -> list[dict]:
        return [p.info() for _, p in sorted(self.predictors.items())]

    async def predict(self, task: str, inputs: list, options: dict) -> dict:
        p = self.predictors.get(task)
        if p is None:
            raise ApiError(404, "not_found", f"unknown task {task!r}")
        try:
            preds = p.predict(p.parse(inputs, **options))
        except InputError as e:
            raise ApiError(422, "invalid_input", str(e)) from None
        return {
            "task": task,
            "model": {"name": p.ref.name, "version": p.ref.version},
            "predictions": preds,
        }

    async def fill_mask(self, inputs: list[str], top_k: int) -> dict:
        raise ApiError(404, "not_found", "no fill-mask model in this server")

    async def generate(self, inputs: list[str], **params) -> dict:
        raise ApiError(404, "not_found", "no generation model in this server")

    async def generate_stream(self, text: str, **params):
        raise ApiError(404, "not_found", "no generation model in this server")

    async def generation_model(self) -> dict | None:
        return None
