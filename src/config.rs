//! Settings: flags and environment variables, each with a default, and the named
//! limits every queue, body and timeout in the hub obeys.
//!
//! This is the one place the process environment is read ([`Settings::from_env`],
//! [`CommandEnv::from_env`]): everything else is handed the typed settings it
//! needs. A variable set to a value that does not parse, or that is outside its
//! documented range, stops the hub with an error naming the variable. This module
//! is the bottom of `src/`: it imports no other module of the crate.

use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Every bound the hub enforces. Defaults are for one hub process on a small
/// machine; tests shorten the clocks.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Credit a new tenant starts with when its creation names none
    /// (`AIGNE_HUB_INITIAL_CREDITS`, zero by default).
    pub initial_credits: domain::Credits,
    /// Largest request body accepted (vision prompts carry base64 images).
    pub max_request_body_bytes: usize,
    pub upstream_connect_timeout_ms: u64,
    /// Until the upstream's response headers arrive.
    pub upstream_first_byte_timeout_ms: u64,
    /// Longest silence between two chunks of a stream.
    pub upstream_idle_timeout_ms: u64,
    /// Whole upstream exchange, non-streaming.
    pub upstream_total_timeout_ms: u64,
    /// A hold not settled by then is released (an abandoned request cannot lock
    /// credit forever). Longer than any request may take.
    pub hold_ttl_ms: u64,
    pub instance_heartbeat_ms: u64,
    /// A hub process silent for this long is dead: its holds are released.
    pub instance_stale_after_ms: u64,
    /// How often the live set is checked; the holds of a process that left it are
    /// released at the next check.
    pub hold_sweep_interval_ms: u64,
    /// How often every tenant with open holds is visited even when no process left
    /// the live set: holds past their time to live are released within this.
    pub hold_expiry_sweep_interval_ms: u64,
    /// A tenant actor with nothing to do for this long stops (its state is in events).
    pub tenant_idle_stop_ms: u64,
    /// Messages a tenant actor queues before callers are told to back off.
    pub tenant_mailbox_capacity: usize,
    /// Longest a request waits for its tenant actor (queue + commit).
    pub tenant_call_timeout_ms: u64,
    /// How often the catalog version is compared with the store's, in case a
    /// change notification was lost (PostgreSQL notifies every process at once),
    /// and, on SQLite, how often other processes' appends to tenant streams are
    /// polled. A refusal never waits for it: it checks the store first.
    pub catalog_refresh_ms: u64,
    /// How often the projector catches up even without a local commit.
    pub projector_poll_ms: u64,
    /// After a local commit wakes the projector, it waits this long so the commits
    /// arriving meanwhile are folded in one pass (one read, one write) instead of
    /// one pass each: under load that is most of the projector's cost.
    pub projector_batch_delay_ms: u64,
    /// Ends a stream whose running cost would pass what the tenant could pay
    /// (`AIGNE_HUB_STREAM_CREDIT_CUTOFF`, on by default; only in the
    /// `service_provider` mode, see docs/billing.md "Mid-stream enforcement").
    pub stream_credit_cutoff: bool,
    /// Retries of one candidate after a 429, 5xx, connection failure or timeout,
    /// before the next candidate is tried.
    pub retries_per_candidate: u32,
    pub retry_base_delay_ms: u64,
    pub retry_max_delay_ms: u64,
    /// How long a credential that got a 429 is avoided.
    pub rate_limit_cooldown_ms: u64,
    /// Longest an AIGNE v2 model call (`/api/v2/...`) waits for its answer before
    /// the hub sends status 200 and the headers, the body following when ready.
    /// Must stay well below the AIGNE client's 60 s header timeout, past which it
    /// sends the same call again (and it would be generated and billed again).
    pub aigne_headers_after_ms: u64,
    /// How long a generated image stays fetchable at its `/api/v2/images/{id}` URL.
    pub generated_image_ttl_ms: u64,
    /// Bytes of generated images kept in memory for their URLs (oldest dropped first).
    pub generated_images_max_bytes: usize,
    /// Generated images kept in memory for their URLs (oldest dropped first).
    pub generated_images_max_count: usize,
    /// How often lots past their expiry are expired (`ExpireCredits`, at most
    /// `hub::EXPIRY_TENANTS_PER_PASS` tenants a pass). A reservation expires due
    /// lots itself, so this only bounds how long a balance shows them.
    pub credit_expiry_interval_ms: u64,
    /// `expiring_soon` in balances: credit of lots expiring within this many
    /// seconds of the reading time (`AIGNE_HUB_EXPIRING_SOON_DAYS`).
    pub expiring_soon_window_secs: u64,
    /// Payment webhooks (`POST /webhooks/payments`). Kept with the limits because
    /// they are the settings the hub carries (`Hub::limits`).
    pub webhooks: WebhookSettings,
    /// Day of the month (1–28, UTC) billing periods start on
    /// (`AIGNE_HUB_INVOICE_ANCHOR_DAY`; docs/billing.md, "Invoices").
    pub invoice_anchor_day: u32,
    /// How long after a period's end its invoice stays a draft
    /// (`AIGNE_HUB_INVOICE_GRACE_HOURS`; at most 27 days).
    pub invoice_grace_secs: i64,

    // Sizes of model calls and of upstream answers: a small request can ask for a
    // huge answer (10,000 embedding inputs made 206 MB of JSON), and the hub must
    // never hold an answer of unbounded size in memory. A request past a per-call
    // limit is refused before any upstream call (400); an answer past a byte
    // limit is cut off as it arrives (502 `upstream_answer_too_large`).
    /// Inputs (strings or token arrays) in one embeddings call; OpenAI's own limit.
    pub embeddings_inputs_per_call_max: usize,
    /// Images (`n`) one image request may ask for; bounds the hold and the answer.
    pub images_per_call_max: u64,
    /// Bytes of a non-streaming chat answer (`/v1/chat/completions`,
    /// `/v1/messages`, AIGNE v2 chat). Text of the largest output caps is a few
    /// MB; the rest is room for logprobs and inline images.
    pub upstream_chat_answer_max_bytes: usize,
    /// Bytes of an embeddings answer (summed over the calls one request makes,
    /// as for Bedrock's Titan). 2,048 vectors of 3,072 dimensions take 34 MB in
    /// base64, but 2,048 of 1,536 take about 63 MB as JSON numbers; memory while
    /// an answer is converted is a few times its size
    /// (`AIGNE_HUB_EMBEDDINGS_ANSWER_MAX_BYTES`).
    pub upstream_embeddings_answer_max_bytes: usize,
    /// Bytes of an image answer: base64 images, up to `images_per_call_max` of
    /// them (`AIGNE_HUB_IMAGES_ANSWER_MAX_BYTES`).
    pub upstream_images_answer_max_bytes: usize,
    /// Bytes of one streamed answer, all events together. A stream is relayed,
    /// not kept, so this only stops an upstream that never stops sending; the
    /// largest output caps take a few tens of MB of events.
    pub upstream_stream_answer_max_bytes: usize,
    /// Bytes of one event of a stream (one SSE event, one AWS event-stream
    /// message), the most a stream holds in memory at once.
    pub upstream_stream_event_max_bytes: usize,
}

