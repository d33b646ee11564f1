//! The operator's tenant directory: `GET /admin/v1/tenants` (search, newest
//! first, by cursor), `GET /admin/v1/tenants/{id}` (one tenant with its
//! balance, plan, margin and key counts) and `GET /admin/v1/tenants/{id}/keys`.
//! The CLI's `tenant list`, `tenant show` and `key list` print the same bodies
//! through the same functions.
//!
//! The rows are the `tenants` and `tenant_keys` projections' (and `available`
//! the balances projection's), so they trail the log by the projector's delay;
//! the balance `show` gives is the tenant actor's, exact. Projection rows sit in
//! a key/value table with no ordered index, so a list request reads every
//! tenant row (one small row per tenant: no keys, no money) and filters, sorts
//! and pages them in memory.

use super::admin::operator;
use super::tenant_path;
use crate::billing::balance_body;
use crate::error::HubError;
use crate::hub::Hub;
use crate::store::StoreError;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use domain::price_book::{MarginSource, PriceBook};
use domain::{KeyId, TenantId};
use projections::balances::{BalanceRow, Balances};
use projections::tenants::{KeyEntry, TenantKeys, TenantKeysRow, TenantRow, TenantStatus, Tenants};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Items per page when `limit` is not given.
pub(crate) const PAGE_DEFAULT: usize = 50;
/// Most items per page: bounds one answer's size and the balances read for it.
pub(crate) const PAGE_MAX: usize = 200;
/// Longest search text, in characters (a tenant's name is at most 200).
pub(crate) const QUERY_MAX_CHARS: usize = 200;
/// Longest cursor accepted; the cursors this module gives are under 100 bytes.
const CURSOR_MAX_BYTES: usize = 256;

/// `GET /admin/v1/tenants` query, as given (the CLI fills it from its flags).
/// An empty value is the same as none.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    pub(crate) query: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) cursor: Option<String>,
    pub(crate) limit: Option<String>,
}

/// `GET /admin/v1/tenants/{id}/keys` query.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    pub(crate) cursor: Option<String>,
    pub(crate) limit: Option<String>,
}

/// Where a tenant sits in the list (see [`list_order`]); a cursor names one.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Position {
    created_at: DateTime<Utc>,
    tenant_id: String,
}

impl Position {
    fn of(row: &TenantRow) -> Self {
        Position {
            created_at: row.created_at,
            tenant_id: row.tenant_id.clone(),
        }
    }

    fn key(&self) -> (DateTime<Utc>, &str) {
        (self.created_at, &self.tenant_id)
    }

    fn cursor(&self) -> String {
        let at = self.created_at.to_rfc3339_opts(SecondsFormat::Nanos, true);
        URL_SAFE_NO_PAD.encode(format!("{at}|{}", self.tenant_id))
    }

    fn from_cursor(raw: &str) -> Option<Self> {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
        let (at, tenant_id) = text.split_once('|')?;
        let created_at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
        let tenant_id = tenant_id.parse::<TenantId>().ok()?.to_string();
        Some(Position {
            created_at,
            tenant_id,
        })
    }
}

/// What the list is ordered by: creation time, then id.
fn sort_key(row: &TenantRow) -> (DateTime<Utc>, &str) {
    (row.created_at, &row.tenant_id)
}

/// `Less` when `a` is listed before `b`: newest first, ties by id (highest first).
fn list_order(a: (DateTime<Utc>, &str), b: (DateTime<Utc>, &str)) -> Ordering {
    b.cmp(&a)
}

/// A list request, checked.
#[derive(Debug)]
pub(crate) struct Listing {
    /// Lowercase search text.
    query: Option<String>,
    status: Option<TenantStatus>,
    after: Option<Position>,
    limit: usize,
}

fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

fn bad_cursor() -> HubError {
    HubError::BadRequest("cursor: not a cursor this list returned; start again without one".into())
}

fn parse_limit(raw: Option<String>) -> Result<usize, HubError> {
    let Some(raw) = given(raw) else {
        return Ok(PAGE_DEFAULT);
    };
    raw.parse::<usize>()
        .ok()
        .filter(|n| (1..=PAGE_MAX).contains(n))
        .ok_or_else(|| {
            HubError::BadRequest(format!(
                "limit: {raw:?} is not a whole number from 1 to {PAGE_MAX}"
            ))
        })
}

