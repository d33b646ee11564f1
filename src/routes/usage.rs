//! Usage analytics reads: `GET /v1/billing/usage` (keys with `ReadBilling`) and
//! `GET /admin/v1/tenants/{id}/usage` (the operator), from the `analytics`
//! projection (`projections::analytics`), grouped at read time.
//!
//! Query: `from`, `to` (RFC 3339 times or `YYYY-MM-DD` dates in `tz`; default the
//! last [`USAGE_DEFAULT_RANGE_DAYS`] days), `group_by` (comma-separated of
//! [`GROUP_KEYS`]; default `day`; empty: one row of totals), `tz` (an IANA zone
//! such as `Asia/Shanghai`, or a fixed offset `+08:00`; default UTC).
//!
//! The projection counts requests per UTC hour (the hour a request finished), so
//! a range is whole UTC hours: `from` is rounded down to its hour, and an hour is
//! included when it starts before `to`. Each UTC hour is given to the local hour
//! and day in which it starts; for zones with whole-hour offsets that is exact,
//! for 30- and 45-minute offsets (`+05:30`, `+05:45`) the hour 18:00–19:00 UTC
//! counts as local 23:00 (it starts at 23:30) and on that day.

use super::csv::{number_cell, text_cell};
use super::tenant_path;
use crate::actors::TenantOp;
use crate::auth::{check_operator, presented_key};
use crate::error::HubError;
use crate::hub::Hub;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{
    DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone, Timelike, Utc,
};
use domain::{Permission, TenantId};
use projections::analytics::{self, AnalyticsRow, Counters, UsageEntry};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The longest range one read covers.
pub(crate) const USAGE_RANGE_MAX_DAYS: i64 = 93;
/// The range read when `from` is absent.
pub(crate) const USAGE_DEFAULT_RANGE_DAYS: i64 = 30;
/// The most rows one answer holds; more is a 400 asking for a narrower query.
pub(crate) const USAGE_ROWS_MAX: usize = 10_000;
/// Hour rows asked of the store per query (bounds the `IN` list).
const HOUR_KEYS_PER_READ: usize = 500;

/// What `group_by` accepts.
pub(crate) const GROUP_KEYS: [&str; 9] = [
    "key",
    "project",
    "end_user",
    "app",
    "provider",
    "model",
    "capability",
    "hour",
    "day",
];

/// The figures of each row after its group keys, in CSV column order.
const METRICS: [&str; 14] = [
    "requests",
    "successes",
    "failures",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "images",
    "amount",
    "provider_cost",
    "margin",
    "latency_p50_ms",
    "latency_p95_ms",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    group_by: Option<String>,
    tz: Option<String>,
}

/// `GET /v1/billing/usage`, for `admin`, `billing` and `auditor` keys.
pub(crate) async fn usage(hub: web::Data<Hub>, req: HttpRequest) -> Result<HttpResponse, HubError> {
    let key = presented_key(&req)?;
    let auth = Some(hub.key_auth(&key, Permission::ReadBilling));
    hub.call_tenant(key.tenant_id, TenantOp::Read { auth })
        .await?;
    answer(&hub, &req, key.tenant_id).await
}

