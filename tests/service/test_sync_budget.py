"""`sync` does bounded work: conversations the client did not name count against the call's
budget, the replay reads storage a chunk at a time, and it stops once the connection closes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sohbet.service import sync

from .conftest import run, world


class CountingStore:
    """The service's real store, counting the statements that read messages for a replay."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def messages_between(self, spans: Any) -> Any:
        self.reads += 1
        return await self._store.messages_between(spans)


def test_unnamed_conversations_spend_the_budget_of_the_call(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, sync_per_call=5, sync_unnamed=3, create_rate_per_s=0) as w:
            alice, bob = w.connect("alice"), w.connect("bob")
            rooms = [await w.conversation(alice, "bob", f"c{i}") for i in range(3)]
            for room in rooms:
                for i in range(3):
                    await alice.ok("chat:send", {"conversation_id": room, "content": "x", "client_id": f"{room}-{i}"})
            bob.socket.sent.clear()
            done = await bob.request("sync", {"cursors": {}})
            replayed = [m["payload"]["message"] for m in bob.socket.of_type("chat:message")]
            assert len(replayed) == 5  # 3 + 2: the budget, not 3 per conversation
            assert done["payload"]["complete"] is True  # unnamed ones never make it false
            assert done["payload"]["conversations"] == {str(room): 3 for room in rooms}

    run(main())


def test_a_replay_reads_in_chunks_and_stops_when_the_connection_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync, "_READ_CHUNK", 2)

    async def main() -> None:
        async with world(tmp_path, send_rate_per_s=0) as w:
            alice, bob = w.connect("alice"), w.connect("bob")
            room = await w.conversation(alice, "bob")
            for i in range(7):
                await alice.ok("chat:send", {"conversation_id": room, "content": "x", "client_id": f"m{i}"})
            counting = CountingStore(w.service.ctx.store)
            w.service.ctx.store = counting
            bob.socket.sent.clear()  # what arrived live
            done = await bob.request("sync", {"cursors": {str(room): 0}})
            assert [m["payload"]["message"]["seq"] for m in bob.socket.of_type("chat:message")] == list(range(1, 8))
            assert counting.reads == 4 and done["payload"]["complete"] is True  # 2 + 2 + 2 + 1

            carol = w.connect("bob")
            counting.reads = 0
            sent = carol.socket.send_text

            def close_at_the_end_of_a_chunk(data: str | bytes) -> None:
                sent(data)
                if len(carol.socket.of_type("chat:message")) == 2:
                    carol.disconnect()

            carol.socket.send_text = close_at_the_end_of_a_chunk  # type: ignore[method-assign]
            carol.send("sync", {"cursors": {str(room): 0}}, ref="gone")
            await w.settle()
            assert len(carol.socket.of_type("chat:message")) == 2
            assert counting.reads == 1  # stopped: no further chunk was read
            assert carol.socket.of_type("sync:done") == []

    run(main())
