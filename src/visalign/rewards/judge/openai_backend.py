"""A judge behind an OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, SGLang, hosted APIs):
concurrent requests on an asyncio loop, retries with back-off, deadlines, and an API key that never
leaves the ``Authorization`` header. Standard library only.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import http.client
import io
import json
import logging
import math
import os
import random
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from PIL import Image

from .backend import JudgeBackend, JudgeRequest, JudgeResponse

logger = logging.getLogger(__name__)

__all__ = ["OpenAIJudgeBackend", "image_data_url"]


def image_data_url(image: Image.Image) -> str:
    """``image`` as a ``data:image/png;base64,...`` URL (RGB or RGBA kept, other modes → RGB).

    Example:
        >>> image_data_url(Image.new("RGB", (1, 1)))[:22]
        'data:image/png;base64,'
    """
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Call:
    """One HTTP attempt that the event loop can abort (its deadline) from another thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.aborted = False

    def attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            if self.aborted:
                raise TimeoutError("deadline passed while connecting")
            self._sock = sock

    def detach(self) -> None:
        with self._lock:
            self._sock = None

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked recv in the worker thread
            except OSError:
                pass


class _HttpReply(NamedTuple):
    """What one POST got back: the status, the ``Retry-After`` header, the body."""

    status: int
    retry_after: str | None
    body: bytes


@dataclass
class _Attempt:
    text: str | None = None
    finish_reason: str | None = None
    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None


