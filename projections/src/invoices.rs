//! Invoices: what a tenant was charged per billing period, derived only from
//! events.
//!
//! # Periods
//!
//! A billing period is a month in UTC starting at 00:00 on the anchor day (1–28)
//! and ending at 00:00 on the anchor day of the next month. A period's invoice
//! is a `draft` while `now < period_end + grace` and `finalized` after; the state
//! is decided at read time ([`view`]), the content is a pure function of the
//! events and of the [`Settings`].
//!
//! # Settings are part of the projection's identity
//!
//! The anchor day and the grace window decide which row an event goes to, so the
//! fold depends on them. Rather than let a setting change silently rewrite some
//! rows and not others, the settings are part of the projection's name
//! ([`Settings::projection_name`]): with other settings the hub stores (and
//! rebuilds from the start of the log) another projection, and replay compares
//! the projection of the current settings. Every period row also records the
//! anchor and grace it was cut with. Changing the anchor therefore re-cuts every
//! period, finalized ones included: choose it before invoices are handed out.
//!
//! # Rows
//!
//! - `<tenant>/<YYYY-MM-DD>` (period start): one [`InvoiceRow`] per tenant and
//!   period, with its [`Line`]s (one per model, capability, kind of usage, unit
//!   price and, for late usage, the period it is an adjustment for) and its
//!   credit entries (grants, payments, expiries, revocations, and the credit
//!   forfeited or refunded when the tenant closed, whose `at` falls in the
//!   period; information only, they are not part of the total).
//! - `<tenant>/pending`: requests in flight with their reservation's `at` and
//!   capability (a settlement names neither), removed when the request settles
//!   or its hold is released. Like `analytics`, that is a fold over two rows at
//!   once, so this module has its own [`fold`], which [`Invoices`] runs.
//!
//! # Which period a charge belongs to
//!
//! A settlement belongs to the period of its reservation `P` when it happened
//! before `P`'s end + grace (a request reserved in `P` and settled early in the
//! next period is still `P`'s); otherwise (late usage) it is an adjustment line
//! in the period holding the settlement's `at`, marked `adjustment_for: P`, and
//! `P`'s invoice is unchanged. Since the grace is shorter than any period
//! (at most [`GRACE_SECS_MAX`]), the period of a settlement is either the one of
//! its `at` or the one of `at − grace`: [`row_keys`] names both.
//!
//! Amounts in rows are exact pico-credits. Presentation rounds each line half to
//! even to [`PRESENTATION_UNIT_PICO`] and the total is the sum of the rounded
//! lines.

use crate::LoggedEvent;
use chrono::{DateTime, Datelike, Months, NaiveDate, TimeDelta, Utc};
use domain::tenant::{RemainingCredit, TenantEvent};
use domain::{Capability, Rate};
use domain::{Credits, TenantId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Base name of the projection; the stored name carries the settings.
pub const NAME: &str = "invoices";

/// The unit invoice amounts are rounded to: 10⁶ pico-credits, a micro-credit
/// (0.000001 credit).
pub const PRESENTATION_UNIT_PICO: i128 = 1_000_000;

/// Default anchor day: periods are calendar months.
pub const ANCHOR_DAY_DEFAULT: u32 = 1;
/// Default grace window after a period's end: 3 days.
pub const GRACE_SECS_DEFAULT: i64 = 3 * 24 * 3600;
/// The longest grace: shorter than the shortest month.
pub const GRACE_SECS_MAX: i64 = 27 * 24 * 3600;

/// How periods are cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Day of the month periods start on, 1–28.
    pub anchor_day: u32,
    /// Seconds after a period's end during which its invoice is a draft.
    pub grace_secs: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            anchor_day: ANCHOR_DAY_DEFAULT,
            grace_secs: GRACE_SECS_DEFAULT,
        }
    }
}

impl Settings {
    /// Settings with the anchor clamped to 1–28 and the grace to 0–[`GRACE_SECS_MAX`].
    pub fn new(anchor_day: u32, grace_secs: i64) -> Self {
        Self {
            anchor_day: anchor_day.clamp(1, 28),
            grace_secs: grace_secs.clamp(0, GRACE_SECS_MAX),
        }
    }

    /// Storage name of the projection cut with these settings.
    pub fn projection_name(&self) -> String {
        format!(
            "{NAME}:anchor={}:grace={}",
            self.anchor_day, self.grace_secs
        )
    }

    fn grace(&self) -> TimeDelta {
        TimeDelta::seconds(self.grace_secs)
    }

