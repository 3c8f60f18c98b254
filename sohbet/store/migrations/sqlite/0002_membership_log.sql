-- sohbet schema, version 2 (SQLite): every change of membership, written by the transaction that
-- made it (see the PostgreSQL script: what a cluster's instances read to keep their caches right;
-- a single process has none to keep, but both stores keep the same contract).
CREATE TABLE membership_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    joined INTEGER NOT NULL,
    at_ms INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);

CREATE TRIGGER members_joined AFTER INSERT ON members BEGIN
    INSERT INTO membership_log (conversation_id, user_id, joined) VALUES (NEW.conversation_id, NEW.user_id, 1);
END;

CREATE TRIGGER members_left AFTER DELETE ON members BEGIN
    INSERT INTO membership_log (conversation_id, user_id, joined) VALUES (OLD.conversation_id, OLD.user_id, 0);
END;