fn checked_cursor(raw: Option<String>) -> Result<Option<String>, HubError> {
    match given(raw) {
        Some(raw) if raw.len() > CURSOR_MAX_BYTES => Err(bad_cursor()),
        other => Ok(other),
    }
}

impl ListQuery {
    pub(crate) fn parse(self) -> Result<Listing, HubError> {
        let query = given(self.query)
            .map(|q| {
                if q.chars().count() > QUERY_MAX_CHARS {
                    return Err(HubError::BadRequest(format!(
                        "query: at most {QUERY_MAX_CHARS} characters"
                    )));
                }
                Ok(q.to_lowercase())
            })
            .transpose()?;
        let status = given(self.status)
            .map(|s| {
                TenantStatus::parse(&s).ok_or_else(|| {
                    let names: Vec<&str> = TenantStatus::ALL.iter().map(|s| s.as_str()).collect();
                    HubError::BadRequest(format!(
                        "status: {s:?} is not one of {}",
                        names.join(", ")
                    ))
                })
            })
            .transpose()?;
        let after = checked_cursor(self.cursor)?
            .map(|raw| Position::from_cursor(&raw).ok_or_else(bad_cursor))
            .transpose()?;
        Ok(Listing {
            query,
            status,
            after,
            limit: parse_limit(self.limit)?,
        })
    }
}

impl Listing {
    fn matches(&self, row: &TenantRow) -> bool {
        let status = self.status.is_none_or(|s| s == row.status);
        let query = self
            .query
            .as_deref()
            .is_none_or(|q| row.tenant_id.starts_with(q) || row.name.to_lowercase().contains(q));
        let after = self
            .after
            .as_ref()
            .is_none_or(|a| list_order(a.key(), sort_key(row)) == Ordering::Less);
        status && query && after
    }

    /// The page of `rows` this listing asks for, and whether more follow it.
    fn page(&self, rows: Vec<TenantRow>) -> (Vec<TenantRow>, bool) {
        let mut rows: Vec<TenantRow> = rows.into_iter().filter(|r| self.matches(r)).collect();
        rows.sort_by(|a, b| list_order(sort_key(a), sort_key(b)));
        let more = rows.len() > self.limit;
        rows.truncate(self.limit);
        (rows, more)
    }
}

fn decode<T: DeserializeOwned>(projection: &str, key: &str, payload: &str) -> Result<T, HubError> {
    serde_json::from_str(payload)
        .map_err(|e| HubError::from(StoreError::Corrupt(format!("{projection} row {key}: {e}"))))
}

/// One row of a projection keyed by tenant id, if there is one.
async fn row_of<T: DeserializeOwned>(
    hub: &Hub,
    projection: &str,
    tenant_id: TenantId,
) -> Result<Option<T>, HubError> {
    let key = tenant_id.to_string();
    let rows = hub
        .read_models()
        .projection_rows_by_keys(projection, std::slice::from_ref(&key))
        .await?;
    rows.first()
        .map(|(key, payload)| decode(projection, key, payload))
        .transpose()
}

async fn directory_row(hub: &Hub, tenant_id: TenantId) -> Result<TenantRow, HubError> {
    row_of(hub, Tenants::NAME, tenant_id)
        .await?
        .ok_or_else(|| HubError::NotFound("tenant not found".into()))
}

/// The tenant's plan: a price-book setting, read from the catalog's copy.
fn plan_of(book: &PriceBook, tenant_id: &str) -> Option<String> {
    let tenant_id: TenantId = tenant_id.parse().ok()?;
    book.tenant_plans.get(&tenant_id).cloned()
}

