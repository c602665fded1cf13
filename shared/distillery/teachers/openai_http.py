"""The HTTP side of an OpenAI-compatible teacher: one pooled, keep-alive aiohttp session, JSON in and out.

A bare POST of the request JSON and a `json.loads` of the answer. The `openai` SDK's request path (option
models, payload transforms, response models, on httpx) cost a worker more CPU than the rest of the
pipeline together, and httpx alone still cost ~10x aiohttp's CPU per call (docs/SCALING.md). The whole
call, headers and body, runs under one deadline, so a server that drips bytes cannot hold a call past
`timeout_s`. Redirects are not followed: a teacher's key goes only to the allowed host it names.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.request import getproxies, proxy_bypass

import aiohttp
from yarl import URL


class StatusError(Exception):
    """The server answered with an HTTP error status; `message` is its error message when it gave one."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class MalformedResponse(Exception):
    """A success status whose body is not the JSON object the protocol promises."""


def error_message(body: bytes) -> str:
    """The `error.message` (or `message`, `detail`) of an error body; else its first 200 characters."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        for found in (
            error.get("message") if isinstance(error, dict) else error,
            data.get("message"),
            data.get("detail"),
        ):
            if isinstance(found, str) and found:
                return found
    return body[:200].decode("utf-8", "replace") or "(empty body)"


class JsonClient:
    """POSTs JSON to `base_url` + path; at most `max_connections` kept-alive connections.

    The session is made on first use, on the event loop that uses it (aiohttp binds it to that loop).
    """

    def __init__(self, base_url: str, api_key: str, timeout_s: float, max_connections: int):
        self.base_url, self.timeout_s, self.max_connections = base_url.rstrip("/"), timeout_s, max_connections
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}
        # HTTP(S)_PROXY / NO_PROXY as httpx honoured them, read once (aiohttp's trust_env reads the
        # environment and ~/.netrc on every request).
        url = URL(self.base_url)
        proxy = getproxies().get(url.scheme or "")
        self._proxy = proxy if proxy and not proxy_bypass(url.host or "") else None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            )
        return self._session

    async def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The answer's JSON object. Raises StatusError (any status from 300 on), MalformedResponse,
        TimeoutError (the deadline), or aiohttp's client errors."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self.base_url + path)
        content = json.dumps(payload, ensure_ascii=False).encode()
        session = self._open()
        async with asyncio.timeout(self.timeout_s):
            async with session.post(url, data=content, allow_redirects=False, proxy=self._proxy) as response:
                status, raw = response.status, await response.read()
        if status >= 300:
            raise StatusError(status, error_message(raw))
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise MalformedResponse(f"response is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise MalformedResponse(f"response is a JSON {type(data).__name__}, not an object")
        return data

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
