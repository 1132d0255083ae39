"""The one way access control says no: an HTTP status and OpenAI's error shape."""

from __future__ import annotations

from typing import Any


class AccessDenied(Exception):
    """A request refused at the front door: 401 (no or unknown key), 403 (key not allowed
    that model, expired, revoked, not admin), 429 (over a limit, with ``retry_after``)."""

    def __init__(self, status: int, message: str, *, code: str, type_: str | None = None,
                 param: str | None = None, retry_after: int | None = None, limit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.type = type_ or {401: "authentication_error", 403: "permission_error",
                              429: "rate_limit_error"}.get(status, "invalid_request_error")
        self.retry_after = retry_after
        self.limit = limit  # rpm | tokens_per_day | concurrency, for 429s

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        out = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        if self.status == 401:
            out["WWW-Authenticate"] = "Bearer"
        return out
