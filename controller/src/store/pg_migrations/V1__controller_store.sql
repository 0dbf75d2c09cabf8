-- The controller's store, schema rampart_controller (created by the migrator).
-- Records are protobuf encodings (rampart.v1 Deployment, DeploymentEvent, Incident); the other
-- columns exist for queries. Times are milliseconds since the Unix epoch by the database's clock.

CREATE TABLE rampart_controller.instances (
    instance TEXT PRIMARY KEY,
    heartbeat_ms BIGINT
);

CREATE TABLE rampart_controller.deployments (
    ord BIGSERIAL PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    environment TEXT NOT NULL,
    state INTEGER NOT NULL,
    owner TEXT NOT NULL,
    record BYTEA NOT NULL
);

CREATE INDEX deployments_env_state_ord
    ON rampart_controller.deployments (environment, state, ord);

CREATE TABLE rampart_controller.events (
    deployment_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    record BYTEA NOT NULL,
    PRIMARY KEY (deployment_id, seq)
);

CREATE TABLE rampart_controller.env_locks (
    environment TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL,
    instance TEXT NOT NULL,
    since_ms BIGINT
);

CREATE TABLE rampart_controller.incidents (
    ord BIGSERIAL PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    environment TEXT NOT NULL,
    state INTEGER NOT NULL,
    record BYTEA NOT NULL
);
