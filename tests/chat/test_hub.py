"""The hub: connections, presence with grace, membership cache, typing and send-rate buckets."""

from __future__ import annotations

from sohbet.chat.hub import Hub
from sohbet.chat.ids import ConversationId, UserId

A, B, C = UserId("alice"), UserId("bob"), UserId("carol")
X, Y = ConversationId(1), ConversationId(2)


def test_presence_with_grace() -> None:
    hub: Hub[str] = Hub()
    assert hub.attach(A, "a1") is True  # came online
    assert hub.attach(A, "a2") is False  # a second device
    assert hub.connections(A) == {"a1", "a2"}
    assert hub.connection_count == 2
    assert hub.detach(A, "a1", grace_until=10.0) is False
    assert hub.detach(A, "a2", grace_until=10.0) is True  # the last one: grace starts
    assert hub.detach(A, "a2", grace_until=10.0) is False  # not attached any more
    assert hub.is_online(A) and not hub.is_empty
    assert hub.expired_graces(now=9.9) == []
    assert hub.attach(A, "a3") is False  # back within the grace period: never went offline
    hub.detach(A, "a3", grace_until=20.0)
    assert hub.expired_graces(now=20.0) == [A]
    assert not hub.is_online(A) and hub.is_empty
    assert hub.connections(A) == set()


def test_remote_connections_count_for_presence() -> None:
    hub: Hub[str] = Hub()
    assert hub.set_remote(B, 2) is True  # online on another instance
    assert hub.set_remote(B, 3) is False
    assert hub.attach(B, "b1") is False
    assert hub.detach(B, "b1", grace_until=5.0) is False  # still connected elsewhere: no grace
    assert hub.set_remote(B, 0) is False
    assert not hub.is_online(B)
    hub.attach(C, "c1")
    hub.detach(C, "c1", grace_until=5.0)
    hub.set_remote(C, 1)  # reconnected elsewhere within grace
    assert hub.expired_graces(now=6.0) == []


def test_membership_cache_and_contacts() -> None:
    hub: Hub[str] = Hub()
    assert hub.members(X) is None
    hub.set_conversations(A, [X])
    assert hub.contacts(A) == set()  # members not loaded yet
    assert hub.set_members(X, [A, B]) == {A, B}
    hub.set_members(Y, [A, C])  # alice's set learns of Y as well
    assert hub.conversations(A) == {X, Y}
    assert hub.contacts(A) == {B, C}
    hub.add_member(X, C)
    assert hub.members(X) == {A, B, C}
    hub.remove_member(Y, A)
    assert hub.conversations(A) == {X}
    assert hub.contacts(A) == {B, C}
    hub.add_member(ConversationId(3), A)  # not cached: only the user's set changes
    hub.remove_member(ConversationId(4), B)  # unknown everywhere: nothing to do
    assert hub.conversations(A) == {X, ConversationId(3)}
    assert hub.conversations(B) is None
    hub.forget(A)  # offline: the cached set goes
    assert hub.conversations(A) is None
    hub.attach(A, "a1")
    hub.set_conversations(A, [X])
    hub.forget(A)  # still online: kept
    assert hub.conversations(A) == {X}


def test_connections_of_many_users() -> None:
    hub: Hub[str] = Hub()
    hub.attach(A, "a1")
    hub.attach(A, "a2")
    hub.attach(B, "b1")
    assert sorted(hub.connections_of([A, B, C])) == ["a1", "a2", "b1"]


def test_typing_is_throttled_from_the_last_forwarded() -> None:
    hub: Hub[str] = Hub()
    assert hub.allow_typing(A, X, now=0.0, interval_s=2.0)
    assert not hub.allow_typing(A, X, now=1.9, interval_s=2.0)
    assert hub.allow_typing(A, Y, now=1.9, interval_s=2.0)  # another conversation
    assert hub.allow_typing(A, X, now=2.0, interval_s=2.0)
    hub.forget_typing(before=3.0)
    assert hub.allow_typing(A, X, now=3.0, interval_s=2.0)  # forgotten state throttles nothing


def test_send_tokens() -> None:
    hub: Hub[str] = Hub()
    assert [hub.take_send_token(A, 0.0, rate_per_s=2, burst=3) for _ in range(3)] == [0, 0, 0]
    assert hub.take_send_token(A, 0.0, rate_per_s=2, burst=3) == 500
    assert hub.take_send_token(A, 0.25, rate_per_s=2, burst=3) == 250
    hub.refund_send_token(A, burst=3)  # a replay gives its token back
    assert hub.take_send_token(A, 0.25, rate_per_s=2, burst=3) == 0
    hub.refund_send_token(B, burst=3)  # no bucket: nothing to refund
    assert hub.take_send_token(B, 0.0, rate_per_s=0, burst=1) == 0  # unlimited
    hub.forget_buckets(idle_since=1.0, rate_per_s=2, burst=3)  # alice's refills by 1.75: kept
    assert hub.take_send_token(A, 0.3, rate_per_s=2, burst=3) > 0
    hub.forget_buckets(idle_since=10.0, rate_per_s=2, burst=3)  # full again: dropped
    assert hub.take_send_token(A, 10.0, rate_per_s=2, burst=3) == 0
    hub.forget_buckets(idle_since=10.0, rate_per_s=0, burst=3)
