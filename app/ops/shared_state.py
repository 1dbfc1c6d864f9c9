"""What the API replicas share through Redis when `ARCHIVIST_REDIS_URL` is set: the per-key rate limit, the
failed authentications per client address, and the answer cache. Without a URL each process keeps them in
its own memory (`app.ops.limits`, `app.rag.cache`), the embedded default.

Redis unreachable at start is a `SharedStateError` (the CLI prints it in one line and exits 2). Unreachable
later, a rate limit that cannot be counted answers 503 with Retry-After (letting every request through would
lift the limit for all replicas at once), and the answer cache turns into misses; nothing else needs Redis.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from limits import RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from app.ops.limits import RateLimiter, TooBusyError
from app.rag.cache import AnswerCache, CacheCounters, CacheKey
from app.rag.pipeline import Answer, Source
from app.settings import Settings
from retriever.records import SearchHit, ServiceUnavailableError

log = logging.getLogger(__name__)

TIMEOUT_S = 2.0  # a Redis that does not answer within this is treated as down


class SharedStateError(ServiceUnavailableError):
    """A service the replicas share (Redis, the job broker) cannot be reached: exit 2 at start, 503 with
    Retry-After on a route that needs it later."""


def redacted(url: str) -> str:
    """The URL without its user and password, fit for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def connect(url: str) -> redis.Redis:
    """A client for `url`, once Redis has answered a PING."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
        client.ping()
    except (redis.RedisError, ValueError) as error:
        raise SharedStateError(
            f"cannot reach Redis at {redacted(url)} (ARCHIVIST_REDIS_URL): {error}"
        ) from error
    return client


class SharedRateLimiter:
    """`per_minute` requests per key in any 60 seconds, counted in Redis for all replicas (the moving window
    of the `limits` library). Same interface as `app.ops.limits.RateLimiter`."""

    def __init__(self, url: str, prefix: str, per_minute: int, what: str = "requests") -> None:
        self.per_minute = per_minute
        self.what = what
        self._url = url
        storage = RedisStorage(
            url,
            key_prefix=f"{prefix}:limits",
            wrap_exceptions=True,
            socket_timeout=TIMEOUT_S,
            socket_connect_timeout=TIMEOUT_S,
        )
        self._window = MovingWindowRateLimiter(storage)

    def check(self, key: str) -> None:
        """Count one request of `key`; `TooBusyError` when its window is full (the request is not counted)."""
        self._take(key, count=True)

    def peek(self, key: str) -> None:
        """`TooBusyError` when `key`'s window is full, counting nothing."""
        self._take(key, count=False)

    def _take(self, key: str, count: bool) -> None:
        if not self.per_minute:
            return
        limit = RateLimitItemPerMinute(self.per_minute)
        try:
            allowed = (
                self._window.hit(limit, self.what, key) if count else self._window.test(limit, self.what, key)
            )
            if allowed:
                return
            reset_at = self._window.get_window_stats(limit, self.what, key).reset_time
        except StorageError as error:
            raise SharedStateError(
                f"the rate limit cannot be checked: Redis at {redacted(self._url)} is unreachable"
            ) from error
        raise TooBusyError(
            f"rate limit of {self.per_minute} {self.what} per minute exceeded", reset_at - time.time()
        )


