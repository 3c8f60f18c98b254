"""Who a connection comes from, behind trusted proxies or not, and the per-address buckets."""

from __future__ import annotations

import pytest

from sohbet.ws.addresses import AddressBook, address_key, client_address, is_trusted, parse_networks
from sohbet.ws.rates import Rate

PROXIES = parse_networks("10.0.0.0/8, 2001:db8::/32, 127.0.0.1")


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.7", None, "203.0.113.7"),
        ("203.0.113.7", "198.51.100.1", "203.0.113.7"),  # not a trusted peer: its header says nothing
        ("10.1.2.3", "198.51.100.1", "198.51.100.1"),
        ("10.1.2.3", None, "10.1.2.3"),  # a proxy that forwards nothing: itself
        ("10.1.2.3", "", "10.1.2.3"),
        ("10.1.2.3", "192.0.2.9, 198.51.100.1, 10.9.9.9", "198.51.100.1"),  # the nearest untrusted hop
        ("10.1.2.3", "10.5.5.5, 10.9.9.9", "10.5.5.5"),  # all trusted: the farthest read
        ("10.1.2.3", "198.51.100.1, not-an-ip", "10.1.2.3"),  # a bad entry ends the walk before it
        ("10.1.2.3", "  198.51.100.1  ", "198.51.100.1"),
        ("10.1.2.3", "2001:db8::1, 2001:db9::5", "2001:db9::5"),
        ("2001:db8::7", "198.51.100.2", "198.51.100.2"),
        ("::ffff:10.0.0.1", "198.51.100.3", "198.51.100.3"),  # a dual-stack socket's IPv4 peer
        ("::ffff:203.0.113.7", None, "203.0.113.7"),
        ("/run/sohbet.sock", "198.51.100.1", "/run/sohbet.sock"),  # not an IP socket
        ("127.0.0.1", ",".join(["10.0.0.1"] * 40 + ["198.51.100.4"]), "198.51.100.4"),
        ("127.0.0.1", ",".join(["198.51.100.5"] + ["10.0.0.1"] * 40), "10.0.0.1"),  # read 16 hops at most
    ],
)
def test_the_client_address(peer: str, forwarded: str | None, client: str) -> None:
    assert client_address(peer, forwarded, PROXIES) == client


def test_without_trusted_proxies_the_header_is_never_read() -> None:
    assert client_address("10.1.2.3", "198.51.100.1", ()) == "10.1.2.3"


def test_networks_parse_from_cidrs_and_addresses() -> None:
    assert [str(n) for n in parse_networks(" 10.0.0.0/8,,192.168.1.7 , ::1")] == [
        "10.0.0.0/8",
        "192.168.1.7/32",
        "::1/128",
    ]
    assert parse_networks("") == ()
    assert [str(n) for n in parse_networks("10.1.2.3/8")] == ["10.0.0.0/8"]  # host bits are forgiven
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 network"):
        parse_networks("10.0.0.0/8, proxy.internal")


def test_new_connections_per_second_per_address() -> None:
    book = AddressBook(Rate(2, 3), max_open=0)
    assert [book.admit("a", 0.0) for _ in range(3)] == [None, None, None]  # the burst
    refused = book.admit("a", 0.0)
    assert refused == ("more than 2 new connections per second from a", 1)
    assert book.admit("b", 0.0) is None  # another address has its own bucket
    assert book.admit("a", 0.5) is None  # a token back after half a second
    book.forget(0.5)
    assert book.admit("a", 0.5) is not None  # a bucket not yet full is kept
    book.forget(100.0)
    assert [book.admit("a", 100.0) for _ in range(3)] == [None, None, None]  # forgotten: full


def test_a_wait_of_more_than_a_second_is_said_in_whole_seconds() -> None:
    book = AddressBook(Rate(0.2, 1), max_open=0)
    assert book.admit("a", 0.0) is None
    assert book.admit("a", 0.0) == ("more than 0.2 new connections per second from a", 5)


def test_open_connections_per_address() -> None:
    book = AddressBook(Rate(0, 1), max_open=2)  # no rate: only the count
    for _ in range(2):
        assert book.admit("a", 0.0) is None
        book.opened("a")
    assert book.open_count("a") == 2 and list(book.addresses) == ["a"]
    assert book.admit("a", 0.0) == ("a holds 2 connections, the most allowed", 1)
    book.release("a")
    assert book.admit("a", 0.0) is None
    book.release("a")
    book.release("a")
    book.release("a")  # a release too many does not go below nothing
    assert book.open_count("a") == 0 and list(book.addresses) == []


def test_a_refused_attempt_still_spends_a_token() -> None:
    book = AddressBook(Rate(1, 2), max_open=1)
    book.opened("a")
    assert book.admit("a", 0.0) is not None  # refused for the count: before the rate, free
    book.release("a")
    assert book.admit("a", 0.0) is None
    assert book.admit("a", 0.0) is None
    assert book.admit("a", 0.0) is not None  # two attempts spent the burst


def test_an_ipv6_host_is_counted_by_its_64() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert address_key("198.51.100.7") == "198.51.100.7"
    assert address_key("/run/sock") == "/run/sock"
    book = AddressBook(Rate(0, 1), max_open=1)
    book.opened("2001:db8:1:2::1")
    assert book.full("2001:db8:1:2::ffff") == ("2001:db8:1:2::ffff holds 1 connections, the most allowed", 1)
    assert book.full("2001:db8:1:3::1") is None  # the next /64 is another host
    assert book.open_count("2001:db8:1:2:ffff::9") == 1 and list(book.addresses) == ["2001:db8:1:2::/64"]


def test_trusted_peers() -> None:
    assert is_trusted("10.1.2.3", PROXIES) and is_trusted("::ffff:10.1.2.3", PROXIES)
    assert not is_trusted("203.0.113.7", PROXIES) and not is_trusted("/run/sock", PROXIES)