    /// The first day of the period holding `at`.
    pub fn period_start(&self, at: DateTime<Utc>) -> NaiveDate {
        let date = at.date_naive();
        let this_month = NaiveDate::from_ymd_opt(date.year(), date.month(), self.anchor_day)
            .expect("anchor day 1..=28 exists in every month");
        if date >= this_month {
            this_month
        } else {
            this_month - Months::new(1)
        }
    }
}

/// The first day of the period after the one starting on `start`.
pub fn next_period_start(start: NaiveDate) -> NaiveDate {
    start + Months::new(1)
}

fn instant(date: NaiveDate) -> DateTime<Utc> {
    date.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
}

/// The key of the row of `tenant`'s period starting on `start`.
pub fn period_key(tenant: TenantId, start: NaiveDate) -> String {
    format!("{tenant}/{}", start.format("%Y-%m-%d"))
}

/// The key of the pending row of `tenant`.
pub fn pending_key(tenant: TenantId) -> String {
    format!("{tenant}/pending")
}

/// The invoice id of `tenant`'s period starting on `start`: deterministic, so a
/// replay gives the same ids.
pub fn invoice_id(tenant: TenantId, start: NaiveDate) -> String {
    format!("inv_{tenant}_{}", start.format("%Y%m%d"))
}

/// The tenant and period start an invoice id names, if it is one.
pub fn parse_invoice_id(id: &str) -> Option<(TenantId, NaiveDate)> {
    let rest = id.strip_prefix("inv_")?;
    let (tenant, date) = rest.rsplit_once('_')?;
    let tenant = tenant.parse().ok()?;
    let date = NaiveDate::parse_from_str(date, "%Y%m%d").ok()?;
    Some((tenant, date))
}

/// The period a row covers and the settings it was cut with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub anchor_day: u32,
    pub grace_secs: i64,
}

/// A kind of usage, in line order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageKind {
    Input,
    CacheRead,
    CacheWrite,
    Output,
    Image,
}

impl UsageKind {
    fn label(self) -> &'static str {
        match self {
            UsageKind::Input => "input tokens",
            UsageKind::CacheRead => "cache read tokens",
            UsageKind::CacheWrite => "cache write tokens",
            UsageKind::Output => "output tokens",
            UsageKind::Image => "images",
        }
    }
}

/// A line's text: model, capability and what is counted. The capability is left
/// out when the count already names it (an image line is not "images images").
fn line_description(k: &LineKey) -> String {
    let label = k.kind.label();
    let mut description = if k.capability.is_empty() || k.capability == label {
        format!("{} {label}", k.model)
    } else {
        format!("{} {} {label}", k.model, k.capability)
    };
    if let Some(p) = &k.adjustment_for {
        description.push_str(&format!(" (late usage of the period starting {p})"));
    }
    description
}

/// What identifies a line, in sort order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LineKey {
    /// For late usage: the start (`YYYY-MM-DD`) of the period it was reserved in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjustment_for: Option<String>,
    pub model: String,
    pub capability: String,
    pub kind: UsageKind,
    /// Pico-credits per token (per image for `image`).
    pub rate: Rate,
}

/// One line of an invoice, exact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    #[serde(flatten)]
    pub key: LineKey,
    /// Tokens, or images.
    pub quantity: u64,
    /// Exact, pico-credits.
    pub amount: Credits,
}

/// A change of credit in the period (information, not charged).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditEntry {
    /// `grant`, `payment`, `expiry`, `revocation`, or (when the tenant closed)
    /// `forfeit` or `refund`.
    pub kind: String,
    /// The grant's idempotency key, the payment id, the expired grant's key, or
    /// `tenant closed`.
    pub reference: String,
    /// Exact, pico-credits; positive for grants and payments, negative for
    /// expiries, revocations, forfeits and refunds.
    pub amount: Credits,
    pub at: DateTime<Utc>,
}

/// What the pending row knows of a request in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRequest {
    pub reserved_at: DateTime<Utc>,
    pub capability: String,
}

/// A row: period rows fill `period`, `lines` and `credits`; the pending row
/// fills `pending`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceRow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<Line>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credits: Vec<CreditEntry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pending: BTreeMap<String, PendingRequest>,
}

