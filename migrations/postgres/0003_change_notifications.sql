-- Every process sees every change (docs/ARCHITECTURE.md, "no refusal from a stale
-- view"). Triggers, so that every writer is covered: hub processes and the CLI.
--
-- `catalog_version` counts changes to providers, credentials and the price book;
-- a process compares it with the version it loaded before refusing an unknown
-- model, and every `catalog_refresh_ms`.
CREATE TABLE IF NOT EXISTS catalog_version
(
    id      smallint PRIMARY KEY CHECK (id = 1),
    version bigint   NOT NULL
);
INSERT INTO catalog_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;

-- Bumps the catalog version and tells every listening process (channel
-- `aigne_hub_catalog`, payload: the new version). NOTIFY is delivered at commit.
CREATE OR REPLACE FUNCTION aigne_hub_catalog_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    new_version bigint;
BEGIN
    UPDATE catalog_version SET version = version + 1 WHERE id = 1
    RETURNING version INTO new_version;
    PERFORM pg_notify('aigne_hub_catalog', new_version::text);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS providers_changed ON providers;
CREATE TRIGGER providers_changed
    AFTER INSERT OR UPDATE OR DELETE ON providers
    FOR EACH STATEMENT EXECUTE FUNCTION aigne_hub_catalog_changed();
DROP TRIGGER IF EXISTS provider_credentials_changed ON provider_credentials;
CREATE TRIGGER provider_credentials_changed
    AFTER INSERT OR UPDATE OR DELETE ON provider_credentials
    FOR EACH STATEMENT EXECUTE FUNCTION aigne_hub_catalog_changed();

-- Once per INSERT statement (an append is one statement of up to a group
-- commit's events): per tenant stream written, one notification on
-- `aigne_hub_tenant` with payload "<tenant id> <newest sequence> <instance id>",
-- so that a process skips its own appends and an actor compares sequences; a
-- price book write bumps the catalog version instead.
CREATE OR REPLACE FUNCTION aigne_hub_events_appended() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    stream      record;
    new_version bigint;
BEGIN
    FOR stream IN
        SELECT DISTINCT ON (aggregate_type, aggregate_id)
               aggregate_type, aggregate_id, sequence, metadata ->> 'instance_id' AS instance_id
          FROM appended
         ORDER BY aggregate_type, aggregate_id, sequence DESC
    LOOP
        IF stream.aggregate_type = 'Tenant' THEN
            PERFORM pg_notify('aigne_hub_tenant',
                stream.aggregate_id || ' ' || stream.sequence || ' ' || coalesce(stream.instance_id, ''));
        ELSE
            UPDATE catalog_version SET version = version + 1 WHERE id = 1
            RETURNING version INTO new_version;
            PERFORM pg_notify('aigne_hub_catalog', new_version::text);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS events_appended ON events;
CREATE TRIGGER events_appended
    AFTER INSERT ON events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION aigne_hub_events_appended();
