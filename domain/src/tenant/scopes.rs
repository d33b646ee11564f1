//! A key's scopes: which models it may call, how much it may spend per calendar
//! period, how fast, how many requests at once, and until when.
//!
//! They are decided in the same decision as the tenant's wallet hold
//! ([`crate::tenant::Tenant::decide`] on `ReserveCredits`), from the tenant's own
//! state, so they hold exactly under any concurrency and across processes. Every
//! window is computed from the events' own times (`at`), never a wall clock, so
//! replay rebuilds the same tallies.

use crate::ids::ModelId;
use crate::money::Credits;
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// Model patterns one scope may list.
pub const SCOPE_MODELS_MAX: usize = 64;
/// Longest model pattern, in characters.
pub const MODEL_PATTERN_MAX_CHARS: usize = 200;

/// What a key may do, every field optional: `None` is no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scopes {
    /// Model ids or patterns with one trailing `*` (`openai/*`,
    /// `anthropic/claude-*`). `None`: every model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Requests admitted per calendar minute (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens (input and output) settled per calendar minute (UTC); a request is
    /// refused once the minute's tokens reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Requests in flight (open holds) at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// From this time on the key is refused (401 `key_expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// A change to some of a key's scopes: `None` leaves a field as it is,
/// `Some(None)` removes its limit, `Some(Some(v))` sets it. Merged in the tenant's
/// decision, so two changes to different fields never undo each other.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopesPatch {
    pub models: Option<Option<Vec<String>>>,
    pub budget: Option<Option<Budget>>,
    pub rpm: Option<Option<u32>>,
    pub tpm: Option<Option<u64>>,
    pub max_concurrent: Option<Option<u32>>,
    pub expires_at: Option<Option<DateTime<Utc>>>,
}

impl Scopes {
    /// The names of the limits that are set, in the order they are checked
    /// (`expires_at` first: it is checked before any other).
    pub fn limits(&self) -> impl Iterator<Item = &'static str> {
        [
            ("expires_at", self.expires_at.is_some()),
            ("models", self.models.is_some()),
            ("max_concurrent", self.max_concurrent.is_some()),
            ("rpm", self.rpm.is_some()),
            ("tpm", self.tpm.is_some()),
            ("budget", self.budget.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
    }
}

impl ScopesPatch {
    /// Every field set to `scopes`' value: replaces the scopes whole.
    pub fn replacing_with(scopes: Scopes) -> ScopesPatch {
        ScopesPatch {
            models: Some(scopes.models),
            budget: Some(scopes.budget),
            rpm: Some(scopes.rpm),
            tpm: Some(scopes.tpm),
            max_concurrent: Some(scopes.max_concurrent),
            expires_at: Some(scopes.expires_at),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == ScopesPatch::default()
    }

    /// `scopes` with this change made.
    pub fn applied_to(self, scopes: &Scopes) -> Scopes {
        Scopes {
            models: self.models.unwrap_or_else(|| scopes.models.clone()),
            budget: self.budget.unwrap_or_else(|| scopes.budget.clone()),
            rpm: self.rpm.unwrap_or(scopes.rpm),
            tpm: self.tpm.unwrap_or(scopes.tpm),
            max_concurrent: self.max_concurrent.unwrap_or(scopes.max_concurrent),
            expires_at: self.expires_at.unwrap_or(scopes.expires_at),
        }
    }
}

/// Spend allowed per calendar period, in the period's time zone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub amount: Credits,
    pub period: BudgetPeriod,
    /// An IANA zone name (`Asia/Shanghai`); `None`: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Day,
    /// Weeks start on Monday (ISO 8601).
    Week,
    Month,
    /// Never resets.
    Total,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Week => "week",
            BudgetPeriod::Month => "month",
            BudgetPeriod::Total => "total",
        }
    }
}

/// Why a scope is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("models: at most {SCOPE_MODELS_MAX} patterns")]
    TooManyModels,
    #[error("models: {0:?} is not a model id (provider/model) or a pattern ending in one \"*\"")]
    BadModelPattern(String),
    #[error("budget.amount must be more than 0")]
    BudgetNotPositive,
    #[error("budget.timezone: {0:?} is not an IANA time zone, such as \"Asia/Shanghai\"")]
    UnknownTimeZone(String),
    #[error("{0} must be at least 1")]
    ZeroLimit(&'static str),
}

