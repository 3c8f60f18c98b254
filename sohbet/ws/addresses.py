"""Client addresses: who a connection comes from (behind trusted proxies too), and how many
connections each address may open and hold (docs/protocol.md, "Limits").

Layer: ws (sans-I/O). Imports the standard library and `sohbet.ws.rates`; time comes in as an
argument.

Behind a proxy every connection comes from the proxy's address. Only when the peer is one of
the configured trusted proxies does `X-Forwarded-For` say more: its entries are read from the
right (the hop nearest to us) while they name trusted proxies, and the first one that does not
is the client. A peer nobody trusts cannot pick its own address by sending the header.
"""

from __future__ import annotations

import ipaddress
from collections.abc import KeysView
from typing import Final

from sohbet.ws.rates import Rate, RateLimiter

__all__ = [
    "OVER_LIMIT_ANSWERED",
    "AddressBook",
    "IPNetwork",
    "Swamped",
    "address_key",
    "client_address",
    "is_trusted",
    "parse_networks",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: X-Forwarded-For entries read at most: a proxy chain is a few hops; the rest is not read.
_MAX_HOPS: Final = 16
#: Sockets accepted past a limit (`max_connections`, `max_connections_per_address`) that are
#: still answered why (503, 429) at their first request. Past these a socket is closed at once,
#: unanswered: however fast a client opens them, it holds no more than the limit and these.
OVER_LIMIT_ANSWERED: Final = 16
#: The prefix an IPv6 host is given (RFC 6177): the unit it is counted by.
_IPV6_HOST_PREFIX: Final = 64


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Comma-separated CIDRs (`10.0.0.0/8, ::1`) as networks; a bare address is a /32 or /128.

    Raises:
        ValueError: an entry that is not an address or a network.
    """
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return ip


def is_trusted(peer: str, trusted: tuple[IPNetwork, ...]) -> bool:
    """Whether *peer* is one of the trusted proxies (whose clients are counted one by one)."""
    ip = _ip(peer)
    return ip is not None and any(ip in network for network in trusted)


def client_address(peer: str, forwarded_for: str | None, trusted: tuple[IPNetwork, ...]) -> str:
    """The address of the client behind *peer*: *peer* itself unless it is a trusted proxy, in
    which case the nearest untrusted entry of *forwarded_for* (or the farthest one read, if all
    are trusted). An entry that is not an address ends the walk at the hop before it."""
    ip = _ip(peer)
    if ip is None:
        return peer  # not an IP socket (a Unix socket, say): nothing to walk
    hops = [h for h in (forwarded_for or "").split(",")[-_MAX_HOPS:] if h.strip()]
    while hops and any(ip in network for network in trusted):
        nearer = _ip(hops.pop())
        if nearer is None:
            break
        ip = nearer
    return str(ip)


def address_key(address: str) -> str:
    """What connections are counted by: an IPv4 address, or an IPv6 address's /64 (one host
    is given a whole /64, and would get around any limit on a single address of it)."""
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, _IPV6_HOST_PREFIX), strict=False))
    return address


class Swamped(Exception):
    """An address holds the most sockets allowed and `OVER_LIMIT_ANSWERED` more: the next one is
    closed unanswered."""


class AddressBook:
    """Connections per client address (`address_key`): a rate of new ones (a token bucket each)
    and a count of open ones. Only addresses with open connections or a bucket not yet full again
    are kept."""

    def __init__(self, rate: Rate, max_open: int) -> None:
        self.rate = rate
        self.max_open = max_open
        self._buckets: RateLimiter[str] = RateLimiter()
        self._open: dict[str, int] = {}

    def admit(self, address: str, now: float) -> tuple[str, int] | None:
        """Whether *address* may open a connection now; an attempt spends a token either way,
        so a refused one (a bad token, say) costs its sender as much as one that succeeds.

        Returns:
            None when it may (`opened` once it has); else the reason, and the seconds to wait.
        """
        return self.full(address) or self.paced(address, now)

    def full(self, address: str) -> tuple[str, int] | None:
        """Why *address* may open no more connections now (it holds the most), or None."""
        return self._over(address, self._open.get(address_key(address), 0))

    def _over(self, address: str, held: int) -> tuple[str, int] | None:
        if self.max_open and held >= self.max_open:
            return f"{address} holds {held} connections, the most allowed", 1
        return None

    def accepted(self, address: str) -> tuple[str, int] | None:
        """Count a socket *address* has opened (until `release`), whatever it turns out to be;
        return why it is over the limit (its first request is answered 429), or None.

        Raises:
            Swamped: not counted; close it unanswered.
        """
        key = address_key(address)
        held = self._open.get(key, 0)
        if self.max_open and held >= self.max_open + OVER_LIMIT_ANSWERED:
            raise Swamped
        self._open[key] = held + 1
        return self._over(address, held)

    def paced(self, address: str, now: float) -> tuple[str, int] | None:
        """Spend a token of *address*'s rate of new connections; why not and how long to wait, or None."""
        wait_ms = self._buckets.take(address_key(address), now, self.rate)
        if wait_ms:
            return f"more than {self.rate.per_s:g} new connections per second from {address}", -(-wait_ms // 1000)
        return None

    def opened(self, address: str) -> None:
        """A connection from *address* is open: it counts until `release`."""
        key = address_key(address)
        self._open[key] = self._open.get(key, 0) + 1

    def release(self, address: str) -> None:
        """A connection `opened` counted has ended."""
        key = address_key(address)
        held = self._open.get(key, 0) - 1
        if held > 0:
            self._open[key] = held
        else:
            self._open.pop(key, None)

    def forget(self, now: float) -> None:
        """Drop the buckets that are full again by *now* (an idle address costs nothing)."""
        self._buckets.forget(now)

    def open_count(self, address: str) -> int:
        """The connections *address* (or its /64) holds."""
        return self._open.get(address_key(address), 0)

    @property
    def bucket_count(self) -> int:
        """Addresses with a rate bucket (dropped once full again): for the metrics."""
        return len(self._buckets)

    @property
    def addresses(self) -> KeysView[str]:
        """What holds connections: IPv4 addresses and IPv6 /64s."""
        return self._open.keys()