/// `GET /admin/v1/tenants/{id}/usage`, for the operator.
pub(crate) async fn admin_usage(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, HubError> {
    check_operator(&req, hub.operator_token())?;
    let tenant_id = tenant_path(&path)?;
    hub.call_tenant(tenant_id, TenantOp::Read { auth: None })
        .await?;
    answer(&hub, &req, tenant_id).await
}

/// A `tz`: an IANA zone or a fixed offset.
#[derive(Clone, Copy, Debug)]
enum Zone {
    Fixed(FixedOffset),
    Iana(chrono_tz::Tz),
}

impl Zone {
    fn parse(raw: Option<&str>) -> Result<Self, HubError> {
        let raw = raw.unwrap_or("UTC");
        if raw.eq_ignore_ascii_case("utc") || raw == "Z" {
            return Ok(Zone::Fixed(FixedOffset::east_opt(0).expect("zero offset")));
        }
        if raw.starts_with('+') || raw.starts_with('-') {
            return parse_offset(raw).map(Zone::Fixed).ok_or_else(|| {
                HubError::BadRequest(format!(
                    "`tz` {raw:?} is not an offset like +08:00 or -03:30 (at most ±23:59)"
                ))
            });
        }
        raw.parse::<chrono_tz::Tz>().map(Zone::Iana).map_err(|_| {
            HubError::BadRequest(format!(
                "`tz` {raw:?} is neither an IANA time zone (like Asia/Shanghai) nor an offset like +08:00"
            ))
        })
    }

    fn local(&self, at: DateTime<Utc>) -> DateTime<FixedOffset> {
        match self {
            Zone::Fixed(offset) => at.with_timezone(offset),
            Zone::Iana(tz) => at.with_timezone(tz).fixed_offset(),
        }
    }

    /// The instant of a local midnight (the earliest, if the clock repeats it; the
    /// first instant after it, if the clock skips it).
    fn midnight(&self, date: NaiveDate) -> Option<DateTime<Utc>> {
        let naive = date.and_time(NaiveTime::MIN);
        let at = |n: NaiveDateTime| match self {
            Zone::Fixed(offset) => offset
                .from_local_datetime(&n)
                .earliest()
                .map(|t| t.with_timezone(&Utc)),
            Zone::Iana(tz) => tz
                .from_local_datetime(&n)
                .earliest()
                .map(|t| t.with_timezone(&Utc)),
        };
        at(naive).or_else(|| (1..=3).find_map(|h| at(naive + TimeDelta::hours(h))))
    }
}

fn parse_offset(raw: &str) -> Option<FixedOffset> {
    let (sign, rest) = raw.split_at(1);
    let (h, m) = rest.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: i32 = h.parse().ok()?;
    let m: i32 = m.parse().ok()?;
    if h > 23 || m > 59 {
        return None;
    }
    let secs = (h * 60 + m) * 60;
    FixedOffset::east_opt(if sign == "-" { -secs } else { secs })
}

/// A `from` or `to`: an RFC 3339 time, or a date in the zone (as `to`, the day is
/// included: its end is the next midnight).
fn parse_bound(name: &str, raw: &str, zone: &Zone, end: bool) -> Result<DateTime<Utc>, HubError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    let bad = || {
        HubError::BadRequest(format!(
            "`{name}` {raw:?} is neither an RFC 3339 time (2026-01-31T00:00:00Z) nor a date (2026-01-31)"
        ))
    };
    let date = NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| bad())?;
    let date = if end {
        date.succ_opt().ok_or_else(bad)?
    } else {
        date
    };
    zone.midnight(date).ok_or_else(bad)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum GroupKey {
    Key,
    Project,
    EndUser,
    App,
    Provider,
    Model,
    Capability,
    Hour,
    Day,
}

fn parse_group_by(raw: Option<&str>) -> Result<Vec<(GroupKey, &'static str)>, HubError> {
    let raw = raw.unwrap_or("day");
    let mut keys = Vec::new();
    if raw.trim().is_empty() {
        return Ok(keys);
    }
    for part in raw.split(',') {
        let part = part.trim();
        let key = match part {
            "key" => GroupKey::Key,
            "project" => GroupKey::Project,
            "end_user" => GroupKey::EndUser,
            "app" => GroupKey::App,
            "provider" => GroupKey::Provider,
            "model" => GroupKey::Model,
            "capability" => GroupKey::Capability,
            "hour" => GroupKey::Hour,
            "day" => GroupKey::Day,
            _ => {
                return Err(HubError::BadRequest(format!(
                    "`group_by` {part:?} is not one of {}",
                    GROUP_KEYS.join(", ")
                )))
            }
        };
        if keys.iter().any(|(k, _)| *k == key) {
            return Err(HubError::BadRequest(format!(
                "`group_by` names {part:?} twice"
            )));
        }
        let name = GROUP_KEYS
            .iter()
            .find(|n| **n == part)
            .expect("matched above");
        keys.push((key, *name));
    }
    Ok(keys)
}

