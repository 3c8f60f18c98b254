"""The hub: connections, presence with grace, the membership caches and typing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from sohbet.chat import hub as hub_module
from sohbet.chat.hub import FANOUT_CACHE_MIN, Hub
from sohbet.chat.ids import ConversationId, UserId

A, B, C, D = UserId("alice"), UserId("bob"), UserId("carol"), UserId("dave")
X, Y = ConversationId(1), ConversationId(2)


def test_presence_with_grace() -> None:
    hub: Hub[str] = Hub()
    assert hub.attach(A, "a1") is True  # came online
    assert hub.attach(A, "a2") is False  # a second device
    assert hub.connections(A) == ("a1", "a2")
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
    assert hub.connections(A) == ()


def test_remote_connections_count_for_presence() -> None:
    hub: Hub[str] = Hub()
    assert hub.set_remote(B, 2, grace_until=5.0) is True  # online on another instance
    assert hub.set_remote(B, 3, grace_until=5.0) is False
    assert hub.attach(B, "b1") is False
    assert hub.detach(B, "b1", grace_until=5.0) is False  # still connected elsewhere: no grace
    assert hub.set_remote(B, 0, grace_until=5.0) is False
    assert hub.is_online(B)  # the last remote connection went: the grace period starts
    assert hub.expired_graces(now=4.0) == []
    assert hub.expired_graces(now=5.0) == [B]
    assert not hub.is_online(B)
    hub.attach(C, "c1")
    hub.detach(C, "c1", grace_until=5.0)
    hub.set_remote(C, 1, grace_until=9.0)  # reconnected elsewhere within grace
    assert hub.expired_graces(now=6.0) == []
    hub.attach(C, "c2")
    assert hub.set_remote(C, 0, grace_until=9.0) is False
    assert hub.expired_graces(now=10.0) == []  # still connected here: no grace at all
    assert hub.set_remote(D, 0, grace_until=1.0) is False  # never seen: nothing starts
    assert not hub.is_online(D)


def test_here_index_tracks_conversations_with_a_member_connected_here() -> None:
    hub: Hub[str] = Hub(track_here=True)
    hub.finish_conversations_load(A, [X, Y], keep=True)  # loaded, not connected: not here
    assert hub.here(X) == set() and hub.take_here_changes() == set()
    hub.attach(A, "a1")
    assert hub.here(X) == {A} and hub.take_here_changes() == {X, Y}
    hub.attach(A, "a2")  # a second connection changes nothing
    assert hub.take_here_changes() == set()
    hub.attach(B, "b1")
    hub.finish_conversations_load(B, [X], keep=True)
    assert hub.here(X) == {A, B} and hub.take_here_changes() == set()
    hub.remove_member(Y, A)
    assert hub.here(Y) == set() and hub.take_here_changes() == {Y}
    hub.add_member(Y, B)
    assert hub.here(Y) == {B} and hub.take_here_changes() == {Y}
    hub.detach(A, "a1", grace_until=1.0)
    hub.detach(A, "a2", grace_until=1.0)
    assert hub.here(X) == {B} and hub.take_here_changes() == set()
    hub.detach(B, "b1", grace_until=1.0)
    assert hub.followed() == [] and hub.take_here_changes() == {X, Y}


def test_one_process_keeps_no_here_index() -> None:
    hub: Hub[str] = Hub()
    hub.attach(A, "a1")
    hub.finish_conversations_load(A, [X], keep=True)
    assert hub.here(X) == set() and hub.take_here_changes() == set()


def test_membership_cache_and_the_present_index() -> None:
    hub: Hub[str] = Hub()
    assert hub.members(X) is None and hub.is_member(A, X) is None
    hub.attach(A, "a1")
    assert hub.finish_conversations_load(A, [X], keep=True) == {X}
    assert hub.is_member(A, X) is True and hub.is_member(A, Y) is False  # told by her own set
    assert hub.online_contacts(A) == set()  # nobody else is present
    assert hub.set_members(X, [A, B]) == {A, B}
    hub.set_members(Y, [A, C])  # alice's set learns of Y as well
    assert hub.conversations(A) == {X, Y}
    assert hub.is_member(C, Y) is True and hub.is_member(B, Y) is None  # a yes from the member set only
    hub.attach(C, "c1")
    hub.finish_conversations_load(C, [Y], keep=True)
    assert hub.online_contacts(A) == {C} and hub.online_contacts(C) == {A}  # bob is not online
    hub.add_member(X, C)
    assert hub.members(X) == {A, B, C} and hub.online_contacts(A) == {C}
    hub.remove_member(Y, A)
    assert hub.conversations(A) == {X} and hub.online_contacts(C) == {A}  # still share X
    hub.remove_member(X, C)
    assert hub.online_contacts(A) == set() and hub.online_contacts(C) == set()
    hub.add_member(ConversationId(3), A)  # not cached: only the user's set changes
    hub.remove_member(ConversationId(4), B)  # unknown everywhere: nothing to do
    assert hub.conversations(A) == {X, ConversationId(3)}
    assert hub.conversations(B) is None
    assert hub.cached_members == 3 and hub.cached_conversations == 2  # X: alice, bob; Y: carol
    hub.forget(A)  # still online: kept
    assert hub.conversations(A) == {X, ConversationId(3)}
    hub.detach(A, "a1", grace_until=1.0)
    assert hub.expired_graces(now=1.0) == [A]
    hub.forget(A)  # offline: her set goes, and X's members with it: nobody present needs them
    assert hub.conversations(A) is None and hub.members(X) is None
    assert hub.members(Y) == {C}  # carol is still present in Y
    assert hub.finish_conversations_load(B, [X], keep=False) == {X}  # offline: returned, not kept
    assert hub.conversations(B) is None


def test_loads_apply_the_changes_made_while_they_waited() -> None:
    hub: Hub[str] = Hub()
    hub.attach(A, "a1")
    hub.begin_members_load(X)
    hub.begin_conversations_load(A)
    hub.remove_member(X, B)  # bob leaves while both loads read what was true before
    hub.add_member(X, C)
    hub.add_member(Y, A)
    hub.remove_member(ConversationId(3), A)
    assert hub.finish_members_load(X, [A, B]) == {A, C}  # the read began before the leave
    assert hub.members(X) == {A, C}
    assert hub.finish_conversations_load(A, [X, ConversationId(3)], keep=True) == {X, Y}
    hub.begin_members_load(Y)
    hub.set_members(Y, [A, B])  # created while loading: the cached copy is current
    assert hub.finish_members_load(Y, []) == {A, B}
    hub.begin_members_load(ConversationId(5))
    assert hub.finish_members_load(ConversationId(5), []) == set()  # no such conversation
    assert hub.members(ConversationId(5)) is None  # unknown ids do not grow the cache
    hub.begin_members_load(ConversationId(6))
    hub.abandon_members_load(ConversationId(6))  # failed: nothing recorded any more
    hub.add_member(ConversationId(6), B)
    assert hub.finish_members_load(ConversationId(6), [C]) == {C}
    hub.begin_conversations_load(B)
    hub.abandon_conversations_load(B)
    hub.add_member(X, B)
    assert hub.finish_conversations_load(B, [], keep=True) == set()
    hub.begin_conversations_load(A)
    assert hub.finish_conversations_load(A, [], keep=True) == {X, Y}  # already cached: kept as is


def test_member_cache_is_bounded_least_recently_used_first() -> None:
    hub: Hub[str] = Hub(max_cached_members=5)
    hub.set_members(X, [A, B])
    hub.set_members(Y, [A, C])
    assert hub.members(X) == {A, B}  # used: Y is now the oldest
    hub.set_members(ConversationId(3), [B, C])
    assert hub.members(Y) is None and hub.cached_members == 4
    big = [UserId(f"u{i}") for i in range(9)]
    hub.set_members(ConversationId(4), big)  # larger than the bound alone: kept, the rest go
    assert hub.cached_conversations == 1 and hub.cached_members == 9
    hub.remove_member(ConversationId(4), big[0])
    hub.add_member(ConversationId(4), big[0])
    hub.add_member(ConversationId(4), big[0])  # already in: counted once
    assert hub.cached_members == 9


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
    hub.forget_typing(before=1.95)  # Y's last (1.9) goes, X's (2.0) stays
    assert not hub.allow_typing(A, X, now=3.0, interval_s=2.0)  # kept: still throttles
    assert hub.allow_typing(A, Y, now=3.0, interval_s=2.0)  # forgotten state throttles nothing


def test_a_second_leave_of_the_same_user_changes_nothing() -> None:
    hub: Hub[str] = Hub()
    hub.attach(A, "a1")
    hub.finish_conversations_load(A, [X, Y], keep=True)  # A is the only one here in X
    hub.set_members(X, [A, B])
    hub.remove_member(X, A)
    hub.remove_member(X, A)  # two connections of A leaving at once: the second is a no-op
    assert hub.conversations(A) == {Y}
    assert hub.members(X) is None  # nobody here needs X any more: its members went too


def test_a_no_comes_only_from_the_askers_own_set() -> None:
    """How fast a stranger is refused must not tell whether a conversation is busy (its members
    cached): the answer depends on what is known of the asker alone."""
    hub: Hub[str] = Hub()
    hub.set_members(Y, [A, C])
    assert hub.is_member(B, Y) is None  # the members are cached, but they do not say no
    hub.attach(B, "b1")
    hub.finish_conversations_load(B, [X], keep=True)
    assert hub.is_member(B, Y) is False and hub.is_member(B, ConversationId(99)) is False


def test_reloading_a_users_conversations_corrects_every_cache() -> None:
    """What storage says wins over a cached set (one another instance sent, or one that missed
    a change): a conversation left is gone from every index, one joined is in them."""
    hub: Hub[str] = Hub(track_here=True)
    hub.attach(A, "a1")
    hub.finish_conversations_load(A, [X], keep=True)
    hub.set_members(X, [A, B])
    hub.take_here_changes()
    assert hub.reload_conversations(A, [Y]) == {Y}
    assert hub.is_member(A, X) is False and not hub.members(X)  # nobody present: dropped
    assert hub.here(Y) == {A} and hub.here(X) == set()
    assert hub.take_here_changes() == {X, Y}
    assert hub.reload_conversations(B, [X]) == {X}  # nothing cached: cached now


def test_attaching_a_connection_twice_keeps_it_once() -> None:
    hub: Hub[str] = Hub()
    assert hub.attach(A, "a1") is True
    assert hub.attach(A, "a1") is False
    assert hub.connections(A) == ("a1",) and hub.connection_count == 1
    assert hub.detach(A, "a1", grace_until=10.0) is True  # its only connection: it is gone


class Conn:
    """A connection handle: hashed and ordered by identity, as the server's sockets are."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def in_order(found: Sequence[Conn]) -> set[Conn]:
    """The connections found, checked to be in allocation (address) order."""
    assert list(found) == sorted(found, key=id)
    return set(found)


