-- Event log: the sqlite-es layout. SQLite has one writer at a time, so the implicit
-- rowid (monotonic: events are never deleted) is commit order and serves as the
-- global position for projections.
CREATE TABLE IF NOT EXISTS events
(
    aggregate_type text                          NOT NULL,
    aggregate_id   text                          NOT NULL,
    sequence       integer CHECK (sequence >= 0) NOT NULL,
    event_type     text                          NOT NULL,
    event_version  text                          NOT NULL,
    payload        text                          NOT NULL,
    metadata       text                          NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
) STRICT;

CREATE TABLE IF NOT EXISTS tenant_snapshots
(
    tenant_id      text    PRIMARY KEY,
    schema_version integer NOT NULL,
    last_sequence  integer NOT NULL,
    payload        text    NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS providers
(
    provider_id       text PRIMARY KEY,
    name              text NOT NULL UNIQUE,
    kind              text NOT NULL,
    base_url          text NOT NULL,
    region            text,
    created_at        text NOT NULL
) STRICT;

-- Credentials of a provider, used in weighted rotation. A credential the upstream
-- rejects (401/403) is disabled with the reason.
CREATE TABLE IF NOT EXISTS provider_credentials
(
    credential_id     text    PRIMARY KEY,
    provider_id       text    NOT NULL REFERENCES providers (provider_id),
    weight            integer  NOT NULL,
    secret_ciphertext text    NOT NULL,
    disabled_reason   text,
    created_at        text    NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS model_prices
(
    model                   text    PRIMARY KEY,
    input_pico_per_token    text    NOT NULL,
    output_pico_per_token   text    NOT NULL,
    cache_read_pico_per_token  text,
    cache_write_pico_per_token text,
    image_pico_per_image       text,
    -- JSON array of model ids tried, in order, when this one fails.
    fallbacks                  text,
    max_output_tokens       integer NOT NULL,
    version                 integer NOT NULL,
    updated_at              text    NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS projection_rows
(
    projection text NOT NULL,
    row_key    text NOT NULL,
    payload    text NOT NULL,
    PRIMARY KEY (projection, row_key)
) STRICT;
CREATE TABLE IF NOT EXISTS projection_checkpoints
(
    projection text    PRIMARY KEY,
    txid       integer NOT NULL,
    position   integer NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS hub_instances
(
    instance_id  text    PRIMARY KEY,
    last_seen_ms integer NOT NULL
) STRICT;