# Stores an answer under its collection's version and drops the collection's older versions, atomically:
# a replica still answering from an older version can never put it back after a newer one.
# KEYS: the collection's latest-version key, its answers hash for this version.
# ARGV: version, field, answer, prefix of the versions' hashes, TTL in seconds, most entries per collection.
PUT_ANSWER = """
local latest = tonumber(redis.call('GET', KEYS[1]) or '-1')
local version = tonumber(ARGV[1])
if version < latest then return 0 end
if version > latest then
  if latest >= 0 then redis.call('DEL', ARGV[4] .. latest) end
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
while redis.call('HLEN', KEYS[2]) > tonumber(ARGV[6]) do
  local two = redis.call('HRANDFIELD', KEYS[2], 2)
  local evicted = two[1]
  if evicted == ARGV[2] then evicted = two[2] end
  redis.call('HDEL', KEYS[2], evicted)
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""


class SharedAnswerCache(CacheCounters):
    """The answer cache in Redis: one hash per collection version, fields keyed by a digest of the question
    and the answer-shaping settings. Same interface as `app.rag.cache.AnswerCache`; `max_entries` bounds each
    collection (a random answer makes room), `ttl_s` drops what a collection has not stored for that long."""

    def __init__(self, client: redis.Redis, prefix: str, max_entries: int, ttl_s: int) -> None:
        super().__init__()
        self.max_entries = max_entries
        self._client = client
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._put = client.register_script(PUT_ANSWER)

    def _versions(self, collection: str) -> str:
        return f"{self._prefix}:answers:{collection}:v"

    @staticmethod
    def _field(key: CacheKey) -> str:
        return hashlib.sha256(f"{key.question}\0{key.settings}".encode()).hexdigest()

    def get(self, key: CacheKey) -> Answer | None:
        try:
            found = self._client.hget(f"{self._versions(key.collection)}{key.version}", self._field(key))
            stored = cast("bytes | None", found)
        except redis.RedisError as error:
            log.warning("answer cache unavailable, answering without it: %s", error)
            stored = None
        if stored is None:
            self.misses += 1
            return None
        self.hits += 1
        return answer_from_json(stored)

    def put(self, key: CacheKey, answer: Answer) -> None:
        if not self.max_entries:
            return
        versions = self._versions(key.collection)
        try:
            self._put(
                keys=[f"{self._prefix}:answers-latest:{key.collection}", f"{versions}{key.version}"],
                args=[
                    key.version,
                    self._field(key),
                    answer_to_json(answer),
                    versions,
                    self._ttl_s,
                    self.max_entries,
                ],
            )
        except redis.RedisError as error:
            log.warning("answer cache unavailable, the answer is not kept: %s", error)

    def __len__(self) -> int:
        """Answers held for all collections (0 while Redis is unreachable)."""
        try:
            hashes = self._client.scan_iter(match=f"{self._prefix}:answers:*", count=1000)
            return sum(cast(int, self._client.hlen(name)) for name in hashes)
        except redis.RedisError:
            return 0


def answer_to_json(answer: Answer) -> str:
    return json.dumps(dataclasses.asdict(answer), ensure_ascii=False)


def answer_from_json(stored: str | bytes) -> Answer:
    fields: dict[str, Any] = json.loads(stored)
    fields["sources"] = [Source(source["n"], SearchHit(**source["hit"])) for source in fields["sources"]]
    fields["highlights"] = {int(n): (span[0], span[1]) for n, span in fields["highlights"].items()}
    return Answer(**fields)


def limits_and_cache(
    settings: Settings,
) -> tuple[RateLimiter | SharedRateLimiter, RateLimiter | SharedRateLimiter, AnswerCache | SharedAnswerCache]:
    """The per-key rate limiter, the failed-authentications limiter and the answer cache: in Redis when
    the settings name one (checked reachable here), else in this process."""
    failures = "failed authentications"
    if settings.redis_url is None:
        return (
            RateLimiter(settings.rate_limit_per_minute),
            RateLimiter(settings.auth_failures_per_minute, what=failures),
            AnswerCache(settings.answer_cache_size),
        )
    url, prefix = settings.redis_url.get_secret_value(), settings.redis_prefix
    client = connect(url)
    return (
        SharedRateLimiter(url, prefix, settings.rate_limit_per_minute),
        SharedRateLimiter(url, prefix, settings.auth_failures_per_minute, what=failures),
        SharedAnswerCache(client, prefix, settings.answer_cache_size, settings.answer_cache_ttl_s),
    )
