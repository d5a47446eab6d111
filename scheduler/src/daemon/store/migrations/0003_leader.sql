-- Version 3: who leads. One row: the leader's epoch (raised by each new
-- leader), who it is, since when, and how long its lease runs (the
-- database's clock, so hosts' clocks need not agree). Every write the
-- leader commits first extends the lease where the epoch is still its
-- own; a leader whose epoch moved on writes nothing more.
CREATE TABLE pcq_leader (
    id          integer PRIMARY KEY CHECK (id = 1),
    epoch       bigint NOT NULL,
    holder      text NOT NULL,
    since       timestamptz NOT NULL,
    lease_until timestamptz NOT NULL
);
INSERT INTO pcq_leader VALUES (1, 0, '', now(), '-infinity');
