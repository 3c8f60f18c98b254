-- sohbet schema, version 1 (SQLite). Never edited once released: later changes are new files.
CREATE TABLE conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    title TEXT,
    direct_key TEXT UNIQUE,                 -- makes a direct conversation unique per pair
    last_seq INTEGER NOT NULL DEFAULT 0,    -- seqs are allocated from here, inside the insert's transaction
    member_count INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL,
    last_activity_ms INTEGER NOT NULL
);

CREATE TABLE members (
    conversation_id INTEGER NOT NULL REFERENCES conversations (id),
    user_id TEXT NOT NULL,
    read_seq INTEGER NOT NULL DEFAULT 0,
    joined_at_ms INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;

CREATE INDEX members_by_user ON members (user_id, conversation_id);

-- No foreign key from messages to conversations: a message is only ever inserted by the
-- statement that locked its conversation row, and the check cost a quarter of the insert's time.
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    sender_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    content TEXT,                           -- NULL once erased by a deletion (a later step)
    created_at_ms INTEGER NOT NULL,
    edited_at_ms INTEGER,                   -- set by an edit (a later step)
    deleted_at_ms INTEGER,                  -- set by a deletion (a later step)
    UNIQUE (conversation_id, seq),
    UNIQUE (sender_id, client_id)           -- idempotent retries, across all conversations, forever
);
