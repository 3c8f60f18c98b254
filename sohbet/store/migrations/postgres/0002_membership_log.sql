-- sohbet schema, version 2 (PostgreSQL): every change of membership, written by the transaction
-- that made it. The instances of a cluster tell each other of changes through Redis, which is
-- at-most-once; each instance also reads this log every second, so a change nobody heard of
-- (Redis down, an instance killed between its commit and its publish) still reaches every
-- instance's cache. Only adds: the previous release ignores it (docs/cluster.md, rolling deploys).
CREATE TABLE membership_log (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    joined BOOLEAN NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX membership_log_by_time ON membership_log (at);

CREATE FUNCTION sohbet_log_membership() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO membership_log (conversation_id, user_id, joined) VALUES (NEW.conversation_id, NEW.user_id, TRUE);
    ELSE
        INSERT INTO membership_log (conversation_id, user_id, joined) VALUES (OLD.conversation_id, OLD.user_id, FALSE);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER members_logged AFTER INSERT OR DELETE ON members
    FOR EACH ROW EXECUTE FUNCTION sohbet_log_membership();
