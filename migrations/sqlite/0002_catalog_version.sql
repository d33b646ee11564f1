-- Counts changes to providers, credentials and the price book, whoever writes
-- them (a hub process or the CLI): a process compares it with the version it
-- loaded before refusing an unknown model, and every `catalog_refresh_ms`.
CREATE TABLE IF NOT EXISTS catalog_version
(
    id      integer PRIMARY KEY CHECK (id = 1),
    version integer NOT NULL
) STRICT;
INSERT OR IGNORE INTO catalog_version (id, version) VALUES (1, 0);

CREATE TRIGGER IF NOT EXISTS providers_inserted AFTER INSERT ON providers
BEGIN UPDATE catalog_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS providers_updated AFTER UPDATE ON providers
BEGIN UPDATE catalog_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS providers_deleted AFTER DELETE ON providers
BEGIN UPDATE catalog_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS provider_credentials_inserted AFTER INSERT ON provider_credentials
BEGIN UPDATE catalog_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS provider_credentials_updated AFTER UPDATE ON provider_credentials
BEGIN UPDATE catalog_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS provider_credentials_deleted AFTER DELETE ON provider_credentials
BEGIN UPDATE catalog_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS price_book_appended AFTER INSERT ON events
WHEN NEW.aggregate_type <> 'Tenant'
BEGIN UPDATE catalog_version SET version = version + 1 WHERE id = 1; END;
