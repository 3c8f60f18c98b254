"""Configuration is validated when it is built, so a bad setting stops the process at startup."""

from __future__ import annotations

import pytest

from sohbet.errors import ConfigError
from sohbet.ws.config import CompressionConfig, Limits, WebSocketConfig


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_message_bytes": 100}, "max_message_bytes of 100 is below 125"),
        ({"max_fragments": -1}, "max_fragments of -1 is negative"),
        ({"max_connections": -5}, "max_connections of -5 is negative"),
        ({"handshake_timeout_s": 0}, "handshake_timeout_s of 0 is not positive"),
        ({"http_lifetime_s": 0}, "http_lifetime_s of 0 is not positive"),
        ({"max_pipelined_requests": 0}, "max_pipelined_requests of 0 is below 1"),
        ({"ping_interval_s": -1}, "ping_interval_s of -1 is negative"),
        ({"linger_s": -1}, "linger_s of -1 is negative"),
        ({"linger_bytes": -1}, "linger_bytes of -1 is negative"),
        ({"max_line_bytes": 100}, "max_line_bytes of 100 is below 256"),
        ({"max_header_bytes": 1000}, "max_header_bytes of 1000 is below max_line_bytes of 8192"),
        ({"max_headers": 2}, "max_headers of 2 is below 8"),
        ({"max_body_bytes": -1}, "max_body_bytes of -1 is negative"),
        ({"buffer_high_water_bytes": 2 << 20}, "at most max_buffered_bytes"),
        # the compiled connection keeps these in C: larger would fail at every upgrade instead
        ({"max_frames_per_10s": 2**63}, "max_frames_per_10s of 9223372036854775808 is over 9223372036854775807"),
        ({"max_fragments": 2**64}, "max_fragments of 18446744073709551616 is over"),
        ({"max_message_bytes": 2**63}, "max_message_bytes of 9223372036854775808 is over"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_limits_refuse_nonsense(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Limits(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window_bits": 8}, "window_bits of 8 is outside 9-15"),
        ({"level": 0}, "level of 0 is outside 1-9"),
        ({"mem_level": 10}, "mem_level of 10 is outside 1-9"),
    ],
)
def test_compression_refuses_nonsense(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CompressionConfig(**kwargs)  # type: ignore[arg-type]


def test_defaults_are_the_protocols() -> None:
    limits = Limits()
    assert (limits.max_message_bytes, limits.max_fragments, limits.message_timeout_s) == (65536, 64, 30.0)
    assert (limits.max_line_bytes, limits.max_header_bytes, limits.max_headers) == (8192, 16384, 64)
    assert (limits.ping_interval_s, limits.pong_timeout_s, limits.max_frames_per_10s) == (20.0, 20.0, 120)
    assert (limits.max_buffered_bytes, limits.buffer_high_water_bytes, limits.slow_consumer_s) == (1 << 20, 65536, 10.0)
    assert (limits.http_lifetime_s, limits.max_pipelined_requests, limits.max_connections) == (60.0, 32, 0)
    assert (limits.linger_s, limits.linger_bytes) == (2.0, 1 << 20)
    assert not CompressionConfig().enabled
    assert CompressionConfig().window_bits == 12
    assert WebSocketConfig().paths == frozenset({"/", "/ws"})


# --- the chat server's settings ---------------------------------------------------------------

from sohbet.config import (  # noqa: E402  # grouped with the tests that use them
    SETTINGS,
    AuthConfig,
    ChatConfig,
    ClusterConfig,
    Config,
    StoreConfig,
    WebhookConfig,
    merge_settings,
)

SECRET = "s" * 32


def test_every_setting_has_a_flag_an_environment_variable_and_help() -> None:
    names = {s.name for s in SETTINGS}
    assert {"host", "port", "database_url", "jwt_secret", "jwt_public_key", "jwt_algorithm", "redis_url"} <= names
    assert {"api_key", "send_rate", "send_burst", "frame_rate", "presence_grace", "max_connections"} <= names
    assert {"max_message_bytes", "compression"} <= names
    for s in SETTINGS:
        assert s.env == "SOHBET_" + s.name.upper() and s.flag == "--" + s.name.replace("_", "-") and s.help


def test_the_plain_http_limits_are_settings() -> None:
    environ = {"SOHBET_JWT_SECRET": SECRET, "SOHBET_HTTP_LIFETIME": "7.5"}
    flags = {"max_pipelined_requests": 4, "max_connections": 100}
    limits = Config.from_settings(merge_settings(environ, None, flags)).limits
    assert (limits.http_lifetime_s, limits.max_pipelined_requests, limits.max_connections) == (7.5, 4, 100)


def test_the_request_limits_are_settings() -> None:
    environ = {"SOHBET_JWT_SECRET": SECRET, "SOHBET_CREATE_RATE": "0.5", "SOHBET_QUERY_BURST": "7"}
    flags = {"signal_rate": 3.0, "groups_per_hour": 0, "max_requests_in_flight": 2, "member_cache_size": 9}
    chat = Config.from_settings(merge_settings(environ, {"max-conversations-per-user": 5}, flags)).chat
    assert (chat.create_rate.per_s, chat.create_rate.burst) == (0.5, 10)
    assert (chat.query_rate.per_s, chat.query_rate.burst) == (20.0, 7)
    assert (chat.signal_rate.per_s, chat.send_rate.per_s) == (3.0, 10.0)
    assert not chat.group_rate.is_limited  # 0: unlimited
    assert (chat.max_requests_in_flight, chat.member_cache_size, chat.max_conversations_per_user) == (2, 9, 5)
    assert ChatConfig().group_rate == (100 / 3600, 100)


def test_precedence_flags_over_environment_over_file_over_defaults() -> None:
    file = {"port": 1000, "send-rate": 1.5, "host": "0.0.0.0"}
    environ = {"SOHBET_PORT": "2000", "SOHBET_COMPRESSION": "yes"}
    flags = {"port": 3000, "send_burst": None}
    values = merge_settings(environ, file, flags)
    assert values["port"] == 3000
    assert values["host"] == "0.0.0.0"
    assert values["send_rate"] == 1.5
    assert values["compression"] is True
    assert values["send_burst"] == 30  # a flag left out (None) does not override
    assert merge_settings({"SOHBET_COMPRESSION": "off"})["compression"] is False
    assert merge_settings({}, {"compression": True})["compression"] is True


def test_the_admission_limit_is_a_setting_from_each_source() -> None:
    assert ChatConfig().max_admitting == 1000
    base = {"SOHBET_JWT_SECRET": SECRET}
    assert Config.from_settings(merge_settings(base)).chat.max_admitting == 1000
    from_file = merge_settings(base, {"max-admitting": 50})
    assert Config.from_settings(from_file).chat.max_admitting == 50
    from_env = merge_settings({**base, "SOHBET_MAX_ADMITTING": "0"}, {"max_admitting": 50})
    assert Config.from_settings(from_env).chat.max_admitting == 0  # 0: unlimited
    from_flag = merge_settings({**base, "SOHBET_MAX_ADMITTING": "0"}, None, {"max_admitting": 7})
    assert Config.from_settings(from_flag).chat.max_admitting == 7
    with pytest.raises(ConfigError, match="SOHBET_MAX_ADMITTING: 'many' is not a valid int for max_admitting"):
        merge_settings({**base, "SOHBET_MAX_ADMITTING": "many"})
    with pytest.raises(ConfigError, match="max_admitting of -3 is negative"):
        Config.from_settings(merge_settings({**base, "SOHBET_MAX_ADMITTING": "-3"}))


@pytest.mark.parametrize(
    ("environ", "file", "match"),
    [
        ({"SOHBET_PORT": "eighty"}, {}, "SOHBET_PORT: 'eighty' is not a valid int for port"),
        ({"SOHBET_COMPRESSION": "maybe"}, {}, "not a valid bool"),
        ({}, {"port": True}, "not a valid int"),
        ({}, {"mystery": 1}, "unknown setting 'mystery'"),
    ],
    ids=["bad-int", "bad-bool", "bool-as-int", "unknown-key"],
)
def test_bad_settings_are_refused(environ: dict[str, str], file: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        merge_settings(environ, file)


def test_config_from_settings() -> None:
    config = Config.from_env(
        {
            "SOHBET_JWT_SECRET": SECRET,
            "SOHBET_PORT": "9000",
            "SOHBET_DATA_DIR": "/var/lib/sohbet/",
            "SOHBET_ALLOWED_ORIGINS": "https://a.example, https://b.example",
            "SOHBET_FRAME_RATE": "0",
            "SOHBET_LINGER": "0.5",
            "SOHBET_LINGER_BYTES": "4096",
            "SOHBET_JWT_AUDIENCE": "chat",
            "SOHBET_API_KEY": "k" * 32,
            "SOHBET_METRICS_TOKEN": "m" * 16,
            "SOHBET_MAX_BODY_BYTES": "4096",
            "SOHBET_REQUEST_TIMEOUT": "2.5",
            "SOHBET_SHUTDOWN_TIMEOUT": "20",
            "SOHBET_DRAIN_DELAY": "5",
            "SOHBET_LOG_FORMAT": "json",
            "SOHBET_TRUSTED_PROXIES": "10.0.0.0/8, ::1",
            "SOHBET_ADDRESS_RATE": "5",
            "SOHBET_MAX_CONNECTIONS_PER_ADDRESS": "7",
            "SOHBET_WEBHOOK_URL": "https://app.example/hooks/chat?key=in-the-url",
            "SOHBET_WEBHOOK_SECRET": "w" * 32,
            "SOHBET_WEBHOOK_BATCH": "10",
            "SOHBET_WEBHOOK_RETRY_FOR": "60",
            "SOHBET_STORAGE_TIMEOUT": "2.5",
            "SOHBET_WEBHOOK_SENDER_RATE": "50",
        }
    )
    assert config.port == 9000
    assert config.store.url == "sqlite:////var/lib/sohbet/sohbet.db"
    assert config.store.sqlite_path == "/var/lib/sohbet/sohbet.db"
    assert config.websocket.allowed_origins == frozenset({"https://a.example", "https://b.example"})
    assert config.websocket.subprotocols == ("sohbet.v1",)
    assert config.limits.max_frames_per_10s == 0
    assert (config.limits.linger_s, config.limits.linger_bytes) == (0.5, 4096)
    assert config.auth.audience == "chat" and config.auth.api_key == "k" * 32
    assert (config.limits.max_body_bytes, config.limits.request_timeout_s) == (4096, 2.5)
    assert config.store.timeout_s == 2.5
    assert (config.webhook.sender_rate_per_s, config.webhook.sender_burst) == (50.0, 10_000)
    assert (config.shutdown_timeout_s, config.drain_delay_s, config.log_format) == (20.0, 5.0, "json")
    assert config.metrics_token == "m" * 16
    assert [str(n) for n in config.limits.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    assert (config.limits.address_rate_per_s, config.limits.address_burst) == (5.0, 20)
    assert config.limits.max_connections_per_address == 7
    described = config.describe()
    assert described["limits"]["trusted_proxies"] == ["10.0.0.0/8", "::1/128"]
    assert described["auth"] == {"algorithm": "HS256", "audience": "chat", "issuer": None, "leeway_s": 5.0,
                                 "jwks_file": None, "api_key_set": True}  # fmt: skip
    assert described["metrics_token_set"] is True
    assert (config.webhook.url, config.webhook.batch_max, config.webhook.retry_for_s) == (
        "https://app.example/hooks/chat?key=in-the-url",
        10,
        60.0,
    )
    assert described["webhook"]["url_set"] is True and "url" not in described["webhook"]
    for secret in ("w" * 32, "in-the-url"):
        assert secret not in repr(config) and secret not in str(described)
    for secret in (SECRET, "k" * 32, "m" * 16):
        assert secret not in repr(config)  # secrets never reach a log line
    pg = Config.from_env({"SOHBET_JWT_SECRET": SECRET, "SOHBET_DATABASE_URL": "postgresql://u:pw@h/db"})
    assert pg.store.is_postgres and "pw" not in repr(pg)
    for url, safe in [
        ("postgresql://u:pw@h:5/db", "postgresql://u:***@h:5/db"),
        (
            "postgresql://h/db?user=u&password=Secret1&sslmode=require",
            "postgresql://h/db?user=u&password=***&sslmode=require",
        ),
        ("postgresql://u:a@h/db?sslpassword=Secret2", "postgresql://u:***@h/db?sslpassword=***"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:///var/lib/sohbet.db", "sqlite:///var/lib/sohbet.db"),
    ]:
        assert StoreConfig(url=url).safe_url == safe


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (AuthConfig, "needs a JWT secret"),
        (lambda: AuthConfig(secret="short"), "5 bytes is shorter than 32"),
        (lambda: AuthConfig(algorithm="RS256"), "at least one public key"),
        (lambda: AuthConfig(algorithm="none", secret=SECRET), "not supported"),
        (lambda: AuthConfig(secret=SECRET, leeway_s=-1), "leeway"),
        (lambda: AuthConfig(secret=SECRET, api_key="short"), "API key"),
        (lambda: AuthConfig(secret=SECRET, api_key="é" * 15), "API key of 30 bytes is shorter than 32"),
        (lambda: StoreConfig(url="mysql://x"), "sqlite:/// or postgresql://"),
        (lambda: StoreConfig(max_batch=0), "max_batch"),
        (lambda: StoreConfig(max_batch=100, max_queue=10), "max_queue"),
        (lambda: StoreConfig(pool_size=0), "pool_size"),
        (lambda: StoreConfig(timeout_s=0), "timeout_s of 0 is outside 0.1-600"),
        (lambda: ChatConfig(send_rate_per_s=-1), "send_rate_per_s"),
        (lambda: ChatConfig(send_burst=0), "send_burst"),
        (lambda: ChatConfig(max_content_chars=0), "max_content_chars"),
        (lambda: ChatConfig(max_group_members=2), "max_group_members"),
        (lambda: ChatConfig(max_connections_per_user=0), "max_connections_per_user"),
        (lambda: ChatConfig(presence_grace_s=-1), "presence_grace_s"),
        (lambda: ChatConfig(typing_interval_s=-1), "typing_interval_s"),
        (lambda: ChatConfig(max_errors_per_10s=0), "max_errors_per_10s"),
        (lambda: ChatConfig(create_rate_per_s=-1), "create_rate_per_s of -1 is negative"),
        (lambda: ChatConfig(query_burst=0), "query_burst of 0 is below 1"),
        (lambda: ChatConfig(sync_burst=0), "sync_burst of 0 is below 1"),
        (lambda: ChatConfig(signal_burst=0), "signal_burst"),
        (lambda: ChatConfig(groups_per_hour=-1), "groups_per_hour of -1"),
        (lambda: ChatConfig(max_requests_in_flight=-1), "max_requests_in_flight"),
        (lambda: ChatConfig(max_admitting=-1), "max_admitting of -1 is negative"),
        (lambda: ChatConfig(member_cache_size=-5), "member_cache_size"),
        (lambda: Config(auth=AuthConfig(secret=SECRET), port=70000), "port"),
        (lambda: Config(auth=AuthConfig(secret=SECRET), log_level="loud"), "log level"),
        (lambda: Config(auth=AuthConfig(secret=SECRET), log_format="xml"), "log format 'xml' is not text or json"),
        (lambda: Config(auth=AuthConfig(secret=SECRET), metrics_token="short"), "metrics token of 5 bytes"),
        (lambda: Config(auth=AuthConfig(secret=SECRET), shutdown_timeout_s=0), "shutdown_timeout_s"),
        (lambda: Config(auth=AuthConfig(secret=SECRET), drain_delay_s=-1), "drain_delay_s"),
        (lambda: Config(auth=AuthConfig(secret=SECRET), drain_delay_s=10), "must be below shutdown_timeout_s"),
        (lambda: Limits(request_timeout_s=0), "request_timeout_s of 0 is not positive"),
        (lambda: Limits(address_burst=0), "address_burst of 0 is below 1"),
        (lambda: Limits(address_rate_per_s=-1), "address_rate_per_s of -1"),
        (
            lambda: Config.from_env({"SOHBET_JWT_SECRET": SECRET, "SOHBET_TRUSTED_PROXIES": "10.0.0.0/8,lb"}),
            "trusted_proxies: 'lb' does not appear",
        ),
        (
            lambda: Config(auth=AuthConfig(secret=SECRET), cluster=ClusterConfig(redis_url="redis://h")),
            "--redis-url needs Postgres",
        ),
        (lambda: ClusterConfig(redis_url="http://h"), "redis URL must be redis://, rediss:// or unix://"),
        (lambda: ClusterConfig(redis_url="redis://"), "redis URL must be"),
        (lambda: ClusterConfig(instance_id=""), "instance id '' must be 1-64"),
        (lambda: ClusterConfig(instance_id="a b"), "instance id 'a b' must be"),
        (lambda: ClusterConfig(instance_id="x" * 65), "must be 1-64"),
        (lambda: ClusterConfig(prefix="a:b"), "redis prefix 'a:b' must be"),
        (lambda: ClusterConfig(heartbeat_s=0), "heartbeat_s of 0 is outside"),
        (lambda: ClusterConfig(heartbeat_s=2, heartbeat_ttl_s=3), "heartbeat_ttl_s of 3 is outside 4"),
        (lambda: WebhookConfig(url="ftp://h/x", secret=SECRET), "webhook URL must be http"),
        (lambda: WebhookConfig(sender_rate_per_s=-1), "sender_rate_per_s of -1 is negative"),
        (lambda: WebhookConfig(sender_burst=0), "sender_burst of 0 is below 1"),
        (lambda: WebhookConfig(url="https://", secret=SECRET), "webhook URL must be http"),
        (lambda: WebhookConfig(url="http:///path", secret=SECRET), "webhook URL must be http"),
        (lambda: WebhookConfig(url="hooks.example/x", secret=SECRET), "webhook URL must be http"),
        (lambda: WebhookConfig(url="https://h/x"), "needs a webhook secret"),
        (lambda: WebhookConfig(url="https://h/x", secret="short"), "webhook secret of 5 bytes is shorter than 32"),
        (lambda: WebhookConfig(secret="ş" * 15), "webhook secret of 30 bytes"),  # bytes, not characters
        (lambda: WebhookConfig(batch_max=0), "batch_max of 0 is outside 1-10000"),
        (lambda: WebhookConfig(batch_wait_s=-0.1), "batch_wait_s"),
        (lambda: WebhookConfig(batch_max=10, queue_max=5), "queue_max of 5 is outside 10-"),
        (lambda: WebhookConfig(retry_for_s=-1), "retry_for_s"),
        (lambda: WebhookConfig(timeout_s=0), "timeout_s of 0 is not positive"),
        (lambda: WebhookConfig(backoff_first_s=0), "backoff_first_s of 0 is not positive"),
        (lambda: WebhookConfig(backoff_first_s=2, backoff_max_s=1), "backoff_max_s of 1 is outside 2-"),
    ],
)
def test_sections_refuse_nonsense(make: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()  # type: ignore[operator]


def test_writer_shape_per_backend() -> None:
    sqlite, postgres = StoreConfig(), StoreConfig(url="postgresql://h/db")
    assert (sqlite.writers, sqlite.write_depth) == (1, 1)  # one writer thread: a second would wait
    assert (postgres.writers, postgres.write_depth) == (1, 2)  # the next batch gathers while one commits


def test_the_write_gather_is_a_setting_in_milliseconds_and_bounded() -> None:
    base = {"SOHBET_JWT_SECRET": SECRET}
    assert Config.from_settings(merge_settings(base)).store.write_gather_ms == 0  # off: commit at once
    assert Config.from_settings(merge_settings({**base, "SOHBET_WRITE_GATHER_MS": "2"})).store.write_gather_ms == 2
    flag = merge_settings(base, None, {"write_gather_ms": 1000})
    assert Config.from_settings(flag).store.write_gather_ms == 1000
    for bad in ("-1", "1000.5", "nan"):
        with pytest.raises(ConfigError, match=r"write_gather_ms of .* is outside 0-1000"):
            Config.from_settings(merge_settings({**base, "SOHBET_WRITE_GATHER_MS": bad}))


def test_a_public_key_without_an_audience_is_warned_about() -> None:
    keys = ((None, "PEM"),)  # AuthConfig checks only that there is one; the Verifier parses it
    shared = Config(auth=AuthConfig(algorithm="ES256", public_keys=keys))
    assert len(shared.warnings) == 1 and "ES256 tokens are accepted whatever their `aud`" in shared.warnings[0]
    assert "--jwt-audience" in shared.warnings[0]
    assert Config(auth=AuthConfig(algorithm="EdDSA", public_keys=keys, audience="chat")).warnings == []
    assert Config(auth=AuthConfig(secret=SECRET)).warnings == []  # our own key: only we sign


def test_the_secret_file_is_a_setting() -> None:
    values = merge_settings({"SOHBET_JWT_SECRET_FILE": "/run/secrets/jwt"})
    assert values["jwt_secret_file"] == "/run/secrets/jwt"
    assert "process list" in next(s.help for s in SETTINGS if s.name == "jwt_secret_file")


def test_the_webhook_is_off_by_default_and_keeps_its_url_and_secret_out_of_logs() -> None:
    assert WebhookConfig().url is None
    config = WebhookConfig(url="https://user:pw@hooks.example/in?token=t0k", secret=SECRET, batch_wait_s=0)
    assert (config.batch_max, config.queue_max, config.retry_for_s, config.timeout_s) == (100, 10_000, 300.0, 10.0)
    assert "pw" not in repr(config) and "t0k" not in repr(config) and SECRET not in repr(config)
    assert WebhookConfig(url="http://127.0.0.1:9/x", secret="ş" * 16).secret == "ş" * 16  # 32 bytes


# --- several public keys, and a JWKS file ---------------------------------------------------

from sohbet.config import parse_key_files  # noqa: E402  # grouped with the tests that use them


def test_the_public_keys_are_a_repeatable_setting() -> None:
    keys = next(s for s in SETTINGS if s.name == "jwt_public_key")
    assert keys.repeated and keys.default == () and "[KID=]PATH" in keys.help
    assert merge_settings({})["jwt_public_key"] == ()
    from_env = {"SOHBET_JWT_PUBLIC_KEY": " a=/k/a.pem, b=/k/b.pem ,,"}
    assert merge_settings(from_env)["jwt_public_key"] == ("a=/k/a.pem", "b=/k/b.pem")
    assert merge_settings({}, {"jwt-public-key": "/k/only.pem"})["jwt_public_key"] == ("/k/only.pem",)
    assert merge_settings({}, {"jwt_public_key": ["a=/k/a.pem", "b=/k/b,c.pem"]})["jwt_public_key"] == (
        "a=/k/a.pem",
        "b=/k/b,c.pem",  # a list's items are taken whole
    )
    flags = {"jwt_public_key": ["c=/k/c.pem"]}  # argparse's append
    assert merge_settings(from_env, None, flags)["jwt_public_key"] == ("c=/k/c.pem",)  # replaced, not merged
    assert merge_settings({"SOHBET_JWT_PUBLIC_KEY": ""}, {"jwt-public-key": "/k/a.pem"})["jwt_public_key"] == ()
    with pytest.raises(ConfigError, match="config file: 7 is not a list of str for jwt_public_key"):
        merge_settings({}, {"jwt-public-key": 7})


def test_key_files_name_a_kid_or_none() -> None:
    specs = ("a=/k/a.pem", "/k/plain.pem", "b=/k/x=y.pem")
    assert parse_key_files({"jwt_public_key": specs}) == (
        ("a", "/k/a.pem"),
        (None, "/k/plain.pem"),
        ("b", "/k/x=y.pem"),
    )
    with pytest.raises(ConfigError, match=r"--jwt-public-key '=/k/a\.pem' has an empty kid before '='"):
        parse_key_files({"jwt_public_key": ("=/k/a.pem",)})
    with pytest.raises(ConfigError, match="--jwt-public-key 'a=' names no file"):
        parse_key_files({"jwt_public_key": ("a=",)})


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        ((("a", "PEM"), ("a", "PEM")), "JWT public key kid 'a' is given twice"),
        (((None, "PEM"), (None, "PEM")), r"two JWT public keys without a kid: give each a kid \(--jwt-public-key"),
        ((("", "PEM"),), "kid must be 1-256 characters"),
        ((("k" * 257, "PEM"),), "kid must be 1-256 characters"),
    ],
    ids=["kid-twice", "no-kid-twice", "empty-kid", "long-kid"],
)
def test_a_kid_names_one_key(keys: tuple[tuple[str | None, str], ...], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AuthConfig(algorithm="RS256", public_keys=keys)


def test_public_keys_are_refused_where_a_secret_verifies() -> None:
    with pytest.raises(ConfigError, match="HS256 verifies with a shared secret, not with public keys"):
        AuthConfig(secret=SECRET, public_keys=(("a", "PEM"),))
    assert AuthConfig(algorithm="RS256", public_keys=((None, "PEM"), ("k" * 256, "PEM"))).secret is None


def test_a_jwks_file_may_stand_in_for_the_keys() -> None:
    assert AuthConfig(algorithm="RS256", jwks_file="/k/keys.json").public_keys == ()
    assert AuthConfig(jwks_file="/k/keys.json").secret is None  # HS256: oct keys in the file instead
    with pytest.raises(ConfigError, match="shorter than 32"):
        AuthConfig(secret="short", jwks_file="/k/keys.json")  # a secret beside it is still checked
    with pytest.raises(ConfigError, match=r"RS256 needs at least one public key \(--jwt-public-key or --jwks-file\)"):
        AuthConfig(algorithm="RS256")
    values = merge_settings({"SOHBET_JWKS_FILE": "/k/keys.json", "SOHBET_JWT_ALGORITHM": "ES256"})
    assert Config.from_settings(values).auth.jwks_file == "/k/keys.json"
    unset = merge_settings({"SOHBET_JWKS_FILE": "", "SOHBET_JWT_SECRET": SECRET})
    assert Config.from_settings(unset).auth.jwks_file is None
