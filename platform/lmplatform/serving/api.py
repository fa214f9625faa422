"""The HTTP API as a contract: request and response models, error bodies, limits.

`make_app(backend, max_body_bytes)` builds the FastAPI app; the backend (Ray Serve handles in production, the
predictors in-process for the plain-FastAPI comparison of `bench/serve_load.py`) does the work.
Every error is `{"error": {"type", "message"}}`:

- 400 `malformed_json`: the body is not JSON (or not UTF-8, or has an integer of more than
  4,300 digits);
- 401 `unauthorized`: API keys are configured and the request has none or a wrong one;
- 404 `not_found`: unknown task or route (405 `method_not_allowed` for a known route);
- 413 `too_large`: more than `max_inputs` inputs, or a body over `max_body_bytes`;
- 415 `unsupported_media_type`: a POST whose Content-Type is not `application/json`;
- 422 `invalid_input`: wrong types, missing or unknown fields, empty input, wrong shape for
  the task;
- 503 `overloaded` (with Retry-After): `max_queued_requests` POSTs already in progress;
  503 `unavailable`: models not loaded (healthz), or no replica could answer;
- 504 `timeout`: no answer within `request_timeout_s`.

Nothing a client sends is answered with a 500; 503/504 say the server is busy or slow.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, Protocol, TypeVar, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
    field_validator,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmplatform.serving.security import Admission, AuthConfig, Guard, KeyRing
from lmplatform.tasks import TASK_TYPES

M = TypeVar("M", bound=BaseModel)


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# ----------------------------------------------------------------------------- requests


class FillMaskRequest(StrictBody):
    inputs: Annotated[list[StrictStr], Field(min_length=1)]
    """Texts with at least one [MASK]."""
    top_k: Annotated[StrictInt, Field(ge=1, le=100)] = 5


MIN_TEMPERATURE = 1e-3


class GenerateRequest(StrictBody):
    inputs: Annotated[list[StrictStr], Field(min_length=1)]
    max_new_tokens: Annotated[StrictInt, Field(ge=1, le=512)] = 32
    temperature: Annotated[StrictFloat | StrictInt, Field(ge=0, le=10)] = 0.0
    """0: greedy; otherwise at least 0.001 (below it the softmax overflows to NaN)."""
    top_k: Annotated[StrictInt, Field(ge=1)] | None = None
    top_p: Annotated[StrictFloat | StrictInt, Field(gt=0, le=1)] = 1.0
    """Nucleus sampling: draw from the most likely tokens holding this much probability."""
    stop: Annotated[
        list[Annotated[StrictStr, Field(min_length=1, max_length=64)]], Field(max_length=4)
    ] = []
    """Up to 4 strings; the text ends before the first one produced (not included)."""
    stream: StrictBool = False
    """Server-sent events (one input only): `{"text": <new text>}` as tokens come, then the
    final `{"text", "tokens", "prompt_tokens", "truncated", "finish_reason", "done": true}`."""

    @field_validator("temperature")
    @classmethod
    def _not_tiny(cls, t: float) -> float:
        if 0 < t < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return t


# ----------------------------------------------------------------------------- responses


class ModelRef(BaseModel):
    name: str
    version: str


class ClassScores(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class ModelInfo(ModelRef):
    metric: str | None = None
    value: float | None = None
    per_class: dict[str, ClassScores] | None = None
    """Dev-set scores per class (per entity type for NER) of the served version."""


class TaskInfo(BaseModel):
    task: str
    type: str
    """Its task type (lmplatform.tasks.TASK_TYPES)."""
    labels: list[str]
    model: ModelInfo
    quantized: Literal["int8"] | None = None
    """How the replica serves it: `int8` (dynamic quantization, the serve config's `quantize`)
    or null (as trained)."""
    load_error: str | None = None
    """Set when the task's promoted `best` could not be loaded (a checksum mismatch, a failed
    smoke test): `model` is the version still served, this says which one failed and why."""


class TasksResponse(BaseModel):
    tasks: list[TaskInfo]


class MaskCandidate(BaseModel):
    token: str
    score: float


class FillMaskPrediction(BaseModel):
    masks: list[list[MaskCandidate]]
    """Per [MASK], in order: the top_k candidates."""
    truncated: bool = False


class FillMaskResponse(BaseModel):
    model: ModelRef
    predictions: list[FillMaskPrediction]


class Generation(BaseModel):
    text: str
    tokens: int
    prompt_tokens: int
    """Tokens of the prompt the model read (its newest part when it had to be cut)."""
    truncated: bool = False
    finish_reason: Literal["eos", "stop", "length"] = "length"
    """End of text, a stop sequence, or max_new_tokens."""


class GenerateResponse(BaseModel):
    model: ModelRef
    predictions: list[Generation]


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    """`degraded`: answering, but something needs an operator (see `problems`)."""
    problems: list[str] = []
    """What is degraded, without details an unauthenticated caller should not see (a task
    serving an older version than its promoted best, an unreadable API key file)."""


class Limits(BaseModel):
    """How much an API instance takes on at once (ServeConfig's fields of the same names)."""

    max_queued_requests: int = 256
    request_timeout_s: float = 30.0
    retry_after_s: int = 1


OPTIONS = ("is_split_into_words", "num_beams", "max_new_tokens")
"""Request fields that are options of the prediction, not inputs."""


def _union(types: list) -> Any:
    unique = list(dict.fromkeys(types))
    return unique[0] if len(unique) == 1 else Union[tuple(unique)]  # noqa: UP007


def predict_models() -> tuple[type[BaseModel], type[BaseModel]]:
    """Request and response of /v1/predict/{task}: one route for every task type, so one input
    is any task type's input JSON (the task's own type checks it: 422 if it does not fit), and
    one prediction any task type's prediction. Built from the task-type table when an app is."""
    inputs = _union([t.input_schema for t in TASK_TYPES.values()])
    predictions = _union([t.prediction_schema for t in TASK_TYPES.values()])
    request = create_model(
        "PredictRequest",
        __base__=StrictBody,
        __doc__="classification: strings; pair_classification: [text_a, text_b]; "
        "token_classification: strings, or lists of words with `is_split_into_words`; srl: "
        '{"words": [...], "predicate": i} or {"text": "...", "predicate": i}; seq2seq: source '
        "texts, with optional `num_beams` and `max_new_tokens`.",
        inputs=(Annotated[list[inputs], Field(min_length=1)], ...),
        is_split_into_words=(StrictBool, False),
        num_beams=(StrictInt | None, None),
        max_new_tokens=(StrictInt | None, None),
    )
    response = create_model(
        "PredictResponse",
        task=(str, ...),
        model=(ModelRef, ...),
        predictions=(list[predictions], ...),
    )
    return request, response


# ----------------------------------------------------------------------------- errors


class ApiError(Exception):
    def __init__(self, status: int, type_: str, message: str):
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message


def error_response(status: int, type_: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message}}, status_code=status)


