"""Every error the service answers is JSON ``{"detail": ...}``.

Two places produce errors: the Ingress' FastAPI app (bad requests, timeouts, backend failures,
anything unexpected) and Serve's HTTP proxy, which answers by itself when the Ingress replica
died under a request (a bare 500 "Internal Server Error"), when its own timeout fires (408) or
when queues are full (503), all as plain text. ``install_handlers`` covers the first;
``JsonErrors``, loaded into the proxy by Ray's documented hook
(``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=dmf_ray.pipelines.serve.errors:proxy_middlewares``
in the environment of the Ray cluster; ``dmf serve`` sets it for the local Ray it starts),
rewrites the second.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

logger = logging.getLogger("ray.serve")

PROXY_HOOK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_HOOK = "dmf_ray.pipelines.serve.errors:proxy_middlewares"


class HTTPError(Exception):
    """An answer with ``status`` and body ``{"detail": detail, **extra}``."""

    def __init__(self, status: int, detail: str, **extra: Any):
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra


def _default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def json_response(body: Any, status: int = 200):
    """A FastAPI Response with ``body`` as JSON (numpy arrays and scalars included)."""
    from fastapi.responses import Response

    return Response(json.dumps(body, default=_default), status_code=status, media_type="application/json")


def encode_items(items: list) -> bytes:
    """The JSON of ``items`` joined by ", " without the brackets (a part of a JSON list)."""
    return ", ".join(json.dumps(item, default=_default) for item in items).encode()


def clip(value: Any, limit: int = 80) -> str:
    """repr(value), cut to ``limit`` characters so a huge input cannot flood an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(loc: tuple) -> str:
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def invalid(errors: list[dict]) -> HTTPError:
    """One 4xx from pydantic's errors: 400 for malformed JSON, else 422 naming each field / index."""
    for e in errors:
        if e.get("type") == "json_invalid":
            reason = (e.get("ctx") or {}).get("error") or e.get("msg", "JSON decode error")
            return HTTPError(400, f"malformed JSON body: {reason}")
    problems = []
    for e in errors:
        where = _where(tuple(e.get("loc", ())))
        if e.get("type") == "missing":
            problems.append(f"{where}: field required")
        else:
            shown = "" if e.get("type") == "extra_forbidden" else f" (got {clip(e.get('input'))})"
            problems.append(f"{where}: {e.get('msg')}{shown}")
    return HTTPError(422, "; ".join(problems), errors=problems)


def read_body(model: type[BaseModel], raw: bytes) -> Any:
    """Validate a JSON body, whatever the Content-Type says (`curl -d` sends form-urlencoded)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid(exc.errors()) from None


def body_schema(model: type[BaseModel]) -> dict:
    """OpenAPI ``requestBody`` for a route that reads its body with ``read_body`` (FastAPI does
    not see the model then, so /docs would not show it)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def install_handlers(api) -> None:
    """Register JSON handlers for every error on the FastAPI app ``api``."""
    from fastapi.exceptions import RequestValidationError
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @api.exception_handler(HTTPError)
    async def _http_error(request, exc: HTTPError):
        return json_response({"detail": exc.detail, **exc.extra}, exc.status)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        return await _http_error(request, invalid(exc.errors()))

    @api.exception_handler(StarletteHTTPException)
    async def _starlette(request, exc: StarletteHTTPException):
        # 404 / 405 from routing: FastAPI's default is already {"detail"}; keep it so, with our encoder.
        return json_response({"detail": str(exc.detail)}, exc.status_code)

    @api.exception_handler(BackPressureError)
    async def _overloaded(request, exc: BackPressureError):
        return json_response({"detail": f"the service is overloaded (a backend queue is full); retry later: {exc}"},
                             503)

    @api.exception_handler(RayActorError)
    async def _backend_died(request, exc: RayActorError):
        detail = f"a backend replica died while handling this request; retry it ({type(exc).__name__})"
        return json_response({"detail": detail}, 503)

    @api.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        # Starlette would answer a bare "Internal Server Error"; say what failed instead.
        logger.exception("request failed")
        return json_response({"detail": f"internal error: {type(exc).__name__}: {clip(str(exc), 300)}"}, 500)


class JsonErrors:
    """ASGI middleware for Serve's HTTP proxy: an error answer that is not JSON becomes
    ``{"detail": <its text>}``; a request the proxy could not answer at all (uvicorn would send a
    bare 500) gets a JSON 500. Successful and JSON answers pass through untouched."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        state: dict[str, Any] = {"started": False, "held": None, "body": b""}

        async def wrapped(message):
            kind = message.get("type")
            if kind == "http.response.start":
                state["started"] = True
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                if message.get("status", 200) >= 400 and b"json" not in headers.get(b"content-type", b""):
                    state["held"] = message
                    return
            elif kind == "http.response.body" and state["held"] is not None:
                state["body"] += message.get("body", b"")
                if not message.get("more_body", False):
                    await _send_json(send, state["held"]["status"], state["body"].decode("utf-8", "replace"),
                                     state["held"].get("headers", []))
                    state["held"] = None
                return
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        except Exception as exc:  # the proxy failed the request without answering it
            if not state["started"]:
                await _send_json(send, 500, f"the request failed inside the service: {type(exc).__name__}")
                return
            raise
        if not state["started"]:
            await _send_json(send, 500, "the request failed inside the service (a replica died under it); retry it")


async def _send_json(send, status: int, text: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": text.strip() or f"HTTP {status}"}).encode()
    kept = [(k, v) for k, v in headers or [] if k.lower() not in (b"content-type", b"content-length")]
    await send({"type": "http.response.start", "status": status,
                "headers": kept + [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def proxy_middlewares() -> list:
    """The proxy hook's callback (see the module docstring)."""
    from starlette.middleware import Middleware

    return [Middleware(JsonErrors)]
