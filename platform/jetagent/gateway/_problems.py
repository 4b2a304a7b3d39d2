"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error the gateway answers has ``type``, ``title``, ``status`` and ``detail``; a
validation error adds ``errors``, one entry per problem (where and what), so a client
learns all of them at once, as the NATS ingress does (README "The request").
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from jetagent.errors import JetagentError

__all__ = ["PROBLEM_JSON", "Problem", "ProblemError", "install_handlers", "problem_response"]

log = logging.getLogger("jetagent.gateway")

PROBLEM_JSON = "application/problem+json"
_TYPES = "https://jetagent.dev/problems/"


class FieldProblem(BaseModel):
    """One validation problem: where it is and what is wrong."""

    location: str
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    type: str = Field(description="A URI naming the kind of problem.")
    title: str
    status: int
    detail: str = ""
    instance: str | None = None
    errors: list[FieldProblem] | None = None


class ProblemError(JetagentError):
    """Raised by a route to answer with a problem (never leaves the gateway)."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str = "",
        *,
        errors: list[FieldProblem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status, self.kind, self.title, self.detail = status, kind, title, detail
        self.errors, self.headers = errors, headers


def problem_response(
    status: int,
    kind: str,
    title: str,
    detail: str = "",
    *,
    instance: str | None = None,
    errors: list[FieldProblem] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = Problem(
        type=_TYPES + kind, title=title, status=status, detail=detail, instance=instance
    ).model_dump(exclude_none=True)
    if errors is not None:
        body["errors"] = [e.model_dump() for e in errors]
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _location(loc: Any) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


def install_handlers(app: FastAPI) -> None:
    """Answer validation errors, HTTP errors and anything unexpected as problems."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        raw = exc.errors()
        if any(e.get("type") == "json_invalid" for e in raw):
            return problem_response(
                400,
                "malformed-body",
                "The body is not valid JSON",
                str(raw[0].get("msg", "")),
                instance=request.url.path,
            )
        errors = [FieldProblem(location=_location(e["loc"]), message=str(e["msg"])) for e in raw]
        return problem_response(
            422,
            "invalid-request",
            "The request is not valid",
            f"{len(errors)} problem(s); see errors",
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            exc.status,
            exc.kind,
            exc.title,
            exc.detail,
            instance=request.url.path,
            errors=exc.errors,
            headers=exc.headers,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return problem_response(exc.status_code, kind, str(exc.detail), instance=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem_response(
            500, "internal", "Internal error", type(exc).__name__, instance=request.url.path
        )
