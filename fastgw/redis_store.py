"""Limit and quota decisions in a Redis shared by several gateways.

One decision is one run of a Lua script, atomic in Redis and on Redis's clock (`TIME`), never
a gateway's; keys expire by themselves. Even a lean client costs a round trip's system calls
and a Task, so the decisions of one event-loop turn go together: they are queued, and at the
end of the turn each script runs once for the whole batch (one EVALSHA, one round trip, one
Task) on one of `pool_size` connections (fastgw/redis_client.py).

Redis down, slow or failing costs each decision at most `redis.timeout`; then the caller gets
None and follows its `on_backend_failure`. After a failure the store backs off (0.1 s doubling
to 2 s) and answers None at once meanwhile, then tries again: limits work again by themselves
when Redis is back. One warning per cause at most every 10 s; the URL is logged redacted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Any

import hiredis

from .config.traffic import RedisSettings, redacted
from .logs import Throttled
from .redis_client import RedisClient, RedisReplyError

log = logging.getLogger("fastgw.redis")

FIRST_BACKOFF = 0.1
MAX_BACKOFF = 2.0
MAX_BATCH = 256  # decisions in one script run: bounds how long Redis is busy with one call

Done = Callable[[list[int] | None], None]


class Script:
    """A Lua script of batched decisions, each answered with `width` integers."""

    def __init__(self, text: str, width: int) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        self.width = width


# Per decision: n (its limits), max_delay, then interval and depth of each limit (all in
# microseconds); KEYS: one per limit. Answers: wait (< 0: refused, -retry after), the tightest
# limit (1-based), requests left under it, microseconds until its bucket is full.
RATE = Script(
    """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local out = {}
local k, a = 1, 2
for _ = 1, tonumber(ARGV[1]) do
  local n, max_delay = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local wait, tight, least, full_in = 0, 0, 0, 0
  local after = {}
  for i = 0, n - 1 do
    local interval, depth = tonumber(ARGV[a + 2 * i]), tonumber(ARGV[a + 2 * i + 1])
    local tat = tonumber(redis.call('GET', KEYS[k + i])) or now
    if tat < now then tat = now end
    after[i] = tat + interval - now
    if after[i] - depth > wait then wait = after[i] - depth end
    local left = math.floor((depth - after[i]) / interval)
    if tight == 0 or left < least then tight, least, full_in = i + 1, left, after[i] end
  end
  if wait > max_delay then
    out[#out + 1] = -wait
    out[#out + 1] = tight
    out[#out + 1] = 0
    out[#out + 1] = full_in - tonumber(ARGV[a + 2 * (tight - 1)])
  else
    for i = 0, n - 1 do
      redis.call('SET', KEYS[k + i], string.format('%d', now + after[i]),
                 'PX', math.ceil(after[i] / 1000) + 1)
    end
    out[#out + 1] = wait
    out[#out + 1] = tight
    out[#out + 1] = math.max(least, 0)
    out[#out + 1] = full_in
  end
  k = k + n
  a = a + 2 * n
end
return out
""",
    4,
)

# Per decision: the limit and when the window ends (unix seconds); KEYS: the window's counter.
# Answers: 1 if counted (0 if the quota is spent), and the count.
QUOTA = Script(
    """
local out = {}
for d = 1, tonumber(ARGV[1]) do
  local limit = tonumber(ARGV[2 * d])
  local used = tonumber(redis.call('GET', KEYS[d])) or 0
  if used < limit then
    used = redis.call('INCR', KEYS[d])
    if used == 1 then redis.call('EXPIREAT', KEYS[d], ARGV[2 * d + 1]) end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  out[#out + 1] = used
end
return out
""",
    2,
)


class RedisStore:
    """The Redis of one worker's config: a pool of `pool_size` connections and the queue of
    this turn's decisions."""

    def __init__(self, settings: RedisSettings, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.timeout = settings.timeout
        self.shown = redacted(settings.url)
        self.client = RedisClient(settings.url, settings.pool_size, settings.timeout, loop)
        self.queued: dict[Script, list[tuple[list[bytes], tuple[int, ...], Done]]] = {}
        self.down_until = 0.0
        self.backoff = FIRST_BACKOFF
        self.warnings = {
            cause: Throttled(log, 10.0) for cause in ("unreachable", "timeout", "error")
        }

    def decide(self, script: Script, keys: list[bytes], args: tuple[int, ...], done: Done) -> None:
        """Queue one decision; `done` gets its integers, or None when Redis failed it."""
        if self.down_until and self.loop.time() < self.down_until:
            done(None)  # backing off: fail at once rather than wait on a Redis known to be down
            return
        queue = self.queued.get(script)
        if queue is None:
            if not self.queued:
                self.loop.call_soon(self.flush)
            queue = self.queued[script] = []
        queue.append((keys, args, done))

    def flush(self) -> None:
        """The end of the turn: each script's queued decisions go in one call (or a few)."""
        queued, self.queued = self.queued, {}
        for script, batch in queued.items():
            for start in range(0, len(batch), MAX_BATCH):
                self.loop.create_task(self.run(script, batch[start : start + MAX_BATCH]))

    async def run(
        self, script: Script, batch: list[tuple[list[bytes], tuple[int, ...], Done]]
    ) -> None:
        keys: list[bytes] = []
        argv: list[int] = [len(batch)]
        for item_keys, args, _ in batch:
            keys += item_keys
            argv += args
        call = self.client.call
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    reply = await call("EVALSHA", script.sha, len(keys), *keys, *argv)
                except RedisReplyError as error:
                    if not str(error).startswith("NOSCRIPT"):
                        raise
                    await call("SCRIPT", "LOAD", script.text)  # a restarted or flushed Redis
                    reply = await call("EVALSHA", script.sha, len(keys), *keys, *argv)
        except (TimeoutError, RedisReplyError, hiredis.ProtocolError, OSError) as error:
            if isinstance(error, TimeoutError):
                self.client.drop()
            self.failed(error)
            for _, _, done in batch:
                done(None)
            return
        self.down_until = 0.0
        self.backoff = FIRST_BACKOFF
        width = script.width
        for index, (_, _, done) in enumerate(batch):
            done(reply[index * width : index * width + width])

    def failed(self, error: BaseException) -> None:
        if isinstance(error, TimeoutError):
            cause, detail = "timeout", f"no answer within {self.timeout * 1000:g} ms"
        elif isinstance(error, OSError):  # refused, reset, closed (ConnectionError is one)
            cause, detail = "unreachable", str(error) or error.__class__.__name__
        else:
            cause, detail = "error", str(error) or error.__class__.__name__
        self.down_until = self.loop.time() + self.backoff
        self.warnings[cause].warning(
            "redis %s: %s (%s); limits follow on_backend_failure, next try in %.1fs",
            self.shown,
            cause,
            detail,
            self.backoff,
        )
        self.backoff = min(MAX_BACKOFF, self.backoff * 2)

    def close(self) -> None:
        """No config uses this Redis any more: its connections close."""
        self.client.close()


def key_prefix(kind: bytes, *settings: Any) -> bytes:
    """`fgw:KIND:DIGEST:`, the same in every gateway for the same settings (Python's own hash
    is seeded per process, so it cannot name shared keys)."""
    digest = hashlib.blake2b(repr(settings).encode(), digest_size=8).hexdigest().encode()
    return b"fgw:" + kind + b":" + digest + b":"