/// The parsed query: a range of whole UTC hours, a zone, the grouping.
struct Plan {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    zone: Zone,
    tz: String,
    group_by: Vec<(GroupKey, &'static str)>,
}

fn plan(req: &HttpRequest, now: DateTime<Utc>) -> Result<Plan, HubError> {
    let query = web::Query::<UsageQuery>::from_query(req.query_string())
        .map_err(|e| HubError::BadRequest(format!("query: {e}")))?
        .into_inner();
    let zone = Zone::parse(query.tz.as_deref())?;
    let group_by = parse_group_by(query.group_by.as_deref())?;
    let to = match query.to.as_deref() {
        Some(raw) => parse_bound("to", raw, &zone, true)?,
        None => now,
    };
    let from = match query.from.as_deref() {
        Some(raw) => parse_bound("from", raw, &zone, false)?,
        None => to - TimeDelta::days(USAGE_DEFAULT_RANGE_DAYS),
    };
    let from = analytics::hour_start(from);
    if from >= to {
        return Err(HubError::BadRequest("`from` must be before `to`".into()));
    }
    if to - from > TimeDelta::days(USAGE_RANGE_MAX_DAYS) {
        return Err(HubError::BadRequest(format!(
            "the range from `from` to `to` is longer than {USAGE_RANGE_MAX_DAYS} days"
        )));
    }
    Ok(Plan {
        from,
        to,
        zone,
        tz: query.tz.unwrap_or_else(|| "UTC".into()),
        group_by,
    })
}

type Groups = BTreeMap<Vec<Option<String>>, Counters>;

async fn grouped(hub: &Hub, tenant_id: TenantId, plan: &Plan) -> Result<Groups, HubError> {
    let mut keys = Vec::new();
    let mut hour = plan.from;
    while hour < plan.to {
        keys.push(analytics::hour_key(tenant_id, hour));
        hour += TimeDelta::hours(1);
    }
    let mut groups = Groups::new();
    for chunk in keys.chunks(HOUR_KEYS_PER_READ) {
        let rows = hub
            .read_models()
            .projection_rows_by_keys(analytics::NAME, chunk)
            .await?;
        for (key, payload) in rows {
            let Some(start) = analytics::hour_of_key(&key) else {
                continue;
            };
            let row: AnalyticsRow = serde_json::from_str(&payload)
                .map_err(|e| HubError::Internal(format!("analytics row {key}: {e}")))?;
            let local = plan.zone.local(start);
            for entry in &row.usage {
                let group = plan
                    .group_by
                    .iter()
                    .map(|(k, _)| group_value(*k, entry, local))
                    .collect();
                groups.entry(group).or_default().add(&entry.counters);
                if groups.len() > USAGE_ROWS_MAX {
                    return Err(HubError::BadRequest(format!(
                        "the answer would have more than {USAGE_ROWS_MAX} rows: narrow the range or group by fewer keys"
                    )));
                }
            }
        }
    }
    if plan.group_by.is_empty() {
        // No grouping is one row of totals, zeros when nothing was used.
        groups.entry(Vec::new()).or_default();
    }
    Ok(groups)
}

fn group_value(key: GroupKey, entry: &UsageEntry, local: DateTime<FixedOffset>) -> Option<String> {
    let d = &entry.dims;
    match key {
        GroupKey::Key => Some(d.key_id.clone()),
        GroupKey::Project => d.project.clone(),
        GroupKey::EndUser => d.end_user.clone(),
        GroupKey::App => d.app.clone(),
        GroupKey::Provider => Some(d.provider.clone()),
        GroupKey::Model => Some(d.model.clone()),
        GroupKey::Capability => Some(d.capability.clone()),
        GroupKey::Hour => Some(
            local
                .with_minute(0)
                .and_then(|t| t.with_second(0))
                .unwrap_or(local)
                .to_rfc3339(),
        ),
        GroupKey::Day => Some(local.format("%Y-%m-%d").to_string()),
    }
}

fn metrics(c: &Counters) -> [Value; 14] {
    [
        json!(c.requests),
        json!(c.successes),
        json!(c.failures),
        json!(c.input_tokens),
        json!(c.cache_read_tokens),
        json!(c.cache_write_tokens),
        json!(c.output_tokens),
        json!(c.reasoning_tokens),
        json!(c.images),
        json!(c.amount.to_decimal_string()),
        json!(c.provider_cost.to_decimal_string()),
        json!((c.amount - c.provider_cost).to_decimal_string()),
        json!(c.latency_percentile_ms(50)),
        json!(c.latency_percentile_ms(95)),
    ]
}

async fn answer(
    hub: &Hub,
    req: &HttpRequest,
    tenant_id: TenantId,
) -> Result<HttpResponse, HubError> {
    let plan = plan(req, hub.now())?;
    let groups = grouped(hub, tenant_id, &plan).await?;
    let wants_csv = req
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("text/csv"));
    if wants_csv {
        return Ok(HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .body(csv(&plan, &groups)));
    }
    let data: Vec<Value> = groups
        .iter()
        .map(|(group, counters)| {
            let mut row = Map::new();
            for ((_, name), value) in plan.group_by.iter().zip(group) {
                row.insert((*name).to_string(), json!(value));
            }
            for (name, value) in METRICS.iter().zip(metrics(counters)) {
                row.insert((*name).to_string(), value);
            }
            Value::Object(row)
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "tenant_id": tenant_id.to_string(),
        "from": plan.from.to_rfc3339(),
        "to": plan.to.to_rfc3339(),
        "tz": plan.tz,
        "group_by": plan.group_by.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        "data": data,
    })))
}