def group_hub(size: int, **options: Any) -> tuple[Hub[Conn], dict[UserId, Conn]]:
    hub: Hub[Conn] = Hub(**options)
    users = [UserId(f"u{i:03}") for i in range(size)]
    conns = {user: Conn(user) for user in reversed(users)}  # made in the reverse of the set's order
    for user, conn in conns.items():
        hub.attach(user, conn)
    hub.set_members(X, users)
    return hub, conns


def test_a_large_groups_connections_are_kept_in_the_order_they_were_made() -> None:
    hub, conns = group_hub(FANOUT_CACHE_MIN)
    found = hub.member_connections(X)
    assert set(found) == set(conns.values()) and len(found) == len(conns)
    assert found == sorted(found, key=id)
    assert hub.member_connections(X) is found  # kept
    assert hub.sizes()["hub_fanout_lists"] == 1
    assert hub.member_connections(Y) == []  # members not cached: nobody


def test_a_small_groups_connections_are_found_each_time() -> None:
    hub, conns = group_hub(FANOUT_CACHE_MIN - 1)
    found = hub.member_connections(X)
    assert set(found) == set(conns.values())
    assert hub.member_connections(X) is not found
    assert hub.sizes()["hub_fanout_lists"] == 0


def test_every_change_of_connections_or_members_shows_in_the_next_fanout() -> None:
    hub, conns = group_hub(FANOUT_CACHE_MIN + 4)
    users = list(conns)

    def now() -> set[Conn]:
        return in_order(hub.member_connections(X))

    expected = set(conns.values())
    assert now() == expected
    hub.remove_member(X, users[0])  # a leave
    expected.discard(conns[users[0]])
    assert now() == expected
    hub.attach(D, dave := Conn("dave"))  # a connection of someone outside: nothing changes...
    assert now() == expected
    hub.add_member(X, D)  # ...until they join
    expected.add(dave)
    assert now() == expected
    hub.attach(users[1], phone := Conn("phone"))  # a second device
    expected.add(phone)
    assert now() == expected
    hub.detach(users[1], phone, grace_until=1.0)
    expected.discard(phone)
    assert now() == expected
    hub.detach(users[2], conns[users[2]], grace_until=1.0)  # a last connection
    expected.discard(conns[users[2]])
    assert now() == expected
    hub.drop_cached_members()  # members must be loaded again: nobody until they are
    assert now() == set()
    hub.finish_members_load(X, [*users[3:], D])
    assert now() == expected - {conns[users[1]]}
    hub.set_members(X, users[1:])  # replaced whole
    assert now() == {conns[u] for u in users[1:]} - {conns[users[2]]}


