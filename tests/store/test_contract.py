"""The storage contract, run against SQLite and Postgres alike, with real databases.

The concurrency tests use two store objects on one database: two connection pools (or two
SQLite connections on one file), as two server processes would have.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
import pytest

from sohbet.chat.ids import ConversationId, UserId
from sohbet.chat.model import NewMessage
from sohbet.store import (
    NO_SEQ,
    UNREAD_CAP,
    InstanceLocked,
    InvalidCursor,
    MessageStore,
    decode_cursor,
    encode_cursor,
    migrations,
)

from ..chatkit import open_store

Run = Callable[[Coroutine[Any, Any, Any]], Any]
A, B, C = UserId("alice"), UserId("bob"), UserId("carol")


def msg(cid: ConversationId, sender: UserId, client_id: str, content: str = "x") -> NewMessage:
    return NewMessage(cid, sender, client_id, content)


async def with_store(url: str, body: Callable[[MessageStore], Coroutine[Any, Any, None]]) -> None:
    store = await open_store(url)
    try:
        await body(store)
    finally:
        await store.close()


def test_append_assigns_consecutive_seqs_and_dedupes(run: Run, database_url: str) -> None:
    async def body(store: MessageStore) -> None:
        direct, joined = await store.create_conversation([A, B], None, "direct", 1000)
        assert joined == [A, B] and direct.kind == "direct" and direct.members == [A, B] and direct.last_seq == 0
        other, _ = await store.create_conversation([A, B, C], "trio", "group", 1000)
        batch = [
            msg(direct.id, A, "1"),
            msg(other.id, A, "2"),
            msg(direct.id, B, "1"),  # same client id, another sender: a new message
            msg(direct.id, A, "1", "retry in the same batch"),
            msg(direct.id, A, "3"),
        ]
        stored = await store.append(batch, 5000)
        d, o = direct.id, other.id
        expected = [(d, 1, True), (o, 1, True), (d, 2, True), (d, 1, False), (d, 3, True)]
        assert [(s.conversation_id, s.seq, s.is_new) for s in stored] == expected
        assert stored[3] == stored[0]._replace(is_new=False)
        assert all(s.created_at_ms == 5000 for s in stored)
        again = await store.append([msg(other.id, A, "1", "different content elsewhere")], 6000)
        assert again[0] == stored[0]._replace(is_new=False)  # unique across conversations, forever
        assert await store.find_message(A, "2") == stored[1]._replace(is_new=False)
        assert await store.find_message(A, "nope") is None
        assert await store.last_seqs([direct.id, other.id, ConversationId(999)]) == {direct.id: 3, other.id: 1}

    run(with_store(database_url, body))


def test_append_refuses_a_sender_who_is_not_a_member_when_it_commits(run: Run, database_url: str) -> None:
    async def body(store: MessageStore) -> None:
        group, _ = await store.create_conversation([A, B, C], "trio", "group", 0)
        await store.append([msg(group.id, B, "before")], 1)
        assert await store.remove_member(group.id, B)  # B left after the service accepted his send
        stored = await store.append([msg(group.id, B, "after"), msg(group.id, A, "a")], 2)
        assert stored[0] is None
        assert stored[1] is not None and stored[1].seq == 2  # the refused one burnt no seq
        assert await store.append([msg(ConversationId(424242), A, "nowhere")], 2) == [None]
        assert await store.find_message(B, "after") is None
        assert await store.last_seqs([group.id]) == {group.id: 2}

    run(with_store(database_url, body))


def test_a_refused_send_before_a_stored_one_of_the_same_pair_is_refused(run: Run, database_url: str) -> None:
    """One client_id sent first where its sender is not a member, then where it is: the first
    is refused (not acked as the second), the second stored."""

    async def body(store: MessageStore) -> None:
        theirs, _ = await store.create_conversation([B, C], "not A's", "group", 0)
        mine, _ = await store.create_conversation([A, B], "A's", "group", 0)
        refused, stored, again = await store.append(
            [msg(theirs.id, A, "same"), msg(mine.id, A, "same"), msg(theirs.id, A, "same")], 1
        )
        assert refused is None
        assert stored is not None and stored.is_new and stored.conversation_id == mine.id and stored.seq == 1
        assert again == stored._replace(is_new=False)  # after it: a repeat of the stored one

    run(with_store(database_url, body))


def test_two_writers_on_one_database_never_gap_or_repeat(run: Run, database_url: str) -> None:
    async def body(first: MessageStore) -> None:
        second = await open_store(database_url) if database_url.startswith("sqlite") else None
        if second is None:  # Postgres: a second pool, without truncating what the first made
            from sohbet.store.postgres import PostgresStore  # noqa: PLC0415

            second = PostgresStore(database_url)
        try:
            conversation, _ = await first.create_conversation([A, B], None, "direct", 0)
            cid = conversation.id

            async def writer(store: MessageStore, tag: str) -> list[int]:
                seqs: list[int] = []
                for i in range(20):
                    batch = [msg(cid, A, f"{tag}-{i}-{j}") for j in range(5)]
                    seqs += [s.seq for s in await store.append(batch, i)]
                return seqs

            results = await asyncio.gather(*(writer(s, f"w{n}") for n, s in enumerate([first, second] * 4)))
            seqs = sorted(s for r in results for s in r)
            assert seqs == list(range(1, 801))
            # A retry racing between the two: exactly one stores it.
            race = await asyncio.gather(first.append([msg(cid, B, "dup")], 1), second.append([msg(cid, B, "dup")], 1))
            assert sorted(r[0].is_new for r in race) == [False, True]
            assert race[0][0].seq == race[1][0].seq == 801
        finally:
            await second.close()

    run(with_store(database_url, body))


def test_writers_whose_batches_cross_conversations_in_opposite_orders_never_deadlock(
    run: Run, database_url: str
) -> None:
    """Each batch locks every conversation it writes to; taken in batch order, two batches
    naming the same conversations in opposite orders would each hold what the other waits for."""

    async def body(first: MessageStore) -> None:
        second = await open_store(database_url) if database_url.startswith("sqlite") else None
        if second is None:
            from sohbet.store.postgres import PostgresStore  # noqa: PLC0415

            second = PostgresStore(database_url)
        try:
            made = [await first.create_conversation([A, UserId(f"u{i}")], f"g{i}", "group", 0) for i in range(8)]
            cids = [conversation.id for conversation, _ in made]

            async def writer(store: MessageStore, tag: str, order: list[ConversationId]) -> None:
                for i in range(15):
                    stored = await store.append([msg(cid, A, f"{tag}-{i}-{cid}") for cid in order], i)
                    assert all(s is not None and s.is_new for s in stored)

            orders = [cids, cids[::-1]]
            await asyncio.gather(*(writer(s, f"w{n}", orders[n % 2]) for n, s in enumerate([first, second] * 3)))
            assert await first.last_seqs(cids) == dict.fromkeys(cids, 6 * 15)  # each stored once, no gap
        finally:
            await second.close()

    run(with_store(database_url, body))


def odd_texts() -> list[str]:
    """Texts whose characters a store's encoding could change (JSON and SQL escapes, every control
    character U+0000 aside, the line separators JSON and JavaScript disagree on, non-BMP), and a
    spread of code points from every plane (seeded: the same every run)."""
    rng = random.Random(9)
    planes = [(0x20, 0xD7FF), (0xE000, 0xFFFD), (0x10000, 0x10FFFF)]
    spread = ["".join(chr(rng.randint(*rng.choice(planes))) for _ in range(40)) for _ in range(8)]
    return [
        "".join(map(chr, range(1, 32))) + "\x7f",
        'quotes " \' ` and backslashes \\ \\\\ and a JSON escape as text: \\u0041 \\n \\"',
        "$1 ' OR 1=1 -- ; {} [] , :: ->> \u2028 \u2029 \u200f \ufeff",
        "emoji \U0001f600 flags \U0001f1f9\U0001f1f7 combining e\u0301 CJK \u6f22\u5b57 \U00010348",
        "y" * 4000,
        *spread,
    ]


def test_text_is_stored_exactly_as_given(run: Run, database_url: str) -> None:
    """Content, client ids and user ids come back byte for byte: from the append, from history
    and from the lookup of a retry."""
    texts = odd_texts()
    sender = UserId("\"'\\ \u2028\U0001f600 \x01")

    async def body(store: MessageStore) -> None:
        group, _ = await store.create_conversation([sender, B], "odd", "group", 1000)
        batch = [msg(group.id, sender, text[:128], text) for text in texts]
        stored = await store.append(batch, 5000)
        assert [(s.sender_id, s.client_id, s.content, s.is_new) for s in stored] == [
            (sender, m.client_id, m.content, True) for m in batch
        ]
        history, _ = await store.history(group.id, None, 100)
        assert [(s.sender_id, s.client_id, s.content) for s in history] == [
            (sender, m.client_id, m.content) for m in batch
        ]
        for m, s in zip(batch, stored, strict=True):
            assert await store.find_message(sender, m.client_id) == s._replace(is_new=False)

    run(with_store(database_url, body))


def test_direct_conversations_are_unique_per_pair(run: Run, database_url: str) -> None:
    async def body(store: MessageStore) -> None:
        first, joined = await store.create_conversation([A, B], "ignored", "direct", 0)
        again, joined_again = await store.create_conversation([B, A], None, "direct", 0)
        assert joined == [A, B] and joined_again == [] and first.id == again.id and first.title is None
        racing = await asyncio.gather(*(store.create_conversation([A, C], None, "direct", 0) for _ in range(5)))
        assert len({c.id for c, _ in racing}) == 1 and [j for _, j in racing if j] == [[A, C]]
        assert await store.remove_member(first.id, B)
        back, rejoined = await store.create_conversation([A, B], None, "direct", 0)
        assert back.id == first.id and rejoined == [B] and back.member_count == 2

    run(with_store(database_url, body))


def test_members_paging_and_changes(run: Run, database_url: str) -> None:
    async def body(store: MessageStore) -> None:
        users = [UserId(f"u{i:03}") for i in range(150)]
        group, _ = await store.create_conversation([*users, users[0]], "big", "group", 0)
        assert group.member_count == 150 and group.members == users[:100]
        page, cursor = await store.members_page(group.id, None, 100)
        rest, end = await store.members_page(group.id, cursor, 100)
        assert page + rest == users and end is None
        assert await store.add_member(group.id, A, 1) is True
        assert await store.add_member(group.id, A, 1) is False
        assert await store.remove_member(group.id, users[0]) is True
        assert await store.remove_member(group.id, users[0]) is False
        found = await store.conversation(group.id)
        assert found is not None and found.member_count == 150
        assert set(await store.members(group.id)) == {*users[1:], A}
        direct, _ = await store.create_conversation([A, B], None, "direct", 0)
        loaded = await store.members_of([group.id, direct.id, ConversationId(424242)])
        assert {cid: set(found) for cid, found in loaded.items()} == {
            group.id: {*users[1:], A},
            direct.id: {A, B},
        }
        assert group.id in await store.conversation_ids(A)
        assert await store.conversation(ConversationId(424242)) is None

    run(with_store(database_url, body))


def test_history_after_and_read_positions(run: Run, database_url: str) -> None:
    async def body(store: MessageStore) -> None:
        conversation, _ = await store.create_conversation([A, B], None, "direct", 0)
        cid = conversation.id
        await store.append([msg(cid, A, str(i), f"m{i}") for i in range(1, 8)], 10)
        page, more = await store.history(cid, None, 3)
        assert [m.seq for m in page] == [5, 6, 7] and more
        page, more = await store.history(cid, 2, 3)
        assert [m.seq for m in page] == [1] and not more
        assert await store.history(cid, 0, 3) == ([], False)  # below every seq: not "no before_seq"
        nothing = ConversationId(0)  # a request may name it; no conversation has it
        assert await store.history(nothing, None, 3) == ([], False)
        assert await store.last_seqs([nothing]) == {} and await store.conversation(nothing) is None
        other, _ = await store.create_conversation([A, C], None, "direct", 0)
        await store.append([msg(other.id, A, f"o{i}") for i in range(3)], 10)
        spans = [(other.id, 1, 3), (cid, 4, 6), (ConversationId(424242), 0, 5), (cid, 0, 1)]
        between = [(m.conversation_id, m.seq) for m in await store.messages_between(spans)]
        assert between == [(other.id, 2), (other.id, 3), (cid, 5), (cid, 6), (cid, 1)]  # span order, then seq
        assert await store.messages_between([]) == []
        assert await store.mark_read(cid, B, 99) == 7  # clamped to the last seq
        assert await store.mark_read(cid, B, 3) is None  # never backwards
        assert await store.mark_read(cid, C, 3) is None  # not a member
        unread_for_a = await store.conversation(cid, A)
        assert unread_for_a is not None and unread_for_a.unread == 0  # own messages never count
        await store.append([msg(cid, A, "8")], 11)
        unread_for_b = await store.conversation(cid, B)
        assert unread_for_b is not None and unread_for_b.unread == 1
        await store.append([msg(cid, A, f"more{i}") for i in range(UNREAD_CAP + 5)], 12)
        capped = (await store.list_conversations(B, None, 10)).conversations
        assert [c.unread for c in capped if c.id == cid] == [100]  # docs/protocol.md: counted up to 100

    run(with_store(database_url, body))


def test_list_pages_by_activity(run: Run, database_url: str) -> None:
    async def body(store: MessageStore) -> None:
        made = [(await store.create_conversation([A, UserId(f"p{i}")], None, "direct", i))[0] for i in range(5)]
        await store.append([msg(made[1].id, A, "late")], 100)
        first = await store.list_conversations(A, None, 2)
        assert [c.id for c in first.conversations] == [made[1].id, made[4].id]
        second = await store.list_conversations(A, first.next_cursor, 2)
        assert [c.id for c in second.conversations] == [made[3].id, made[2].id]
        third = await store.list_conversations(A, second.next_cursor, 2)
        assert [c.id for c in third.conversations] == [made[0].id] and third.next_cursor is None
        for garbage in ("garbage", "\u00b2.\u00b2", "99999999999999999999999.1", "1.2.3", ".", "", "1." + "9" * 40):
            with pytest.raises(InvalidCursor):
                await store.list_conversations(A, garbage, 2)

    run(with_store(database_url, body))


def test_migrations_are_idempotent(run: Run, database_url: str) -> None:
    async def body(store: MessageStore) -> None:
        await asyncio.gather(store.migrate(), store.migrate())
        await store.ping()

    run(with_store(database_url, body))


def test_one_store_at_a_time_holds_the_instance_lock(run: Run, database_url: str) -> None:
    async def main() -> None:
        first, second = await open_store(database_url), await open_store(database_url)
        try:
            await first.lock_instance()
            with pytest.raises(InstanceLocked):
                await second.lock_instance()
            await first.close()  # the lock goes with the store that held it
            await second.lock_instance()
        finally:
            await second.close()

    run(main())


def test_the_instances_of_a_cluster_share_the_lock_and_keep_a_lone_server_out(run: Run, database_url: str) -> None:
    async def main() -> None:
        a, b, lone, late = [await open_store(database_url) for _ in range(4)]
        try:
            await a.lock_instance(shared=True)
            await b.lock_instance(shared=True)  # a second instance of the cluster
            with pytest.raises(InstanceLocked):
                await lone.lock_instance()  # a server without Redis would not hear of their changes
            await a.close()
            await b.close()
            await lone.lock_instance()
            with pytest.raises(InstanceLocked):  # and the other way round
                await late.lock_instance(shared=True)
        finally:
            for store in (a, b, lone, late):
                await store.close()

    run(main())


def test_cursors_reach_the_highest_value_every_database_stores() -> None:
    assert decode_cursor(encode_cursor(NO_SEQ, NO_SEQ)) == (NO_SEQ, NO_SEQ)
    assert decode_cursor(encode_cursor(0, 7)) == (0, 7)
    with pytest.raises(InvalidCursor):
        decode_cursor(encode_cursor(NO_SEQ + 1, 7))


def test_stores_migrating_a_fresh_postgres_database_together_apply_each_migration_once(run: Run) -> None:
    """Instances of a cluster start together on an empty database: their migrations queue on an
    advisory lock, so each runs once and none fails on another's half-made table."""
    from sohbet.store.postgres import PostgresStore  # noqa: PLC0415

    from ..conftest import POSTGRES_URL, pg_admin  # noqa: PLC0415

    async def main() -> None:
        name = f"sohbet_migrate_{uuid.uuid4().hex[:8]}"
        await pg_admin(f'CREATE DATABASE "{name}"')
        url = f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"
        stores = [PostgresStore(url, pool_size=1) for _ in range(6)]
        try:
            await asyncio.gather(*(store.migrate() for store in stores))
            con = await asyncpg.connect(url)
            try:
                versions = [r["version"] for r in await con.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
            finally:
                await con.close()
            assert versions == [v for v, _ in migrations("postgres")]
        finally:
            for store in stores:
                await store.close()
            await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    run(main())


def test_every_change_of_membership_is_logged_in_order(run: Run, database_url: str) -> None:
    """What a cluster's instances read to catch changes nobody told them of (docs/cluster.md):
    creations, additions and removals, by whatever statement made them."""

    async def body(store: MessageStore) -> None:
        start = await store.membership_log_end()
        group, _ = await store.create_conversation([A, B], "log", "group", 0)
        await store.add_member(group.id, C, 0)
        await store.remove_member(group.id, A)
        await store.add_member(group.id, C, 0)  # already in: nothing changes, nothing logged
        changes = await store.membership_changes(start, 100)
        assert [(c.conversation, c.user, c.joined) for c in changes] == [
            (group.id, A, True),
            (group.id, B, True),
            (group.id, C, True),
            (group.id, A, False),
        ] or [(c.conversation, c.user, c.joined) for c in changes] == [
            (group.id, B, True),
            (group.id, A, True),
            (group.id, C, True),
            (group.id, A, False),
        ]
        ids = [c.id for c in changes]
        assert ids == sorted(ids) and ids[0] > start
        assert await store.membership_log_end() == ids[-1]
        assert [c.id for c in await store.membership_changes(ids[1], 2)] == ids[2:4]
        assert await store.prune_membership_log(3600) == 0  # all younger than an hour
        assert await store.prune_membership_log(-1) >= 4  # "older than a second from now": all
        assert await store.membership_changes(start, 100) == []

    run(with_store(database_url, body))
