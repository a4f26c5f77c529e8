"""Request bodies the API accepts: bounded in size, strict JSON (no NaN / Infinity / overflowing numbers, no lone
surrogates), refused with a 4xx before any handler runs. Plain ASGI, so a refused body never reaches FastAPI."""

from __future__ import annotations

import json
import math

MAX_BODY_BYTES = 64 * 1024  # a 200-item history is ~2 KB


class BadBody(ValueError):
    pass


def _constant(name: str):
    raise BadBody(f"non-finite number {name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadBody(f"number {text[:40]} overflows a double")
    return value


def _check_strings(value) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise BadBody("string with a lone surrogate (not valid UTF-8)") from err
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k)
            _check_strings(v)
    elif isinstance(value, list):
        for v in value:
            _check_strings(v)


def strict_json(body: bytes):
    """The parsed body, or BadBody naming what is wrong with it."""
    try:
        value = json.loads(body, parse_constant=_constant, parse_float=_finite)
    except BadBody:
        raise
    except (ValueError, UnicodeDecodeError) as err:
        raise BadBody(f"invalid JSON: {err}") from err
    _check_strings(value)
    return value


class BodyGuard:
    """Refuse oversized bodies (413, by Content-Length before reading, else while reading) and bodies that are
    not strict JSON (400); pass everything else on unchanged."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _error(send, 413, f"request body over {self.max_bytes} bytes")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await _error(send, 413, f"request body over {self.max_bytes} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body and b"json" in headers.get(b"content-type", b""):
            try:
                strict_json(body)
            except BadBody as err:
                return await _error(send, 400, str(err))
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _error(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