def test_a_groups_kept_connections_go_with_its_members() -> None:
    """Evicted members (least recently used first) take the kept list with them."""
    hub, _ = group_hub(FANOUT_CACHE_MIN, max_cached_members=FANOUT_CACHE_MIN + 1)
    assert len(hub.member_connections(X)) == FANOUT_CACHE_MIN
    hub.set_members(Y, [A, B])  # over the bound: X's members go
    assert hub.members(X) is None
    assert hub.member_connections(X) == []
    assert hub.sizes()["hub_fanout_lists"] == 0


def test_kept_connections_are_bounded_in_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "FANOUT_CACHE_MAX", 2 * FANOUT_CACHE_MIN)
    hub, conns = group_hub(2 * FANOUT_CACHE_MIN)
    hub.set_members(Y, list(conns)[:FANOUT_CACHE_MIN])
    assert len(hub.member_connections(Y)) == FANOUT_CACHE_MIN
    assert len(hub.member_connections(X)) == 2 * FANOUT_CACHE_MIN  # over the bound: Y's list goes
    assert hub.sizes()["hub_fanout_lists"] == 1
    assert set(hub.member_connections(Y)) == {conns[u] for u in list(conns)[:FANOUT_CACHE_MIN]}


def test_kept_connections_are_gone_once_everyone_has_left() -> None:
    hub, conns = group_hub(FANOUT_CACHE_MIN)
    hub.member_connections(X)
    for user, conn in conns.items():
        hub.detach(user, conn, grace_until=0.0)
    assert hub.sizes()["hub_fanout_lists"] == 0


