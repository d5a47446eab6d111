-- Version 6: bumps and deploys a standby took, for the leader to act on.
-- The standby commits the row (and NOTIFY pcq_inbox wakes the leader),
-- then waits for the leader's answer in the row: the same answer (a bump's
-- result, a deploy's report, or the refusal) the leader gives its own
-- callers. A row the standby stopped waiting for stays until the leader
-- has answered it, and a while after: a request is never lost, and a
-- deploy hook may run on any master.
CREATE TABLE pcq_requests (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('bump', 'deploy')),
    target      text NOT NULL,
    new         boolean NOT NULL DEFAULT false,
    received_us bigint NOT NULL,
    answer      text
);
