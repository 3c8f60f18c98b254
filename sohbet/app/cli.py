"""`sohbet-server`: the composition root, where configuration becomes a running server.

Layer: entry. The only module that picks concrete implementations (which store), reads files
and the environment, and owns the process (signals, exit codes).

    sohbet-server                        serve (SQLite in ./sohbet.db, port 8080)
    sohbet-server token alice --ttl 3600 print a token for user alice
    sohbet-server migrate                apply the schema migrations and exit
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import socket
import stat
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import uvloop

from sohbet import __version__
from sohbet.app import logs
from sohbet.app.compose import App, AppConfig
from sohbet.app.gateway import READY_CACHE_S, READY_TIMEOUT_S
from sohbet.app.keys import check_keys, watch_keys
from sohbet.auth import issue_token
from sohbet.broker import Broker
from sohbet.broker.local import LocalBroker
from sohbet.broker.redis import RedisBroker
from sohbet.config import (
    HMAC_ALGORITHMS,
    POSTGRES_SCHEMES,
    REDIS_NEEDS_POSTGRES,
    SETTINGS,
    ClusterConfig,
    Config,
    StoreConfig,
    merge_settings,
    parse_key_files,
)
from sohbet.errors import ConfigError, SohbetError
from sohbet.store import MessageStore
from sohbet.store.postgres import PostgresStore
from sohbet.store.sqlite import SqliteStore
from sohbet.ws.frames import IMPLEMENTATION

__all__ = ["build_config", "main"]

log = logging.getLogger("sohbet")
#: How a secret setting is named in messages.
_SECRET_NAMES = {
    "jwt_secret": "JWT secret",
    "api_key": "API key",
    "metrics_token": "metrics token",
    "webhook_secret": "webhook secret",
}
SECRET_FILE = "sohbet.secret"
#: Seconds of a graceful shutdown kept for closing storage (at most a tenth of it).
STORE_CLOSE_S = 1.0
#: A second signal ends the process with the shell's code for death by that signal.
EXIT_SIGNAL_BASE = 128
#: Mode bits of group and others: a secret or database file with any of them set is warned about.
PRIVATE_MASK = 0o077
#: A data directory sohbet creates is its owner's alone.
PRIVATE_DIR_MODE = 0o700


def _parser() -> argparse.ArgumentParser:
    settings = argparse.ArgumentParser(add_help=False)
    settings.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="TOML file of settings")
    for s in SETTINGS:
        if not s.has_flag:
            continue
        default = "unset" if s.default in (None, ()) else s.default
        help_text = f"{s.help} [env {s.env}; default {default}]"
        if s.repeated:
            settings.add_argument(s.flag, dest=s.name, action="append", default=argparse.SUPPRESS, help=help_text)
        elif s.kind is bool:
            settings.add_argument(
                s.flag, dest=s.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            settings.add_argument(s.flag, dest=s.name, type=s.kind, default=argparse.SUPPRESS, help=help_text)
    parser = argparse.ArgumentParser(
        prog="sohbet-server",
        description="sohbet: a real-time messaging server. Precedence: flags > environment > --config file > defaults.",
        parents=[settings],
        epilog="Secrets (--jwt-secret, --api-key, --metrics-token) given as flags show in the process list: "
        "prefer their --*-file settings or the environment. "
        "GET /healthz: the server accepts connections; GET /readyz: storage answers (one check per "
        f"{READY_CACHE_S:g} s for all probes together, waiting up to {READY_TIMEOUT_S:g} s).",
    )
    parser.add_argument("--version", action="version", version=f"sohbet {__version__}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", parents=[settings], help="run the server (the default)")
    token = commands.add_parser("token", parents=[settings], help="print a token for a user")
    token.add_argument("user_id", help="the token's sub")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires [default 3600]")
    commands.add_parser("migrate", parents=[settings], help="apply schema migrations and exit")
    return parser


def _warn_if_exposed(path: Path) -> None:
    """Warn when a file holding a secret (or the messages) can be read by other local users."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & PRIVATE_MASK:
        log.warning("%s is readable by group or others (mode %04o): chmod 600 it", path, mode)


def _read_secret(path: Path, what: str = "JWT secret") -> str:
    """The secret in *path* (surrounding whitespace dropped), after warning if others can read
    the file. Its length is checked where it is used (the configuration's sections)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file: {exc}") from None
    _warn_if_exposed(path)
    return text.strip()


def _load_secret(data_dir: Path) -> str:
    """Read the generated secret, or make one: random, never a guessable default."""
    path = data_dir / SECRET_FILE
    if path.exists():
        return _read_secret(path)
    data_dir.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    log.warning("no JWT key configured: generated a random secret in %s (mode 0600)", path)
    return secret


def _read_public_key(kid: str | None, path: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        name = "" if kid is None else f" of kid {kid!r}"
        raise ConfigError(f"cannot read JWT public key{name}: {exc}") from None


def build_config(args: dict[str, Any], environ: dict[str, str]) -> Config:
    """Resolve flags, environment and file into a `Config`; generate the secret if allowed.

    Raises:
        ConfigError: invalid settings, an unsupported one (Redis), or no key where a generated
            one would not do (Postgres: the key must not live and die with one data directory).
    """
    file: dict[str, object] = {}
    if "config" in args:
        try:
            file = tomllib.loads(Path(args["config"]).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {args['config']}: {exc}") from None
    flags = {k: v for k, v in args.items() if k not in {"config", "command", "user_id", "ttl"}}
    values = merge_settings(environ, file, flags)
    if values["redis_url"] and not str(values["database_url"] or "").startswith(POSTGRES_SCHEMES):
        raise ConfigError(REDIS_NEEDS_POSTGRES)  # before a secret is generated for nothing
    if not values["instance_id"]:
        values["instance_id"] = generated_instance_id()
    for setting in SETTINGS:
        secret_file = values.get(f"{setting.name}_file") if setting.secret else None
        if secret_file:
            what = _SECRET_NAMES.get(setting.name, setting.name.replace("_", " "))
            if values[setting.name]:
                raise ConfigError(f"set the {what} or its file, not both")
            values[setting.name] = _read_secret(Path(str(secret_file)), what)
    public_keys = tuple((kid, _read_public_key(kid, path)) for kid, path in parse_key_files(values))
    if values["jwt_algorithm"] in HMAC_ALGORITHMS and not values["jwt_secret"] and not values["jwks_file"]:
        url = str(values["database_url"] or "")
        if StoreConfig(url=url).is_postgres if url else False:
            raise ConfigError("with Postgres configured, set SOHBET_JWT_SECRET or SOHBET_JWT_SECRET_FILE")
        values["jwt_secret"] = _load_secret(Path(str(values["data_dir"])))
    config = Config.from_settings(values, public_keys)
    check_keys(config.auth)
    for warning in config.warnings:
        log.warning("%s", warning)
    return config


def generated_instance_id() -> str:
    """A name for an instance nobody named: the host's, and a random part (a restarted
    instance is a new one: its predecessor's registry entries are buried, not inherited)."""
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())[:48] or "sohbet"
    return f"{host}-{secrets.token_hex(4)}"