def test_a_cluster_instances_kept_connections_follow_every_change_here() -> None:
    """`here_connections`: the members connected here, their conversations loaded (no member
    set cached), kept from `FANOUT_CACHE_MIN` connections on."""
    hub: Hub[Conn] = Hub(track_here=True)
    users = [UserId(f"u{i:03}") for i in range(FANOUT_CACHE_MIN + 4)]
    conns = {user: Conn(user) for user in reversed(users)}
    for user, conn in conns.items():
        hub.attach(user, conn)
        hub.finish_conversations_load(user, [X], keep=True)
    assert hub.members(X) is None

    def now() -> set[Conn]:
        return in_order(hub.here_connections(X))

    expected = set(conns.values())
    assert now() == expected
    assert hub.here_connections(X) is hub.here_connections(X)  # kept
    assert hub.sizes()["hub_fanout_lists"] == 1
    hub.remove_member(X, users[0])  # a leave
    expected.discard(conns[users[0]])
    assert now() == expected
    hub.attach(D, dave := Conn("dave"))  # connected, conversations not loaded yet: not here...
    assert now() == expected
    hub.finish_conversations_load(D, [X], keep=True)  # ...until they are
    expected.add(dave)
    assert now() == expected
    hub.add_member(Y, users[1])  # another conversation: X's list is found again, the same
    assert now() == expected
    hub.attach(users[1], phone := Conn("phone"))  # a second device
    expected.add(phone)
    assert now() == expected
    hub.detach(users[1], phone, grace_until=1.0)
    expected.discard(phone)
    assert now() == expected
    hub.reload_conversations(users[2], [Y])  # storage says u002 left X
    expected.discard(conns[users[2]])
    assert now() == expected
    for user in users[1:]:
        hub.detach(user, conns[user], grace_until=1.0)
    assert now() == {dave}
    hub.detach(D, dave, grace_until=1.0)
    assert hub.sizes()["hub_fanout_lists"] == 0


