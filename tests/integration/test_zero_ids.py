"""0 as an id and as a seq, over a real socket (PROTOCOL.md, "Messages": seqs and ids are integers
from 0 to 2^53 - 1), on SQLite and on Postgres.

No conversation has id 0 and no message has seq 0 (both count from 1), so 0 is well-formed and
names nothing: a request naming conversation 0 gets what one naming a conversation the user is
not in gets (`forbidden`: nobody learns which exist), `sync` lists it in `forbidden`, and
`before_seq: 0` asks for the messages below every seq, which are none. The HTTP API's side is in
tests/api/test_http_api.py.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from ..chatkit import chat_server

Run = Callable[[Coroutine[Any, Any, Any]], Any]


def test_conversation_zero_is_answered_as_one_the_user_is_not_in(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice, bob = await h.connect("alice"), await h.connect("bob")
            others = await bob.create("carol")  # exists, and is not alice's
            for target in (others, 0):
                named = {"conversation_id": target}
                for kind, payload in [
                    ("chat:send", {**named, "content": "x", "client_id": f"to-{target}"}),
                    ("chat:typing", named),  # no reply unless it fails: this one does
                    ("chat:read", {**named, "seq": 0}),
                    ("chat:history", {**named, "before_seq": 0}),
                    ("conversation:members", named),
                    ("conversation:leave", named),
                ]:
                    reply = await alice.request(kind, payload)
                    assert (reply["type"], reply["payload"]["code"]) == ("error", "forbidden"), (target, kind, reply)
            # Nothing was stored for conversation 0: its client_id is still free.
            mine = await alice.create("bob")
            message = await alice.send(mine, "first", client_id="to-0")
            assert (message["conversation_id"], message["seq"], message["content"]) == (mine, 1, "first")

    run(main())


def test_before_seq_zero_is_an_empty_page(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            cid = await alice.create("bob")
            for n in range(3):
                await alice.send(cid, f"m{n}")
            # Below every seq: nothing, and nothing older. Not "no before_seq", which is all three.
            page = await alice.ok("chat:history", {"conversation_id": cid, "before_seq": 0})
            assert page == {"conversation_id": cid, "messages": [], "has_more": False}
            assert await alice.ok("chat:history", {"conversation_id": cid, "before_seq": 1}) == page
            whole = await alice.ok("chat:history", {"conversation_id": cid})
            assert [m["seq"] for m in whole["messages"]] == [1, 2, 3]

    run(main())


def test_a_sync_cursor_for_conversation_zero_is_forbidden(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            cid = await alice.create("bob")
            await alice.send(cid, "seen")
            reply = await alice.request("sync", {"cursors": {"0": 0, str(cid): 1}})
            assert reply["type"] == "sync:done", reply
            assert reply["payload"] == {"conversations": {str(cid): 1}, "forbidden": [0], "complete": True}
            assert [m for m in alice.backlog if m["type"] == "chat:message"] == []  # nothing to replay

    run(main())
