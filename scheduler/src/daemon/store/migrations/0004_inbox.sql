-- Version 4: facts uploads a standby took, for the leader to act on. The
-- table is the durable record (an upload is acknowledged once its row is
-- committed); NOTIFY pcq_inbox wakes the leader at once. The leader takes
-- each row through its own upload path and deletes it once that path has
-- committed the facts, so a leader dying in between acts on it again
-- (the same facts: unchanged) rather than lose it.
CREATE TABLE pcq_inbox (
    id          bigserial PRIMARY KEY,
    certname    text NOT NULL,
    environment text,
    values_json bytea NOT NULL,
    received_us bigint NOT NULL
);