/// The tenants a listing asks for:
/// `{"data":[{tenant_id,name,status,plan,created_at,available}],"next_cursor"}`.
pub(crate) async fn list_json(hub: &Hub, listing: Listing) -> Result<Value, HubError> {
    let mut rows = Vec::new();
    for (key, payload) in hub.read_models().projection_rows(Tenants::NAME).await? {
        rows.push(decode::<TenantRow>(Tenants::NAME, &key, &payload)?);
    }
    let (page, more) = listing.page(rows);
    let ids: Vec<String> = page.iter().map(|r| r.tenant_id.clone()).collect();
    let mut available = BTreeMap::new();
    if !ids.is_empty() {
        for (key, payload) in hub
            .read_models()
            .projection_rows_by_keys(Balances::NAME, &ids)
            .await?
        {
            let row: BalanceRow = decode(Balances::NAME, &key, &payload)?;
            available.insert(key, row.available);
        }
    }
    let next_cursor = more.then(|| page.last().map(|r| Position::of(r).cursor()));
    let catalog = hub.catalog().snapshot();
    let data: Vec<Value> = page
        .iter()
        .map(|row| {
            json!({
                "tenant_id": row.tenant_id,
                "name": row.name,
                "status": row.status.as_str(),
                "plan": plan_of(&catalog.book, &row.tenant_id),
                "created_at": row.created_at.to_rfc3339(),
                "available": available
                    .get(&row.tenant_id)
                    .copied()
                    .unwrap_or_default()
                    .to_decimal_string(),
            })
        })
        .collect();
    Ok(json!({"data": data, "next_cursor": next_cursor.flatten()}))
}

/// The margin the tenant's requests are priced with now, and where it comes from.
fn margin_json(hub: &Hub, tenant_id: TenantId) -> Value {
    let (margin_bps, source) = if hub.mode().charges_at_cost() {
        (0, MarginSource::AtCost)
    } else {
        hub.catalog().snapshot().book.margin_for(Some(tenant_id))
    };
    json!({"margin_bps": margin_bps, "source": source})
}

/// One tenant: `{tenant_id,name,status,plan,margin,created_at,balance,keys}`.
pub(crate) async fn show_json(hub: &Hub, tenant_id: TenantId) -> Result<Value, HubError> {
    let row = directory_row(hub, tenant_id).await?;
    let balance = hub.balance(tenant_id, None).await?;
    Ok(json!({
        "tenant_id": row.tenant_id,
        "name": row.name,
        "status": row.status.as_str(),
        "plan": plan_of(&hub.catalog().snapshot().book, &row.tenant_id),
        "margin": margin_json(hub, tenant_id),
        "created_at": row.created_at.to_rfc3339(),
        "balance": balance_body(tenant_id, &balance, hub.now(), hub.limits().expiring_soon_window_secs),
        "keys": {"active": row.keys_active, "revoked": row.keys_revoked},
    }))
}

fn key_json(key: &KeyEntry) -> Value {
    json!({
        "key_id": key.key_id.to_string(),
        "name": key.name,
        "role": key.role.as_str(),
        "created_at": key.created_at.to_rfc3339(),
        "revoked_at": key.revoked_at.map(|t| t.to_rfc3339()),
    })
}

/// A tenant's keys, newest first: `{"tenant_id","data":[…],"next_cursor"}`. The
/// cursor names the last key given; keys issued later never shift the pages
/// after it.
pub(crate) async fn keys_json(
    hub: &Hub,
    tenant_id: TenantId,
    query: PageQuery,
) -> Result<Value, HubError> {
    let limit = parse_limit(query.limit)?;
    let after = checked_cursor(query.cursor)?
        .map(|raw| {
            let text = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad_cursor())?;
            let text = String::from_utf8(text).map_err(|_| bad_cursor())?;
            text.parse::<KeyId>().map_err(|_| bad_cursor())
        })
        .transpose()?;
    directory_row(hub, tenant_id).await?;
    let row: TenantKeysRow = row_of(hub, TenantKeys::NAME, tenant_id)
        .await?
        .unwrap_or_default();
    let end = match after {
        None => row.keys.len(),
        Some(key_id) => row
            .keys
            .iter()
            .position(|k| k.key_id == key_id)
            .ok_or_else(bad_cursor)?,
    };
    let start = end.saturating_sub(limit);
    let page: Vec<Value> = row.keys[start..end].iter().rev().map(key_json).collect();
    let next_cursor =
        (start > 0).then(|| URL_SAFE_NO_PAD.encode(row.keys[start].key_id.to_string()));
    Ok(json!({
        "tenant_id": tenant_id.to_string(),
        "data": page,
        "next_cursor": next_cursor,
    }))
}