def make_broker(config: ClusterConfig) -> Broker:
    """The one place that picks a broker implementation."""
    if config.redis_url is None:
        return LocalBroker(config.instance_id)
    return RedisBroker(
        config.redis_url,
        config.instance_id,
        prefix=config.prefix,
        heartbeat_s=config.heartbeat_s,
        ttl_s=config.heartbeat_ttl_s,
    )


def make_store(config: StoreConfig) -> MessageStore:
    """The one place that picks a storage implementation."""
    if config.is_postgres:
        return PostgresStore(config.url, pool_size=config.pool_size, timeout_s=config.timeout_s)
    Path(config.sqlite_path).parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    return SqliteStore(config.sqlite_path)


async def run(config: Config, stop: asyncio.Event | None = None) -> None:
    """Serve until *stop* is set (or SIGINT/SIGTERM), then shut down gracefully; a second
    signal ends the process at once."""
    if stop is None:
        # Before the port opens: a SIGTERM as soon as it accepts still shuts down gracefully.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _on_signal, stop, sig)
    store = make_store(config.store)
    try:
        # Without Redis, instances could not tell each other of anything: one per database;
        # with it, any number share the database, and keep a lone server out.
        await store.lock_instance(shared=config.cluster.enabled)
    except BaseException:
        await store.close()
        raise
    if config.store.is_sqlite:
        _warn_if_exposed(Path(config.store.sqlite_path))
    await store.migrate()  # under an advisory lock: instances starting together migrate once
    app = App(
        AppConfig(
            config.auth,
            config.chat,
            config.limits,
            config.websocket,
            config.store,
            drain_delay_s=config.drain_delay_s,
            metrics_token=config.metrics_token,
            webhook=config.webhook,
            demo=config.demo,
            instance_id=config.cluster.instance_id,
        ),
        store,
        broker=make_broker(config.cluster),
    )
    keys = watch_keys(config.auth, app.chat.verifier)  # the JWKS file's keys, reloaded on change or SIGHUP
    await app.start(config.host, config.port)
    log.info("configuration", extra={"config": config.describe()})
    kind = "postgres" if config.store.is_postgres else f"sqlite {config.store.sqlite_path}"
    log.info(
        "sohbet %s listening on ws://%s:%d/ws (storage: %s; frame core: %s)",
        __version__, config.host, app.port, kind, IMPLEMENTATION,
    )  # fmt: skip
    if config.demo:
        log.info("demo chat page at http://%s:%d/", config.host, app.port)
    await stop.wait()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.shutdown_timeout_s
    # The last part of the time is kept for closing storage, so the whole stays within the limit.
    await app.shutdown(config.shutdown_timeout_s - min(STORE_CLOSE_S, config.shutdown_timeout_s / 10))
    await keys.stop()
    try:
        async with asyncio.timeout(max(deadline - loop.time(), 0.01)):
            await store.close()
    except TimeoutError:
        log.warning("storage did not close in time; exiting without it")
    log.info("stopped")


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    if stop.is_set():
        log.warning("second %s: exiting at once", sig.name)
        logging.shutdown()
        os._exit(EXIT_SIGNAL_BASE + sig)
    log.info("%s: shutting down gracefully (send it again to exit at once)", sig.name)
    stop.set()


async def _migrate(config: Config) -> None:
    store = make_store(config.store)
    try:
        await store.migrate()
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> None:
    """The `sohbet-server` console command."""
    args = vars(_parser().parse_args(argv))
    # What is logged while the configuration is read (a generated secret, a readable key file)
    # waits for it, to come out in the format it asks for.
    held = logs.hold_early_records()
    try:
        try:
            config = build_config(args, dict(os.environ))
        except ConfigError:
            logs.configure("warning", "text", held)
            raise
        instance = config.cluster.instance_id if config.cluster.enabled else None
        logs.configure(config.log_level, config.log_format, held, instance=instance)
        command = args.get("command") or "serve"
        if command == "token":
            print(issue_token(config.auth, args["user_id"], args["ttl"], time.time()))
        elif command == "migrate":
            uvloop.run(_migrate(config))
            log.info("migrations applied")
        else:
            uvloop.run(run(config))
    except (ConfigError, SohbetError) as exc:
        print(f"sohbet-server: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        print(f"sohbet-server: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