impl Scopes {
    /// Checks every field; a scope is stored only when this passes.
    pub fn validate(&self) -> Result<(), ScopeError> {
        if let Some(models) = &self.models {
            if models.len() > SCOPE_MODELS_MAX {
                return Err(ScopeError::TooManyModels);
            }
            for pattern in models {
                if !is_model_pattern(pattern) {
                    return Err(ScopeError::BadModelPattern(pattern.clone()));
                }
            }
        }
        if let Some(budget) = &self.budget {
            if budget.amount <= Credits::ZERO {
                return Err(ScopeError::BudgetNotPositive);
            }
            budget.zone()?;
        }
        if self.rpm == Some(0) {
            return Err(ScopeError::ZeroLimit("rpm"));
        }
        if self.tpm == Some(0) {
            return Err(ScopeError::ZeroLimit("tpm"));
        }
        if self.max_concurrent == Some(0) {
            return Err(ScopeError::ZeroLimit("max_concurrent"));
        }
        Ok(())
    }

    /// Whether `model` is one of the models this scope allows.
    pub fn allows_model(&self, model: &ModelId) -> bool {
        let Some(patterns) = &self.models else {
            return true;
        };
        let id = model.as_str();
        patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => id.starts_with(prefix),
            None => id == p,
        })
    }

    pub fn is_expired_at(&self, at: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|expiry| at >= expiry)
    }
}

impl Scopes {
    /// Why these scopes allow more than `outer` does, if they do: a key never
    /// gives another more power than its own. A limit of `outer` must be
    /// repeated, at most as large (a budget with the same period and zone).
    pub fn beyond(&self, outer: &Scopes) -> Option<&'static str> {
        if let Some(outer_models) = &outer.models {
            let covered = |p: &String| outer_models.iter().any(|o| pattern_covers(o, p));
            if !self.models.as_ref().is_some_and(|m| m.iter().all(covered)) {
                return Some("models");
            }
        }
        if let Some(o) = &outer.budget {
            let within = |b: &Budget| b.same_periods(o) && b.amount <= o.amount;
            if !self.budget.as_ref().is_some_and(within) {
                return Some("budget");
            }
        }
        fn at_most<T: PartialOrd>(inner: Option<T>, outer: Option<T>) -> bool {
            match (inner, outer) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some(i), Some(o)) => i <= o,
            }
        }
        if !at_most(self.rpm, outer.rpm) {
            return Some("rpm");
        }
        if !at_most(self.tpm, outer.tpm) {
            return Some("tpm");
        }
        if !at_most(self.max_concurrent, outer.max_concurrent) {
            return Some("max_concurrent");
        }
        if !at_most(self.expires_at, outer.expires_at) {
            return Some("expires_at");
        }
        None
    }
}

/// Whether every model `inner` matches is one `outer` matches.
fn pattern_covers(outer: &str, inner: &str) -> bool {
    match outer.strip_suffix('*') {
        Some(prefix) => inner.starts_with(prefix),
        None => inner == outer,
    }
}

/// `provider/model`, or a prefix of one ending in a single `*` (`openai/*`, `*`).
fn is_model_pattern(pattern: &str) -> bool {
    let n = pattern.chars().count();
    if n == 0 || n > MODEL_PATTERN_MAX_CHARS || pattern.chars().any(char::is_whitespace) {
        return false;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => !prefix.contains('*'),
        None => ModelId::parse(pattern).is_ok(),
    }
}