_STATUS_TYPES = {
    400: "malformed_json",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    422: "invalid_input",
    503: "unavailable",
}


class BodyLimit:
    """ASGI middleware: bodies over `max_bytes` get 413 before anything parses them (also for
    chunked uploads with no Content-Length)."""

    def __init__(self, app, max_bytes):
        self.app, self._max = app, max_bytes  # an int, or a callable giving it

    @property
    def max_bytes(self) -> int:
        return self._max() if callable(self._max) else self._max

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_large = error_response(413, "too_large", f"request body exceeds {self.max_bytes} bytes")
        if declared is not None:
            try:
                if int(declared) > self.max_bytes:
                    return await too_large(scope, receive, send)
            except ValueError:
                return await error_response(400, "malformed_request", "bad Content-Length")(
                    scope, receive, send
                )
        body, more = [], True
        size = 0
        while more:  # read it all (bounded), then replay it to the app
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await too_large(scope, receive, send)
            body.append(chunk)
            more = msg.get("more_body", False)
        data = b"".join(body)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class Backend(Protocol):
    max_inputs: int

    async def ready(self) -> bool: ...
    async def problems(self) -> list[str]: ...
    async def tasks(self) -> list[dict]: ...
    async def predict(self, task: str, inputs: list, options: dict) -> dict: ...
    async def fill_mask(self, inputs: list[str], top_k: int) -> dict: ...
    async def generate(self, inputs: list[str], **params) -> dict: ...
    async def generate_stream(self, text: str, **params) -> AsyncIterator[dict]: ...
    async def generation_model(self) -> dict | None: ...


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in {
        400: "Malformed JSON",
        401: "Missing or wrong API key (when keys are configured)",
        404: "Unknown task or route",
        413: "Too many inputs or too large a body",
        415: "Content-Type is not application/json",
        503: "Overloaded: too many requests in progress (Retry-After)",
        504: "No answer within request_timeout_s",
        422: "Wrong types, empty input, or wrong shape for the task",
    }.items()
}


