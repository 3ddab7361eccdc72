"""What every endpoint of the query API shares: the one error body, the bearer token of the
write endpoints, and the rule that a server listening beyond loopback needs that token.

* **Errors.** Every 4xx/5xx answer is an :class:`ErrorOut`: ``{"detail": "a sentence"}``, or,
  for a request that fails validation (422), ``{"detail": [{"loc": [...], "msg": "...",
  "type": "..."}, ...]}``. The offending input is never echoed back: a NaN or an infinity in
  it could not be encoded as JSON, and an echo of a large body would be as large.
* **Writes.** Endpoints that change state (``POST /labels``, ``POST /tracks``, ``DELETE
  /tracks/{id}``) depend on :func:`require_token`. When the app has a token
  (``app.state.api_token``, from :data:`TOKEN_ENV` in ``vistream serve``) they answer 401 with
  ``WWW-Authenticate: Bearer`` unless the request carries ``Authorization: Bearer <token>``;
  without a token they are open, which :func:`check_listen` allows on loopback only. Searches
  (reads, even the ones sent as POST) never need it.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Hashable
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

#: the environment variable ``vistream serve`` reads the write token from
TOKEN_ENV = "VISTREAM_API_TOKEN"
#: the name of the security scheme in the OpenAPI schema
SCHEME = "bearerAuth"
#: a token shorter than this is refused (it could be guessed)
MIN_TOKEN_LENGTH = 16
#: the largest track id the API takes (an int32: ids are counted up from 0 by the track stage)
MAX_ID = 2**31 - 1


def integral(value: Any) -> Any:
    """A JSON integer as JSON Schema has it: ``7.0`` is ``7`` (a ``StrictInt`` field still
    refuses ``"7"`` and ``true``). Use as a ``mode="before"`` field validator."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="where: body, query, path, header, then names")
    msg: str
    type: str


