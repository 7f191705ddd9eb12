"""Limit and quota decisions in a Redis shared by several gateways.

One decision is one run of a Lua script, atomic in Redis and on Redis's clock (`TIME`), never
a gateway's; keys expire by themselves. Even a lean client costs a round trip's system calls
and a Task, so the decisions of one event-loop turn go together: they are queued, and at the
end of the turn each script runs once for the whole batch (one EVALSHA, one round trip) on one
of `pool_size` connections (fastgw/redis_client.py), answered by callbacks: a Task only when
a connection must be opened first.

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
from functools import partial
from typing import Any

import hiredis

from .config.traffic import RedisSettings, redacted
from .logs import Throttled
from .redis_client import RedisClient, RedisConnection, RedisReplyError, ignored

log = logging.getLogger("fastgw.redis")

FIRST_BACKOFF = 0.1
MAX_BACKOFF = 2.0
MAX_BATCH = 256  # decisions in one script run: bounds how long Redis is busy with one call

Done = Callable[[list[int] | None], None]
Queued = tuple[list[bytes], tuple[int, ...], Done]  # the keys, arguments and callback of one


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


class Call:
    """One script run for a batch of decisions, until it is answered or its deadline."""

    __slots__ = ("args", "batch", "deadline", "over", "script", "timer")

    def __init__(self, script: Script, batch: list[Queued], deadline: float) -> None:
        keys: list[bytes] = []
        argv: list[int] = [len(batch)]
        for item_keys, args, _ in batch:
            keys += item_keys
            argv += args
        self.args = ("EVALSHA", script.sha, len(keys), *keys, *argv)
        self.script = script
        self.batch = batch
        self.deadline = deadline
        self.timer: Any = None
        self.over = False

    def answer(self, reply: list[int]) -> None:
        self.over = True
        width = self.script.width
        for index, (_, _, done) in enumerate(self.batch):
            done(reply[index * width : index * width + width])

    def fail(self, store: RedisStore, error: BaseException) -> None:
        self.over = True
        store.failed(error)
        for _, _, done in self.batch:
            done(None)


class RedisStore:
    """The Redis of one worker's config: a pool of `pool_size` connections and the queue of
    this turn's decisions."""

    def __init__(self, settings: RedisSettings, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.timeout = settings.timeout
        self.shown = redacted(settings.url)
        self.client = RedisClient(settings.url, settings.pool_size, settings.timeout, loop)
        self.queued: dict[Script, list[Queued]] = {}
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
        deadline = self.loop.time() + self.timeout
        for script, batch in queued.items():
            for start in range(0, len(batch), MAX_BATCH):
                self.send(Call(script, batch[start : start + MAX_BATCH], deadline))

    def send(self, call: Call) -> None:
        """On an open connection at once, with callbacks (no Task); else open one first."""
        connection = self.client.ready()
        if connection is None:
            self.loop.create_task(self.open_and_send(call))
        else:
            self.sent(call, connection)

    async def open_and_send(self, call: Call) -> None:
        try:
            async with asyncio.timeout_at(call.deadline):
                connection = await self.client.connection()
        except (TimeoutError, RedisReplyError, hiredis.ProtocolError, OSError) as error:
            call.fail(self, error)
            return
        self.sent(call, connection)

    def sent(self, call: Call, connection: RedisConnection, retried: bool = False) -> None:
        reply = connection.call(*call.args)
        if call.timer is None:
            call.timer = self.loop.call_at(call.deadline, self.expired, call, connection)
        reply.add_done_callback(partial(self.answered, call, connection, retried))

    def answered(
        self, call: Call, connection: RedisConnection, retried: bool, reply: asyncio.Future
    ) -> None:
        error = reply.exception()  # retrieved even when no longer wanted (asyncio warns else)
        if call.over:
            return  # already failed by its deadline
        if error is None:
            call.timer.cancel()
            self.down_until = 0.0
            self.backoff = FIRST_BACKOFF
            call.answer(reply.result())
        elif str(error).startswith("NOSCRIPT") and not retried:
            # A restarted or flushed Redis: load the script, then the same call again.
            connection.call("SCRIPT", "LOAD", call.script.text).add_done_callback(ignored)
            self.sent(call, connection, retried=True)
        else:
            call.timer.cancel()
            call.fail(self, error)

    def expired(self, call: Call, connection: RedisConnection) -> None:
        """No answer by the deadline: fail the batch; the connection goes (what it still owes
        may never come, and later calls must not queue behind it)."""
        if not call.over:
            connection.close()
            call.fail(self, TimeoutError())

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