/// Default of [`Limits::expiring_soon_window_secs`]: 7 days.
pub const EXPIRING_SOON_WINDOW_SECS_DEFAULT: u64 = 7 * 24 * 3600;
/// Default of [`Limits::upstream_embeddings_answer_max_bytes`]: 48 MiB, room for
/// 2,048 base64 vectors of 3,072 dimensions (what OpenAI's SDKs ask for).
pub const EMBEDDINGS_ANSWER_MAX_BYTES_DEFAULT: usize = 48 * 1024 * 1024;
/// Default of [`Limits::upstream_images_answer_max_bytes`]: 48 MiB, room for 10
/// large PNGs in base64.
pub const IMAGES_ANSWER_MAX_BYTES_DEFAULT: usize = 48 * 1024 * 1024;
/// Default of [`WebhookSettings::tolerance_secs`]: how far a webhook's signed
/// timestamp may be from the hub's clock, either way, before it is refused as stale
/// (a captured delivery cannot be replayed later than this).
pub const WEBHOOK_TOLERANCE_SECS_DEFAULT: u64 = 300;

/// Payment webhook verification (docs/billing.md, "Payment webhooks").
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// HMAC-SHA256 keys, from `AIGNE_HUB_WEBHOOK_SECRET`: one secret, or several
    /// separated by commas while one is rotated out; a signature made with any of
    /// them is accepted. None: the endpoint answers 503.
    pub secrets: Vec<String>,
    /// `AIGNE_HUB_WEBHOOK_TOLERANCE_SECS`.
    pub tolerance_secs: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            tolerance_secs: WEBHOOK_TOLERANCE_SECS_DEFAULT,
        }
    }
}

/// Never shows a secret, only how many there are.
impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field(
                "secrets",
                &format_args!("<{} redacted>", self.secrets.len()),
            )
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

impl WebhookSettings {
    /// Splits `AIGNE_HUB_WEBHOOK_SECRET`'s value: comma-separated, blanks around
    /// each secret and empty entries ignored.
    pub fn parse_secrets(raw: &str) -> Vec<String> {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }
}

/// See `Limits::projector_batch_delay_ms`.
pub const PROJECTOR_BATCH_DELAY_MS_DEFAULT: u64 = 100;
/// Projections (balance reads of other processes, analytics) lag by up to this.
pub const PROJECTOR_BATCH_DELAY_MS_MAX: u64 = 5_000;

