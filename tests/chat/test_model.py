"""The model's records made in C (`maker`) are the records their constructors make."""

from __future__ import annotations

from sohbet.chat.ids import ConversationId, MessageId, UserId
from sohbet.chat.model import NewMessage, StoredMessage, make_new_message, make_stored_message


def test_made_records_are_the_constructors_records() -> None:
    new = make_new_message((ConversationId(1), UserId("u"), "c", "hi"))
    assert type(new) is NewMessage and new == NewMessage(ConversationId(1), UserId("u"), "c", "hi")
    assert (new.conversation_id, new.sender_id, new.client_id, new.content) == (1, "u", "c", "hi")
    fields = (MessageId(7), ConversationId(1), 3, UserId("u"), "hi", "c", 5000, False)
    stored = make_stored_message(fields)
    assert type(stored) is StoredMessage and stored == StoredMessage(*fields)
    assert (stored.id, stored.seq, stored.created_at_ms, stored.is_new) == (7, 3, 5000, False)
    assert stored._replace(is_new=True).is_new is True