impl Budget {
    fn zone(&self) -> Result<Tz, ScopeError> {
        match &self.timezone {
            None => Ok(Tz::UTC),
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| ScopeError::UnknownTimeZone(name.clone())),
        }
    }

    /// The start of the period `at` falls in; `None` for a `total` budget.
    pub fn period_start(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // The zone was checked when the budget was set; UTC only if a stored name
        // stopped being known to a later zone database.
        let zone = self.zone().unwrap_or(Tz::UTC);
        let local = at.with_timezone(&zone).date_naive();
        let first_day = match self.period {
            BudgetPeriod::Total => return None,
            BudgetPeriod::Day => local,
            BudgetPeriod::Week => {
                local - Duration::days(i64::from(local.weekday().num_days_from_monday()))
            }
            BudgetPeriod::Month => NaiveDate::from_ymd_opt(local.year(), local.month(), 1)?,
        };
        Some(start_of_day(zone, first_day))
    }

    /// The start of the period after the one `at` falls in; `None` for `total`.
    pub fn period_end(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let zone = self.zone().unwrap_or(Tz::UTC);
        let start = self.period_start(at)?.with_timezone(&zone).date_naive();
        let next = match self.period {
            BudgetPeriod::Total => return None,
            BudgetPeriod::Day => start + Duration::days(1),
            BudgetPeriod::Week => start + Duration::days(7),
            BudgetPeriod::Month => start.checked_add_months(chrono::Months::new(1))?,
        };
        Some(start_of_day(zone, next))
    }

    /// Whether a change from `self` to `other` keeps counting in the same periods.
    pub fn same_periods(&self, other: &Budget) -> bool {
        self.period == other.period && self.timezone == other.timezone
    }
}

/// The first instant of `day` in `zone` (a day that starts in a daylight-saving
/// gap starts at the gap's end).
fn start_of_day(zone: Tz, day: NaiveDate) -> DateTime<Utc> {
    let mut time = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    for _ in 0..4 {
        if let Some(start) = zone.from_local_datetime(&time).earliest() {
            return start.with_timezone(&Utc);
        }
        time += Duration::minutes(30);
    }
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default())
}

/// The calendar minute (UTC) `at` falls in.
pub fn minute_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(at)
}

/// What a key has used of its scopes: folded from its events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeUsage {
    /// The budget period `period_spent` counts in (`None`: `total`, or no
    /// budget yet).
    #[serde(default)]
    pub period_start: Option<DateTime<Utc>>,
    /// Settled in that period while the budget was set.
    #[serde(default)]
    pub period_spent: Credits,
    /// The calendar minute the two counts below are of.
    #[serde(default)]
    pub minute: Option<DateTime<Utc>>,
    #[serde(default)]
    pub minute_requests: u32,
    #[serde(default)]
    pub minute_tokens: u64,
}

impl ScopeUsage {
    /// Spent in the period `at` falls in, under `budget`.
    pub fn spent_in_period(&self, budget: &Budget, at: DateTime<Utc>) -> Credits {
        if self.period_start == budget.period_start(at) {
            self.period_spent
        } else {
            Credits::ZERO
        }
    }

    /// (requests, tokens) of the minute `at` falls in.
    pub fn in_minute(&self, at: DateTime<Utc>) -> (u32, u64) {
        if self.minute == Some(minute_of(at)) {
            (self.minute_requests, self.minute_tokens)
        } else {
            (0, 0)
        }
    }

    /// A request admitted at `at`.
    pub fn note_request(&mut self, at: DateTime<Utc>) {
        self.roll_minute(at);
        self.minute_requests = self.minute_requests.saturating_add(1);
    }

    /// A settlement at `at` of `cost` for `tokens`.
    pub fn note_settlement(
        &mut self,
        budget: Option<&Budget>,
        cost: Credits,
        tokens: u64,
        at: DateTime<Utc>,
    ) {
        self.roll_minute(at);
        self.minute_tokens = self.minute_tokens.saturating_add(tokens);
        if let Some(budget) = budget {
            let start = budget.period_start(at);
            if self.period_start != start {
                self.period_start = start;
                self.period_spent = Credits::ZERO;
            }
            self.period_spent = self.period_spent + cost;
        }
    }

    /// The budget changed from `before` to `after`: a change of period or zone
    /// starts counting afresh; a change of amount keeps what was spent.
    pub fn budget_changed(&mut self, before: Option<&Budget>, after: Option<&Budget>) {
        let keeps = matches!((before, after), (Some(b), Some(a)) if b.same_periods(a));
        if !keeps {
            self.period_start = None;
            self.period_spent = Credits::ZERO;
        }
    }

    fn roll_minute(&mut self, at: DateTime<Utc>) {
        let minute = minute_of(at);
        if self.minute != Some(minute) {
            self.minute = Some(minute);
            self.minute_requests = 0;
            self.minute_tokens = 0;
        }
    }
}