def test_a_removal_being_stored_holds_for_every_load_that_begins_meanwhile() -> None:
    hub: Hub[str] = Hub()
    hub.remove_member(X, B)  # made in the cache; storage still lists B until it commits
    hub.hold_removal(X, B)
    hub.hold_removal(X, B)  # a second leave of B in flight (another device)
    hub.begin_members_load(X)
    assert hub.finish_members_load(X, [A, B, C]) == {A, C}  # read before the commit: B held out
    hub.drop_cached_members()
    hub.release_removal(X, B)
    hub.begin_members_load(X)  # the other leave still storing
    assert hub.finish_members_load(X, [A, B, C]) == {A, C}
    hub.hold_removal(X, C)  # another user leaving the same group
    hub.release_removal(X, B)
    hub.drop_cached_members()
    hub.begin_members_load(X)
    assert hub.finish_members_load(X, [A, B, C]) == {A, B}  # B stored; C still held out
    hub.release_removal(X, C)
    assert hub.sizes()["hub_removals_storing"] == 0
    hub.drop_cached_members()
    hub.begin_members_load(X)  # both stored (or undone): storage as it is
    assert hub.finish_members_load(X, [A, B, C]) == {A, B, C}


def test_a_removal_being_stored_holds_for_the_users_own_conversation_loads() -> None:
    """The same window from the user's side: their conversations read from storage while the
    removal is being stored (a connection opening, a cluster instance admitting one)."""
    hub: Hub[str] = Hub(track_here=True)
    hub.attach(B, "b1")
    hub.finish_conversations_load(B, [X, Y], keep=True)
    hub.remove_member(X, B)
    hub.hold_removal(X, B)
    assert hub.reload_conversations(B, [X, Y]) == {Y}  # storage still lists X: not taken back
    assert hub.here(X) == set() and hub.is_member(B, X) is False
    hub.forget(B)
    hub.detach(B, "b1", grace_until=0.0)
    hub.expired_graces(1.0)
    hub.forget(B)
    assert hub.reload_conversations(B, [X, Y]) == {Y}  # nothing cached: the same
    hub.forget(B)
    hub.begin_conversations_load(B)  # a plain load, begun while the removal is stored
    hub.release_removal(X, B)
    assert hub.finish_conversations_load(B, [X, Y], keep=False) == {Y}
    hub.begin_conversations_load(B)  # begun after: storage as it is
    assert hub.finish_conversations_load(B, [X, Y], keep=False) == {X, Y}