def request_body(model: type[BaseModel]) -> dict:
    """OpenAPI requestBody for a route that parses its own body (strictly)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


async def parse_body(request: Request, model: type[M]) -> M:
    """Body bytes -> model: 400 if not UTF-8 JSON, 422 if the JSON does not fit the model (the
    Content-Type was checked by `Guard`)."""
    raw = await request.body()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ApiError(
            400, "malformed_json", f"the body is not UTF-8: {e.reason} at byte {e.start}"
        ) from None
    except json.JSONDecodeError as e:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "the body's JSON is nested too deeply") from None
    except ValueError as e:  # an integer beyond Python's digit limit (4,300)
        raise ApiError(
            400, "malformed_json", f"the body's JSON has a number too large: {e}"
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ApiError(422, "invalid_input", describe_errors(e.errors())) from None
    except RecursionError:
        raise ApiError(422, "invalid_input", "the body's JSON is nested too deeply") from None


def describe_errors(errors: list) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def make_app(
    backend: Backend,
    max_body_bytes: int,
    title: str = "lmplatform",
    auth: AuthConfig | None = None,
    cors_origins: list[str] | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    """The API over a backend (the Serve ingress, or in-process predictors); `auth`,
    `cors_origins` and `limits` as in ServeConfig (serving/security.py)."""
    app = FastAPI(
        title=title,
        version="1",
        description="Task predictions, fill-mask and generation from the model registry; "
        "OpenAI-compatible completions.",
    )
    # one key ring for both its readers: healthz reports its problems, Guard checks requests
    from lmplatform.serving.openai_api import add_openai_routes  # it builds on this module

    keys = KeyRing(auth) if auth is not None and auth.enabled else None
    add_error_handlers(app)
    add_status_routes(app, backend, keys)
    add_predict_routes(app, backend)
    add_generate_route(app, backend)
    add_openai_routes(app, backend)
    add_middleware(app, max_body_bytes, keys, cors_origins, limits or Limits())
    return app


def add_error_handlers(app: FastAPI) -> None:
    """FastAPI's own errors (validation, unknown route, wrong method) and ours as the one
    error body."""

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):
        return error_response(422, "invalid_input", describe_errors(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException):
        status = exc.status_code
        msg = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if status == 404:
            msg = "no such route (see /docs)"
        return error_response(status, _STATUS_TYPES.get(status, "error"), msg)

    @app.exception_handler(ApiError)
    async def _api(_request: Request, exc: ApiError):
        return error_response(exc.status, exc.type, exc.message)


def add_status_routes(app: FastAPI, backend: Backend, keys: KeyRing | None) -> None:
    """GET /healthz (503 until the models are loaded) and GET /v1/tasks."""

    @app.api_route(
        "/healthz",
        methods=["GET"],
        response_model=Health,
        responses={503: {"model": ErrorResponse}},
    )
    async def healthz():
        try:
            problems = list(await backend.problems()) if await backend.ready() else None
        except Exception:  # a deployment that fails to answer between the two calls
            problems = None
        if problems is None:
            raise ApiError(503, "unavailable", "models are not loaded")
        if keys is not None and (problem := keys.check()):  # details go to the log only
            problems.append(problem)
        return {"status": "degraded" if problems else "ok", "problems": problems}

    # HEAD answers as GET does, outside the schema: one route for both methods got its
    # operation id from an unordered set of them (the OpenAPI document changed per process)
    app.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)

    @app.get("/v1/tasks", response_model=TasksResponse)
    async def tasks():
        return {"tasks": await backend.tasks()}


def check_count(backend: Backend, n: int) -> None:
    """413 for a request of more inputs than the backend takes at once."""
    if n > backend.max_inputs:
        raise ApiError(413, "too_large", f"{n} inputs; at most {backend.max_inputs} per request")


def add_predict_routes(app: FastAPI, backend: Backend) -> None:
    """POST /v1/predict/{task} (every task type) and POST /v1/fill-mask."""
    PredictRequest, PredictResponse = predict_models()

    @app.post(
        "/v1/predict/{task}",
        response_model=PredictResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=request_body(PredictRequest),
    )
    async def predict(task: str, request: Request):
        body = await parse_body(request, PredictRequest)
        check_count(backend, len(body.inputs))
        # plain JSON to the task's replica: its task type checks the shape
        inputs = [
            x.model_dump(exclude_none=True) if isinstance(x, BaseModel) else x for x in body.inputs
        ]
        # options the request set (the task's own type checks that they apply: 422 if not)
        options = body.model_dump(include=set(OPTIONS), exclude_defaults=True)
        return await backend.predict(task, inputs, options)

    @app.post(
        "/v1/fill-mask",
        response_model=FillMaskResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=request_body(FillMaskRequest),
    )
    async def fill_mask(request: Request):
        body = await parse_body(request, FillMaskRequest)
        check_count(backend, len(body.inputs))
        return await backend.fill_mask(body.inputs, body.top_k)


def add_generate_route(app: FastAPI, backend: Backend) -> None:
    """POST /v1/generate: one JSON answer, or server-sent events for one input (`stream`)."""

    @app.post(
        "/v1/generate",
        response_model=GenerateResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=request_body(GenerateRequest),
    )
    async def generate(request: Request):
        body = await parse_body(request, GenerateRequest)
        check_count(backend, len(body.inputs))
        params = {
            "max_new_tokens": body.max_new_tokens,
            "temperature": float(body.temperature),
            "top_k": body.top_k,
            "top_p": float(body.top_p),
            "stop": body.stop,
        }
        if not body.stream:
            return await backend.generate(body.inputs, **params)
        if len(body.inputs) != 1:
            raise ApiError(
                422, "invalid_input", f"stream: one input per request ({len(body.inputs)} given)"
            )
        events = await backend.generate_stream(body.inputs[0], **params)

        async def sse():
            async for event in events:
                yield f"data: {json.dumps(event)}\n\n"

        return StreamingResponse(
            sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )


def add_middleware(
    app: FastAPI,
    max_body_bytes: int,
    keys: KeyRing | None,
    cors_origins: list[str] | None,
    limits: Limits,
) -> None:
    """The layers every request passes before a route: CORS, keys and Content-Type (`Guard`),
    admission (bound and timeout), the body limit."""
    # added last is outermost: CORS answers preflights before keys are asked for, and the body
    # limit reads the body only for a request that was admitted
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(
        Admission,
        max_pending=limits.max_queued_requests,
        timeout_s=limits.request_timeout_s,
        retry_after_s=limits.retry_after_s,
        error_response=error_response,
    )
    app.add_middleware(Guard, keys=keys, error_response=error_response)
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
