"""`GET /metrics`: the server's counters in Prometheus's text format, through prometheus-client.

Layer: transport. Imports prometheus-client, the service and the ws transport; never a store.

Nothing here runs while the server works: the server (`ws.server.ServerStats`), the chat
service (`service.stats.ChatStats`) and the route table (`Router.answered`) count in plain
integers where the work already happens, and `ChatCollector` turns them into metric families
only when Prometheus scrapes. Each server has its own registry (never prometheus-client's
global one), with the process and Python collectors beside its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Final

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from sohbet.api.credentials import KnownSecret
from sohbet.api.router import Router
from sohbet.api.webhook import WebhookStats
from sohbet.service import ChatService
from sohbet.service.stats import Histogram
from sohbet.ws.http11 import Request, Response, error_body
from sohbet.ws.server import Server

__all__ = ["BOUNDED_TABLES", "ChatCollector", "entry_counts", "metrics_registry", "register", "webhook_metrics"]

#: The route label of HTTP requests the server answered itself, before or instead of a route.
SERVER_ANSWERED: Final = "-"
#: Seconds a rendered scrape is served again.
RENDER_REUSE_S: Final = 1.0


#: The tables of `sohbet_entries` that may stay full once everyone has left, because each is
#: capped by design: tokens verified lately (an LRU of `service.tokens.MAX_REMEMBERED`, kept so a
#: reconnect skips its signature check; an entry goes when pushed out or looked up after `exp`),
#: sends whose commit had no answer (an LRU of 100,000, empty unless storage failed mid-commit),
#: and the places whose bug was logged (at most 1000). Every other table returns to its level
#: before the load once the users have left and their grace periods have ended.
BOUNDED_TABLES: Final = frozenset({"verified_tokens", "writer_uncertain", "logged_bugs"})


def entry_counts(server: Server, chat: ChatService) -> dict[str, int]:
    """How many entries each in-memory table of the server holds, by table: the hub's maps,
    the service's caches and buckets, the writer's queues, the transport's sockets and address
    counts. Read at each scrape only (a few milliseconds for 10,000 users); a leak shows as a
    table that does not come back down once users leave."""
    counts = {**chat.hub.sizes(), **chat.ctx.sizes(), **chat.cluster.sizes()}
    counts["sessions"] = chat.session_count
    counts["verified_tokens"] = chat.verified_token_count
    counts["writer_queue"] = chat.writer.queued
    counts["writer_uncertain"] = chat.writer.uncertain_count
    counts["sockets"] = server.socket_count
    counts["websockets"] = len(server.connections)
    counts["addresses_open"] = len(server.addresses.addresses)
    counts["address_buckets"] = server.addresses.bucket_count
    return counts


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=histogram.cumulative(), sum_value=histogram.sum)


class ChatCollector(Collector):
    """The metric families of one chat server, built from its counters at each scrape."""

    def __init__(
        self,
        server: Server,
        chat: ChatService,
        router: Router,
        extra: Callable[[], list[Metric]],
        *,
        instance_id: str = "sohbet",
    ) -> None:
        """Args:
        server, chat, router: whose counters to read.
        extra: more families, built at each scrape (the webhook's, when there is one).
        instance_id: named by `sohbet_instance_info`, to tell the instances of a cluster apart.
        """
        self.instance_id = instance_id
        self.server = server
        self.chat = chat
        self.router = router
        self.extra = extra

    def _cluster(self) -> Iterator[Metric]:
        broker, cluster = self.chat.broker, self.chat.cluster
        if broker is None or not cluster.active:
            return
        yield GaugeMetricFamily("sohbet_broker_up", "1 while the link to Redis is up, else 0.", int(broker.up))
        yield GaugeMetricFamily(
            "sohbet_cluster_remote_users",
            "Users connected to other instances, as this one knows.",
            cluster.remote_users,
        )
        yield GaugeMetricFamily(
            "sohbet_cluster_followed", "Conversations this instance follows on the broker.", cluster.followed
        )
        events = CounterMetricFamily(
            "sohbet_broker_events",
            "Events between instances: sent, received, dropped (link down or queue full).",
            labels=["result"],
        )
        counts = broker.stats()
        for result in ("sent", "received", "dropped"):
            events.add_metric([result], counts.get(result, 0))
        yield events
        yield CounterMetricFamily(
            "sohbet_broker_reconnections", "Times the link to Redis was lost.", counts.get("reconnections", 0)
        )
        lines = CounterMetricFamily(
            "sohbet_cluster_messages",
            "Messages in delivery order: gaps seen, filled from storage, duplicates dropped, conversations "
            "a sweep found behind storage.",
            labels=["result"],
        )
        for result in ("gaps", "filled", "duplicates", "swept"):
            lines.add_metric([result], cluster.counters[result])
        yield lines

    def collect(self) -> Iterator[Metric]:  # prometheus-client's contract
        server, stats, chat = self.server, self.server.stats, self.chat.ctx.stats
        info = GaugeMetricFamily("sohbet_instance_info", "This instance, by name (always 1).", labels=["instance_id"])
        info.add_metric([self.instance_id], 1)
        yield info
        yield from self._cluster()
        yield GaugeMetricFamily("sohbet_connections", "Open WebSocket connections.", len(server.connections))
        yield GaugeMetricFamily(
            "sohbet_sockets", "Open sockets: WebSocket, plain HTTP and closed ones lingering.", server.socket_count
        )
        yield GaugeMetricFamily(
            "sohbet_users_online", "Users online (connected, or within the grace period).", self.chat.hub.online_count
        )
        yield GaugeMetricFamily("sohbet_writer_queue", "chat:sends waiting for a batch.", self.chat.writer.queued)
        yield GaugeMetricFamily(
            "sohbet_admitting",
            "Users with connections whose admission (a storage read) is under way; upgrades beyond "
            "--max-admitting get 503.",
            self.chat.admitting,
        )
        entries = GaugeMetricFamily(
            "sohbet_entries", "Entries held in memory, by table (hub maps, caches, buckets, queues).", labels=["table"]
        )
        for table, count in sorted(entry_counts(server, self.chat).items()):
            entries.add_metric([table], count)
        yield entries
        yield GaugeMetricFamily(
            "sohbet_storage_up", "1 if storage answered when last asked, else 0.", int(self.chat.ctx.storage_up)
        )
        received = CounterMetricFamily(
            "sohbet_messages_received", "WebSocket requests received, by type.", labels=["type"]
        )
        for kind, count in chat.received.items():
            received.add_metric([str(kind)], count)
        yield received
        yield CounterMetricFamily("sohbet_messages_acked", "chat:acks sent: messages stored.", chat.acked)
        yield CounterMetricFamily("sohbet_deliveries", "Events handed to connections by fan-out.", chat.deliveries)
        bytes_in, bytes_out = server.bytes_moved()
        yield CounterMetricFamily("sohbet_bytes_received", "Bytes read from sockets.", bytes_in)
        yield CounterMetricFamily("sohbet_bytes_sent", "Bytes written to sockets.", bytes_out)
        handshakes = CounterMetricFamily(
            "sohbet_handshakes", "WebSocket upgrades: accepted, or the status refused with.", labels=["result"]
        )
        for result, count in sorted(stats.handshakes.items()):
            handshakes.add_metric([result], count)
        yield handshakes
        closes = CounterMetricFamily("sohbet_closes", "WebSocket connections ended, by close code.", labels=["code"])
        for code, count in sorted(stats.closes.items()):
            closes.add_metric([code], count)
        yield closes
        errors = CounterMetricFamily("sohbet_errors", "error answers, by code.", labels=["code"])
        for code, count in chat.errors.items():
            errors.add_metric([str(code)], count)
        yield errors
        yield CounterMetricFamily(
            "sohbet_slow_consumers", "Connections closed with 4008 for not reading.", stats.slow_consumers
        )
        yield CounterMetricFamily(
            "sohbet_sockets_dropped",
            "Sockets closed unanswered at accept: far past a limit.",
            stats.dropped,
        )
        requests = CounterMetricFamily(
            "sohbet_http_requests", "HTTP requests answered, by route and status.", labels=["route", "status"]
        )
        for (route, status), count in sorted(self.router.answered.items()):
            requests.add_metric([route, str(status)], count)
        for status, count in sorted(stats.http_answered.items()):
            requests.add_metric([SERVER_ANSWERED, str(status)], count)
        yield requests
        yield _histogram(
            "sohbet_store_commit_seconds", "Seconds a batch of messages took to commit.", chat.commit_seconds
        )
        yield _histogram("sohbet_store_batch_size", "Messages per committed batch.", chat.batch_size)
        yield _histogram(
            "sohbet_ack_latency_seconds", "Seconds from a chat:send accepted to its ack.", chat.ack_latency
        )
        yield from self.extra()


def webhook_metrics(stats: WebhookStats) -> list[Metric]:
    """The webhook's families: its events by outcome, its POSTs, and what waits."""
    events = CounterMetricFamily(
        "sohbet_webhook_events", "Webhook events by outcome (queued, delivered, failed, dropped).", labels=["result"]
    )
    for result in ("queued", "delivered", "failed", "dropped"):
        events.add_metric([result], getattr(stats, result))
    return [
        events,
        CounterMetricFamily("sohbet_webhook_batches", "Webhook POSTs answered with a 2xx.", stats.batches),
        CounterMetricFamily("sohbet_webhook_retries", "Webhook POSTs after a batch's first.", stats.retries),
        GaugeMetricFamily("sohbet_webhook_queue", "Webhook events waiting to be sent.", stats.queue_length),
    ]


def metrics_registry(collector: Collector) -> CollectorRegistry:
    """A registry of its own for one server: *collector*, and the process and Python ones."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def register(router: Router, registry: CollectorRegistry, token: str | None, reuse_s: float = RENDER_REUSE_S) -> None:
    """Serve *registry* at `GET /metrics`, behind `Authorization: Bearer <token>` when one is set.

    A scrape costs about a millisecond of the event loop: an answer is reused for a second, so
    an open endpoint hammered by anyone costs the chat at most that per second (Prometheus
    scrapes every few seconds and sees counters at most a second old).
    """
    secret = None if token is None else KnownSecret(token)
    rendered: list[tuple[float, Response]] = []  # the last answer, and when it was made

    def metrics(request: Request, params: dict[str, str]) -> Response:
        if secret is not None and not secret.matches(request.bearer or ""):
            body = error_body(HTTPStatus.UNAUTHORIZED, "send Authorization: Bearer <metrics token>")
            return Response(HTTPStatus.UNAUTHORIZED, body, headers=(("WWW-Authenticate", "Bearer"),))
        now = time.monotonic()
        if rendered and now - rendered[0][0] < reuse_s:
            return rendered[0][1]
        answer = Response(HTTPStatus.OK, generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
        rendered[:] = [(now, answer)]
        return answer

    router.add("GET", "/metrics", metrics)