impl Default for Limits {
    fn default() -> Self {
        Self {
            initial_credits: domain::Credits::ZERO,
            max_request_body_bytes: 8 * 1024 * 1024,
            upstream_connect_timeout_ms: 5_000,
            upstream_first_byte_timeout_ms: 120_000,
            upstream_idle_timeout_ms: 60_000,
            upstream_total_timeout_ms: 600_000,
            hold_ttl_ms: 900_000,
            instance_heartbeat_ms: 1_000,
            instance_stale_after_ms: 5_000,
            hold_sweep_interval_ms: 2_000,
            hold_expiry_sweep_interval_ms: 60_000,
            tenant_idle_stop_ms: 300_000,
            tenant_mailbox_capacity: 4_096,
            tenant_call_timeout_ms: 15_000,
            catalog_refresh_ms: 5_000,
            projector_poll_ms: 1_000,
            projector_batch_delay_ms: PROJECTOR_BATCH_DELAY_MS_DEFAULT,
            stream_credit_cutoff: true,
            retries_per_candidate: 1,
            retry_base_delay_ms: 100,
            retry_max_delay_ms: 2_000,
            rate_limit_cooldown_ms: 10_000,
            aigne_headers_after_ms: 10_000,
            generated_image_ttl_ms: 3_600_000,
            generated_images_max_bytes: 256 * 1024 * 1024,
            generated_images_max_count: 1_000,
            credit_expiry_interval_ms: 10_000,
            expiring_soon_window_secs: EXPIRING_SOON_WINDOW_SECS_DEFAULT,
            webhooks: WebhookSettings::default(),
            invoice_anchor_day: projections::invoices::ANCHOR_DAY_DEFAULT,
            invoice_grace_secs: projections::invoices::GRACE_SECS_DEFAULT,
            embeddings_inputs_per_call_max: 2_048,
            images_per_call_max: 10,
            upstream_chat_answer_max_bytes: 32 * 1024 * 1024,
            upstream_embeddings_answer_max_bytes: EMBEDDINGS_ANSWER_MAX_BYTES_DEFAULT,
            upstream_images_answer_max_bytes: IMAGES_ANSWER_MAX_BYTES_DEFAULT,
            upstream_stream_answer_max_bytes: 256 * 1024 * 1024,
            upstream_stream_event_max_bytes: 16 * 1024 * 1024,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Settings {
    /// `AIGNE_HUB_MODE`: `service_provider` (default) or `enterprise`.
    pub mode: DeploymentMode,
    pub listen: String,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    /// From `AIGNE_HUB_OPERATOR_TOKEN`; generated into the data dir when unset.
    pub operator_token: Option<String>,
    /// From `AIGNE_HUB_MASTER_KEY`; generated into the data dir when unset.
    pub master_key: Option<String>,
    /// Threads that run tenant actors (`AIGNE_HUB_ACTOR_THREADS`).
    pub actor_threads: usize,
    /// Threads that serve HTTP (`AIGNE_HUB_HTTP_WORKERS`).
    pub http_workers: usize,
    pub limits: Limits,
    /// The AIGNE Hub v2 protocol (`/api/v2/...`, see docs/aigne.md).
    pub aigne: AigneSettings,
    /// Low-balance notifications (`AIGNE_HUB_LOW_BALANCE_WEBHOOK_URL`, `_SECRET`).
    pub notify: NotifySettings,
}

/// Settings of the AIGNE Hub v2 protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AigneSettings {
    /// `usage.creditPrefix` in answers and `/api/user/info`: `"$"`, `"€"` or `"¥"`
    /// (the only values the AIGNE client accepts), or `None` for no prefix
    /// (`AIGNE_HUB_CREDIT_PREFIX`, empty for none).
    pub credit_prefix: Option<String>,
    /// The hub's public origin, for the absolute URLs of generated images
    /// (`AIGNE_HUB_PUBLIC_URL`); unset: the scheme and host the request came to.
    pub public_url: Option<String>,
}

impl Default for AigneSettings {
    fn default() -> Self {
        Self {
            credit_prefix: Some("$".into()),
            public_url: None,
        }
    }
}

/// How credit is treated (see docs/billing.md, "Deployment modes").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeploymentMode {
    /// Reselling: credit is enforced, a request that cannot be covered gets 402.
    #[default]
    ServiceProvider,
    /// Self-hosted for one's own teams: costs are tracked the same way, but no
    /// request is refused for want of credit (balances may go negative).
    Enterprise,
}

impl DeploymentMode {
    pub fn parse(raw: &str) -> anyhow::Result<Self> {
        match raw.trim() {
            "service_provider" => Ok(Self::ServiceProvider),
            "enterprise" => Ok(Self::Enterprise),
            other => anyhow::bail!(
                "AIGNE_HUB_MODE must be `service_provider` or `enterprise`, not {other:?}"
            ),
        }
    }

    /// The `enterprise` mode tracks what requests cost the operator: it charges
    /// the price book's cost rates, with no margin.
    pub fn charges_at_cost(self) -> bool {
        self == Self::Enterprise
    }