fn csv(plan: &Plan, groups: &Groups) -> String {
    let header: Vec<&str> = plan
        .group_by
        .iter()
        .map(|(_, n)| *n)
        .chain(METRICS)
        .collect();
    let mut out = header.join(",");
    out.push_str("\r\n");
    for (group, counters) in groups {
        let fields: Vec<String> = group
            .iter()
            .map(|v| text_cell(v.as_deref().unwrap_or("")))
            .chain(metrics(counters).iter().map(|v| match v {
                Value::String(s) => number_cell(s),
                Value::Null => String::new(),
                other => other.to_string(),
            }))
            .collect();
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_zones_parse() {
        assert!(
            matches!(Zone::parse(Some("+05:45")), Ok(Zone::Fixed(o)) if o.local_minus_utc() == 20_700)
        );
        assert!(
            matches!(Zone::parse(Some("-03:30")), Ok(Zone::Fixed(o)) if o.local_minus_utc() == -12_600)
        );
        assert!(matches!(
            Zone::parse(Some("Asia/Shanghai")),
            Ok(Zone::Iana(_))
        ));
        for bad in ["+8", "+24:00", "Mars/Base", "+08:60"] {
            assert!(Zone::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_utc_hour_goes_to_the_local_hour_it_starts_in() {
        let zone = Zone::parse(Some("+05:30")).unwrap();
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 18, 0, 0).unwrap();
        let entry = UsageEntry {
            dims: Default::default(),
            counters: Counters::default(),
        };
        let local = zone.local(start);
        assert_eq!(
            group_value(GroupKey::Hour, &entry, local).unwrap(),
            "2026-01-01T23:00:00+05:30"
        );
        assert_eq!(
            group_value(GroupKey::Day, &entry, local).unwrap(),
            "2026-01-01"
        );
        let ny = Zone::parse(Some("America/New_York")).unwrap();
        assert_eq!(
            group_value(
                GroupKey::Day,
                &entry,
                ny.local(start - TimeDelta::hours(18))
            )
            .unwrap(),
            "2025-12-31"
        );
    }
}
