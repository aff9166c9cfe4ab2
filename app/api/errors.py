"""One error shape for every failure: `{"error": {"code", "message"}}`, one status map."""

from __future__ import annotations

import logging
import re
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.schemas import EXPERT_OR_MODE, MODEL_PATTERN
from app.core.names import NAME_PATTERN, NAME_WORDS
from app.core.text import NOT_BLANK
from app.encoder.base_model import BASE_MODEL_NAME
from app.errors import (
    Conflict,
    EncoderFailed,
    InvalidAdapter,
    InvalidInput,
    NotFound,
    Overloaded,
    ServiceError,
    StorageFull,
    Unavailable,
)

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[ServiceError], int] = {
    InvalidInput: 422,
    InvalidAdapter: 422,
    NotFound: 404,
    Conflict: 409,
    Unavailable: 503,
    EncoderFailed: 503,
    Overloaded: 429,
    StorageFull: 507,
}
# Back-pressure, not a timeout: tell clients when to come back.
RETRY_AFTER_S = "1"


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    """An HTTP-level failure (auth, limits) that has no domain meaning."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(
    status: int, code: str, message: str, headers: dict | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "request body that cannot be read (not UTF-8, or not the declared form)",
        401: "missing or wrong admin token (admin) or API key (/v1, when RR_API_KEYS is set)",
        404: "unknown expert, index or document",
        409: "expert already exists",
        413: "request body too large",
        429: "queue full: retry after the Retry-After header's seconds",
        422: "invalid request, name or adapter",
        503: "admin disabled, service unavailable, or the encoder failed on this request",
        507: "no space left on the index volume: nothing was written; retry once space is freed",
    }.items()
}

UNREADABLE_BODY = "There was an error parsing the body"  # FastAPI's detail
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


# What a pattern means, in words (pydantic would quote the regex).
_PATTERN_WORDS = {
    NOT_BLANK: "must not be empty or only whitespace",
    NAME_PATTERN: NAME_WORDS,
    EXPERT_OR_MODE: f'must be "auto", "base" or an expert name ({NAME_WORDS})',
    MODEL_PATTERN: f'must be "auto", "base", "{BASE_MODEL_NAME}" or an expert name '
    "(GET /v1/models lists them)",
}
# A union's member tags in an error's location ("input.list[constrained-str]").
_MEMBER_TAG = re.compile(r"^(str|int|float|bool|constrained-\w+|\w+\[.*\])$")
_TYPE_MISMATCH = {"string_type", "list_type", "int_type", "float_type", "bool_type", "dict_type"}


def _message(err: dict) -> str:
    kind, ctx = err.get("type", ""), err.get("ctx") or {}
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERN_WORDS:
        return _PATTERN_WORDS[ctx["pattern"]]
    if kind == "json_invalid":
        return f"the request body is not valid JSON ({ctx.get('error', 'decode error')})"
    if kind in ("model_attributes_type", "dict_type") and len(err.get("loc", ())) <= 1:
        return "the request body must be a JSON object, sent as Content-Type: application/json"
    message = str(err.get("msg", "invalid"))
    return message.removeprefix("Value error, ")


def _describe(exc: RequestValidationError) -> str:
    """One plain message per field: a union's members each report on the value, so only
    the member that fits the value's type speaks (a string input gets the string checks)."""
    by_field: dict[str, list[dict]] = {}
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(p for p in loc if not _MEMBER_TAG.match(p))
        if err.get("type") == "json_invalid":
            where = ""  # the position is in the message
        by_field.setdefault(where, []).append(err)
    parts = []
    for where, errs in list(by_field.items())[:3]:
        fitting = [e for e in errs if e.get("type") not in _TYPE_MISMATCH]
        if fitting or len(errs) == 1:
            message = _message((fitting or errs)[0])
        else:  # the value fits none of the union's types: name them all
            wanted = [str(e.get("msg", "")).removeprefix("Input should be ") for e in errs]
            message = "Input should be " + " or ".join(dict.fromkeys(wanted))
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method the schema documents at this path (what a 405's Allow must list; the
    router names only the first route matching the path)."""
    path = request.url.path
    methods: set[str] = set()
    for template, operations in app.openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\{[^/]+\}", "[^/]+", template), path):
            methods |= {method.upper() for method in operations}
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        headers = {"Retry-After": RETRY_AFTER_S} if isinstance(exc, Overloaded) else None
        return error_response(STATUS_BY_ERROR.get(type(exc), 500), exc.code, exc.message, headers)

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _describe(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == UNREADABLE_BODY:
            # FastAPI's answer to a body it cannot decode (not UTF-8, say): a client
            # mistake in the request's content, like malformed JSON.
            return error_response(
                422, "invalid_request", "the request body could not be read: send UTF-8 JSON"
            )
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette names only the first route matching the path
            headers = (headers or {}) | {"Allow": ", ".join(_allowed_methods(app, request))}
        return error_response(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Never echo internals to clients: log them under an id the client can quote.
        incident = getattr(request.state, "request_id", None) or uuid.uuid4().hex
        log.exception("unhandled error (request %s)", incident, exc_info=exc)
        return error_response(500, "internal_error", f"internal error (request id {incident})")