# characters http.client refuses in a header value (it would echo the value in its exception)
_BAD_HEADER_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class OpenAIJudgeBackend(JudgeBackend):
    """A judge behind an OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, SGLang, APIs).

    Each request is one user message whose content lists the request's parts in order: text parts as
    ``{"type": "text"}``, images as ``{"type": "image_url"}`` with a ``data:image/png;base64,...``
    URL. Requests run concurrently on an asyncio loop, at most ``max_concurrency`` in flight (an
    asyncio semaphore; the blocking HTTP calls run in worker threads so each can be aborted at its
    deadline). Standard library only (``http.client``); HTTP(S) proxies are not used.

    Retry policy: HTTP 429, any 5xx, a timeout or a connection error (refused, reset, closed
    without an answer) is retried up to ``max_retries`` times (so at most ``max_retries + 1``
    attempts) after ``min(max_backoff, backoff * 2**k)`` seconds for the k-th retry (k = 0, 1, ...),
    scaled by a random factor in [0.5, 1] when ``jitter``; a 429's ``Retry-After`` (seconds) is
    honoured (429 and 5xx) up to ``max_backoff``. Any other 4xx and a malformed 2xx body fail at once. The request
    slot is released during back-off.

    The API key is read from the environment variable ``api_key_env`` at every batch (none set: no
    ``Authorization`` header, as local servers expect) and sent as ``Authorization: Bearer <key>``.
    It is never stored on the object, logged, or put in errors: server error bodies and answers that
    echo it are redacted (``***``).

    Args:
        base_url: ``http://host:8000/v1`` (the OpenAI SDK's convention), ``http://host:8000`` (``/v1``
            added) or a full ``.../chat/completions`` URL.
        model: the model name the server expects.
        api_key_env: name of the environment variable holding the key.
        timeout: seconds for one attempt, connection to last byte.
        max_concurrency: requests in flight at once.
        max_retries: retries after the first attempt.
        backoff: base back-off in seconds.
        max_backoff: longest back-off in seconds.
        jitter: randomise back-off (avoids retry storms from many clients).
        temperature: sampling temperature (0: greedy, reproducible judging).
        max_tokens: answer length limit (None: the server's default).
        extra_body: more fields for the request body (``seed``, ``top_p``, ``response_format``, ...).

    Example:
        >>> backend = OpenAIJudgeBackend("http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-VL-7B-Instruct")
        >>> backend.url
        'http://127.0.0.1:8000/v1/chat/completions'
    """

    max_response_bytes = 16 * 1024 * 1024

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_concurrency: int = 8, max_retries: int = 3, backoff: float = 1.0, max_backoff: float = 30.0,
                 jitter: bool = True, temperature: float = 0.0, max_tokens: int | None = 1024,
                 extra_body: dict[str, Any] | None = None) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL with a host, got scheme {parts.scheme!r}")
        if parts.username or parts.password:
            raise ValueError("put credentials in the environment variable named by api_key_env, not in base_url")
        if timeout <= 0 or max_concurrency < 1 or max_retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("timeout must be > 0, max_concurrency >= 1, max_retries, backoff and max_backoff >= 0")
        path = parts.path.rstrip("/")
        if not path.endswith("/chat/completions"):
            path = (path or "/v1") + "/chat/completions"
        if parts.query:
            path += "?" + parts.query
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = path
        self.url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, path.split("?")[0], parts.query, ""))
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_concurrency = int(max_concurrency)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.jitter = jitter
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})
        self._ssl_context = ssl.create_default_context() if self._https else None

    def __repr__(self) -> str:
        return (f"OpenAIJudgeBackend(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
                f"max_concurrency={self.max_concurrency}, max_retries={self.max_retries})")

    # ---- public entry points ---------------------------------------------------------------------

    def generate(self, requests: Sequence[JudgeRequest]) -> list[JudgeResponse]:
        """Answer every request (blocking). Safe to call from a thread whose event loop is running:
        the batch then runs on a fresh loop in a helper thread."""
        requests = list(requests)
        if not requests:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(requests))
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vlm-judge-loop") as helper:
            return helper.submit(lambda: asyncio.run(self.agenerate(requests))).result()

    async def agenerate(self, requests: Sequence[JudgeRequest]) -> list[JudgeResponse]:
        """Answer every request from async code (``await backend.agenerate(requests)``)."""
        requests = list(requests)
        if not requests:
            return []
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = (os.environ.get(self.api_key_env) or "").strip()
        if key:
            if _BAD_HEADER_CHARS.search(key):
                raise ValueError(f"the API key in ${self.api_key_env} contains control characters")
            headers["Authorization"] = f"Bearer {key}"
        semaphore = asyncio.Semaphore(self.max_concurrency)
        workers = min(self.max_concurrency, len(requests))
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="vlm-judge") as pool:
            return list(await asyncio.gather(*(self._request(i, r, headers, key, semaphore, pool)
                                               for i, r in enumerate(requests))))

    # ---- internals -------------------------------------------------------------------------------

    def _body(self, request: JudgeRequest) -> bytes:
        content: list[dict[str, Any]] = []
        for part in request.parts:
            if isinstance(part, Image.Image):
                content.append({"type": "image_url", "image_url": {"url": image_data_url(part)}})
            else:
                content.append({"type": "text", "text": part})
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": content})
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        body.update(self.extra_body)
        return json.dumps(body).encode("utf-8")

    def _post(self, body: bytes, headers: dict[str, str], call: _Call) -> _HttpReply:
        """One blocking POST (worker thread): status, Retry-After, body."""
        if self._https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._ssl_context)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            conn.connect()
            call.attach(conn.sock)
            conn.request("POST", self._path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read(self.max_response_bytes + 1)
            if call.aborted:  # the deadline shut the socket: what was read is a truncated body
                raise TimeoutError("deadline passed while reading")
            if len(data) <= self.max_response_bytes and resp.length:  # EOF before Content-Length
                raise http.client.IncompleteRead(data, resp.length)
            return _HttpReply(resp.status, resp.getheader("Retry-After"), data)
        finally:
            call.detach()
            conn.close()

    async def _attempt(self, body: bytes, headers: dict[str, str], key: str,
                       pool: concurrent.futures.Executor) -> _Attempt:
        loop = asyncio.get_running_loop()
        call = _Call()
        deadline = loop.call_later(self.timeout, call.abort)
        future = loop.run_in_executor(pool, self._post, body, headers, call)
        try:
            reply = await future
        except Exception as e:
            if call.aborted or isinstance(e, TimeoutError):
                return _Attempt(error=f"timeout: no answer within {self.timeout:g} s", retryable=True)
            if isinstance(e, ssl.SSLCertVerificationError):
                return _Attempt(error=_redact(f"TLS certificate error: {e}", key))
            if isinstance(e, (OSError, http.client.HTTPException)):
                return _Attempt(error=_redact(f"connection error: {type(e).__name__}: {e}", key), retryable=True)
            return _Attempt(error=_redact(f"{type(e).__name__}: {e}", key))
        finally:
            deadline.cancel()
            if not future.done():  # cancelled from outside: free the worker thread now
                call.abort()
        status, retry_after, data = reply.status, reply.retry_after, reply.body
        if len(data) > self.max_response_bytes:
            return _Attempt(error=f"response larger than {self.max_response_bytes} bytes")
        if not 200 <= status <= 299:
            snippet = data[:300].decode("utf-8", "replace").strip()
            retryable = status == 429 or 500 <= status <= 599
            return _Attempt(error=_redact(f"HTTP {status}: {snippet}", key), retryable=retryable,
                            retry_after=_seconds(retry_after) if retryable else None)
        try:
            payload = json.loads(data)
            choice = payload["choices"][0]
            content = choice["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            snippet = data[:200].decode("utf-8", "replace")
            return _Attempt(error=_redact(f"malformed response ({type(e).__name__}): {snippet}", key))
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            content = ""  # a null content (refusal, tool call) is an answer that will not parse
        content = _redact(content, key)  # a server that echoes the request's headers
        finish = choice.get("finish_reason")
        return _Attempt(text=content, finish_reason=finish if isinstance(finish, str) else None)

    def _delay(self, retry: int, retry_after: float | None) -> float:
        delay = min(self.max_backoff, self.backoff * 2.0 ** retry)
        if self.jitter:
            delay *= random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(self.max_backoff, retry_after))
        return delay

    async def _request(self, index: int, request: JudgeRequest, headers: dict[str, str], key: str,
                       semaphore: asyncio.Semaphore, pool: concurrent.futures.Executor) -> JudgeResponse:
        loop = asyncio.get_running_loop()
        body: bytes | None = None
        start = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            async with semaphore:
                if body is None:
                    try:
                        body = await loop.run_in_executor(pool, self._body, request)
                    except Exception as e:  # an image PIL cannot encode, text that is not JSON-able
                        error = f"cannot encode the request: {type(e).__name__}: {e}"
                        logger.warning("judge request %d: %s", index, error)
                        return JudgeResponse(text=None, attempts=0, error=error)
                t0 = time.perf_counter()
                result = await self._attempt(body, headers, key, pool)
                latency = time.perf_counter() - t0
            if result.text is not None:
                return JudgeResponse(text=result.text, latency=latency, attempts=attempts,
                                     elapsed=time.perf_counter() - start, finish_reason=result.finish_reason)
            if not result.retryable or attempts > self.max_retries:
                logger.warning("judge request %d failed after %d attempt(s): %s", index, attempts, result.error)
                return JudgeResponse(text=None, latency=latency, attempts=attempts, error=result.error,
                                     elapsed=time.perf_counter() - start)
            delay = self._delay(attempts - 1, result.retry_after)
            logger.info("judge request %d: %s; retry %d/%d in %.2f s", index, result.error, attempts,
                        self.max_retries, delay)
            await asyncio.sleep(delay)


def _redact(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text


def _seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (HTTP dates are ignored)."""
    if value is None:
        return None
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) and x >= 0 else None
