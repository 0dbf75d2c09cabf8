-- Approvals and aborts people asked for, recorded by whichever controller took the request and
-- applied by the one running the deployment. The first request of each kind wins.

CREATE TABLE rampart_controller.control_requests (
    ord BIGSERIAL PRIMARY KEY,
    deployment_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    requested_by TEXT NOT NULL,
    text TEXT NOT NULL,
    requested_ms BIGINT NOT NULL,
    UNIQUE (deployment_id, kind)
);
