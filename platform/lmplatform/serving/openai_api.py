"""OpenAI-compatible completions for the served GPT (`serve.generate_model`):
`POST /v1/completions` and `GET /v1/models`, as OpenAI's API reference has them, so the `openai`
client, LangChain and other tools that speak that API work unchanged.

Requests go to the same generation deployment as /v1/generate (batched across requests,
streamed token by token, stopped on timeout), behind the same API keys, limits and admission.

- Taken: `model` (the served GPT's registry name, or name@version), `prompt` (a string or a
  list of strings), `max_tokens` (16), `temperature` (1), `top_p` (1), `n` (1), `stop` (a string
  or up to 4), `stream` (server-sent `text_completion` chunks, then `data: [DONE]`),
  `stream_options.include_usage`, and `user` (an end-user id for the provider's records; kept
  nowhere). Every choice is one sequence: `best_of` may only equal `n`.
- Refused with 422 naming the field, rather than silently ignored: `stream_options` without
  `stream`, `echo`, `suffix`,
  `logprobs`, `best_of` other than `n`, non-zero `presence_penalty` / `frequency_penalty`, a
  `logit_bias`, a `seed` (sampling here is batched with other requests, so not reproducible),
  and prompts of token ids (ids of another tokenizer would mean other words here).
- A prompt longer than the context keeps its newest tokens (`usage.prompt_tokens` counts what
  the model read), as /v1/generate does.
- Errors are the API's one body, `{"error": {"type", "message"}}`, which the openai client
  raises as its status's exception with the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import (
    BaseModel,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

from lmplatform.serving.api import (
    ERROR_RESPONSES,
    MIN_TEMPERATURE,
    ApiError,
    Backend,
    StrictBody,
    check_count,
    parse_body,
    request_body,
)

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}
"""Our finish reasons -> OpenAI's (end of text and a stop sequence are both `stop`)."""


class StreamOptions(StrictBody):
    include_usage: StrictBool = False


class CompletionRequest(StrictBody):
    model: StrictStr
    prompt: Any
    """A string or a non-empty list of strings."""
    max_tokens: Annotated[StrictInt, Field(ge=1, le=512)] | None = 16
    temperature: Annotated[StrictFloat | StrictInt, Field(ge=0, le=2)] | None = 1.0
    top_p: Annotated[StrictFloat | StrictInt, Field(gt=0, le=1)] | None = 1.0
    n: Annotated[StrictInt, Field(ge=1, le=16)] | None = 1
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=4)] | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    # OpenAI's fields this server does not implement: refused when set to anything but a
    # value that asks for nothing (see `refused`)
    echo: StrictBool | None = None
    suffix: StrictStr | None = None
    logprobs: StrictInt | None = None
    best_of: StrictInt | None = None
    presence_penalty: StrictFloat | StrictInt | None = None
    frequency_penalty: StrictFloat | StrictInt | None = None
    logit_bias: dict[str, Any] | None = None
    seed: StrictInt | None = None

    @field_validator("prompt")
    @classmethod
    def _texts(cls, p: Any) -> list[str]:
        if isinstance(p, str):
            return [p]
        if isinstance(p, list) and p and all(isinstance(x, str) for x in p):
            return p
        if isinstance(p, list) and p and all(isinstance(x, int | list) for x in p):
            raise ValueError("token-id prompts are not supported: send the text")
        raise ValueError("expected a string or a non-empty list of strings")

    @field_validator("temperature")
    @classmethod
    def _not_tiny(cls, t: float | None) -> float | None:
        if t is not None and 0 < t < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return t

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not 1 <= len(s) <= 64 for s in stops):
            raise ValueError("each stop sequence must have 1 to 64 characters")
        return stops

    def refused(self) -> str | None:
        """The first field set to something this server does not do, and why."""
        n = self.n or 1
        checks = [
            ("echo", bool(self.echo), "echoing the prompt is not supported"),
            ("suffix", self.suffix is not None, "insertion (suffix) is not supported"),
            ("logprobs", self.logprobs is not None, "log probabilities are not returned"),
            ("best_of", self.best_of not in (None, n), "must equal n (one sequence per choice)"),
            ("presence_penalty", bool(self.presence_penalty), "penalties are not supported"),
            ("frequency_penalty", bool(self.frequency_penalty), "penalties are not supported"),
            ("logit_bias", bool(self.logit_bias), "logit_bias is not supported"),
            ("seed", self.seed is not None, "sampling is batched across requests: no seed"),
        ]
        return next((f"{field}: {why}" for field, bad, why in checks if bad), None)