    pub fn enforces_credit(self) -> bool {
        self == Self::ServiceProvider
    }
}

impl Limits {
    /// How billing periods are cut (`invoice_anchor_day`, `invoice_grace_secs`).
    /// The projector, replay and the invoice routes all take this from the same
    /// settings, so what is stored and what is read are cut the same way; the
    /// cut is part of the projection's stored name (`projections::invoices`), so
    /// another cut builds another projection from the start of the log.
    pub fn invoice_settings(&self) -> projections::invoices::Settings {
        projections::invoices::Settings::new(self.invoice_anchor_day, self.invoice_grace_secs)
    }

    /// What the registered projections are cut with (`projections::registry`).
    pub fn projection_settings(&self) -> projections::ProjectionSettings {
        projections::ProjectionSettings {
            invoices: self.invoice_settings(),
        }
    }
}

/// Looks up one variable: the process environment in [`Settings::from_env`], a
/// map in tests (changing the process environment would race other tests).
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The variables, read through a [`Lookup`], each parsed or refused by name.
struct Vars<'a>(Lookup<'a>);

impl Vars<'_> {
    /// The value as set (untrimmed), `None` when unset.
    fn raw(&self, name: &str) -> Option<String> {
        (self.0)(name)
    }

    /// The value as set, `None` when unset or empty.
    fn non_empty(&self, name: &str) -> Option<String> {
        self.raw(name).filter(|v| !v.is_empty())
    }

    /// The trimmed value, `None` when unset or blank.
    fn trimmed(&self, name: &str) -> Option<String> {
        self.raw(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// A whole number in `range`; unset or blank is `None`.
    fn number(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> anyhow::Result<Option<u64>> {
        let Some(raw) = self.trimmed(name) else {
            return Ok(None);
        };
        let n: u64 = raw
            .parse()
            .map_err(|_| anyhow::anyhow!("{name} must be a whole number, not {raw:?}"))?;
        anyhow::ensure!(
            range.contains(&n),
            "{name} must be from {} to {}, not {n}",
            range.start(),
            range.end()
        );
        Ok(Some(n))
    }

    /// `on`/`off`, `true`/`false` or `1`/`0`; unset or blank is `default`.
    fn switch(&self, name: &str, default: bool) -> anyhow::Result<bool> {
        let Some(raw) = self.trimmed(name) else {
            return Ok(default);
        };
        match raw.to_ascii_lowercase().as_str() {
            "on" | "true" | "1" => Ok(true),
            "off" | "false" | "0" => Ok(false),
            _ => anyhow::bail!("{name} must be on or off, not {raw:?}"),
        }
    }

    /// A byte limit of at least 1 KiB (a smaller one would refuse every answer).
    fn bytes(&self, name: &str, default: usize) -> anyhow::Result<usize> {
        Ok(self
            .number(name, BYTE_LIMIT_MIN..=u64::MAX)?
            .map_or(default, |n| usize::try_from(n).unwrap_or(usize::MAX)))
    }

    /// A thread count.
    fn threads(&self, name: &str, default: usize) -> anyhow::Result<usize> {
        Ok(self
            .number(name, THREADS_MIN..=THREADS_MAX)?
            .map_or(default, |n| n as usize))
    }
}

/// Smallest byte limit an answer-size variable accepts.
const BYTE_LIMIT_MIN: u64 = 1024;
/// Thread counts (`AIGNE_HUB_HTTP_WORKERS`, `AIGNE_HUB_ACTOR_THREADS`): at least
/// one, and no more than a large machine has cores.
const THREADS_MIN: u64 = 1;
const THREADS_MAX: u64 = 64;
/// `AIGNE_HUB_INVOICE_GRACE_HOURS` at most: [`projections::invoices::GRACE_SECS_MAX`].
const INVOICE_GRACE_HOURS_MAX: u64 = projections::invoices::GRACE_SECS_MAX as u64 / 3600;
/// `AIGNE_HUB_EXPIRING_SOON_DAYS` at most: ten years is "everything".
const EXPIRING_SOON_DAYS_MAX: u64 = 3650;

impl Settings {
    /// Every variable the hub reads, from the process environment. A flag on the
    /// command line is applied afterwards (`crate::cli`) and wins over its variable.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_vars(&|name| std::env::var(name).ok())
    }

    /// Every variable the hub reads, through `lookup`; unset variables take their
    /// defaults, and a bad value is an error that names its variable.
    pub fn from_vars(lookup: Lookup<'_>) -> anyhow::Result<Self> {
        let vars = Vars(lookup);
        Ok(Self {
            mode: match vars.trimmed("AIGNE_HUB_MODE") {
                Some(raw) => DeploymentMode::parse(&raw)?,
                None => DeploymentMode::default(),
            },
            listen: vars
                .non_empty("AIGNE_HUB_LISTEN")
                .unwrap_or_else(|| LISTEN_DEFAULT.into()),
            data_dir: vars
                .non_empty("AIGNE_HUB_DATA_DIR")
                .map_or_else(|| PathBuf::from(DATA_DIR_DEFAULT), PathBuf::from),
            database_url: vars.non_empty("DATABASE_URL"),
            operator_token: vars.non_empty("AIGNE_HUB_OPERATOR_TOKEN"),
            master_key: vars.non_empty("AIGNE_HUB_MASTER_KEY"),
            actor_threads: vars.threads("AIGNE_HUB_ACTOR_THREADS", 2)?,
            http_workers: vars.threads("AIGNE_HUB_HTTP_WORKERS", 2)?,
            limits: limits_from(&vars)?,
            aigne: AigneSettings {
                // Set but empty means no prefix, unlike unset.
                credit_prefix: match vars.raw("AIGNE_HUB_CREDIT_PREFIX") {
                    Some(prefix) => Some(prefix).filter(|p| !p.is_empty()),
                    None => AigneSettings::default().credit_prefix,
                },
                public_url: vars.non_empty("AIGNE_HUB_PUBLIC_URL"),
            },
            notify: NotifySettings {
                url: vars.trimmed("AIGNE_HUB_LOW_BALANCE_WEBHOOK_URL"),
                secret: vars.trimmed("AIGNE_HUB_LOW_BALANCE_WEBHOOK_SECRET"),
                ..NotifySettings::default()
            },
        })
    }
}

/// Default of [`Settings::listen`] (`AIGNE_HUB_LISTEN`, `--listen`).
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8080";
/// Default of [`Settings::data_dir`] (`AIGNE_HUB_DATA_DIR`, `--data-dir`).
pub const DATA_DIR_DEFAULT: &str = "./data";

/// The limits some variables set; the rest keep their defaults.
fn limits_from(vars: &Vars<'_>) -> anyhow::Result<Limits> {
    use projections::invoices::{ANCHOR_DAY_DEFAULT, GRACE_SECS_DEFAULT};
    let defaults = Limits::default();
    Ok(Limits {
        initial_credits: initial_credits(vars)?,
        webhooks: WebhookSettings {
            secrets: vars
                .raw("AIGNE_HUB_WEBHOOK_SECRET")
                .map(|raw| WebhookSettings::parse_secrets(&raw))
                .unwrap_or_default(),
            tolerance_secs: vars
                .number("AIGNE_HUB_WEBHOOK_TOLERANCE_SECS", 0..=u64::MAX)?
                .unwrap_or(WEBHOOK_TOLERANCE_SECS_DEFAULT),
        },
        stream_credit_cutoff: vars.switch("AIGNE_HUB_STREAM_CREDIT_CUTOFF", true)?,
        projector_batch_delay_ms: vars
            .number(
                "AIGNE_HUB_PROJECTOR_BATCH_DELAY_MS",
                0..=PROJECTOR_BATCH_DELAY_MS_MAX,
            )?
            .unwrap_or(PROJECTOR_BATCH_DELAY_MS_DEFAULT),
        expiring_soon_window_secs: vars
            .number("AIGNE_HUB_EXPIRING_SOON_DAYS", 0..=EXPIRING_SOON_DAYS_MAX)?
            .map_or(EXPIRING_SOON_WINDOW_SECS_DEFAULT, |days| days * 24 * 3600),
        invoice_anchor_day: vars
            .number("AIGNE_HUB_INVOICE_ANCHOR_DAY", 1..=28)?
            .map_or(ANCHOR_DAY_DEFAULT, |day| day as u32),
        invoice_grace_secs: vars
            .number("AIGNE_HUB_INVOICE_GRACE_HOURS", 0..=INVOICE_GRACE_HOURS_MAX)?
            .map_or(GRACE_SECS_DEFAULT, |hours| (hours * 3600) as i64),
        upstream_embeddings_answer_max_bytes: vars.bytes(
            "AIGNE_HUB_EMBEDDINGS_ANSWER_MAX_BYTES",
            EMBEDDINGS_ANSWER_MAX_BYTES_DEFAULT,
        )?,
        upstream_images_answer_max_bytes: vars.bytes(
            "AIGNE_HUB_IMAGES_ANSWER_MAX_BYTES",
            IMAGES_ANSWER_MAX_BYTES_DEFAULT,
        )?,
        ..defaults
    })
}

/// `AIGNE_HUB_INITIAL_CREDITS`: credits (decimal string) a tenant created without
/// `initial_credits` starts with; zero when unset. A malformed value stops the hub.
fn initial_credits(vars: &Vars<'_>) -> anyhow::Result<domain::Credits> {
    let Some(raw) = vars.trimmed("AIGNE_HUB_INITIAL_CREDITS") else {
        return Ok(domain::Credits::ZERO);
    };
    let credits = domain::Credits::parse(&raw)
        .map_err(|e| anyhow::anyhow!("AIGNE_HUB_INITIAL_CREDITS: {e}"))?;
    anyhow::ensure!(
        !credits.is_negative(),
        "AIGNE_HUB_INITIAL_CREDITS cannot be negative"
    );
    Ok(credits)
}

/// What the command line reads besides [`Settings`]. No `Debug`: it holds a key.
pub struct CommandEnv {
    /// `RUST_LOG`: the log filter; `None` is `info,sqlx=warn`.
    pub log_filter: Option<String>,
    /// `AIGNE_HUB_PROVIDER_API_KEY`: the key `provider add` stores; `None`: read
    /// from standard input (never from the command line, where `ps` shows it).
    pub provider_api_key: Option<String>,
}

impl CommandEnv {
    pub fn from_env() -> Self {
        Self::from_vars(&|name| std::env::var(name).ok())
    }

    pub fn from_vars(lookup: Lookup<'_>) -> Self {
        let vars = Vars(lookup);
        Self {
            log_filter: vars.trimmed("RUST_LOG"),
            provider_api_key: vars.non_empty("AIGNE_HUB_PROVIDER_API_KEY"),
        }
    }
}

/// How often the low-balance notifier reads the log for new crossings.
pub const NOTIFY_POLL_MS_DEFAULT: u64 = 1_000;
/// First wait before a failed notification is retried; doubled after each failure…
pub const NOTIFY_RETRY_BASE_DELAY_MS_DEFAULT: u64 = 1_000;
/// …up to this.
pub const NOTIFY_RETRY_MAX_DELAY_MS_DEFAULT: u64 = 300_000;

/// Where and how low-balance notifications go (`crate::notify`). No `Debug` of the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct NotifySettings {
    /// `AIGNE_HUB_LOW_BALANCE_WEBHOOK_URL`; `None`: the loop does not run.
    pub url: Option<String>,
    /// `AIGNE_HUB_LOW_BALANCE_WEBHOOK_SECRET`: the HMAC-SHA256 key of the
    /// signature. Required when `url` is set.
    pub secret: Option<String>,
    pub poll_ms: u64,
    pub retry_base_delay_ms: u64,
    pub retry_max_delay_ms: u64,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            url: None,
            secret: None,
            poll_ms: NOTIFY_POLL_MS_DEFAULT,
            retry_base_delay_ms: NOTIFY_RETRY_BASE_DELAY_MS_DEFAULT,
            retry_max_delay_ms: NOTIFY_RETRY_MAX_DELAY_MS_DEFAULT,
        }
    }
}