/// The rows an event reads or writes; they depend on the event (and settings).
pub fn row_keys(settings: &Settings, event: &LoggedEvent<'_>) -> Vec<String> {
    let tenant = event.tenant_id;
    match event.event {
        TenantEvent::CreditsReserved { .. } | TenantEvent::HoldReleased { .. } => {
            vec![pending_key(tenant)]
        }
        TenantEvent::UsageSettled { at, .. } => {
            let mut keys = vec![
                pending_key(tenant),
                period_key(tenant, settings.period_start(*at)),
                period_key(tenant, settings.period_start(*at - settings.grace())),
            ];
            keys.dedup();
            keys
        }
        TenantEvent::CreditsGranted { at, .. }
        | TenantEvent::CreditsExpired { at, .. }
        | TenantEvent::CreditsRevoked { at, .. }
        | TenantEvent::CreditsClosedOut { at, .. } => {
            vec![period_key(tenant, settings.period_start(*at))]
        }
        _ => vec![],
    }
}

fn capability_name(capability: &Capability) -> String {
    serde_json::to_value(capability)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn period_row<'r>(
    rows: &'r mut BTreeMap<String, InvoiceRow>,
    settings: &Settings,
    tenant: TenantId,
    start: NaiveDate,
) -> &'r mut InvoiceRow {
    let row = rows.entry(period_key(tenant, start)).or_default();
    if row.period.is_none() {
        row.period = Some(Period {
            start: instant(start),
            end: instant(next_period_start(start)),
            anchor_day: settings.anchor_day,
            grace_secs: settings.grace_secs,
        });
    }
    row
}

fn add_line(row: &mut InvoiceRow, key: LineKey, quantity: u64) {
    let amount = key.rate.cost_of(quantity);
    match row.lines.binary_search_by(|l| l.key.cmp(&key)) {
        Ok(i) => {
            row.lines[i].quantity += quantity;
            row.lines[i].amount = row.lines[i].amount + amount;
        }
        Err(i) => row.lines.insert(
            i,
            Line {
                key,
                quantity,
                amount,
            },
        ),
    }
}

/// Folds events into rows already loaded (missing rows start empty). Never
/// panics on events it cannot place (a doomed catch-up attempt may see an event
/// twice; its result is discarded).
pub fn fold<'a>(
    settings: &Settings,
    rows: &mut BTreeMap<String, InvoiceRow>,
    events: impl IntoIterator<Item = LoggedEvent<'a>>,
) {
    for event in events {
        let tenant = event.tenant_id;
        match event.event {
            TenantEvent::CreditsReserved {
                request_id,
                capability,
                at,
                ..
            } => {
                rows.entry(pending_key(tenant)).or_default().pending.insert(
                    request_id.to_string(),
                    PendingRequest {
                        reserved_at: *at,
                        capability: capability_name(capability),
                    },
                );
            }
            TenantEvent::HoldReleased { request_id, .. } => {
                rows.entry(pending_key(tenant))
                    .or_default()
                    .pending
                    .remove(&request_id.to_string());
            }
            TenantEvent::UsageSettled {
                request_id,
                model,
                usage,
                rates,
                at,
                ..
            } => {
                let pending = rows
                    .entry(pending_key(tenant))
                    .or_default()
                    .pending
                    .remove(&request_id.to_string());
                let (reserved_at, capability) = match pending {
                    Some(p) => (p.reserved_at, p.capability),
                    // Only a doomed attempt (or a damaged log) settles an unknown
                    // request: charge it where it settled.
                    None => (*at, String::new()),
                };
                let settled_in = settings.period_start(*at);
                let reserved_in = settings.period_start(reserved_at);
                let (target, adjustment_for) = if reserved_in >= settled_in {
                    (settled_in, None)
                } else if *at < instant(next_period_start(reserved_in)) + settings.grace() {
                    // Then `reserved_in` holds `at - grace` (the grace is shorter
                    // than a period): a row `row_keys` named.
                    (reserved_in, None)
                } else {
                    (settled_in, Some(reserved_in.format("%Y-%m-%d").to_string()))
                };
                let row = period_row(rows, settings, tenant, target);
                let kinds = [
                    (UsageKind::Input, usage.input_tokens, rates.input),
                    (
                        UsageKind::CacheRead,
                        usage.cache_read_tokens,
                        rates.cache_read,
                    ),
                    (
                        UsageKind::CacheWrite,
                        usage.cache_write_tokens,
                        rates.cache_write,
                    ),
                    (UsageKind::Output, usage.output_tokens, rates.output),
                    (UsageKind::Image, usage.images, rates.image),
                ];
                for (kind, quantity, rate) in kinds {
                    if quantity == 0 {
                        continue;
                    }
                    add_line(
                        row,
                        LineKey {
                            adjustment_for: adjustment_for.clone(),
                            model: model.to_string(),
                            capability: capability.clone(),
                            kind,
                            rate,
                        },
                        quantity,
                    );
                }
            }
            TenantEvent::CreditsGranted {
                amount_pico,
                idempotency_key,
                payment,
                at,
                ..
            } => {
                let (kind, reference) = match payment {
                    Some(p) => ("payment", p.payment_id.clone()),
                    None => ("grant", idempotency_key.clone()),
                };
                period_row(rows, settings, tenant, settings.period_start(*at))
                    .credits
                    .push(CreditEntry {
                        kind: kind.into(),
                        reference,
                        amount: *amount_pico,
                        at: *at,
                    });
            }
            TenantEvent::CreditsExpired {
                grant_id,
                amount_pico,
                at,
            } => {
                period_row(rows, settings, tenant, settings.period_start(*at))
                    .credits
                    .push(CreditEntry {
                        kind: "expiry".into(),
                        reference: grant_id.clone(),
                        amount: -*amount_pico,
                        at: *at,
                    });
            }
            TenantEvent::CreditsRevoked {
                payment_id,
                amount_pico,
                at,
                ..
            } => {
                period_row(rows, settings, tenant, settings.period_start(*at))
                    .credits
                    .push(CreditEntry {
                        kind: "revocation".into(),
                        reference: payment_id.clone(),
                        amount: -*amount_pico,
                        at: *at,
                    });
            }
            TenantEvent::CreditsClosedOut {
                disposition,
                amount_pico,
                at,
            } => {
                let kind = match disposition {
                    RemainingCredit::Forfeited => "forfeit",
                    RemainingCredit::Refunded => "refund",
                };
                period_row(rows, settings, tenant, settings.period_start(*at))
                    .credits
                    .push(CreditEntry {
                        kind: kind.into(),
                        reference: "tenant closed".into(),
                        amount: -*amount_pico,
                        at: *at,
                    });
            }
            _ => {}
        }
    }
}