class Choice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lmplatform"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def add_openai_routes(app: FastAPI, backend: Backend) -> None:
    """GET /v1/models and POST /v1/completions over the backend's generation model."""

    @app.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
    async def models():
        served = await backend.generation_model()
        return {"data": [_card(served)] if served else []}

    @app.post(
        "/v1/completions",
        response_model=Completion,
        responses=ERROR_RESPONSES,
        openapi_extra=request_body(CompletionRequest),
    )
    async def completions(request: Request):
        body = await parse_body(request, CompletionRequest)
        if why := body.refused():
            raise ApiError(422, "invalid_input", why)
        if body.stream_options is not None and not body.stream:
            raise ApiError(422, "invalid_input", "stream_options: only with stream: true")
        served = await _served(backend, body.model)
        prompts = [p for p in body.prompt for _ in range(body.n or 1)]  # choice i*n+j
        check_count(backend, len(prompts))
        params = _params(body)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served}
        if not body.stream:
            out = await backend.generate(prompts, **params)
            return _completion(head, out["predictions"], body.n or 1)
        streams = await _open_streams(backend, prompts, params)
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _sse(head, streams, body.n or 1, usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )


async def _open_streams(backend: Backend, prompts: list[str], params: dict) -> list:
    """Every choice's event stream, opened together (a bad request fails here, as a status,
    before the first byte); when one fails the others are closed, so none decodes on."""
    opened = await asyncio.gather(
        *(backend.generate_stream(p, **params) for p in prompts), return_exceptions=True
    )
    failed = [e for e in opened if isinstance(e, BaseException)]
    if failed:
        await _close([s for s in opened if not isinstance(s, BaseException)])
        raise failed[0]
    return opened


async def _close(streams: list) -> None:
    for s in streams:
        with contextlib.suppress(Exception):
            await s.aclose()


def _card(served: dict) -> dict:
    created = served.get("created")
    when = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp() if created else 0
    return {"id": served["name"], "created": int(when)}


async def _served(backend: Backend, model: str) -> str:
    """The model id a request names, checked against the served GPT (404 if another)."""
    served = await backend.generation_model()
    if served is None:
        raise ApiError(404, "not_found", "no generation model is deployed (serve.generate_model)")
    if model not in (served["name"], f"{served['name']}@{served['version']}"):
        raise ApiError(
            404,
            "not_found",
            f"model {model!r} is not served here (served: {served['name']}, "
            f"version {served['version']})",
        )
    return model


def _params(body: CompletionRequest) -> dict:
    """The generation deployment's parameters (OpenAI's defaults where the body has null)."""
    return {
        "max_new_tokens": body.max_tokens or 16,
        "temperature": float(1.0 if body.temperature is None else body.temperature),
        "top_k": None,
        "top_p": float(body.top_p or 1.0),
        "stop": body.stop,
    }


def _completion(head: dict, predictions: list[dict], n: int) -> dict:
    choices = [
        {"text": p["text"], "index": i, "finish_reason": FINISH[p["finish_reason"]]}
        for i, p in enumerate(predictions)
    ]
    return {**head, "choices": choices, "usage": _usage(predictions, n)}


def _usage(finals: list[dict], n: int) -> dict:
    """Each prompt counted once (its n choices read the same prompt), every choice's tokens
    (a choice without its final event counts none)."""
    prompt = sum(p.get("prompt_tokens", 0) for p in finals[::n])
    completion = sum(p.get("tokens", 0) for p in finals)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _sse(head: dict, streams: list, n: int, usage: bool) -> AsyncIterator[str]:
    """The chunks of every choice as their tokens come, each choice ending with its
    finish_reason; the usage chunk when asked for; then `[DONE]`."""
    # with include_usage, every chunk but the last says "usage": null (OpenAI's format)
    head = {**head, "object": "text_completion", **({"usage": None} if usage else {})}
    finals: list[dict] = [{} for _ in streams]
    try:
        async for i, event in _merged(streams):
            if "error" in event:  # a timeout mid-stream: OpenAI's clients raise on this chunk
                yield _data({"error": {k: v for k, v in event["error"].items() if k != "status"}})
                return
            done = event.get("done", False)
            if done:
                finals[i] = event
            reason = FINISH[event["finish_reason"]] if done else None
            text = "" if done else event["text"]
            choice = {"text": text, "index": i, "logprobs": None, "finish_reason": reason}
            yield _data({**head, "choices": [choice]})
    finally:  # the client left, or an error ended it: no stream decodes on for nobody
        await _close(streams)
    if usage:
        yield _data({**head, "choices": [], "usage": _usage(finals, n)})
    yield "data: [DONE]\n\n"


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def _merged(streams: list) -> AsyncIterator[tuple[int, dict]]:
    """(choice index, event) from several event streams, in the order they arrive."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, events) -> None:
        try:
            async for event in events:
                await queue.put((i, event))
        except Exception as e:  # a replica lost mid-stream: said to the client, not hidden
            await queue.put((i, {"error": {"type": "unavailable", "message": str(e)}}))
        finally:
            await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        live = len(tasks)
        while live:
            i, event = await queue.get()
            if event is None:
                live -= 1
            else:
                yield i, event
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
