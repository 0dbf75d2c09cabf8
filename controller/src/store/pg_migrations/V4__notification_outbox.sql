-- The notification outbox: one row per (notice, sink), written in the same transaction as the
-- incident or deployment event it tells of, delivered by whichever controller claims it (a lease:
-- lease_owner until lease_until_ms, by the database's clock). state: 0 pending, 1 delivered,
-- 2 failed.
CREATE TABLE rampart_controller.outbox (
    ord BIGSERIAL PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    environment TEXT NOT NULL,
    sink TEXT NOT NULL,
    event TEXT NOT NULL,
    subject TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL,
    due_ms BIGINT NOT NULL,
    lease_owner TEXT NOT NULL DEFAULT '',
    lease_until_ms BIGINT NOT NULL DEFAULT 0,
    note TEXT NOT NULL DEFAULT '',
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX outbox_due ON rampart_controller.outbox (state, due_ms);
CREATE INDEX outbox_subject ON rampart_controller.outbox (subject, ord);