/// The projection cut with one [`Settings`], as the registry lists it.
pub struct Invoices {
    settings: Settings,
    /// [`Settings::projection_name`], kept: the projector names it on every pass.
    name: String,
}

impl Invoices {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            name: settings.projection_name(),
        }
    }
}

impl crate::Projection for Invoices {
    type Row = InvoiceRow;

    fn name(&self) -> &str {
        &self.name
    }

    fn row_keys(&self, event: &LoggedEvent<'_>) -> Vec<String> {
        row_keys(&self.settings, event)
    }

    fn fold<'a>(
        &self,
        rows: &mut BTreeMap<String, InvoiceRow>,
        events: impl IntoIterator<Item = LoggedEvent<'a>>,
    ) {
        fold(&self.settings, rows, events)
    }
}

/// `amount` rounded half to even to a whole number of [`PRESENTATION_UNIT_PICO`].
pub fn round_half_even(amount: Credits) -> Credits {
    let pico = amount.pico();
    let unit = PRESENTATION_UNIT_PICO;
    let q = pico.div_euclid(unit);
    let r = pico.rem_euclid(unit);
    let q = match (2 * r).cmp(&unit) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
    };
    Credits::from_pico(q * unit)
}

/// `draft` or `finalized`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    Finalized,
}

/// A line as presented.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LineView {
    pub description: String,
    pub model: String,
    pub capability: String,
    pub kind: UsageKind,
    pub quantity: u64,
    /// Credits per million tokens, or per image.
    pub unit_price: String,
    /// Rounded to [`PRESENTATION_UNIT_PICO`], credits.
    pub amount: String,
    /// Exact, credits.
    pub exact_amount: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adjustment_for: Option<String>,
}

/// A credit entry as presented.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CreditView {
    pub kind: String,
    pub reference: String,
    pub amount: String,
    pub at: String,
}

/// An invoice as presented at `now`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InvoiceView {
    pub id: String,
    pub tenant_id: String,
    pub period_start: String,
    pub period_end: String,
    pub status: Status,
    pub finalizes_at: String,
    pub anchor_day: u32,
    pub grace_secs: i64,
    pub lines: Vec<LineView>,
    /// Sum of the rounded line amounts, credits.
    pub total: String,
    pub credits_applied: Vec<CreditView>,
}

/// The rounded amounts of `row`'s lines and their sum.
pub fn rounded_total(row: &InvoiceRow) -> Credits {
    row.lines
        .iter()
        .map(|l| round_half_even(l.amount))
        .fold(Credits::ZERO, |a, b| a + b)
}

