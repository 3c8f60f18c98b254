"""The broker of a cluster: events over Redis pub/sub, presence in a Redis registry.

Layer: broker. Uses the `redis` library's asyncio client (docs/cluster.md).

Channels. `{prefix}:all` reaches every instance; `{prefix}:c:{id}` reaches the instances that
follow conversation *id* (one of their connected users is a member). Conversation traffic is
the volume, so it goes only where it is needed: a message to a 10,000-member group is one
PUBLISH, which Redis copies to the few instances holding its members; a one-to-one message
reaches at most two. Per-user channels would cost one PUBLISH per recipient, and per-instance
channels a directory of every user's instance on every sender.

Registry. `{prefix}:conns:{user}` (a hash: instance → connections) is what the per-user limit
counts, atomically, in a Lua script; `{prefix}:users:{instance}` (user → connections) is an
instance's part of it, read whole by an instance that (re)connects; `{prefix}:alive:{instance}`
is a heartbeat that expires; `{prefix}:instances` lists the instances. Each change is published
by the script that made it, so the other instances' views follow the registry in its own order.
An instance that stops renewing its heartbeat is buried by the first survivor that notices:
its entries are removed and `GONE` is published.

Failure. When Redis stops answering (a heartbeat or a command times out, the subscription
breaks), the link is down: events are dropped (pub/sub is at-most-once anyway; every message
is in storage), connection limits fall back on each instance's own count, and the link is
tried again every `retry_s`. Once it is back, the instance re-registers its connections, reads
the registry and tells the service, which catches up on what it did not receive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable
from typing import Any, Final

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sohbet.broker import REFUSED, Header, Kind, Listener, Presence
from sohbet.chat.ids import ConversationId, UserId

__all__ = ["RedisBroker"]

log = logging.getLogger("sohbet.broker")

_SEP: Final = b"\n"  # between an event's JSON header (which never holds a raw newline) and its data
_CHUNK: Final = 1000  # channels per SUBSCRIBE, commands per pipeline
_MAX_QUEUE: Final = 100_000  # events waiting to be sent; past it they are dropped (and counted)
_MAX_QUEUE_BYTES: Final = 64 * 1024 * 1024  # ... or past this many bytes of them
_LOGGED_BAD_EVENTS: Final = 10  # events that could not be handled, logged with their traceback

#: Set one instance's connection count of a user, within the limit over the live instances, and
#: publish the change. KEYS: conns:{user}, users:{me}. ARGV: me, count, limit (0: none), the
#: alive-key prefix, user, channel, the user's conversations as JSON (or null).
_SET_COUNT: Final = """
local n = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local total = n
if limit > 0 then
  local fields = redis.call('HGETALL', KEYS[1])
  for i = 1, #fields, 2 do
    local f = fields[i]
    if f ~= ARGV[1] and redis.call('EXISTS', ARGV[4] .. f) == 1 then
      total = total + tonumber(fields[i + 1])
    end
  end
  if total > limit then return -1 end
end
if n > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], n)
  redis.call('HSET', KEYS[2], ARGV[5], n)
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[5])
end
redis.call('PUBLISH', ARGV[6], '{"k":"u","i":' .. cjson.encode(ARGV[1]) .. ',"u":' .. cjson.encode(ARGV[5])
  .. ',"n":' .. n .. ',"cs":' .. ARGV[7] .. '}\\n')
