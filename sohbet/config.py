"""Configuration: small frozen sections, each handed only to the object that needs it.

Layer: domain. Imports the standard library, `sohbet.errors` and the WebSocket layer's own
sections (`sohbet.ws.config`: `Limits`, `WebSocketConfig`, `CompressionConfig`), which it
composes with the chat server's into one `Config`. No I/O: reading files and the environment is
the caller's. `__post_init__` validates and raises `ConfigError`, so a bad setting stops the
process at startup, never later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sohbet.chat.model import DIRECT_MEMBERS
from sohbet.chat.wire import SUBPROTOCOL
from sohbet.errors import ConfigError
from sohbet.ws.addresses import IPNetwork, parse_networks
from sohbet.ws.config import (
    HTTP_LIFETIME_S,
    MAX_PIPELINED_REQUESTS,
    CompressionConfig,
    Limits,
    WebSocketConfig,
    require,
    require_at_least,
    require_within,
)
from sohbet.ws.rates import Rate

__all__ = [
    "SETTINGS",
    "AuthConfig",
    "ChatConfig",
    "Config",
    "Setting",
    "StoreConfig",
    "WebhookConfig",
    "merge_settings",
    "parse_key_files",
]


#: JWT algorithms sohbet accepts, by key kind. The token never picks one: configuration does.
HMAC_ALGORITHMS: frozenset[str] = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_KEY_ALGORITHMS: frozenset[str] = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"})
MIN_SECRET_BYTES: Final = 32
MIN_API_KEY_BYTES: Final = 32
MIN_TOKEN_BYTES: Final = 16  # the metrics token: it guards counters, not messages
#: The longest `kid` configured: kids are named in error messages and log lines.
MAX_KID_CHARS: Final = 256
MAX_PORT: Final = 65535
#: A batch gathers at most this long: every ack waits up to that much longer. A few
#: milliseconds already fill the batches of a process at a few thousand sends a second.
MAX_WRITE_GATHER_MS: Final = 1000
#: How a PostgreSQL URL starts.
POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")
#: Why `--redis-url` without Postgres stops the process.
REDIS_NEEDS_POSTGRES: Final = "--redis-url needs Postgres (--database-url): instances share one database"
#: URL schemes of `--redis-url` the `redis` library's client connects to.
REDIS_SCHEMES: Final = frozenset({"redis", "rediss", "unix"})
#: What an instance id (and a Redis key prefix) may hold: it names keys, channels and metrics.
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
MAX_INSTANCE_ID_CHARS: Final = 64
_HOUR_S: Final = 3600.0
#: Logged at start with `--demo`.
DEMO_WARNING: Final = (
    "--demo is on: anyone who can reach this server gets a token for any user name at POST /demo/token, "
    "and reads and writes as that user; never use it in production"
)
NO_KID_TWICE: Final = "two JWT public keys without a kid: give each a kid (--jwt-public-key KID=PATH)"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """How tokens are verified (docs/protocol.md, "Connecting")."""

    algorithm: str = "HS256"
    #: Shared secret for HS* algorithms: its UTF-8 bytes, at least 32 of them.
    secret: str | None = field(default=None, repr=False)
    #: Public keys (PEM text) for RS/ES/EdDSA, by `kid`; a None kid is used for tokens without one.
    public_keys: tuple[tuple[str | None, str], ...] = field(default=(), repr=False)
    #: A JSON Web Key Set (RFC 7517) whose keys are added to these, re-read when it changes; the
    #: entry layer reads it (`sohbet.app.keys`), this section only names it.
    jwks_file: str | None = None
    audience: str | None = None
    issuer: str | None = None
    leeway_s: float = 5.0
    #: Bearer key of the application backend for the HTTP API; None disables those endpoints.
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.algorithm in HMAC_ALGORITHMS:
            # A JWKS file of `oct` keys may stand in for the secret; its keys are checked as it loads.
            if self.secret is not None or self.jwks_file is None:
                require(self.secret is not None, f"{self.algorithm} needs a JWT secret")
                secret_bytes = len((self.secret or "").encode())
                require(
                    secret_bytes >= MIN_SECRET_BYTES,
                    f"JWT secret of {secret_bytes} bytes is shorter than {MIN_SECRET_BYTES}",
                )
            # Silently ignoring them would leave the operator believing they verify something.
            require(not self.public_keys, f"{self.algorithm} verifies with a shared secret, not with public keys")
        elif self.algorithm in PUBLIC_KEY_ALGORITHMS:
            require(
                bool(self.public_keys) or self.jwks_file is not None,
                f"{self.algorithm} needs at least one public key (--jwt-public-key or --jwks-file)",
            )
        else:
            require(False, f"JWT algorithm {self.algorithm!r} is not supported")
        kids = [kid for kid, _ in self.public_keys]
        for kid in kids:
            # A kid picks the key, so none may be ambiguous; a missing kid is one more such "kid".
            require(
                kids.count(kid) == 1, f"JWT public key kid {kid!r} is given twice" if kid is not None else NO_KID_TWICE
            )
            require(kid is None or 0 < len(kid) <= MAX_KID_CHARS, f"kid must be 1-{MAX_KID_CHARS} characters")
        require_within("leeway_s", self.leeway_s, 0, 300)
        if self.api_key is not None:
            n = len(self.api_key.encode())
            require(n >= MIN_API_KEY_BYTES, f"API key of {n} bytes is shorter than {MIN_API_KEY_BYTES}")

    @property
    def can_sign(self) -> bool:
        """Whether the server can sign tokens itself (`sohbet-server token`, the demo page): with
        a shared secret only; a public key's private half, or a JWKS file's keys, it does not use."""
        return self.algorithm in HMAC_ALGORITHMS and self.secret is not None


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where messages live: `sqlite:///path.db` (embedded) or `postgresql://...`."""

    url: str = field(default="sqlite:///sohbet.db", repr=False)
    #: Most `chat:send`s written in one transaction (group commit).
    max_batch: int = 512
    #: Sends waiting for the writer before new ones are refused with `unavailable`.
    max_queue: int = 20_000
    pool_size: int = 16
    #: Milliseconds the writer lets a batch gather before it commits it (0: as soon as it can).
    #: Each transaction costs the server and the database about the same whatever it carries,
    #: so a process that sees a few thousand sends a second saves much of both with a couple of
    #: milliseconds (benchmarks/README.md, "Gathering a batch").
    write_gather_ms: float = 0.0
    #: Seconds one call to Postgres may take, from asking for a connection to the last row: a
    #: database that hangs is then `unavailable`, not a request that never ends.
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        require(self.is_sqlite or self.is_postgres, "database URL must start with sqlite:/// or postgresql://")
        require_within("max_batch", self.max_batch, 1, 10_000)
        require(self.max_queue >= self.max_batch, f"max_queue of {self.max_queue} is below max_batch")
        require_within("pool_size", self.pool_size, 1, 100)
        require_within("write_gather_ms", self.write_gather_ms, 0, MAX_WRITE_GATHER_MS)
        require_within("timeout_s", self.timeout_s, 0.1, 600)

    @property
    def writers(self) -> int:
        """Writer tasks, one per shard of conversations. One: measured on Postgres, a single
        writer with large batches outran 8 writers with small ones (33k vs 17k rows/s)."""
        return 1

    @property
    def write_depth(self) -> int:
        """Transactions one writer keeps in flight: while one commits, the next batch gathers
        and starts (SQLite has one writer thread, so a second would only wait in line). Two:
        measured against 1 and 4 with 64 senders on Postgres (18.2k, 21.6k, 20.5k acks/s)."""
        return 1 if self.is_sqlite else 2

    @property
    def is_sqlite(self) -> bool:
        """Whether the URL names an SQLite file."""
        return self.url.startswith("sqlite:///")

    @property
    def is_postgres(self) -> bool:
        """Whether the URL names a PostgreSQL server."""
        return self.url.startswith(POSTGRES_SCHEMES)

    @property
    def safe_url(self) -> str:
        """The URL with any password replaced by `***`, in its user part or as a query
        parameter (`?password=`, `?sslpassword=`, as libpq and asyncpg take them): fit for a log line."""
        parts = urlsplit(self.url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        if parts.password is None and not any("pass" in k.lower() for k, _ in query):
            return self.url  # nothing to hide (and `sqlite:///` stays as written)
        if parts.password is not None:
            netloc = parts.netloc.rpartition("@")
            parts = parts._replace(netloc=f"{netloc[0].partition(':')[0]}:***@{netloc[2]}")
        masked = [(k, "***" if "pass" in k.lower() else v) for k, v in query]
        return urlunsplit(parts._replace(query=urlencode(masked, safe="*")))

    @property
    def sqlite_path(self) -> str:
        """The SQLite file's path (everything after `sqlite:///`)."""
        return self.url[len("sqlite:///") :]


@dataclass(frozen=True, slots=True)
class ChatConfig:
    """The chat protocol's limits and timings (docs/protocol.md, "Limits" and "Messages")."""

    #: `chat:send`s per second per user, all connections together; 0: unlimited.
    send_rate_per_s: float = 10.0
    send_burst: int = 30
    max_content_chars: int = 4000
    max_group_members: int = 10_000
    max_connections_per_user: int = 10
    #: Seconds a user stays online after their last connection closes.
    presence_grace_s: float = 10.0
    typing_interval_s: float = 2.0
    typing_expires_ms: int = 6000
    #: Client-fault errors (bad_request, unauthorized, forbidden, too_large) per 10 s before 1008.
    max_errors_per_10s: int = 20
    max_presence_query: int = 500
    #: `sync` limits: per conversation, per call, and for conversations the client did not name.
    sync_per_conversation: int = 1000
    sync_per_call: int = 10_000
    sync_unnamed: int = 50
    #: Per-user token buckets of the other requests (docs/protocol.md, "Limits"); 0: unlimited.
    #: `conversation:create`, `conversation:leave` and `auth:refresh` (each its own bucket).
    create_rate_per_s: float = 1.0
    create_burst: int = 10
    #: Reads: `chat:history`, `conversation:list`, `conversation:members`, `presence:query`.
    query_rate_per_s: float = 20.0
    query_burst: int = 60
    #: `sync`, whose one call may replay `sync_per_call` messages: a client syncs after reconnecting.
    sync_rate_per_s: float = 1.0
    sync_burst: int = 5
    #: `chat:typing` (dropped silently over its limit) and `chat:read`.
    signal_rate_per_s: float = 10.0
    signal_burst: int = 30
    #: Groups one user may create per hour (a bucket that refills over the hour); 0: unlimited.
    groups_per_hour: int = 100
    #: Conversations a user may be in and still create another; 0: unlimited.
    max_conversations_per_user: int = 10_000
    #: Requests of one connection waiting for storage at once; more get `rate_limited`.
    max_requests_in_flight: int = 8
    #: Users with connections whose admission is still under way (it reads storage: the user's
    #: conversations, and in a cluster the broker's count) before an upgrade is refused with
    #: 503 and `Retry-After`: a reconnect storm's first reads wait at the door; 0: no limit.
    max_admitting: int = 1000
    #: Member entries the membership cache holds over all conversations (about 100 bytes each)
    #: before the least recently used conversations are dropped; 0: unbounded.
    member_cache_size: int = 1_000_000

    @property
    def send_rate(self) -> Rate:
        """The `chat:send` bucket."""
        return Rate(self.send_rate_per_s, self.send_burst)

    @property
    def create_rate(self) -> Rate:
        """The bucket of each membership request (create, leave) and of `auth:refresh`."""
        return Rate(self.create_rate_per_s, self.create_burst)

    @property
    def query_rate(self) -> Rate:
        """The bucket of each read request."""
        return Rate(self.query_rate_per_s, self.query_burst)

    @property
    def sync_rate(self) -> Rate:
        """The bucket of `sync`."""
        return Rate(self.sync_rate_per_s, self.sync_burst)

    @property
    def signal_rate(self) -> Rate:
        """The bucket of `chat:typing` and of `chat:read`."""
        return Rate(self.signal_rate_per_s, self.signal_burst)

    @property
    def group_rate(self) -> Rate:
        """Groups created: `groups_per_hour`, refilled evenly over the hour."""
        return Rate(self.groups_per_hour / _HOUR_S, self.groups_per_hour)

    def __post_init__(self) -> None:
        for name in ("create", "query", "sync", "signal"):
            rate, burst = getattr(self, f"{name}_rate_per_s"), getattr(self, f"{name}_burst")
            require(rate >= 0, f"{name}_rate_per_s of {rate} is negative")
            require(burst >= 1, f"{name}_burst of {burst} is below 1")
        for name in (
            "groups_per_hour",
            "max_conversations_per_user",
            "max_requests_in_flight",
            "member_cache_size",
            "max_admitting",
        ):
            require(getattr(self, name) >= 0, f"{name} of {getattr(self, name)} is negative")
        require(self.send_rate_per_s >= 0, f"send_rate_per_s of {self.send_rate_per_s} is negative")
        require(self.send_burst >= 1, f"send_burst of {self.send_burst} is below 1")
        require_within("max_content_chars", self.max_content_chars, 1, 60_000)
        require_at_least("max_group_members", self.max_group_members, DIRECT_MEMBERS + 1)
        require(self.max_connections_per_user >= 1, "max_connections_per_user is below 1")
        require(self.presence_grace_s >= 0, f"presence_grace_s of {self.presence_grace_s} is negative")
        require(self.typing_interval_s >= 0, f"typing_interval_s of {self.typing_interval_s} is negative")
        require(self.max_errors_per_10s >= 1, "max_errors_per_10s is below 1")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Several instances sharing one Postgres, linked through Redis (docs/cluster.md)."""

    #: redis://, rediss:// or unix:// URL; None: a single process, no Redis.
    redis_url: str | None = field(default=None, repr=False)
    #: This instance's name in logs, metrics and the Redis registry; unique per deployment.
    instance_id: str = "sohbet"
    #: Of every Redis key and channel: deployments sharing one Redis need different ones.
    prefix: str = "sohbet"
    #: How often an instance renews its heartbeat, and how long one lives: an instance killed
    #: is found dead within `heartbeat_ttl_s` (+ `heartbeat_s`), and its users go offline after
    #: their grace period.
    heartbeat_s: float = 2.0
    heartbeat_ttl_s: float = 10.0

    def __post_init__(self) -> None:
        if self.redis_url is not None:
            # The URL is not quoted in the message: its userinfo may hold a password.
            scheme, _, rest = self.redis_url.partition("://")
            require(scheme in REDIS_SCHEMES and bool(rest), "redis URL must be redis://, rediss:// or unix://")
        for what, name in (("instance id", self.instance_id), ("redis prefix", self.prefix)):
            require(
                0 < len(name) <= MAX_INSTANCE_ID_CHARS and set(name) <= _NAME_CHARS,
                f"{what} {name[:80]!r} must be 1-{MAX_INSTANCE_ID_CHARS} of A-Z a-z 0-9 . _ -",
            )
        require_within("heartbeat_s", self.heartbeat_s, 0.1, 60)
        require_within("heartbeat_ttl_s", self.heartbeat_ttl_s, self.heartbeat_s * 2, 300)

    @property
    def enabled(self) -> bool:
        """Whether instances link up through Redis."""
        return self.redis_url is not None


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """Where and how messages for offline members are POSTed to the application
    (docs/protocol.md, "HTTP API", the webhook); `sohbet.api.webhook.WebhookSender` takes it."""

    #: http:// or https:// URL of the application's receiver; None: no webhook.
    url: str | None = field(default=None, repr=False)
    #: Key of the `Sohbet-Signature` HMAC: its UTF-8 bytes, at least 32 of them; needed with a URL.
    secret: str | None = field(default=None, repr=False)
    #: Events in one POST.
    batch_max: int = 100
    #: After the first event of an idle spell, how long to wait for more before sending.
    batch_wait_s: float = 0.1
    #: Events waiting to be sent; more are dropped (counted, logged): chat never waits for it.
    queue_max: int = 10_000
    #: A batch is given up this long after its first attempt.
    retry_for_s: float = 300.0
    #: One POST, from connecting to the last byte of the answer's head.
    timeout_s: float = 10.0
    #: Exponential backoff between attempts: the first wait, doubling up to the last.
    backoff_first_s: float = 0.5
    backoff_max_s: float = 30.0
    #: Recipients told of one sender's messages per second, in bursts of `sender_burst` (one
    #: message to a full group of 10,000): no one user can fill the queue for everyone; 0: no limit.
    sender_rate_per_s: float = 1000.0
    sender_burst: int = 10_000

    def __post_init__(self) -> None:
        if self.url is not None:
            # The URL is not quoted in the message: its query or userinfo may hold a credential.
            scheme, _, rest = self.url.partition("://")
            require(scheme in {"http", "https"} and rest[:1] not in {"", "/"}, "webhook URL must be http(s)://host/...")
            require(self.secret is not None, "a webhook URL needs a webhook secret")
        if self.secret is not None:
            n = len(self.secret.encode())
            require(n >= MIN_SECRET_BYTES, f"webhook secret of {n} bytes is shorter than {MIN_SECRET_BYTES}")
        require_within("batch_max", self.batch_max, 1, 10_000)
        require_within("batch_wait_s", self.batch_wait_s, 0, 60)
        require_within("queue_max", self.queue_max, self.batch_max, 10_000_000)
        require_within("retry_for_s", self.retry_for_s, 0, 86_400)
        require(self.timeout_s > 0, f"timeout_s of {self.timeout_s} is not positive")
        require(self.backoff_first_s > 0, f"backoff_first_s of {self.backoff_first_s} is not positive")
        require_within("backoff_max_s", self.backoff_max_s, self.backoff_first_s, 3600)
        require(self.sender_rate_per_s >= 0, f"sender_rate_per_s of {self.sender_rate_per_s} is negative")
        require(self.sender_burst >= 1, f"sender_burst of {self.sender_burst} is below 1")


@dataclass(frozen=True, slots=True)
class Setting:
    """One user-facing setting: a `--flag`, a `SOHBET_*` variable and a TOML key at once."""

    name: str
    kind: type
    default: object
    help: str
    has_flag: bool = True
    #: A secret: never logged, and readable from a file too (the `<name>_file` setting beside it).
    secret: bool = False
    #: A list of values: a flag given once per value, a comma-separated variable, a TOML list or
    #: comma-separated string. It resolves to a tuple of `kind`, and a later source replaces it whole.
    repeated: bool = False

    @property
    def env(self) -> str:
        """The environment variable that sets it."""
        return "SOHBET_" + self.name.upper()

    @property
    def flag(self) -> str:
        """The command-line option that sets it."""
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("host", str, "127.0.0.1", "address to listen on"),
    Setting("port", int, 8080, "port for HTTP and WebSocket"),
    Setting("data_dir", str, ".", "directory of the default SQLite database and of the generated sohbet.secret"),
    Setting("database_url", str, None, "sqlite:///path.db or postgresql://...; default: SQLite in --data-dir"),
    Setting(
        "jwt_secret",
        str,
        None,
        "HS256 secret, at least 32 bytes; generated into sohbet.secret if unset (SQLite)",
        secret=True,
    ),
    Setting(
        "jwt_secret_file", str, None, "file holding the HS256 secret; unlike --jwt-secret, not in the process list"
    ),
    Setting(
        "jwt_public_key",
        str,
        (),
        "[KID=]PATH of a PEM public key for RS256/ES256/EdDSA tokens, picked by their kid; repeat the flag "
        "(or separate with commas) for several",
        repeated=True,
    ),
    Setting("jwks_file", str, None, "JSON Web Key Set file of more keys by kid, re-read when it changes or on SIGHUP"),
    Setting("jwt_algorithm", str, "HS256", "the one JWT algorithm accepted (HS256, RS256, ES256, EdDSA, ...)"),
    Setting("jwt_audience", str, None, "required `aud` claim, if set"),
    Setting("jwt_issuer", str, None, "required `iss` claim, if set"),
    Setting("jwt_leeway", float, 5.0, "clock-skew leeway for exp/nbf/iat, in seconds"),
    Setting(
        "write_gather_ms",
        float,
        0.0,
        f"milliseconds a batch of chat:send may gather before it is committed (0-{MAX_WRITE_GATHER_MS}): "
        "fewer, larger transactions for a little latency",
    ),
    Setting(
        "storage_timeout", float, 5.0, "seconds one Postgres call may take before it is unavailable (a hung database)"
    ),
    Setting(
        "redis_url",
        str,
        None,
        "redis://, rediss:// or unix:// URL: several instances on one Postgres, linked through Redis",
    ),
    Setting("instance_id", str, None, "this instance's name in logs, metrics and Redis (default: generated)"),
    Setting("redis_prefix", str, "sohbet", "prefix of every Redis key and channel (one per deployment)"),
    Setting("heartbeat", float, 2.0, "seconds between an instance's heartbeats in Redis"),
    Setting("heartbeat_ttl", float, 10.0, "seconds a heartbeat lives: an instance silent this long is dead"),
    Setting(
        "api_key",
        str,
        None,
        "bearer key of the application backend for the HTTP API, at least 32 bytes; unset: its endpoints answer 401",
        secret=True,
    ),
    Setting("api_key_file", str, None, "file holding the API key; unlike --api-key, not in the process list"),
    Setting(
        "metrics_token", str, None, "bearer token GET /metrics asks for, at least 16 bytes; unset: open", secret=True
    ),
    Setting("metrics_token_file", str, None, "file holding the metrics token"),
    Setting("send_rate", float, 10.0, "chat:send per second per user across connections; 0 means unlimited"),
    Setting("send_burst", int, 30, "chat:send burst allowance per user"),
    Setting("create_rate", float, 1.0, "conversation:create, :leave and auth:refresh per second per user, each"),
    Setting("create_burst", int, 10, "burst allowance of each of those"),
    Setting("query_rate", float, 20.0, "history, list, members, presence queries per second per user, each"),
    Setting("query_burst", int, 60, "burst allowance of each of those"),
    Setting("sync_rate", float, 1.0, "sync calls per second per user (each may replay 10,000 messages)"),
    Setting("sync_burst", int, 5, "burst allowance of sync"),
    Setting("signal_rate", float, 10.0, "chat:typing and chat:read per second per user, each"),
    Setting("signal_burst", int, 30, "burst allowance of each of those"),
    Setting("groups_per_hour", int, 100, "groups one user may create per hour; 0 means unlimited"),
    Setting("max_conversations_per_user", int, 10_000, "conversations a user may be in and still create one"),
    Setting("max_requests_in_flight", int, 8, "requests per connection waiting for storage (rate_limited above)"),
    Setting("member_cache_size", int, 1_000_000, "member entries cached over all conversations (~100 B each)"),
    Setting(
        "max_admitting",
        int,
        1000,
        "users with connections still being admitted (reading storage) at once; more upgrades get 503 with "
        "Retry-After; 0 means unlimited",
    ),
    Setting("frame_rate", int, 120, "inbound frames per 10 s per connection; 0 means unlimited"),
    Setting("presence_grace", float, 10.0, "seconds a user stays online after the last connection closes"),
    Setting(
        "max_connections",
        int,
        0,
        "open sockets per server, plain HTTP and WebSocket (HTTP 503 above); 0 means unlimited",
    ),
    Setting(
        "http_lifetime", float, HTTP_LIFETIME_S, "seconds a connection may stay plain HTTP, however often answered"
    ),
    Setting(
        "max_pipelined_requests",
        int,
        MAX_PIPELINED_REQUESTS,
        "requests per connection read but not yet answered; more: the earlier ones are answered, then it closes",
    ),
    Setting("max_connections_per_user", int, 10, "open connections per user (close 1008 above)"),
    Setting("address_rate", float, 20.0, "new WebSocket connections per second per client address (429 above)"),
    Setting("address_burst", int, 20, "burst allowance of new connections per client address"),
    Setting("max_connections_per_address", int, 200, "open sockets per client address, HTTP ones too (429 above)"),
    Setting(
        "trusted_proxies",
        str,
        "",
        "comma-separated CIDRs of proxies whose X-Forwarded-For names the client; empty: none",
    ),
    Setting("max_message_bytes", int, 65536, "largest WebSocket message, after reassembly and inflating"),
    Setting("linger", float, 2.0, "seconds a closed socket still reads (and drops) input, so clients see why; 0: none"),
    Setting("linger_bytes", int, 1 << 20, "bytes read and discarded at most meanwhile; 0 means only the time counts"),
    Setting("compression", bool, False, "negotiate permessage-deflate (12-bit window)"),
    Setting("allowed_origins", str, "", "comma-separated Origin values allowed to connect; empty: any"),
    Setting(
        "max_body_bytes",
        int,
        1 << 20,
        "largest HTTP request body with the API key (413 above it, from Content-Length); others: --max-message-bytes",
    ),
    Setting("request_timeout", float, 30.0, "seconds an HTTP request may take to be answered (503 after it)"),
    Setting("shutdown_timeout", float, 10.0, "seconds a graceful shutdown may take before it closes everything"),
    Setting("drain_delay", float, 0.0, "seconds between /readyz turning 503 and closing connections at shutdown"),
    Setting("webhook_url", str, None, "http(s) URL to POST messages for members with no open connection to"),
    Setting("webhook_secret", str, None, "key of the Sohbet-Signature HMAC, at least 32 bytes", secret=True),
    Setting("webhook_secret_file", str, None, "file holding the webhook secret"),
    Setting("webhook_batch", int, 100, "events in one webhook POST"),
    Setting("webhook_queue", int, 10_000, "webhook events waiting; more are dropped (counted, logged)"),
    Setting("webhook_retry_for", float, 300.0, "seconds a webhook batch is retried before it is given up"),
    Setting("webhook_timeout", float, 10.0, "seconds one webhook POST may take"),
    Setting("webhook_sender_rate", float, 1000.0, "webhook recipients per second of one sender's messages; 0: any"),
    Setting("webhook_sender_burst", int, 10_000, "burst allowance of those (a message to a group of that many)"),
    Setting(
        "demo",
        bool,
        False,
        "serve the demo chat page at /, which gets anyone a token for any user name: never in production",
    ),
    Setting("log_level", str, "info", "debug, info, warning or error"),
    Setting("log_format", str, "text", "text (one readable line per event) or json (one JSON object per line)"),
)
SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
#: Settings that are ChatConfig fields of the same name.
_CHAT_SETTINGS: Final = (
    "create_burst",
    "query_burst",
    "sync_burst",
    "signal_burst",
    "groups_per_hour",
    "max_conversations_per_user",
    "max_requests_in_flight",
    "member_cache_size",
    "max_admitting",
)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _coerce(setting: Setting, value: object, source: str) -> object:
    """Turn a raw value (a string from the environment, a TOML value, a flag) into the setting's type."""
    if setting.repeated:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{source}: {value!r} is not a list of {setting.kind.__name__} for {setting.name}")
        single = replace(setting, repeated=False)
        stripped = (item.strip() if isinstance(item, str) else item for item in items)
        return tuple(_coerce(single, item, source) for item in stripped if item != "")
    try:
        if setting.kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            raise ValueError(text)
        if setting.kind is int and isinstance(value, bool):
            raise ValueError(value)
        return setting.kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {value!r} is not a valid {setting.kind.__name__} for {setting.name}") from None


def _networks(text: str) -> tuple[IPNetwork, ...]:
    try:
        return parse_networks(text)
    except ValueError as exc:
        raise ConfigError(f"trusted_proxies: {exc}") from None


def merge_settings(
    environ: Mapping[str, str],
    file: Mapping[str, object] | None = None,
    flags: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """Resolve every setting: flags win over the environment, which wins over the file.

    Raises:
        ConfigError: an unknown key in the file, or a value of the wrong type.
    """
    values: dict[str, object] = {s.name: s.default for s in SETTINGS}
    for key, value in (file or {}).items():
        name = key.replace("-", "_")
        if name not in SETTINGS_BY_NAME:
            raise ConfigError(f"config file: unknown setting {key!r}")
        values[name] = _coerce(SETTINGS_BY_NAME[name], value, "config file")
    for setting in SETTINGS:
        if setting.env in environ:
            values[setting.name] = _coerce(setting, environ[setting.env], setting.env)
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = _coerce(SETTINGS_BY_NAME[name], value, SETTINGS_BY_NAME[name].flag)
    return values


def parse_key_files(values: Mapping[str, object]) -> tuple[tuple[str | None, str], ...]:
    """Split each `jwt_public_key` value, `KID=PATH` or a bare `PATH`, into its kid and path.

    The kid ends at the first `=`, so a path holding a `=` needs a kid in front of it.

    Raises:
        ConfigError: an empty kid or an empty path (duplicate kids are `AuthConfig`'s to refuse).
    """
    found: list[tuple[str | None, str]] = []
    for spec in cast(tuple[str, ...], values["jwt_public_key"]):  # merge_settings made it a tuple of str
        kid, sep, path = spec.partition("=")
        if not sep:
            kid, path = "", spec
        elif not kid:
            raise ConfigError(f"--jwt-public-key {spec!r} has an empty kid before '='")
        if not path:
            raise ConfigError(f"--jwt-public-key {spec!r} names no file")
        found.append((kid or None, path))
    return tuple(found)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the server needs, in sections; each component receives only its own.

    `auth` has no default: a server never runs with a key nobody chose.
    """

    auth: AuthConfig
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "."
    limits: Limits = field(default_factory=Limits)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    log_level: str = "info"
    log_format: str = "text"
    #: Bearer token `GET /metrics` requires; None: the endpoint is open.
    metrics_token: str | None = field(default=None, repr=False)
    #: Seconds a graceful shutdown may take, and how long `/readyz` says 503 before it closes anything.
    shutdown_timeout_s: float = 10.0
    drain_delay_s: float = 0.0
    #: Serve the demo chat page, which mints a token for any user name it is given (`--demo`).
    demo: bool = False

    def __post_init__(self) -> None:
        require(0 <= self.port <= MAX_PORT, f"port {self.port} is outside 0-{MAX_PORT}")
        require(self.log_level in {"debug", "info", "warning", "error"}, f"log level {self.log_level!r} is not known")
        require(self.log_format in {"text", "json"}, f"log format {self.log_format!r} is not text or json")
        if self.metrics_token is not None:
            n = len(self.metrics_token.encode())
            require(n >= MIN_TOKEN_BYTES, f"metrics token of {n} bytes is shorter than {MIN_TOKEN_BYTES}")
        require_within("shutdown_timeout_s", self.shutdown_timeout_s, 0.1, 3600)
        require_within("drain_delay_s", self.drain_delay_s, 0, 3600)
        require(
            self.drain_delay_s < self.shutdown_timeout_s,
            f"drain_delay_s of {self.drain_delay_s} must be below shutdown_timeout_s of {self.shutdown_timeout_s}",
        )
        if self.cluster.enabled:
            require(self.store.is_postgres, REDIS_NEEDS_POSTGRES)
        if self.demo and not self.auth.can_sign:  # refused at start, not at each visitor's first click
            held = (
                f"{self.auth.algorithm} public keys"
                if self.auth.algorithm in PUBLIC_KEY_ALGORITHMS
                else "the keys of a JWKS file, which it does not sign with"
            )
            raise ConfigError(
                f"--demo mints tokens with the server's own key, but this server holds only {held}: "
                "run the demo with an HS256 --jwt-secret"
            )

    def describe(self) -> dict[str, Any]:
        """The effective configuration, for the log line at start: every setting but the
        secrets (the fields kept out of `repr`), and the database URL without its password."""

        def plain(value: object) -> object:
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
            if isinstance(value, frozenset):
                return sorted(map(str, value))
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            return value if isinstance(value, str | int | float | bool | None) else str(value)

        described = plain(self)
        assert isinstance(described, dict)  # a Config is a dataclass
        described["store"]["url"] = self.store.safe_url
        described["auth"]["api_key_set"] = self.auth.api_key is not None
        described["metrics_token_set"] = self.metrics_token is not None
        described["webhook"]["url_set"] = self.webhook.url is not None
        return described

    @property
    def warnings(self) -> list[str]:
        """Settings that are valid but probably not what the operator wants: logged at start."""
        found = []
        if self.demo:
            found.append(DEMO_WARNING)
        if self.auth.algorithm in PUBLIC_KEY_ALGORITHMS and self.auth.audience is None:
            found.append(
                f"{self.auth.algorithm} tokens are accepted whatever their `aud`: with a shared identity "
                "provider, tokens it issued for other applications sign in here too; set --jwt-audience"
            )
        return found

    @classmethod
    def from_settings(
        cls, values: Mapping[str, object], public_keys: tuple[tuple[str | None, str], ...] = ()
    ) -> Config:
        """Build the configuration from resolved settings (see `merge_settings`).

        Args:
            values: every setting by name.
            public_keys: PEM public keys already read from the files `parse_key_files` names
                (reading files is the caller's I/O, not this module's).

        Raises:
            ConfigError: any invalid combination.
        """
        v = dict(values)
        data_dir = str(v["data_dir"])
        url = v["database_url"] or f"sqlite:///{data_dir.rstrip('/')}/sohbet.db"
        origins = frozenset(o.strip() for o in str(v["allowed_origins"]).split(",") if o.strip())
        return cls(
            host=str(v["host"]),
            port=int(v["port"]),  # type: ignore[call-overload]  # coerced by merge_settings
            data_dir=data_dir,
            limits=Limits(
                max_message_bytes=int(v["max_message_bytes"]),  # type: ignore[call-overload]  # coerced
                max_frames_per_10s=int(v["frame_rate"]),  # type: ignore[call-overload]  # coerced
                max_connections=int(v["max_connections"]),  # type: ignore[call-overload]  # coerced
                http_lifetime_s=float(v["http_lifetime"]),  # type: ignore[arg-type]  # coerced
                max_pipelined_requests=int(v["max_pipelined_requests"]),  # type: ignore[call-overload]  # coerced
                linger_s=float(v["linger"]),  # type: ignore[arg-type]  # coerced
                linger_bytes=int(v["linger_bytes"]),  # type: ignore[call-overload]  # coerced
                max_body_bytes=int(v["max_body_bytes"]),  # type: ignore[call-overload]  # coerced
                address_rate_per_s=float(v["address_rate"]),  # type: ignore[arg-type]  # coerced
                address_burst=int(v["address_burst"]),  # type: ignore[call-overload]  # coerced
                max_connections_per_address=int(v["max_connections_per_address"]),  # type: ignore[call-overload]  # coerced
                trusted_proxies=_networks(str(v["trusted_proxies"])),
                request_timeout_s=float(v["request_timeout"]),  # type: ignore[arg-type]  # coerced
            ),
            websocket=WebSocketConfig(
                allowed_origins=origins,
                subprotocols=(SUBPROTOCOL,),
                compression=CompressionConfig(enabled=bool(v["compression"]), window_bits=12),
            ),
            auth=AuthConfig(
                algorithm=str(v["jwt_algorithm"]),
                secret=None if v["jwt_secret"] is None else str(v["jwt_secret"]),
                public_keys=public_keys,
                jwks_file=str(v["jwks_file"]) if v["jwks_file"] else None,
                audience=None if v["jwt_audience"] is None else str(v["jwt_audience"]),
                issuer=None if v["jwt_issuer"] is None else str(v["jwt_issuer"]),
                leeway_s=float(v["jwt_leeway"]),  # type: ignore[arg-type]  # coerced
                api_key=None if v["api_key"] is None else str(v["api_key"]),
            ),
            store=StoreConfig(
                url=str(url),
                timeout_s=float(v["storage_timeout"]),  # type: ignore[arg-type]  # coerced
                write_gather_ms=float(v["write_gather_ms"]),  # type: ignore[arg-type]  # coerced
            ),
            chat=ChatConfig(
                send_rate_per_s=float(v["send_rate"]),  # type: ignore[arg-type]  # coerced
                send_burst=int(v["send_burst"]),  # type: ignore[call-overload]  # coerced
                presence_grace_s=float(v["presence_grace"]),  # type: ignore[arg-type]  # coerced
                max_connections_per_user=int(v["max_connections_per_user"]),  # type: ignore[call-overload]  # coerced
                **{name: v[name] for name in _CHAT_SETTINGS},  # type: ignore[arg-type]  # coerced
                **{f"{name}_rate_per_s": v[f"{name}_rate"] for name in ("create", "query", "sync", "signal")},  # type: ignore[arg-type]  # coerced
            ),
            webhook=WebhookConfig(
                url=None if v["webhook_url"] is None else str(v["webhook_url"]),
                secret=None if v["webhook_secret"] is None else str(v["webhook_secret"]),
                batch_max=int(v["webhook_batch"]),  # type: ignore[call-overload]  # coerced
                queue_max=int(v["webhook_queue"]),  # type: ignore[call-overload]  # coerced
                retry_for_s=float(v["webhook_retry_for"]),  # type: ignore[arg-type]  # coerced
                timeout_s=float(v["webhook_timeout"]),  # type: ignore[arg-type]  # coerced
                sender_rate_per_s=float(v["webhook_sender_rate"]),  # type: ignore[arg-type]  # coerced
                sender_burst=int(v["webhook_sender_burst"]),  # type: ignore[call-overload]  # coerced
            ),
            cluster=ClusterConfig(
                redis_url=None if v["redis_url"] is None else str(v["redis_url"]),
                instance_id=str(v["instance_id"] or "sohbet"),
                prefix=str(v["redis_prefix"]),
                heartbeat_s=float(v["heartbeat"]),  # type: ignore[arg-type]  # coerced
                heartbeat_ttl_s=float(v["heartbeat_ttl"]),  # type: ignore[arg-type]  # coerced
            ),
            log_level=str(v["log_level"]),
            log_format=str(v["log_format"]),
            metrics_token=None if v["metrics_token"] is None else str(v["metrics_token"]),
            shutdown_timeout_s=float(v["shutdown_timeout"]),  # type: ignore[arg-type]  # coerced
            drain_delay_s=float(v["drain_delay"]),  # type: ignore[arg-type]  # coerced
            demo=bool(v["demo"]),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Config:
        """Build the configuration from `SOHBET_*` variables alone (defaults elsewhere)."""
        return cls.from_settings(merge_settings(environ))