/// Seconds from `at` to the next calendar minute, at least 1: a `retry-after`.
pub fn seconds_to_next_minute(at: DateTime<Utc>) -> u64 {
    let next = minute_of(at) + Duration::minutes(1);
    let millis = (next - at).num_milliseconds().max(0);
    u64::try_from((millis + 999) / 1000).unwrap_or(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn budget(period: BudgetPeriod, zone: Option<&str>) -> Budget {
        Budget {
            amount: Credits::parse("1").unwrap(),
            period,
            timezone: zone.map(str::to_string),
        }
    }

    #[test]
    fn patterns_match_ids_and_prefixes() {
        let scopes = Scopes {
            models: Some(vec![
                "openai/*".into(),
                "anthropic/claude-*".into(),
                "x/y".into(),
            ]),
            ..Scopes::default()
        };
        scopes.validate().unwrap();
        for (id, allowed) in [
            ("openai/gpt-4o", true),
            ("anthropic/claude-3-haiku", true),
            ("anthropic/other", false),
            ("x/y", true),
            ("x/yz", false),
            ("gemini/flash", false),
        ] {
            let model = ModelId::parse(id).unwrap();
            assert_eq!(scopes.allows_model(&model), allowed, "{id}");
        }
        assert!(Scopes::default().allows_model(&ModelId::parse("a/b").unwrap()));
        for bad in ["", "gpt-4o", "open*ai/*", "a b/c", "*/x*"] {
            let s = Scopes {
                models: Some(vec![bad.into()]),
                ..Scopes::default()
            };
            assert!(s.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn inner_scopes_never_reach_beyond_outer_ones() {
        let outer = Scopes {
            models: Some(vec!["openai/*".into()]),
            budget: Some(budget(BudgetPeriod::Month, None)),
            rpm: Some(10),
            ..Scopes::default()
        };
        let inner = Scopes {
            models: Some(vec!["openai/gpt-*".into(), "openai/o1".into()]),
            budget: Some(budget(BudgetPeriod::Month, None)),
            rpm: Some(5),
            max_concurrent: Some(2),
            ..Scopes::default()
        };
        assert_eq!(inner.beyond(&outer), None);
        assert_eq!(Scopes::default().beyond(&Scopes::default()), None);
        assert_eq!(Scopes::default().beyond(&outer), Some("models"));
        let wider_models = Scopes {
            models: Some(vec!["*".into()]),
            ..inner.clone()
        };
        assert_eq!(wider_models.beyond(&outer), Some("models"));
        let daily = Scopes {
            budget: Some(budget(BudgetPeriod::Day, None)),
            ..inner.clone()
        };
        assert_eq!(daily.beyond(&outer), Some("budget"));
        let faster = Scopes {
            rpm: Some(11),
            ..inner.clone()
        };
        assert_eq!(faster.beyond(&outer), Some("rpm"));
    }

    #[test]
    fn limits_are_checked() {
        let zero_rpm = Scopes {
            rpm: Some(0),
            ..Scopes::default()
        };
        assert_eq!(zero_rpm.validate(), Err(ScopeError::ZeroLimit("rpm")));
        let bad_zone = Scopes {
            budget: Some(budget(BudgetPeriod::Day, Some("Mars/Olympus"))),
            ..Scopes::default()
        };
        assert!(matches!(
            bad_zone.validate(),
            Err(ScopeError::UnknownTimeZone(_))
        ));
        let many = Scopes {
            models: Some(vec!["a/*".into(); SCOPE_MODELS_MAX + 1]),
            ..Scopes::default()
        };
        assert_eq!(many.validate(), Err(ScopeError::TooManyModels));
    }

    #[test]
    fn periods_are_calendar_periods_in_their_zone() {
        // 2026-03-01 03:00 in Shanghai is still February 28th in UTC.
        let at = t("2026-02-28T19:00:00Z");
        let month = budget(BudgetPeriod::Month, Some("Asia/Shanghai"));
        assert_eq!(month.period_start(at), Some(t("2026-02-28T16:00:00Z")));
        assert_eq!(month.period_end(at), Some(t("2026-03-31T16:00:00Z")));
        let utc_month = budget(BudgetPeriod::Month, None);
        assert_eq!(utc_month.period_start(at), Some(t("2026-02-01T00:00:00Z")));
        // 2026-12-05 is a Saturday: its week began Monday 2026-11-30.
        let week = budget(BudgetPeriod::Week, None);
        assert_eq!(
            week.period_start(t("2026-12-05T10:00:00Z")),
            Some(t("2026-11-30T00:00:00Z"))
        );
        assert_eq!(
            week.period_end(t("2026-12-05T10:00:00Z")),
            Some(t("2026-12-07T00:00:00Z"))
        );
        let day = budget(BudgetPeriod::Day, Some("America/New_York"));
        // The day daylight saving starts is 23 hours long.
        assert_eq!(
            day.period_start(t("2026-03-08T12:00:00Z")),
            Some(t("2026-03-08T05:00:00Z"))
        );
        assert_eq!(
            day.period_end(t("2026-03-08T12:00:00Z")),
            Some(t("2026-03-09T04:00:00Z"))
        );
        assert_eq!(budget(BudgetPeriod::Total, None).period_start(at), None);
    }

    #[test]
    fn spend_starts_from_zero_at_a_period_boundary_and_total_never_resets() {
        let month = budget(BudgetPeriod::Month, None);
        let mut usage = ScopeUsage::default();
        let one = Credits::parse("0.25").unwrap();
        usage.note_settlement(Some(&month), one, 10, t("2026-01-31T23:59:00Z"));
        assert_eq!(
            usage.spent_in_period(&month, t("2026-01-31T23:59:30Z")),
            one
        );
        assert_eq!(
            usage.spent_in_period(&month, t("2026-02-01T00:00:00Z")),
            Credits::ZERO
        );
        usage.note_settlement(Some(&month), one, 10, t("2026-02-01T00:00:01Z"));
        assert_eq!(
            usage.spent_in_period(&month, t("2026-02-10T00:00:00Z")),
            one
        );

        let total = budget(BudgetPeriod::Total, None);
        let mut usage = ScopeUsage::default();
        usage.note_settlement(Some(&total), one, 1, t("2026-01-31T23:59:00Z"));
        usage.note_settlement(Some(&total), one, 1, t("2027-06-01T00:00:00Z"));
        assert_eq!(
            usage.spent_in_period(&total, t("2030-01-01T00:00:00Z")),
            one + one
        );
    }

    #[test]
    fn minutes_count_requests_and_tokens() {
        let mut usage = ScopeUsage::default();
        usage.note_request(t("2026-01-01T00:00:10Z"));
        usage.note_request(t("2026-01-01T00:00:50Z"));
        usage.note_settlement(None, Credits::ZERO, 30, t("2026-01-01T00:00:55Z"));
        assert_eq!(usage.in_minute(t("2026-01-01T00:00:59Z")), (2, 30));
        assert_eq!(usage.in_minute(t("2026-01-01T00:01:00Z")), (0, 0));
        assert_eq!(seconds_to_next_minute(t("2026-01-01T00:00:59.200Z")), 1);
        assert_eq!(seconds_to_next_minute(t("2026-01-01T00:00:10Z")), 50);
        assert_eq!(seconds_to_next_minute(t("2026-01-01T00:01:00Z")), 60);
    }

    #[test]
    fn changing_the_period_starts_afresh_and_changing_the_amount_does_not() {
        let month = budget(BudgetPeriod::Month, None);
        let mut usage = ScopeUsage::default();
        let spent = Credits::parse("0.5").unwrap();
        usage.note_settlement(Some(&month), spent, 1, t("2026-01-10T00:00:00Z"));
        let bigger = Budget {
            amount: Credits::parse("9").unwrap(),
            ..month.clone()
        };
        usage.budget_changed(Some(&month), Some(&bigger));
        assert_eq!(
            usage.spent_in_period(&bigger, t("2026-01-11T00:00:00Z")),
            spent
        );
        let day = budget(BudgetPeriod::Day, None);
        usage.budget_changed(Some(&bigger), Some(&day));
        assert_eq!(
            usage.spent_in_period(&day, t("2026-01-10T00:00:00Z")),
            Credits::ZERO
        );
    }
}
