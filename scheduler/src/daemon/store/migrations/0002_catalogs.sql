-- Version 2: the last good catalogs in the database, so that any pcq serve
-- on it can serve any node. `body` is the catalog JSON compressed with
-- zstd; `hash` is its canonical hash (the ETag), written in the same
-- transaction as nodes.catalog_hash. Already compressed: PostgreSQL stores
-- it out of line without compressing it again.
CREATE TABLE catalogs (
    certname  text PRIMARY KEY,
    hash      text NOT NULL,
    body      bytea NOT NULL,
    stored_us bigint NOT NULL
);
ALTER TABLE catalogs ALTER COLUMN body SET STORAGE EXTERNAL;
