-- Event log: the postgres-es layout plus a global position for projections.
-- `position` is handed out at insert time, which is NOT commit order when several
-- writers commit concurrently; `txid` lets readers stop before any transaction that
-- is still in flight (see src/store/postgres.rs, read_log).
CREATE TABLE IF NOT EXISTS events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    position       bigserial                    NOT NULL,
    txid           bigint                       NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
CREATE INDEX IF NOT EXISTS events_log_order ON events (txid, position);

-- Our own snapshots (cqrs-es 0.5's snapshot store applies events twice; not used).
CREATE TABLE IF NOT EXISTS tenant_snapshots
(
    tenant_id      text   PRIMARY KEY,
    schema_version bigint NOT NULL,
    last_sequence  bigint NOT NULL,
    payload        text   NOT NULL
);

CREATE TABLE IF NOT EXISTS providers
(
    provider_id       text   PRIMARY KEY,
    name              text   NOT NULL UNIQUE,
    kind              text   NOT NULL,
    base_url          text   NOT NULL,
    region            text,
    created_at        text   NOT NULL
);

-- Credentials of a provider, used in weighted rotation. A credential the upstream
-- rejects (401/403) is disabled with the reason.
CREATE TABLE IF NOT EXISTS provider_credentials
(
    credential_id     text    PRIMARY KEY,
    provider_id       text    NOT NULL REFERENCES providers (provider_id),
    weight            bigint  NOT NULL,
    secret_ciphertext text    NOT NULL,
    disabled_reason   text,
    created_at        text    NOT NULL
);

CREATE TABLE IF NOT EXISTS model_prices
(
    model                   text   PRIMARY KEY,
    input_pico_per_token    text   NOT NULL,
    output_pico_per_token   text   NOT NULL,
    cache_read_pico_per_token  text,
    cache_write_pico_per_token text,
    image_pico_per_image       text,
    -- JSON array of model ids tried, in order, when this one fails.
    fallbacks                  text,
    max_output_tokens       bigint NOT NULL,
    version                 bigint NOT NULL,
    updated_at              text   NOT NULL
);

-- Read models: one generic table of JSON rows per projection, each with a checkpoint.
CREATE TABLE IF NOT EXISTS projection_rows
(
    projection text NOT NULL,
    row_key    text NOT NULL,
    payload    text NOT NULL,
    PRIMARY KEY (projection, row_key)
);
CREATE TABLE IF NOT EXISTS projection_checkpoints
(
    projection text   PRIMARY KEY,
    txid       bigint NOT NULL,
    position   bigint NOT NULL
);

-- Live hub processes, for releasing the holds of a process that died.
CREATE TABLE IF NOT EXISTS hub_instances
(
    instance_id     text   PRIMARY KEY,
    last_seen_ms    bigint NOT NULL
);