/// Presents a period row at `now`; `None` for a row that is not a period row.
pub fn view(tenant: TenantId, row: &InvoiceRow, now: DateTime<Utc>) -> Option<InvoiceView> {
    let period = row.period.as_ref()?;
    let finalizes_at = period.end + TimeDelta::seconds(period.grace_secs);
    let start = period.start.date_naive();
    let lines = row
        .lines
        .iter()
        .map(|l| {
            let k = &l.key;
            let unit_price = match k.kind {
                UsageKind::Image => Credits::from_pico(k.rate.pico_per_token()).to_decimal_string(),
                _ => k.rate.to_per_million_string(),
            };
            LineView {
                description: line_description(k),
                model: k.model.clone(),
                capability: k.capability.clone(),
                kind: k.kind,
                quantity: l.quantity,
                unit_price,
                amount: round_half_even(l.amount).to_decimal_string(),
                exact_amount: l.amount.to_decimal_string(),
                adjustment_for: k
                    .adjustment_for
                    .as_ref()
                    .and_then(|p| NaiveDate::parse_from_str(p, "%Y-%m-%d").ok())
                    .map(|p| invoice_id(tenant, p)),
            }
        })
        .collect();
    Some(InvoiceView {
        id: invoice_id(tenant, start),
        tenant_id: tenant.to_string(),
        period_start: period.start.to_rfc3339(),
        period_end: period.end.to_rfc3339(),
        status: if now < finalizes_at {
            Status::Draft
        } else {
            Status::Finalized
        },
        finalizes_at: finalizes_at.to_rfc3339(),
        anchor_day: period.anchor_day,
        grace_secs: period.grace_secs,
        lines,
        total: rounded_total(row).to_decimal_string(),
        credits_applied: row
            .credits
            .iter()
            .map(|c| CreditView {
                kind: c.kind.clone(),
                reference: c.reference.clone(),
                amount: c.amount.to_decimal_string(),
                at: c.at.to_rfc3339(),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use domain::tenant::PaymentRef;
    use domain::{Ingress, InstanceId, KeyId, ModelId, Rates, RequestId, Usage};
    use proptest::prelude::*;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    fn rates() -> Rates {
        Rates {
            input: Rate::from_pico_per_token(1_500_000),
            output: Rate::from_pico_per_token(6_000_000),
            cache_read: Rate::from_pico_per_token(750_000),
            cache_write: Rate::from_pico_per_token(1_500_000),
            image: Rate::default(),
        }
    }

    fn reserved(request: RequestId, when: DateTime<Utc>) -> TenantEvent {
        TenantEvent::CreditsReserved {
            request_id: request,
            key_id: KeyId::new_random(),
            model: ModelId::parse("mock/one").unwrap(),
            capability: Capability::Chat,
            ingress: Ingress::Openai,
            app: None,
            price_version: 1,
            rates: rates(),
            hold_pico: Credits::from_pico(1),
            prompt_bytes: 1,
            max_output_tokens: 1,
            images_requested: 0,
            instance_id: InstanceId::new_random(),
            expires_at: when + TimeDelta::minutes(15),
            project: None,
            end_user: None,
            scopes_checked: Vec::new(),
            at: when,
        }
    }

    fn settled(
        request: RequestId,
        model: &str,
        usage: Usage,
        rates: Rates,
        when: DateTime<Utc>,
    ) -> TenantEvent {
        TenantEvent::UsageSettled {
            request_id: request,
            key_id: KeyId::new_random(),
            provider: "mock".into(),
            model: ModelId::parse(model).unwrap(),
            usage,
            price_version: 1,
            rates,
            terms: domain::ChargeTerms::sold_directly(rates),
            cost_pico: rates.cost_of(&usage),
            provider_cost_pico: rates.cost_of(&usage),
            hold_pico: Credits::from_pico(1),
            overshoot_pico: Credits::ZERO,
            upstream_latency_ms: 1,
            at: when,
        }
    }

    fn usage(input: u64, cache_read: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            cache_read_tokens: cache_read,
            cache_write_tokens: 0,
            output_tokens: output,
            reasoning_tokens: 0,
            estimated: false,
            images: 0,
        }
    }

    fn logged(tenant: TenantId, events: &[TenantEvent]) -> Vec<LoggedEvent<'_>> {
        events
            .iter()
            .enumerate()
            .map(|(i, event)| LoggedEvent {
                tenant_id: tenant,
                sequence: i + 1,
                event,
                recorded_at: event.at(),
            })
            .collect()
    }

    fn fold_all(
        settings: &Settings,
        tenant: TenantId,
        events: &[TenantEvent],
    ) -> BTreeMap<String, InvoiceRow> {
        let mut rows = BTreeMap::new();
        fold(settings, &mut rows, logged(tenant, events));
        rows
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn periods_follow_the_anchor_day() {
        let s = Settings::default();
        assert_eq!(s.period_start(at(2026, 3, 1, 0)), date(2026, 3, 1));
        assert_eq!(s.period_start(at(2026, 2, 28, 23)), date(2026, 2, 1));
        let s = Settings::new(15, 0);
        assert_eq!(s.period_start(at(2026, 3, 14, 23)), date(2026, 2, 15));
        assert_eq!(s.period_start(at(2026, 3, 15, 0)), date(2026, 3, 15));
        assert_eq!(s.period_start(at(2026, 1, 2, 0)), date(2025, 12, 15));
        assert_eq!(Settings::new(31, -5), Settings::new(28, 0));
        let tenant = TenantId::new_random();
        let id = invoice_id(tenant, date(2026, 2, 15));
        assert_eq!(id, format!("inv_{tenant}_20260215"));
        assert_eq!(parse_invoice_id(&id), Some((tenant, date(2026, 2, 15))));
        assert_eq!(parse_invoice_id("inv_nope_20260215"), None);
    }

    #[test]
    fn half_even_rounding_to_micro_credits() {
        let r = |p: i128| round_half_even(Credits::from_pico(p)).pico();
        assert_eq!(r(0), 0);
        assert_eq!(r(499_999), 0);
        assert_eq!(r(500_000), 0, "exact half, 0 is even");
        assert_eq!(r(500_001), 1_000_000);
        assert_eq!(r(1_500_000), 2_000_000, "exact half, 2 is even");
        assert_eq!(r(2_500_000), 2_000_000, "exact half, 2 is even");
        assert_eq!(r(3_500_000), 4_000_000);
        assert_eq!(r(2_499_999), 2_000_000);
        assert_eq!(r(-500_000), 0);
        assert_eq!(r(-1_500_000), -2_000_000);
        assert_eq!(r(7_000_000), 7_000_000);
    }

    #[test]
    fn lines_per_model_capability_kind_and_rate_and_total_of_rounded_lines() {
        let tenant = TenantId::new_random();
        let s = Settings::default();
        let (a, b, c) = (
            RequestId::new_random(),
            RequestId::new_random(),
            RequestId::new_random(),
        );
        let cheap = Rates {
            input: Rate::from_pico_per_token(1),
            output: Rate::from_pico_per_token(1),
            cache_read: Rate::from_pico_per_token(1),
            cache_write: Rate::from_pico_per_token(1),
            image: Rate::default(),
        };
        let events = vec![
            TenantEvent::CreditsGranted {
                amount_pico: Credits::from_whole_credits(10),
                idempotency_key: "k1".into(),
                reason: "promo".into(),
                expires_at: None,
                payment: None,
                at: at(2026, 1, 2, 0),
            },
            TenantEvent::CreditsGranted {
                amount_pico: Credits::from_whole_credits(5),
                idempotency_key: "evt_1".into(),
                reason: "payment".into(),
                expires_at: None,
                payment: Some(PaymentRef {
                    payment_event_id: "evt_1".into(),
                    payment_id: "pay_1".into(),
                }),
                at: at(2026, 1, 3, 0),
            },
            reserved(a, at(2026, 1, 5, 0)),
            reserved(b, at(2026, 1, 6, 0)),
            reserved(c, at(2026, 1, 7, 0)),
            settled(
                a,
                "mock/one",
                usage(100, 10, 50),
                rates(),
                at(2026, 1, 5, 0),
            ),
            settled(b, "mock/one", usage(1, 0, 1), rates(), at(2026, 1, 6, 0)),
            // 1 500 000 pico: an exact half of a micro-credit after another model.
            settled(
                c,
                "mock/two",
                usage(0, 0, 1_500_000),
                cheap,
                at(2026, 1, 7, 0),
            ),
        ];
        let rows = fold_all(&s, tenant, &events);
        let row = &rows[&period_key(tenant, date(2026, 1, 1))];
        assert!(rows[&pending_key(tenant)].pending.is_empty());
        let got: Vec<(String, UsageKind, u64, i128)> = row
            .lines
            .iter()
            .map(|l| (l.key.model.clone(), l.key.kind, l.quantity, l.amount.pico()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("mock/one".into(), UsageKind::Input, 101, 151_500_000),
                ("mock/one".into(), UsageKind::CacheRead, 10, 7_500_000),
                ("mock/one".into(), UsageKind::Output, 51, 306_000_000),
                ("mock/two".into(), UsageKind::Output, 1_500_000, 1_500_000),
            ]
        );
        let v = view(tenant, row, at(2026, 1, 20, 0)).unwrap();
        assert_eq!(v.id, invoice_id(tenant, date(2026, 1, 1)));
        assert_eq!(v.status, Status::Draft);
        assert_eq!(v.period_start, "2026-01-01T00:00:00+00:00");
        assert_eq!(v.period_end, "2026-02-01T00:00:00+00:00");
        assert_eq!(v.lines[0].unit_price, "1.5");
        assert_eq!(v.lines[0].description, "mock/one chat input tokens");
        assert_eq!(v.lines[0].amount, "0.000152", "151.5 micro → 152 (even)");
        assert_eq!(v.lines[1].amount, "0.000008", "7.5 micro → 8 (even)");
        assert_eq!(v.lines[2].amount, "0.000306");
        assert_eq!(v.lines[3].amount, "0.000002", "1.5 micro → 2 (even)");
        assert_eq!(v.lines[3].exact_amount, "0.0000015");
        assert_eq!(v.total, "0.000468", "152 + 8 + 306 + 2");
        assert_eq!(
            v.credits_applied
                .iter()
                .map(|c| (c.kind.as_str(), c.reference.as_str(), c.amount.as_str()))
                .collect::<Vec<_>>(),
            vec![("grant", "k1", "10"), ("payment", "pay_1", "5")]
        );
        // Finalized after the end + 3 days of grace; the content is the same.
        let later = view(tenant, row, at(2026, 2, 4, 0)).unwrap();
        assert_eq!(later.status, Status::Finalized);
        assert_eq!(later.lines, v.lines);
        assert_eq!(
            view(tenant, row, at(2026, 2, 3, 23)).unwrap().status,
            Status::Draft
        );
    }

    #[test]
    fn usage_settled_within_grace_belongs_to_the_reservation_period_late_usage_is_an_adjustment() {
        let tenant = TenantId::new_random();
        let s = Settings::default();
        let (early, late, next) = (
            RequestId::new_random(),
            RequestId::new_random(),
            RequestId::new_random(),
        );
        let events = vec![
            reserved(early, at(2026, 1, 31, 23)),
            reserved(late, at(2026, 1, 31, 23)),
            // Within January's grace (ends 2026-02-04T00): January's.
            settled(
                early,
                "mock/one",
                usage(10, 0, 0),
                rates(),
                at(2026, 2, 3, 23),
            ),
            reserved(next, at(2026, 2, 3, 0)),
            settled(
                next,
                "mock/one",
                usage(10, 0, 0),
                rates(),
                at(2026, 2, 3, 1),
            ),
            // After it: an adjustment in February's draft.
            settled(
                late,
                "mock/one",
                usage(20, 0, 0),
                rates(),
                at(2026, 2, 4, 0),
            ),
        ];
        let rows = fold_all(&s, tenant, &events);
        let jan = &rows[&period_key(tenant, date(2026, 1, 1))];
        let feb = &rows[&period_key(tenant, date(2026, 2, 1))];
        assert_eq!(jan.lines.len(), 1);
        assert_eq!(jan.lines[0].quantity, 10);
        assert_eq!(jan.lines[0].key.adjustment_for, None);
        assert_eq!(feb.lines.len(), 2);
        assert_eq!(feb.lines[0].key.adjustment_for, None);
        assert_eq!(feb.lines[0].quantity, 10);
        assert_eq!(
            feb.lines[1].key.adjustment_for.as_deref(),
            Some("2026-01-01")
        );
        assert_eq!(feb.lines[1].quantity, 20);
        let v = view(tenant, feb, at(2026, 2, 10, 0)).unwrap();
        assert_eq!(
            v.lines[1].adjustment_for,
            Some(invoice_id(tenant, date(2026, 1, 1)))
        );
        assert!(v.lines[1].description.contains("late usage"));
        // Every row the fold wrote was named by row_keys.
        let keys: std::collections::BTreeSet<String> = logged(tenant, &events)
            .iter()
            .flat_map(|e| row_keys(&s, e))
            .collect();
        assert!(rows.keys().all(|k| keys.contains(k)));
    }

    #[test]
    fn folding_page_by_page_equals_folding_at_once() {
        let tenant = TenantId::new_random();
        let s = Settings::new(10, 3600);
        let r = RequestId::new_random();
        let events = vec![
            reserved(r, at(2026, 1, 9, 23)),
            settled(r, "mock/one", usage(3, 2, 1), rates(), at(2026, 1, 10, 0)),
            TenantEvent::CreditsExpired {
                grant_id: "g".into(),
                amount_pico: Credits::from_pico(7),
                at: at(2026, 1, 11, 0),
            },
        ];
        let all = crate::encode_rows::<Invoices>(&fold_all(&s, tenant, &events));
        let invoices = Invoices::new(s);
        for split in 0..=events.len() {
            let mut rebuild = crate::replay::Rebuild::new(&invoices);
            let logged = logged(tenant, &events);
            rebuild.apply_page(&logged[..split]);
            rebuild.apply_page(&logged[split..]);
            assert_eq!(rebuild.encoded_rows(), all, "split at {split}");
        }
        for text in all.values() {
            let row: InvoiceRow = serde_json::from_str(text).unwrap();
            assert_eq!(&serde_json::to_string(&row).unwrap(), text);
        }
        // Reserved in the period starting 2025-12-10, settled within its grace.
        assert!(all.contains_key(&period_key(tenant, date(2025, 12, 10))));
        assert!(all[&period_key(tenant, date(2025, 12, 10))].contains("\"anchor_day\":10"));
    }

    proptest! {
        #[test]
        fn the_total_is_the_sum_of_the_rounded_lines(
            requests in proptest::collection::vec(
                (0u64..3_000_000, 0u64..100_000, 0u64..1_000_000, 0u64..5, 0i128..20_000_000, 0usize..3),
                1..20,
            )
        ) {
            let tenant = TenantId::new_random();
            let s = Settings::default();
            let mut events = Vec::new();
            let mut exact = Credits::ZERO;
            for (i, (input, cache, output, images, rate, model)) in requests.into_iter().enumerate() {
                let r = RequestId::new_random();
                let rates = Rates {
                    input: Rate::from_pico_per_token(rate),
                    output: Rate::from_pico_per_token(rate * 4 + 1),
                    cache_read: Rate::from_pico_per_token(rate / 10),
                    cache_write: Rate::from_pico_per_token(rate),
                    image: Rate::from_pico_per_token(rate * 1_000 + 3),
                };
                let mut u = usage(input, cache, output);
                u.images = images;
                exact = exact + rates.cost_of(&u);
                let when = at(2026, 3, 1, 0) + TimeDelta::minutes(i as i64);
                events.push(reserved(r, when));
                events.push(settled(r, ["m/a", "m/b", "m/c"][model], u, rates, when));
            }
            let rows = fold_all(&s, tenant, &events);
            let row = &rows[&period_key(tenant, date(2026, 3, 1))];
            let v = view(tenant, row, at(2026, 3, 2, 0)).unwrap();
            let sum_exact = row.lines.iter().map(|l| l.amount).fold(Credits::ZERO, |a, b| a + b);
            prop_assert_eq!(sum_exact, exact, "lines hold every pico-credit charged");
            let sum_rounded = row.lines.iter().map(|l| round_half_even(l.amount)).fold(Credits::ZERO, |a, b| a + b);
            prop_assert_eq!(v.total.clone(), sum_rounded.to_decimal_string());
            let sum_shown: i128 = v.lines.iter().map(|l| Credits::parse(&l.amount).unwrap().pico()).sum();
            prop_assert_eq!(Credits::from_pico(sum_shown).to_decimal_string(), v.total);
            prop_assert!(row.lines.iter().all(|l| l.quantity > 0));
            let error = (sum_rounded.pico() - exact.pico()).abs();
            prop_assert!(error * 2 <= PRESENTATION_UNIT_PICO * row.lines.len() as i128);
        }
    }

    #[test]
    fn an_image_line_says_images_once() {
        let key = |capability: &str, kind| LineKey {
            adjustment_for: None,
            model: "openai/gpt-image-1".into(),
            capability: capability.into(),
            kind,
            rate: Rate::from_pico_per_token(1),
        };
        assert_eq!(
            line_description(&key("images", UsageKind::Image)),
            "openai/gpt-image-1 images"
        );
        assert_eq!(
            line_description(&key("images", UsageKind::Input)),
            "openai/gpt-image-1 images input tokens"
        );
    }
}
