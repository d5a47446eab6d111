-- pcq's state in PostgreSQL, version 1: what the SQLite store holds.
-- Times are microseconds since the Unix epoch; states, reasons and pending
-- work are the names pcq writes (scheduler/src/daemon/store/row.rs).
CREATE TABLE nodes (
    certname           text PRIMARY KEY,
    environment        text NOT NULL,
    state              text NOT NULL,
    reason             text NOT NULL,
    since_us           bigint NOT NULL,
    pending            text NOT NULL,
    pending_since_us   bigint NOT NULL,
    last_compile_us    bigint,
    failures           bigint NOT NULL,
    catalog_hash       text,
    catalog_changed_us bigint,
    facts_hash         text,
    last_error         text
);
CREATE TABLE facts (
    certname    text PRIMARY KEY,
    values_json bytea NOT NULL,
    updated_us  bigint NOT NULL
);
CREATE TABLE exports (
    certname        text NOT NULL,
    type            text NOT NULL,
    title           text NOT NULL,
    parameters_hash text NOT NULL,
    PRIMARY KEY (certname, type, title)
);