fn query_of<T: DeserializeOwned>(req: &HttpRequest) -> Result<T, HubError> {
    Ok(web::Query::<T>::from_query(req.query_string())
        .map_err(|e| HubError::BadRequest(format!("query: {e}")))?
        .into_inner())
}

/// `GET /admin/v1/tenants?query=&status=&cursor=&limit=`.
pub(crate) async fn list(hub: web::Data<Hub>, req: HttpRequest) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let listing = query_of::<ListQuery>(&req)?.parse()?;
    Ok(HttpResponse::Ok().json(list_json(&hub, listing).await?))
}

/// `GET /admin/v1/tenants/{id}`.
pub(crate) async fn show(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let tenant_id = tenant_path(&path)?;
    Ok(HttpResponse::Ok().json(show_json(&hub, tenant_id).await?))
}

/// `GET /admin/v1/tenants/{id}/keys?cursor=&limit=`.
pub(crate) async fn keys(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let tenant_id = tenant_path(&path)?;
    let query = query_of::<PageQuery>(&req)?;
    Ok(HttpResponse::Ok().json(keys_json(&hub, tenant_id, query).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn row(seconds: i64, name: &str) -> TenantRow {
        TenantRow {
            tenant_id: TenantId::new_random().to_string(),
            name: name.into(),
            created_at: Utc.timestamp_opt(1_767_225_600 + seconds, 0).unwrap(),
            ..Default::default()
        }
    }

    fn listing(query: ListQuery) -> Listing {
        query.parse().unwrap()
    }

    #[test]
    fn pages_follow_each_other_newest_first_without_repeats() {
        // Ties in time are broken by id.
        let rows: Vec<TenantRow> = (0..10).map(|i| row(i / 2, "t")).collect();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let (page, more) = listing(ListQuery {
                cursor: cursor.clone(),
                limit: Some("3".into()),
                ..Default::default()
            })
            .page(rows.clone());
            seen.extend(page.iter().map(Position::of));
            if !more {
                break;
            }
            cursor = Some(Position::of(page.last().unwrap()).cursor());
        }
        let mut expected: Vec<Position> = rows.iter().map(Position::of).collect();
        expected.sort_by(|a, b| list_order(a.key(), b.key()));
        assert_eq!(seen, expected);
        assert!(seen[0].created_at > seen[9].created_at);
    }

    #[test]
    fn a_cursor_reads_back_as_its_position() {
        let position = Position::of(&row(7, "x"));
        assert_eq!(Position::from_cursor(&position.cursor()), Some(position));
        assert_eq!(Position::from_cursor("not a cursor"), None);
    }

    #[test]
    fn the_query_matches_a_name_anywhere_or_an_id_prefix() {
        let acme = row(1, "ACME Corp");
        let q = |text: &str| {
            listing(ListQuery {
                query: Some(text.into()),
                ..Default::default()
            })
        };
        assert!(q("corp").matches(&acme));
        assert!(q(&acme.tenant_id[..6]).matches(&acme));
        assert!(!q(&acme.tenant_id[2..8]).matches(&acme));
        assert!(!q("globex").matches(&acme));
    }

    #[test]
    fn bad_limits_statuses_and_cursors_are_refused() {
        for (limit, ok) in [("0", false), ("201", false), ("x", false), ("200", true)] {
            let parsed = ListQuery {
                limit: Some(limit.into()),
                ..Default::default()
            }
            .parse();
            assert_eq!(parsed.is_ok(), ok, "{limit}");
        }
        let status = ListQuery {
            status: Some("gone".into()),
            ..Default::default()
        }
        .parse();
        assert!(matches!(status, Err(HubError::BadRequest(m)) if m.contains("active")));
        let cursor = ListQuery {
            cursor: Some("x".repeat(CURSOR_MAX_BYTES + 1)),
            ..Default::default()
        }
        .parse();
        assert!(matches!(cursor, Err(HubError::BadRequest(_))));
    }
}
