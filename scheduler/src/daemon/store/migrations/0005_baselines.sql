-- Version 5: each environment's code baseline, the snapshot of the code
-- its last deploy was decided on (zstd-compressed JSON). The next deploy
-- is diffed against it, by whichever pcq leads then: kept here rather
-- than in one daemon's state directory, so a new leader neither loses it
-- (a deploy would move every node) nor reads an older one of its own (a
-- reverted file would go unseen). Written in the same transaction as the
-- nodes the deploy moved.
CREATE TABLE baselines (
    environment text PRIMARY KEY,
    snapshot    bytea NOT NULL
);