impl std::fmt::Debug for NotifySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifySettings")
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("poll_ms", &self.poll_ms)
            .field("retry_base_delay_ms", &self.retry_base_delay_ms)
            .field("retry_max_delay_ms", &self.retry_max_delay_ms)
            .finish()
    }
}

impl NotifySettings {
    /// The receiver's URL and the secret, when notifications are configured; an
    /// error when the URL is set without a secret or is not an http(s) URL.
    pub fn target(&self) -> anyhow::Result<Option<(reqwest::Url, String)>> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                anyhow::anyhow!("AIGNE_HUB_LOW_BALANCE_WEBHOOK_URL must be an http(s) URL")
            })?;
        let secret = self.secret.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "AIGNE_HUB_LOW_BALANCE_WEBHOOK_URL is set but AIGNE_HUB_LOW_BALANCE_WEBHOOK_SECRET is not: notifications are always signed"
            )
        })?;
        Ok(Some((url, secret)))
    }
}

/// Writes `contents` to a new file readable only by its owner.
pub(crate) fn write_private_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Creates the data dir if needed and makes it private (0700): it holds the
/// ledger, the operator token and the master key, none of which another local
/// user may read. A dir made by an older version is tightened too.
pub(crate) fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder
            .create(dir)
            .with_context(|| format!("cannot create data dir {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make data dir {} private", dir.display()))?;
    }
    #[cfg(not(unix))]
    builder
        .create(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    Ok(())
}

