-- Artifacts shared by every controller of the store: a header row per artifact and its bytes
-- in chunks of 1 MiB (the last one shorter). A header is committed first, not complete, so that
-- the upload counts in the quota; the chunks and `complete = true` are written in one
-- transaction that holds the header's row lock, so an artifact is either whole and complete or
-- has no chunk at all, and a collection (which skips locked rows) never removes one being
-- uploaded. Times are milliseconds since the Unix epoch by the database's clock.

CREATE TABLE rampart_controller.artifacts (
    sha256 TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    chunks INTEGER NOT NULL,
    complete BOOLEAN NOT NULL,
    uploader TEXT NOT NULL,
    used_ms BIGINT NOT NULL
);

CREATE TABLE rampart_controller.artifact_chunks (
    sha256 TEXT NOT NULL REFERENCES rampart_controller.artifacts (sha256) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (sha256, idx)
);

-- Artifacts are compressed already (tarballs): store the chunks out of line, uncompressed.
ALTER TABLE rampart_controller.artifact_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
