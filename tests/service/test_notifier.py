"""Who the webhook is told about: each new message's members with no open connection anywhere,
never the sender, never twice for a retry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sohbet.chat.ids import UserId

from .conftest import run, world


class Recorder:
    """A notifier that keeps what it was told (the real one posts it to the application)."""

    def __init__(self) -> None:
        self.told: list[tuple[list[UserId], dict[str, Any]]] = []

    def notify(self, recipients: list[UserId], message: dict[str, Any]) -> None:
        self.told.append((recipients, message))


def test_the_members_without_a_connection_are_told_of_each_new_message(tmp_path: Path) -> None:
    async def main() -> None:
        recorder = Recorder()
        async with world(tmp_path, notifier=recorder, presence_grace_s=60.0) as w:
            alice, bob = w.connect("alice"), w.connect("bob")
            carol = w.connect("carol")
            cid = await w.conversation(alice, "bob", "carol", "dave")
            carol.disconnect()  # in her grace period: online, but with no connection to deliver to
            ack = await alice.ok("chat:send", {"conversation_id": cid, "content": "hi", "client_id": "m1"})
            assert len(recorder.told) == 1 and recorder.told[0][1] == ack["message"]
            assert sorted(recorder.told[0][0]) == ["carol", "dave"]  # bob is connected, alice sent it
            await alice.ok("chat:send", {"conversation_id": cid, "content": "again", "client_id": "m1"})
            assert len(recorder.told) == 1  # a retry delivers nothing, and tells nobody
            alice.disconnect()
            await bob.ok("chat:send", {"conversation_id": cid, "content": "bye", "client_id": "m2"})
            assert sorted(recorder.told[1][0]) == ["alice", "carol", "dave"]  # not bob: he sent it
            w.connect("alice")
            w.connect("dave")
            await w.settle()
            await bob.ok("chat:send", {"conversation_id": cid, "content": "all here", "client_id": "m3"})
            assert recorder.told[2][0] == ["carol"]

    run(main())


def test_nobody_is_told_when_everyone_is_connected(tmp_path: Path) -> None:
    async def main() -> None:
        recorder = Recorder()
        async with world(tmp_path, notifier=recorder) as w:
            alice, _bob = w.connect("alice"), w.connect("bob")
            cid = await w.conversation(alice, "bob")
            await alice.ok("chat:send", {"conversation_id": cid, "content": "hi", "client_id": "m1"})
            assert recorder.told == []

    run(main())