/// Makes an existing file readable and writable by its owner only (0600).
pub(crate) fn make_file_private(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
    }
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Settings read from `vars` alone, as if nothing else were set.
    fn read(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_vars(&|name| map.get(name).cloned())
    }

    fn read_one(name: &str, value: &str) -> anyhow::Result<Settings> {
        read(&[(name, value)])
    }

    /// The error for `name=value`, which must name the variable.
    fn refused(name: &str, value: &str) -> String {
        let error = match read_one(name, value) {
            Ok(_) => panic!("{name}={value:?} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains(name), "{name}={value:?}: {error}");
        error
    }

    #[test]
    fn nothing_set_gives_the_defaults() {
        let settings = read(&[]).unwrap();
        assert_eq!(settings.listen, "127.0.0.1:8080");
        assert_eq!(settings.data_dir, PathBuf::from("./data"));
        assert_eq!(settings.database_url, None);
        assert_eq!(settings.mode, DeploymentMode::ServiceProvider);
        assert_eq!(settings.aigne, AigneSettings::default());
        assert_eq!(settings.notify, NotifySettings::default());
        assert_eq!((settings.actor_threads, settings.http_workers), (2, 2));
        let limits = settings.limits;
        assert_eq!(limits.initial_credits, domain::Credits::ZERO);
        assert!(limits.stream_credit_cutoff);
        assert_eq!(limits.webhooks, WebhookSettings::default());
        assert_eq!(limits.expiring_soon_window_secs, 7 * 24 * 3600);
        assert_eq!(limits.invoice_anchor_day, 1);
        assert_eq!(limits.invoice_grace_secs, 72 * 3600);
        assert_eq!(limits.projector_batch_delay_ms, 100);
        assert_eq!(limits.upstream_embeddings_answer_max_bytes, 48 << 20);
        assert_eq!(limits.upstream_images_answer_max_bytes, 48 << 20);
    }

    #[test]
    fn text_settings_land_where_they_belong() {
        let settings = read(&[
            ("AIGNE_HUB_LISTEN", "0.0.0.0:9090"),
            ("AIGNE_HUB_DATA_DIR", "/var/lib/hub"),
            ("DATABASE_URL", "postgres://db/hub"),
            ("AIGNE_HUB_OPERATOR_TOKEN", "op-token"),
            ("AIGNE_HUB_MASTER_KEY", "00ff"),
            ("AIGNE_HUB_CREDIT_PREFIX", "€"),
            ("AIGNE_HUB_PUBLIC_URL", "https://hub.example"),
            (
                "AIGNE_HUB_LOW_BALANCE_WEBHOOK_URL",
                " https://receiver.example/low ",
            ),
            ("AIGNE_HUB_LOW_BALANCE_WEBHOOK_SECRET", "whsec"),
            ("AIGNE_HUB_WEBHOOK_SECRET", "old, new ,"),
        ])
        .unwrap();
        assert_eq!(settings.listen, "0.0.0.0:9090");
        assert_eq!(settings.data_dir, PathBuf::from("/var/lib/hub"));
        assert_eq!(settings.database_url.as_deref(), Some("postgres://db/hub"));
        assert_eq!(settings.operator_token.as_deref(), Some("op-token"));
        assert_eq!(settings.master_key.as_deref(), Some("00ff"));
        assert_eq!(settings.aigne.credit_prefix.as_deref(), Some("€"));
        assert_eq!(
            settings.aigne.public_url.as_deref(),
            Some("https://hub.example")
        );
        assert_eq!(
            settings.notify.url.as_deref(),
            Some("https://receiver.example/low")
        );
        assert_eq!(settings.notify.secret.as_deref(), Some("whsec"));
        assert_eq!(settings.limits.webhooks.secrets, vec!["old", "new"]);
    }

    #[test]
    fn empty_text_settings_are_unset_but_an_empty_credit_prefix_is_none() {
        let settings = read(&[
            ("AIGNE_HUB_LISTEN", ""),
            ("DATABASE_URL", ""),
            ("AIGNE_HUB_OPERATOR_TOKEN", ""),
            ("AIGNE_HUB_PUBLIC_URL", ""),
            ("AIGNE_HUB_CREDIT_PREFIX", ""),
        ])
        .unwrap();
        assert_eq!(settings.listen, LISTEN_DEFAULT);
        assert_eq!(settings.database_url, None);
        assert_eq!(settings.operator_token, None);
        assert_eq!(settings.aigne.public_url, None);
        assert_eq!(settings.aigne.credit_prefix, None);
    }

    #[test]
    fn the_mode_is_parsed_and_a_bad_one_is_refused() {
        let settings = read_one("AIGNE_HUB_MODE", " enterprise ").unwrap();
        assert_eq!(settings.mode, DeploymentMode::Enterprise);
        refused("AIGNE_HUB_MODE", "reseller");
    }

    #[test]
    fn initial_credits_are_parsed_and_bad_ones_refused() {
        let settings = read_one("AIGNE_HUB_INITIAL_CREDITS", "12.5").unwrap();
        let expected = domain::Credits::parse("12.5").unwrap();
        assert_eq!(settings.limits.initial_credits, expected);
        refused("AIGNE_HUB_INITIAL_CREDITS", "ten");
        refused("AIGNE_HUB_INITIAL_CREDITS", "-1");
    }

    #[test]
    fn the_stream_cutoff_switch_is_parsed_and_a_bad_one_refused() {
        for (raw, on) in [("off", false), ("FALSE", false), ("0", false), ("on", true)] {
            let settings = read_one("AIGNE_HUB_STREAM_CREDIT_CUTOFF", raw).unwrap();
            assert_eq!(settings.limits.stream_credit_cutoff, on, "{raw}");
        }
        refused("AIGNE_HUB_STREAM_CREDIT_CUTOFF", "maybe");
    }

    #[test]
    fn numbers_land_in_their_settings() {
        let settings = read(&[
            ("AIGNE_HUB_ACTOR_THREADS", "3"),
            ("AIGNE_HUB_HTTP_WORKERS", "64"),
            ("AIGNE_HUB_WEBHOOK_TOLERANCE_SECS", "60"),
            ("AIGNE_HUB_EXPIRING_SOON_DAYS", "2"),
            ("AIGNE_HUB_PROJECTOR_BATCH_DELAY_MS", " 5000 "),
            ("AIGNE_HUB_INVOICE_ANCHOR_DAY", "28"),
            ("AIGNE_HUB_INVOICE_GRACE_HOURS", "648"),
            ("AIGNE_HUB_EMBEDDINGS_ANSWER_MAX_BYTES", "1024"),
            ("AIGNE_HUB_IMAGES_ANSWER_MAX_BYTES", "2048"),
        ])
        .unwrap();
        assert_eq!(settings.actor_threads, 3);
        assert_eq!(settings.http_workers, 64);
        let limits = &settings.limits;
        assert_eq!(limits.webhooks.tolerance_secs, 60);
        assert_eq!(limits.expiring_soon_window_secs, 2 * 86_400);
        assert_eq!(limits.projector_batch_delay_ms, 5_000);
        assert_eq!(limits.invoice_anchor_day, 28);
        assert_eq!(limits.invoice_grace_secs, 648 * 3_600);
        assert_eq!(limits.upstream_embeddings_answer_max_bytes, 1_024);
        assert_eq!(limits.upstream_images_answer_max_bytes, 2_048);
        let cut = limits.invoice_settings();
        let expected = projections::invoices::Settings::new(28, 648 * 3_600);
        assert_eq!(cut.projection_name(), expected.projection_name());
    }

    #[test]
    fn a_number_that_is_not_one_or_out_of_range_is_refused_by_name() {
        let cases = [
            ("AIGNE_HUB_ACTOR_THREADS", "0"),
            ("AIGNE_HUB_ACTOR_THREADS", "two"),
            ("AIGNE_HUB_HTTP_WORKERS", "65"),
            ("AIGNE_HUB_WEBHOOK_TOLERANCE_SECS", "-5"),
            ("AIGNE_HUB_EXPIRING_SOON_DAYS", "3651"),
            ("AIGNE_HUB_PROJECTOR_BATCH_DELAY_MS", "5001"),
            ("AIGNE_HUB_PROJECTOR_BATCH_DELAY_MS", "1.5"),
            ("AIGNE_HUB_INVOICE_ANCHOR_DAY", "0"),
            ("AIGNE_HUB_INVOICE_ANCHOR_DAY", "29"),
            ("AIGNE_HUB_INVOICE_GRACE_HOURS", "649"),
            ("AIGNE_HUB_EMBEDDINGS_ANSWER_MAX_BYTES", "1023"),
            ("AIGNE_HUB_IMAGES_ANSWER_MAX_BYTES", "48MiB"),
        ];
        for (name, value) in cases {
            let error = refused(name, value);
            assert!(
                error.contains(value.trim()),
                "{name}={value:?} names the value: {error}"
            );
        }
    }

    #[test]
    fn blank_numbers_are_unset() {
        let settings = read(&[
            ("AIGNE_HUB_ACTOR_THREADS", " "),
            ("AIGNE_HUB_INVOICE_ANCHOR_DAY", ""),
        ])
        .unwrap();
        assert_eq!(settings.actor_threads, 2);
        assert_eq!(
            settings.limits.invoice_anchor_day,
            projections::invoices::ANCHOR_DAY_DEFAULT
        );
    }

    #[test]
    fn command_variables_are_read_and_the_key_never_prints() {
        let map: HashMap<&str, &str> = [
            ("RUST_LOG", " debug "),
            ("AIGNE_HUB_PROVIDER_API_KEY", "sk-secret"),
        ]
        .into_iter()
        .collect();
        let env = CommandEnv::from_vars(&|name| map.get(name).map(|v| v.to_string()));
        assert_eq!(env.log_filter.as_deref(), Some("debug"));
        assert_eq!(env.provider_api_key.as_deref(), Some("sk-secret"));
        let unset = CommandEnv::from_vars(&|_| None);
        assert_eq!(unset.log_filter, None);
        assert_eq!(unset.provider_api_key, None);
        let notify = read(&[("AIGNE_HUB_LOW_BALANCE_WEBHOOK_SECRET", "whsec-9")]).unwrap();
        assert!(!format!("{:?}", notify.notify).contains("whsec-9"));
    }

    /// Every variable named in this file's parsing appears in a test above, so a
    /// new one cannot be added without a test of its parsing.
    #[test]
    fn every_variable_read_here_is_tested_here() {
        let text = include_str!("config.rs");
        let (code, tests) = text
            .split_once("#[cfg(test)]\nmod tests {")
            .expect("the tests module");
        // Quoted names in the code: `"AIGNE_HUB_…"`, `"DATABASE_URL"`, `"RUST_LOG"`.
        let read: std::collections::BTreeSet<&str> = code
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| s.len() > 3 && s.contains('_'))
            .filter(|s| {
                s.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
            .collect();
        assert!(read.contains("AIGNE_HUB_LISTEN"), "{read:?}");
        assert!(read.len() >= 24, "{read:?}");
        for name in &read {
            assert!(tests.contains(&format!("\"{name}\"")), "{name} is untested");
        }
    }
}
