//! The SQL both stores share. sqlx binds `$N` to the N-th argument on PostgreSQL
//! and on SQLite alike, so these statements are written once; the macro stamps the
//! store's role traits (`CatalogStore`, `ProjectionRows`, `LiveSet`, `EventLog`)
//! and `Store` for each backend (sqlx's executor traits make a generic function
//! over both pools harder to read than this).

macro_rules! impl_store {
    ($store:ty, $kind:literal) => {
        impl Store for $store {
        fn kind(&self) -> &'static str {
            $kind
        }
        }

        #[async_trait::async_trait]
        impl crate::store::CatalogStore for $store {
        async fn insert_provider(&self, row: &ProviderRow, credential: &CredentialRow) -> Result<(), StoreError> {
            let mut tx = self.pool.begin().await?;
            let result = sqlx::query(
                "INSERT INTO providers (provider_id, name, kind, base_url, created_at, region) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&row.provider_id)
            .bind(&row.name)
            .bind(&row.kind)
            .bind(&row.base_url)
            .bind(&row.created_at)
            .bind(&row.region)
            .execute(&mut *tx)
            .await;
            match result {
                Ok(_) => {}
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Err(StoreError::DuplicateName(row.name.clone())),
                Err(e) => return Err(e.into()),
            }
            sqlx::query(INSERT_CREDENTIAL)
                .bind(&credential.credential_id)
                .bind(&credential.provider_id)
                .bind(credential.weight)
                .bind(&credential.secret_ciphertext)
                .bind(&credential.disabled_reason)
                .bind(&credential.created_at)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        }

        async fn insert_credential(&self, credential: &CredentialRow) -> Result<(), StoreError> {
            sqlx::query(INSERT_CREDENTIAL)
                .bind(&credential.credential_id)
                .bind(&credential.provider_id)
                .bind(credential.weight)
                .bind(&credential.secret_ciphertext)
                .bind(&credential.disabled_reason)
                .bind(&credential.created_at)
                .execute(&self.pool)
                .await?;
            Ok(())
        }

        async fn list_credentials(&self) -> Result<Vec<CredentialRow>, StoreError> {
            let rows = sqlx::query(
                "SELECT credential_id, provider_id, weight, secret_ciphertext, disabled_reason, created_at
                   FROM provider_credentials ORDER BY created_at, credential_id",
            )
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| CredentialRow {
                    credential_id: r.get("credential_id"),
                    provider_id: r.get("provider_id"),
                    weight: r.get("weight"),
                    secret_ciphertext: r.get("secret_ciphertext"),
                    disabled_reason: r.get("disabled_reason"),
                    created_at: r.get("created_at"),
                })
                .collect())
        }

        async fn set_credential_disabled(&self, credential_id: &str, reason: Option<&str>) -> Result<bool, StoreError> {
            let done = sqlx::query("UPDATE provider_credentials SET disabled_reason = $2 WHERE credential_id = $1")
                .bind(credential_id)
                .bind(reason)
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected() == 1)
        }

        async fn list_providers(&self) -> Result<Vec<ProviderRow>, StoreError> {
            let rows = sqlx::query("SELECT provider_id, name, kind, base_url, region, created_at FROM providers ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
            Ok(rows
                .into_iter()
                .map(|r| ProviderRow {
                    provider_id: r.get("provider_id"),
                    name: r.get("name"),
                    kind: r.get("kind"),
                    base_url: r.get("base_url"),
                    region: r.get("region"),
                    created_at: r.get("created_at"),
                })
                .collect())
        }

        async fn upsert_price(&self, row: &PriceRow) -> Result<i64, StoreError> {
            let version: i64 = sqlx::query_scalar(
                "INSERT INTO model_prices (model, input_pico_per_token, output_pico_per_token, max_output_tokens, version, updated_at,
                                           cache_read_pico_per_token, cache_write_pico_per_token, image_pico_per_image, fallbacks)
                 VALUES ($1, $2, $3, $4, 1, $5, $6, $7, $8, $9)
                 ON CONFLICT (model) DO UPDATE SET
                   input_pico_per_token = excluded.input_pico_per_token,
                   output_pico_per_token = excluded.output_pico_per_token,
                   cache_read_pico_per_token = excluded.cache_read_pico_per_token,
                   cache_write_pico_per_token = excluded.cache_write_pico_per_token,
                   image_pico_per_image = excluded.image_pico_per_image,
                   fallbacks = excluded.fallbacks,
                   max_output_tokens = excluded.max_output_tokens,
                   version = model_prices.version + 1,
                   updated_at = excluded.updated_at
                 RETURNING version",
            )
            .bind(&row.model)
            .bind(&row.input_pico_per_token)
            .bind(&row.output_pico_per_token)
            .bind(row.max_output_tokens)
            .bind(&row.updated_at)
            .bind(&row.cache_read_pico_per_token)
            .bind(&row.cache_write_pico_per_token)
            .bind(&row.image_pico_per_image)
            .bind(&row.fallbacks)
            .fetch_one(&self.pool)
            .await?;
            Ok(version)
        }

        async fn list_prices(&self) -> Result<Vec<PriceRow>, StoreError> {
            let rows = sqlx::query(
                "SELECT model, input_pico_per_token, output_pico_per_token, cache_read_pico_per_token, cache_write_pico_per_token,
                        image_pico_per_image, fallbacks, max_output_tokens, version, updated_at
                   FROM model_prices ORDER BY model",
            )
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| PriceRow {
                    model: r.get("model"),
                    input_pico_per_token: r.get("input_pico_per_token"),
                    output_pico_per_token: r.get("output_pico_per_token"),
                    cache_read_pico_per_token: r.get("cache_read_pico_per_token"),
                    cache_write_pico_per_token: r.get("cache_write_pico_per_token"),
                    image_pico_per_image: r.get("image_pico_per_image"),
                    fallbacks: r.get("fallbacks"),
                    max_output_tokens: r.get("max_output_tokens"),
                    version: r.get("version"),
                    updated_at: r.get("updated_at"),
                })
                .collect())
        }

        async fn catalog_version(&self) -> Result<i64, StoreError> {
            let version: i64 = sqlx::query_scalar("SELECT version FROM catalog_version WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
            Ok(version)
        }

        async fn watch(&self, changes: tokio::sync::mpsc::Sender<super::Change>, poll_ms: u64) {
            self.watch_changes(changes, poll_ms).await
        }

        }

        #[async_trait::async_trait]
        impl crate::store::ProjectionRows for $store {
        async fn projection_rows(&self, projection: &str) -> Result<Vec<(String, String)>, StoreError> {
            let rows = sqlx::query("SELECT row_key, payload FROM projection_rows WHERE projection = $1 ORDER BY row_key")
                .bind(projection)
                .fetch_all(&self.pool)
                .await?;
            Ok(rows.into_iter().map(|r| (r.get("row_key"), r.get("payload"))).collect())
        }

        async fn projection_rows_by_keys(&self, projection: &str, keys: &[String]) -> Result<Vec<(String, String)>, StoreError> {
            /// Keys per query; far below either database's limit on bound parameters.
            const KEYS_PER_QUERY: usize = 500;
            let mut found = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(KEYS_PER_QUERY) {
                let placeholders: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
                let sql = format!(
                    "SELECT row_key, payload FROM projection_rows WHERE projection = $1 AND row_key IN ({})",
                    placeholders.join(", ")
                );
                let mut query = sqlx::query(&sql).bind(projection);
                for key in chunk {
                    query = query.bind(key);
                }
                let rows = query.fetch_all(&self.pool).await?;
                found.extend(rows.into_iter().map(|r| (r.get("row_key"), r.get("payload"))));
            }
            Ok(found)
        }

        async fn projection_checkpoint(&self, projection: &str) -> Result<LogPosition, StoreError> {
            let row = sqlx::query("SELECT txid, position FROM projection_checkpoints WHERE projection = $1")
                .bind(projection)
                .fetch_optional(&self.pool)
                .await?;
            Ok(row.map(|r| LogPosition { txid: r.get("txid"), position: r.get("position") }).unwrap_or_default())
        }

        async fn commit_projection(&self, projection: &str, from: LogPosition, to: LogPosition, rows: &[(String, String)]) -> Result<bool, StoreError> {
            self.commit_projections(&[ProjectionCommit { projection, from, to, rows }]).await
        }

        async fn commit_projections(&self, commits: &[ProjectionCommit<'_>]) -> Result<bool, StoreError> {
            /// Rows per upsert statement; far below either database's limit on bound parameters.
            const ROWS_PER_STATEMENT: usize = 300;
            let mut tx = self.pool.begin().await?;
            Self::relax_projection_durability(&mut tx).await?;
            for commit in commits {
                let (projection, from, to) = (commit.projection, commit.from, commit.to);
                let moved = sqlx::query(
                    "UPDATE projection_checkpoints SET txid = $2, position = $3 WHERE projection = $1 AND txid = $4 AND position = $5",
                )
                .bind(projection)
                .bind(to.txid)
                .bind(to.position)
                .bind(from.txid)
                .bind(from.position)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                // A projection's first page: its checkpoint row does not exist yet. The
                // insert races with other processes' first pages; one of them wins.
                let moved = if moved == 0 && from == LogPosition::default() {
                    sqlx::query("INSERT INTO projection_checkpoints (projection, txid, position) VALUES ($1, $2, $3) ON CONFLICT (projection) DO NOTHING")
                        .bind(projection)
                        .bind(to.txid)
                        .bind(to.position)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                } else {
                    moved
                };
                if moved != 1 {
                    tx.rollback().await?;
                    return Ok(false);
                }
            }
            // Every projection's rows in as few statements as possible: one upsert
            // per `ROWS_PER_STATEMENT` rows, whichever projection they belong to.
            let rows: Vec<(&str, &String, &String)> = commits
                .iter()
                .flat_map(|c| c.rows.iter().map(move |(key, payload)| (c.projection, key, payload)))
                .collect();
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let values: Vec<String> = (0..chunk.len())
                    .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
                    .collect();
                let sql = format!(
                    "INSERT INTO projection_rows (projection, row_key, payload) VALUES {}
                     ON CONFLICT (projection, row_key) DO UPDATE SET payload = excluded.payload",
                    values.join(", ")
                );
                let mut query = sqlx::query(&sql);
                for (projection, key, payload) in chunk {
                    query = query.bind(*projection).bind(*key).bind(*payload);
                }
                query.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(true)
        }

        async fn clear_projection(&self, projection: &str) -> Result<(), StoreError> {
            let mut tx = self.pool.begin().await?;
            sqlx::query("DELETE FROM projection_rows WHERE projection = $1").bind(projection).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM projection_checkpoints WHERE projection = $1").bind(projection).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        }

        }

        #[async_trait::async_trait]
        impl crate::store::LiveSet for $store {
        async fn heartbeat(&self, instance_id: InstanceId, now_ms: i64) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO hub_instances (instance_id, last_seen_ms) VALUES ($1, $2)
                 ON CONFLICT (instance_id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
            )
            .bind(instance_id.to_string())
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
            Ok(())
        }

        async fn live_instances(&self, seen_since_ms: i64) -> Result<Vec<InstanceId>, StoreError> {
            let ids: Vec<String> = sqlx::query_scalar("SELECT instance_id FROM hub_instances WHERE last_seen_ms >= $1")
                .bind(seen_since_ms)
                .fetch_all(&self.pool)
                .await?;
            ids.iter()
                .map(|s| s.parse().map_err(|_| StoreError::Corrupt(format!("instance id {s:?}"))))
                .collect()
        }

        async fn remove_instance(&self, instance_id: InstanceId) -> Result<(), StoreError> {
            sqlx::query("DELETE FROM hub_instances WHERE instance_id = $1").bind(instance_id.to_string()).execute(&self.pool).await?;
            Ok(())
        }

        }

        #[async_trait::async_trait]
        impl crate::store::EventLog for $store {
        async fn read_log(&self, after: LogPosition, until: Option<LogPosition>, limit: i64) -> Result<Vec<StoredEvent>, StoreError> {
            self.read_log_in_order(after, until, limit).await
        }

        async fn save_snapshot(&self, tenant_id: TenantId, version: usize, state: &Tenant) -> Result<(), StoreError> {
            let payload = serde_json::to_string(state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query(
                "INSERT INTO tenant_snapshots (tenant_id, schema_version, last_sequence, payload) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant_id) DO UPDATE SET schema_version = excluded.schema_version,
                   last_sequence = excluded.last_sequence, payload = excluded.payload
                 WHERE tenant_snapshots.last_sequence < excluded.last_sequence
                    OR tenant_snapshots.schema_version <> excluded.schema_version",
            )
            .bind(tenant_id.to_string())
            .bind(SNAPSHOT_SCHEMA_VERSION)
            .bind(version as i64)
            .bind(payload)
            .execute(&self.pool)
            .await?;
            Ok(())
        }

        async fn load_tenant(&self, tenant_id: TenantId) -> Result<LoadedTenant, StoreError> {
            let id = tenant_id.to_string();
            let snapshot = sqlx::query("SELECT last_sequence, payload FROM tenant_snapshots WHERE tenant_id = $1 AND schema_version = $2")
                .bind(&id)
                .bind(SNAPSHOT_SCHEMA_VERSION)
                .fetch_optional(&self.pool)
                .await?;
            let (state, version) = match snapshot {
                Some(row) => {
                    let payload: String = row.get("payload");
                    let last_sequence: i64 = row.get("last_sequence");
                    let state: Tenant = serde_json::from_str(&payload).map_err(|e| StoreError::Corrupt(format!("snapshot of {id}: {e}")))?;
                    (state, last_sequence as usize)
                }
                None => (Tenant::default(), 0),
            };
            let events = self.repo.get_last_events::<Tenant>(&id, version).await?;
            let (state, version, events_since_snapshot, head) = codec::fold(state, version, events)?;
            // Nothing after the snapshot: the chain's head is the snapshot's last event.
            let chain_head = match head {
                Some(head) => Some(head),
                None if version > 0 => self
                    .repo
                    .get_last_events::<Tenant>(&id, version - 1)
                    .await?
                    .last()
                    .and_then(|e| e.metadata.get("hash"))
                    .and_then(|h| h.as_str())
                    .map(str::to_string),
                None => None,
            };
            Ok(LoadedTenant { state, version, events_since_snapshot, chain_head })
        }

        async fn tenant_events(&self, tenant_id: TenantId, after_sequence: usize) -> Result<Vec<StoredEvent>, StoreError> {
            let events = self.repo.get_last_events::<Tenant>(&tenant_id.to_string(), after_sequence).await?;
            events
                .into_iter()
                .map(|serialized| {
                    let sequence = serialized.sequence;
                    let (event, metadata) = codec::deserialize(serialized)?;
                    Ok(StoredEvent { log_position: LogPosition::default(), tenant_id, sequence, event, metadata })
                })
                .collect()
        }

        async fn raw_tenant_events(&self, tenant_id: TenantId, after_sequence: usize, limit: usize) -> Result<Vec<crate::store::RawEvent>, StoreError> {
            self.raw_page(tenant_id, after_sequence as i64, false, limit).await
        }

        async fn tenant_events_backward(&self, tenant_id: TenantId, before_sequence: Option<usize>, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
            let before = before_sequence.map_or(i64::MAX, |s| s as i64);
            self.raw_page(tenant_id, before, true, limit)
                .await?
                .into_iter()
                .map(|raw| {
                    let sequence = raw.sequence;
                    let (event, metadata) = codec::decode_raw(raw)?;
                    Ok(StoredEvent { log_position: LogPosition::default(), tenant_id, sequence, event, metadata })
                })
                .collect()
        }

        async fn tenant_head(&self, tenant_id: TenantId) -> Result<usize, StoreError> {
            let head: Option<i64> = sqlx::query_scalar("SELECT MAX(sequence) FROM events WHERE aggregate_type = 'Tenant' AND aggregate_id = $1")
                .bind(tenant_id.to_string())
                .fetch_one(&self.pool)
                .await?;
            Ok(head.unwrap_or(0) as usize)
        }

        async fn tenant_ids(&self) -> Result<Vec<TenantId>, StoreError> {
            let ids: Vec<String> = sqlx::query_scalar("SELECT DISTINCT aggregate_id FROM events WHERE aggregate_type = 'Tenant' ORDER BY aggregate_id")
                .fetch_all(&self.pool)
                .await?;
            ids.iter()
                .map(|s| s.parse().map_err(|_| StoreError::Corrupt(format!("tenant id {s:?}"))))
                .collect()
        }

        async fn append(&self, tenant_id: TenantId, first_sequence: usize, events: &[(TenantEvent, EventMetadata)], durability: Durability) -> Result<(), StoreError> {
            let serialized = events
                .iter()
                .enumerate()
                .map(|(i, (event, metadata))| codec::serialize(tenant_id, first_sequence + i, event, metadata))
                .collect::<Result<Vec<_>, _>>()?;
            self.persist_tenant_events(&serialized, durability).await?;
            Ok(())
        }

        async fn price_book_events(&self) -> Result<Vec<super::StoredPriceBookEvent>, StoreError> {
            let events = self.repo.get_events::<domain::price_book::PriceBook>(domain::price_book::PRICE_BOOK_ID).await?;
            events.into_iter().map(super::price_book::deserialize).collect()
        }

        async fn append_price_book(&self, first_sequence: usize, events: &[domain::price_book::PriceBookEvent], recorded_at: chrono::DateTime<chrono::Utc>, actor: &domain::ChangedBy) -> Result<(), StoreError> {
            let serialized = events
                .iter()
                .enumerate()
                .map(|(i, event)| super::price_book::serialize(first_sequence + i, event, recorded_at, actor))
                .collect::<Result<Vec<_>, _>>()?;
            self.repo.persist::<domain::price_book::PriceBook>(&serialized, None).await?;
            Ok(())
        }
        }

        impl $store {
            /// Up to `limit` of a tenant's events exactly as stored, in sequence
            /// order after `bound`, or (`backward`) newest first before `bound`: one
            /// page per query, the JSON read as the text stored.
            async fn raw_page(&self, tenant_id: TenantId, bound: i64, backward: bool, limit: usize) -> Result<Vec<crate::store::RawEvent>, StoreError> {
                let sql = if backward {
                    "SELECT sequence, event_type, event_version, CAST(payload AS TEXT) AS payload, CAST(metadata AS TEXT) AS metadata
                       FROM events
                      WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence < $3
                      ORDER BY sequence DESC
                      LIMIT $4"
                } else {
                    "SELECT sequence, event_type, event_version, CAST(payload AS TEXT) AS payload, CAST(metadata AS TEXT) AS metadata
                       FROM events
                      WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
                      ORDER BY sequence
                      LIMIT $4"
                };
                let rows = sqlx::query(sql)
                    .bind(<Tenant as cqrs_es::Aggregate>::TYPE)
                    .bind(tenant_id.to_string())
                    .bind(bound)
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter()
                    .map(|r| {
                        let sequence: i64 = r.get("sequence");
                        let json = |column: &str| -> Result<serde_json::Value, StoreError> {
                            let text: String = r.get(column);
                            serde_json::from_str(&text)
                                .map_err(|e| StoreError::Corrupt(format!("{column} of {tenant_id} #{sequence}: {e}")))
                        };
                        Ok(crate::store::RawEvent {
                            tenant_id: tenant_id.to_string(),
                            sequence: sequence as usize,
                            event_type: r.get("event_type"),
                            event_version: r.get("event_version"),
                            payload: json("payload")?,
                            metadata: json("metadata")?,
                        })
                    })
                    .collect()
            }
        }
    };
}

pub(crate) use impl_store;

pub(crate) const INSERT_CREDENTIAL: &str =
    "INSERT INTO provider_credentials (credential_id, provider_id, weight, secret_ciphertext, disabled_reason, created_at)
     VALUES ($1, $2, $3, $4, $5, $6)";
