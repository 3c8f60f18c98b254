"""One chat server composed: the service, the gateway and HTTP API in front of it, the listening
socket, and the order in which they start and stop.

Layer: entry. `cli.py` builds an `App` from the configuration and a store; the tests build the
same `App`, so what they run is what `sohbet-server` runs.

Graceful shutdown (`App.shutdown`), in this order, within one time limit:
1. `/readyz` answers 503, so a load balancer stops sending new clients (for `drain_delay_s`);
2. the listening socket closes: no new connection;
3. the writer commits what is queued, and each sender gets its ack; a `chat:send` arriving now
   is answered `unavailable` (nothing stored: the client retries with the same `client_id`
   on its next connection);
4. every connection is closed with 1001;
5. the service's tasks end, the webhook delivers what it can in the time left, and storage is
   closed.
Nothing acked is lost and nothing is half-written: a message is acked only once its batch has
committed, and a batch is one transaction.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from functools import partial

from sohbet.api.endpoints import HttpApi
from sohbet.api.metrics import RENDER_REUSE_S, ChatCollector, metrics_registry, webhook_metrics
from sohbet.api.metrics import register as register_metrics
from sohbet.api.webhook import WebhookSender
from sohbet.app import demo
from sohbet.app.assets import serve_client
from sohbet.app.gateway import ChatGateway, ServerOutbox
from sohbet.auth import Verifier
from sohbet.broker import Broker
from sohbet.config import AuthConfig, ChatConfig, StoreConfig, WebhookConfig
from sohbet.service import ChatService
from sohbet.service.backend import Backend
from sohbet.store import MessageStore
from sohbet.ws.config import Limits, WebSocketConfig
from sohbet.ws.server import Server

__all__ = ["App", "AppConfig"]

log = logging.getLogger("sohbet")


@dataclass(frozen=True, slots=True)
class AppConfig:
    """The sections one server needs (`sohbet.config.Config` has them all, and more)."""

    auth: AuthConfig
    chat: ChatConfig
    limits: Limits
    websocket: WebSocketConfig
    store: StoreConfig
    drain_delay_s: float = 0.0
    #: Bearer token of `GET /metrics`; None: open.
    metrics_token: str | None = field(default=None, repr=False)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    #: Seconds one rendering of /metrics is served again (tests that compare scrapes use 0).
    metrics_reuse_s: float = RENDER_REUSE_S
    #: Serve the demo chat page and its token endpoint (`sohbet.app.demo`); `auth` must sign.
    demo: bool = False
    #: This instance's name, in metrics (and, in a cluster, the broker's registry).
    instance_id: str = "sohbet"


class App:
    """A chat server on one port, over *store* (migrated and, for production, locked)."""

    def __init__(
        self, config: AppConfig, store: MessageStore, *, write_depth: int | None = None, broker: Broker | None = None
    ) -> None:
        """Args:
        broker: the link to the other instances of a cluster (None: a single process).
        """
        self.config = config
        self.store = store
        #: Tells the application of messages for members with no connection, when configured.
        self.webhook = None if config.webhook.url is None else WebhookSender(config.webhook)
        self.chat = ChatService(
            store,
            config.chat,
            Verifier(config.auth),
            ServerOutbox(),
            max_message_bytes=config.limits.max_message_bytes,
            leeway_s=config.auth.leeway_s,
            max_batch=config.store.max_batch,
            max_queue=config.store.max_queue,
            writers=config.store.writers,
            depth=write_depth or config.store.write_depth,
            gather_s=config.store.write_gather_ms / 1000,
            notifier=self.webhook,
            broker=broker,
        )
        self.gateway = ChatGateway(self.chat)
        self.backend = Backend(self.chat, max_event_bytes=config.limits.max_message_bytes)
        HttpApi(
            self.chat,
            self.backend,
            config.auth.api_key,
            request_timeout_s=config.limits.request_timeout_s,
            max_user_body_bytes=config.limits.max_message_bytes,
        ).register(self.gateway.routes)
        self.server = Server(self.gateway, limits=config.limits, websocket=config.websocket)
        extra = list if self.webhook is None else partial(webhook_metrics, self.webhook.stats)
        self.metrics = metrics_registry(
            ChatCollector(self.server, self.chat, self.gateway.routes, extra, instance_id=config.instance_id)
        )
        register_metrics(self.gateway.routes, self.metrics, config.metrics_token, config.metrics_reuse_s)
        serve_client(self.gateway.routes)
        if config.demo:
            demo.register(self.gateway.routes, config.auth)

    @property
    def port(self) -> int:
        """The port it listens on."""
        return self.server.port

    async def start(self, host: str, port: int) -> None:
        """Start the service, then listen; `/healthz` answers 200 from here on."""
        if self.webhook is not None:
            await self.webhook.start()
        await self.chat.start()
        await self.server.start(host, port)
        self.gateway.accepting = True

    async def shutdown(self, timeout_s: float) -> None:
        """Stop gracefully within *timeout_s* (see the module's docstring); what is still open
        then is closed regardless. Storage is left to the caller, who opened it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self.gateway.accepting = False  # /readyz and /healthz: 503 from now on
        if self.config.drain_delay_s:
            log.info("shutting down: /readyz answers 503; draining for %g s", self.config.drain_delay_s)
            await asyncio.sleep(self.config.drain_delay_s)
        self.server.stop_accepting()
        queued, acked = self.chat.writer.queued, self.chat.ctx.stats.acked
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await asyncio.shield(self.chat.writer.stop())
        except TimeoutError:
            log.warning("shutting down: storage did not take the queued messages in time; they were not acked")
        else:
            if queued:
                done = self.chat.ctx.stats.acked - acked  # the others were answered unavailable
                log.info("shutting down: %d messages were queued; %d committed and acked", queued, done)
        log.info("shutting down: closing %d connections with 1001", len(self.server.connections))
        await self.server.shutdown(max(0.1, deadline - loop.time()))
        try:
            async with asyncio.timeout(max(0.1, deadline - loop.time())):
                await self.chat.stop()
        except TimeoutError:
            self.chat.abandon()
        if self.webhook is not None:  # last: it has been told of every message committed
            await self.webhook.stop(max(0.1, deadline - loop.time()))
