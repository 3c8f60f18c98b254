"""An HTTP API call as the service sees it: a session without a socket, answered once."""

from __future__ import annotations

import asyncio

from sohbet.chat.ids import UserId
from sohbet.chat.wire import EventType
from sohbet.service.session import NO_SOCKET, Call


def test_a_call_has_no_socket_to_write_to_or_close() -> None:
    async def main() -> None:
        call = Call(UserId("alice"))
        NO_SOCKET.send_text(b"{}")  # nowhere to go: a call's answers go to `answered`
        NO_SOCKET.close(1008, "too many errors")  # nothing to close
        await asyncio.wait_for(NO_SOCKET.drained(), 1.0)  # never full
        assert call.socket is NO_SOCKET and not call.answered.done()
        call.answer(EventType.LIST, {"conversations": []}, None)
        call.answer(EventType.ERROR, {"code": "internal"}, None)  # a second answer changes nothing
        assert call.answered.result() == (EventType.LIST, {"conversations": []})
        assert call.limited and not Call(UserId("alice"), limited=False).limited

    asyncio.run(main())