class ErrorOut(BaseModel):
    detail: str | list[ErrorItem] = Field(description="what was wrong: a sentence, or one item "
                                                      "per field that failed validation")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route: ``codes`` answer an :class:`ErrorOut`."""
    return {c: {"model": ErrorOut, "description": _DESCRIPTIONS.get(c, "error")} for c in codes}


_DESCRIPTIONS = {
    400: "bad request (malformed upload or Content-Length)", 401: "missing or wrong bearer token",
    404: "not found", 409: "conflicts with the service's state", 411: "a body needs a "
    "Content-Length", 413: "body or image over the service's limits", 415: "not a JPEG or PNG",
    422: "validation failed", 503: "the bus is not there or refused the record"}


def validation_items(errors: list[dict]) -> list[dict]:
    """Pydantic/FastAPI validation errors as :class:`ErrorItem` dicts (the input left out)."""
    return [{"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
             "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in errors]


# --------------------------------------------------------------------------- the write token


#: FastAPI's bearer scheme: it puts the scheme into the schema of the routes that depend on
#: it (patch_openapi takes it out again when the app has no token); require_token checks
_bearer = HTTPBearer(scheme_name=SCHEME, auto_error=False,
                     description=f"the server's {TOKEN_ENV}; needed by the endpoints that write")


def require_token(request: Request,
                  credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """Dependency of the write endpoints: 401 unless the request carries the app's token."""
    token = getattr(request.app.state, "api_token", None)
    if not token:
        return
    if credentials is None or not credentials.credentials.strip():
        raise HTTPException(401, "this endpoint changes the index: send 'Authorization: Bearer "
                                 f"<token>' (the server's {TOKEN_ENV})",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(credentials.credentials.strip().encode(), token.encode()):
        raise HTTPException(401, "wrong bearer token",
                            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def check_token(token: str | None) -> str | None:
    """``token`` stripped; None when empty; ValueError when too short to be a secret."""
    token = (token or "").strip() or None
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"{TOKEN_ENV} must be at least {MIN_TOKEN_LENGTH} characters "
                         f"(got {len(token)})")
    return token


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses of the loopback network (127.0.0.0/8, ::1)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def check_listen(host: str, token: str | None) -> None:
    """ValueError when the server would listen beyond loopback with open write endpoints."""
    if token is None and not is_loopback(host):
        raise ValueError(f"refusing to listen on {host} without a write token: set {TOKEN_ENV} "
                         f"(at least {MIN_TOKEN_LENGTH} characters) so that POST /labels and "
                         "POST/DELETE /tracks need 'Authorization: Bearer <token>', or listen on "
                         "127.0.0.1")


# --------------------------------------------------------------------------- the schema


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _error_content() -> dict:
    return {"application/json": {"schema": _ref("ErrorOut")}}


def _declare_errors(spec: dict) -> None:
    """Every error answer an :class:`ErrorOut` (FastAPI's own 422 model says otherwise); every
    operation with a body declares the 400/411/413 of the body guard."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    if "ErrorOut" not in schemas:
        own = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(own.pop("$defs", {}))
        schemas["ErrorOut"] = own
    for ops in spec.get("paths", {}).values():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            for code, answer in responses.items():
                # FastAPI's 422 model, or none (an HTTPException's body is an ErrorOut too)
                content = answer.get("content")
                if code[0] in "45" and (not content or "HTTPValidationError" in str(content)):
                    answer["content"] = _error_content()
            if "requestBody" in op:
                for code in (400, 411, 413):
                    responses.setdefault(str(code), {"description": _DESCRIPTIONS[code],
                                                     "content": _error_content()})
    text = str(spec["paths"])
    if "HTTPValidationError" not in text:
        schemas.pop("HTTPValidationError", None)
        if "ValidationError" not in text.replace("HTTPValidationError", ""):
            schemas.pop("ValidationError", None)


def _declare_security(spec: dict, has_token: bool) -> None:
    """The routes that depend on :func:`require_token` carry the bearer scheme: with a token
    they answer 401 without it (declared, with its header); without one they need nothing."""
    schemes = spec.get("components", {}).get("securitySchemes", {})
    if not has_token:
        schemes.pop(SCHEME, None)
        if not schemes:
            spec.get("components", {}).pop("securitySchemes", None)
    for ops in spec.get("paths", {}).values():
        for op in ops.values():
            if not any(SCHEME in req for req in op.get("security", ())):
                continue
            if not has_token:
                op["security"] = [req for req in op["security"] if SCHEME not in req]
                if not op["security"]:
                    del op["security"]
                continue
            op["responses"]["401"] = {
                "description": _DESCRIPTIONS[401], "content": _error_content(),
                "headers": {"WWW-Authenticate": {"description": "Bearer",
                                                 "schema": {"type": "string"}}}}


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with the :class:`ErrorOut` list of what failed (the input left out)."""
    return JSONResponse({"detail": validation_items(exc.errors())}, 422)


def truthful_errors(app: Any, key: Callable[[], Hashable] = lambda: None,
                    fix: Callable[[dict], None] | None = None) -> None:
    """What any FastAPI app of the project needs for its schema to tell the truth about its
    errors: validation errors as :class:`ErrorOut` lists, and :func:`patch_openapi`."""
    app.add_exception_handler(RequestValidationError, validation_error)
    patch_openapi(app, key, fix)


def patch_openapi(app: Any, key: Callable[[], Hashable],
                  fix: Callable[[dict], None] | None = None) -> None:
    """``app.openapi()`` builds FastAPI's schema, then declares what FastAPI cannot see: the
    error bodies, the bearer scheme (when the app has a token) and what ``fix`` adds; rebuilt
    when ``key()`` (what the schema depends on, e.g. the index's dimension) changes."""
    build = app.openapi
    built: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        now = (key(), bool(getattr(app.state, "api_token", None)))
        if app.openapi_schema is None or built.get("key") != now:
            app.openapi_schema = None
            spec = build()
            _declare_errors(spec)
            _declare_security(spec, now[1])
            if fix is not None:
                fix(spec)
            built["key"] = now
        return app.openapi_schema

    app.openapi = openapi