return total
"""

#: Remove an instance from the registry and tell everyone. KEYS: users:{it}, instances.
#: ARGV: it, the conns-key prefix, channel. Returns how many users it held (0: already buried).
_BURY: Final = """
local users = redis.call('HKEYS', KEYS[1])
for _, u in ipairs(users) do
  redis.call('HDEL', ARGV[2] .. u, ARGV[1])
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[3], '{"k":"g","i":' .. cjson.encode(ARGV[1]) .. '}\\n')
return #users
"""


class RedisBroker:
    """One instance's link to the others through Redis (see the module docstring)."""

    def __init__(
        self,
        url: str,
        instance_id: str,
        *,
        prefix: str = "sohbet",
        heartbeat_s: float = 2.0,
        ttl_s: float = 10.0,
        timeout_s: float = 2.0,
        retry_s: float = 0.5,
    ) -> None:
        """Args:
        url: `redis://`, `rediss://` or `unix://`, as the `redis` library reads it.
        prefix: of every key and channel: deployments sharing one Redis need different ones
            (pub/sub ignores the database number).
        heartbeat_s: how often this instance renews its heartbeat and looks for dead ones.
        ttl_s: how long a heartbeat lives: an instance silent this long is dead.
        timeout_s: how long a command may take before the link counts as down.
        retry_s: how long to wait before trying a lost link again.
        """
        self._url = url
        self._id = instance_id
        self._prefix = prefix
        self.heartbeat_s = heartbeat_s
        self.ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._client = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        # Subscriptions block in reads for as long as nothing is published: no read timeout.
        self._sub_client = aioredis.Redis.from_url(url, socket_connect_timeout=timeout_s)
        self._set_count = self._client.register_script(_SET_COUNT)
        self._bury = self._client.register_script(_BURY)
        self._all = f"{prefix}:all"
        self._listener: Listener | None = None
        self._up = False
        self._since = 0.0  # when the link came up (the loop's clock)
        self._pubsub: Any = None
        self._channels: set[str] = set()  # the conversations followed, as channels
        self._confirming: dict[bytes, asyncio.Future[None]] = {}
        # Registry entries heard of while the registry is read (newer than what it says).
        self._touched: set[tuple[str, UserId]] = set()
        self._heard: set[str] = set()  # instances heard of: looked for among the live ones
        self._ready = False  # linked, registered and the registry read
        self._dirty: set[UserId] = set()  # users whose count changed while not ready
        self._queued_bytes = 0
        self._local: dict[UserId, int] = {}  # connections admitted here, by user
        self._queue: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Future[None]] = set()
        self._link: asyncio.Task[None] | None = None
        self._counters = dict.fromkeys(("sent", "received", "dropped", "reconnections", "buried", "bad"), 0)

    # -- Broker ---------------------------------------------------------------------------------

    @property
    def instance_id(self) -> str:  # see Broker
        return self._id

    @property
    def clustered(self) -> bool:  # see Broker
        return True

    @property
    def up(self) -> bool:  # see Broker
        return self._up and self._ready

    async def start(self, listener: Listener) -> None:  # see Broker
        self._listener = listener
        self._tasks = [
            asyncio.ensure_future(self._supervise()),
            asyncio.ensure_future(self._heartbeat()),
            asyncio.ensure_future(self._send_loop()),
        ]
        # Wait a little for the first link, so a healthy cluster starts linked; a Redis that is
        # down does not stop the instance from serving its own users.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout_s):
                while not self._up:
                    await asyncio.sleep(0.01)

    async def stop(self) -> None:  # see Broker
        tasks = [*self._tasks, *self._running, *([self._link] if self._link is not None else [])]
        for task in tasks:
            task.cancel()
        # Bounded: a cancellation the redis library swallows in the middle of a SUBSCRIBE
        # must not hold up a shutdown.
        await asyncio.wait(tasks, timeout=self._timeout_s)
        if self._up:
            # Leave at once: the others announce this instance's users without waiting for
            # its heartbeat to expire (a deploy's restarts stay within the presence grace).
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self._timeout_s):
                    await self._flush()
                    await self._client.delete(self._key("alive", self._id))
                    await self._bury_instance(self._id)
        self._up = False
        with contextlib.suppress(RedisError, OSError):
            if self._pubsub is not None:
                await self._pubsub.aclose()
        await self._client.aclose()
        await self._sub_client.aclose()

    def send(self, header: Header, data: bytes) -> None:  # see Broker
        if not self._up:
            self._counters["dropped"] += 1
            return
        if len(self._queue) >= _MAX_QUEUE or self._queued_bytes >= _MAX_QUEUE_BYTES:
            self._counters["dropped"] += 1
            return
        conversation = header.get("c")
        if conversation is None or header["k"] in _TO_ALL:
            channel = self._all
        else:
            channel = self._conversation_channel(conversation)
        header["i"] = self._id
        payload = orjson.dumps(header) + _SEP + data
        self._queued_bytes += len(payload)
        self._queue.append((channel, payload))
        self._wake.set()

    async def follow(self, conversations: Iterable[ConversationId]) -> None:  # see Broker
        new = [c for c in map(self._conversation_channel, conversations) if c not in self._channels]
        self._channels.update(new)
        if new and self._up:
            await self._subscribe(new)

    def unfollow(self, conversations: Iterable[ConversationId]) -> None:  # see Broker
        gone = [c for c in map(self._conversation_channel, conversations) if c in self._channels]
        self._channels.difference_update(gone)
        if gone and self._up and self._pubsub is not None:
            pubsub = self._pubsub
            for i in range(0, len(gone), _CHUNK):
                self._background(pubsub.unsubscribe(*gone[i : i + _CHUNK]))

    async def refollow(self, conversations: Iterable[ConversationId]) -> None:  # see Broker
        channels = [c for c in map(self._conversation_channel, conversations) if c in self._channels]
        if channels and self._up:
            await self._subscribe(channels)

    async def admit(
        self, user: UserId, limit: int, conversations: Iterable[ConversationId]
    ) -> int | None:  # see Broker
        count = self._local.get(user, 0) + 1
        self._local[user] = count
        if not self._ready:
            if limit and count > limit:  # connections waiting for hello count too
                self._forget_one(user)
                return REFUSED
            self._dirty.add(user)  # registered with the rest when the link is (back) up
            return None
        try:
            async with asyncio.timeout(self._timeout_s):
                total: int = await self._set_count(
                    keys=[self._key("conns", user), self._key("users", self._id)],
                    args=[self._id, count, limit, self._key("alive", ""), user, self._all, _convs(conversations)],
                )
        except (RedisError, OSError, TimeoutError) as exc:
            self._link_failed(exc)
            return None
        if total == REFUSED:
            self._forget_one(user)
            # Another admit of this user may have written the higher count meanwhile: set ours.
            self._background(self._write_count(user, None))
        return int(total)

    def release(self, user: UserId, conversations: Iterable[ConversationId]) -> None:  # see Broker
        self._forget_one(user)
        if self._ready:
            self._background(self._write_count(user, _convs(conversations)))
        else:
            self._dirty.add(user)

    def stats(self) -> dict[str, int]:  # see Broker
        return dict(self._counters)

    # -- the link -------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Keep a link up: connect, listen until it breaks, wait `retry_s`, again."""
        first = True
        while True:
            self._link = asyncio.ensure_future(self._linked())
            try:
                await self._link
            except asyncio.CancelledError:
                if asyncio.current_task() is not None and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise  # the broker stops
                exc: BaseException = ConnectionError("the heartbeat failed")
            except (RedisError, OSError, TimeoutError) as failure:
                exc = failure
            except Exception as failure:  # a bug must not end the cluster link for good
                log.exception("the redis link failed")
                exc = failure
            else:
                exc = ConnectionError("the subscription ended")
            if self._up or first:
                log.error("redis is unreachable (%s): live delivery between instances paused", exc)
            first = False
            self._down()
            await asyncio.sleep(self._retry_s)

    async def _linked(self) -> None:
        """Subscribe, register, read the registry, then listen (returns or raises when the link breaks)."""
        pubsub = self._sub_client.pubsub()
        self._pubsub = pubsub
        self._touched = set()
        try:
            await pubsub.subscribe(self._all)
            listening = asyncio.ensure_future(self._listen(pubsub))
            try:
                async with asyncio.timeout(self._timeout_s):
                    await pubsub.ping()  # answered after the SUBSCRIBE: the channel is live
                    self._up = True  # for `follow` from here on
                    await self._subscribe(sorted(self._channels))
                    await self._register()
                    counts = await self._read_registry()
                self._since = asyncio.get_running_loop().time()
                assert self._listener is not None
                self._listener.snapshot(counts, self._touched)
                self._touched = set()  # only what came before the registry was read matters
                self._heard.update(counts)
                self._ready = True
                # Counts that changed while the registration was being written: write them again.
                dirty, self._dirty = self._dirty, set()
                for user in dirty:
                    self._background(self._write_count(user, None))
                log.info("redis link up as instance %s", self._id)
                self._listener.link_changed(True)
                await listening
            finally:
                listening.cancel()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _down(self) -> None:
        was_up = self._up
        self._up = self._ready = False
        self._pubsub = None
        for future in self._confirming.values():
            if not future.done():
                future.cancel()
        self._confirming.clear()
        self._counters["dropped"] += len(self._queue)
        self._queue.clear()
        self._queued_bytes = 0
        if was_up:
            self._counters["reconnections"] += 1
            assert self._listener is not None
            self._listener.link_changed(False)

    def _link_failed(self, exc: BaseException) -> None:
        """A command failed: end the link (the supervisor connects again)."""
        log.debug("redis command failed: %s", exc)
        if self._link is not None and not self._link.done():
            self._link.cancel()

    async def _listen(self, pubsub: Any) -> None:
        listener = self._listener
        assert listener is not None
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            kind = message["type"]
            if kind == "subscribe":
                future = self._confirming.pop(message["channel"], None)
                if future is not None and not future.done():
                    future.set_result(None)
                continue
            if kind != "message":
                continue
            self._counters["received"] += 1
            try:
                self._dispatch(listener, message["data"])
            except Exception as exc:  # one bad event must not end the link
                bad = self._counters["bad"] = self._counters["bad"] + 1
                if bad <= _LOGGED_BAD_EVENTS:  # a flood of them fills no log
                    log.error("an event from redis could not be handled (%d so far)", bad, exc_info=exc)

    def _dispatch(self, listener: Listener, raw: bytes) -> None:
        head, _, data = raw.partition(_SEP)
        header = orjson.loads(head)
        instance = header["i"]
        kind = header["k"]
        if instance == self._id:
            if kind == Kind.GONE:
                # Buried by another instance (this one was silent past its heartbeat's life):
                # link again, which registers every connection here once more.
                self._link_failed(ConnectionError("another instance took this one for dead"))
            return  # our own, echoed by a channel we follow
        self._heard.add(instance)
        if kind == Kind.PRESENCE:
            user = header["u"]
            if not self._ready:  # the registry is being read: what comes now is newer
                self._touched.add((instance, user))
            cs = header.get("cs")
            listener.presence(Presence(instance, user, header["n"], None if cs is None else tuple(cs)))
        elif kind == Kind.GONE:
            listener.instance_gone(instance)
        else:
            listener.event(header, data)

    async def _subscribe(self, channels: list[str]) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            return
        loop = asyncio.get_running_loop()
        for i in range(0, len(channels), _CHUNK):
            chunk = channels[i : i + _CHUNK]
            futures = []
            for channel in chunk:
                future = self._confirming.get(channel.encode())
                if future is None:
                    future = self._confirming[channel.encode()] = loop.create_future()
                futures.append(future)
            try:
                async with asyncio.timeout(self._timeout_s):
                    await pubsub.subscribe(*chunk)
                    await asyncio.gather(*futures)
            except (RedisError, OSError, TimeoutError, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
                self._link_failed(exc)  # followed again when the link is back
                return

    # -- the registry ---------------------------------------------------------------------------

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}:{kind}:{name}"

    def _conversation_channel(self, conversation: ConversationId) -> str:
        return f"{self._prefix}:c:{conversation}"

    def _forget_one(self, user: UserId) -> None:
        count = self._local.get(user, 0) - 1
        if count > 0:
            self._local[user] = count
        else:
            self._local.pop(user, None)

    async def _write_count(self, user: UserId, conversations: bytes | None) -> None:
        async with asyncio.timeout(self._timeout_s):
            await self._set_count(
                keys=[self._key("conns", user), self._key("users", self._id)],
                args=[self._id, self._local.get(user, 0), 0, "", user, self._all, conversations or b"null"],
            )

    async def _register(self) -> None:
        """Put this instance's connections (back) in the registry, and its heartbeat."""
        client = self._client
        await client.set(self._key("alive", self._id), 1, px=int(self.ttl_s * 1000))
        await client.sadd(self._key("instances", ""), self._id)
        registered = {UserId(_text(u)) for u in await client.hkeys(self._key("users", self._id))}
        local = dict(self._local)
        users = list(local) + [u for u in registered if u not in local]
        for i in range(0, len(users), _CHUNK):
            async with client.pipeline(transaction=False) as pipe:
                for user in users[i : i + _CHUNK]:
                    await self._set_count(
                        keys=[self._key("conns", user), self._key("users", self._id)],
                        args=[self._id, local.get(user, 0), 0, "", user, self._all, b"null"],
                        client=pipe,
                    )
                await pipe.execute()

    async def _read_registry(self) -> dict[str, dict[UserId, int]]:
        """The connection counts of every other live instance."""
        counts: dict[str, dict[UserId, int]] = {}
        for instance in await self._live_others():
            users = await self._client.hgetall(self._key("users", instance))
            counts[instance] = {UserId(_text(u)): int(n) for u, n in users.items()}
        return counts

    async def _live_others(self, *, bury: bool = False) -> list[str]:
        client = self._client
        instances = [_text(i) for i in await client.smembers(self._key("instances", ""))]
        others = [i for i in instances if i != self._id]
        if not others:
            return []
        async with client.pipeline(transaction=False) as pipe:
            for instance in others:
                pipe.exists(self._key("alive", instance))
            alive = await pipe.execute()
        live = [i for i, a in zip(others, alive, strict=True) if a]
        if bury:
            for instance in others:
                if instance not in live and await self._bury_instance(instance):
                    log.warning("instance %s stopped its heartbeat: its users are offline", instance)
        return live

    async def _bury_instance(self, instance: str) -> int:
        buried: int = await self._bury(
            keys=[self._key("users", instance), self._key("instances", "")],
            args=[instance, self._key("conns", ""), self._all],
        )
        self._counters["buried"] += 1
        return buried

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if not self._up:
                continue
            try:
                async with asyncio.timeout(self._timeout_s):
                    alive = self._key("alive", self._id)
                    if not await self._client.set(alive, 1, px=int(self.ttl_s * 1000), xx=True):
                        # It had expired (this process stalled, or Redis came back empty): the
                        # others may have buried this instance. Link again, registering anew.
                        raise ConnectionError("this instance's heartbeat had expired")
                    await self._client.sadd(self._key("instances", ""), self._id)
                    # Only once linked for a whole ttl: right after Redis came back empty, the
                    # others have not yet renewed their heartbeats, and are not dead.
                    if loop.time() - self._since >= self.ttl_s:
                        live = set(await self._live_others(bury=True))
                        assert self._listener is not None
                        for gone in self._known_gone(live):
                            self._listener.instance_gone(gone)
            except (RedisError, OSError, TimeoutError) as exc:
                self._link_failed(exc)

    def _known_gone(self, live: set[str]) -> list[str]:
        """Instances the listener may still count that are not live (buried by someone else
        while this one was not listening)."""
        gone = [i for i in self._heard if i not in live and i != self._id]
        self._heard.difference_update(gone)
        return gone

    # -- sending --------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
            except (RedisError, OSError, TimeoutError) as exc:
                self._link_failed(exc)

    async def _flush(self) -> None:
        queue = self._queue
        while queue:
            batch = [queue.popleft() for _ in range(min(len(queue), _CHUNK))]
            self._queued_bytes -= sum(len(p) for _, p in batch)
            try:
                async with asyncio.timeout(self._timeout_s):
                    async with self._client.pipeline(transaction=False) as pipe:
                        for channel, payload in batch:
                            pipe.publish(channel, payload)
                        await pipe.execute()
            except BaseException:
                self._counters["dropped"] += len(batch)
                raise
            self._counters["sent"] += len(batch)

    def _background(self, call: Any) -> None:
        """Run a command whose failure only matters to the link (the supervisor sees it)."""
        task = asyncio.ensure_future(self._quietly(call))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    @staticmethod
    async def _quietly(call: Any) -> None:
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await call


#: Kinds that go to every instance even though they name a conversation.
_TO_ALL: Final = frozenset({Kind.CREATED, Kind.MEMBER_ADDED, Kind.MEMBER_REMOVED})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _convs(conversations: Iterable[ConversationId]) -> bytes:
    return orjson.dumps(list(conversations))
