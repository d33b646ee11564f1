//! Settings: flags and environment variables, each with a default, and the named
//! limits every queue, body and timeout in the hub obeys.

use crate::crypto::SecretBox;
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

    pub fn from_env() -> Self {
        let mut settings = Self::default();
        if let Ok(raw) = std::env::var("AIGNE_HUB_WEBHOOK_SECRET") {
            settings.secrets = Self::parse_secrets(&raw);
        }
        if let Some(secs) = env_number("AIGNE_HUB_WEBHOOK_TOLERANCE_SECS") {
            settings.tolerance_secs = secs;
        }
        settings
    }
}

/// A whole number from the environment; unset is `None`, and so is a value that
/// is not a number (with a warning: the default applies).
/// See `Limits::projector_batch_delay_ms`.
pub const PROJECTOR_BATCH_DELAY_MS_DEFAULT: u64 = 100;
/// Projections (balance reads of other processes, analytics) lag by up to this.
pub const PROJECTOR_BATCH_DELAY_MS_MAX: u64 = 5_000;

fn env_number(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok().filter(|v| !v.trim().is_empty())?;
    match raw.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            tracing::warn!("{name}={raw:?} is not a whole number; using the default");
            None
        }
    }
}

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
    pub notify: crate::notify::NotifySettings,
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

impl AigneSettings {
    pub fn from_env() -> Self {
        let mut settings = Self::default();
        if let Ok(prefix) = std::env::var("AIGNE_HUB_CREDIT_PREFIX") {
            settings.credit_prefix = Some(prefix).filter(|p| !p.is_empty());
        }
        settings.public_url = std::env::var("AIGNE_HUB_PUBLIC_URL")
            .ok()
            .filter(|u| !u.is_empty());
        settings
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

    /// From `AIGNE_HUB_MODE`; unset or empty is `service_provider`.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var("AIGNE_HUB_MODE") {
            Ok(raw) if !raw.trim().is_empty() => Self::parse(&raw),
            _ => Ok(Self::default()),
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

/// `AIGNE_HUB_INITIAL_CREDITS`: credits (decimal string) a tenant created without
/// `initial_credits` starts with; zero when unset. A malformed value stops the hub.
pub fn initial_credits_from_env() -> anyhow::Result<domain::Credits> {
    match std::env::var("AIGNE_HUB_INITIAL_CREDITS") {
        Ok(raw) if !raw.trim().is_empty() => {
            let credits = domain::Credits::parse(raw.trim())
                .map_err(|e| anyhow::anyhow!("AIGNE_HUB_INITIAL_CREDITS: {e}"))?;
            anyhow::ensure!(
                !credits.is_negative(),
                "AIGNE_HUB_INITIAL_CREDITS cannot be negative"
            );
            Ok(credits)
        }
        _ => Ok(domain::Credits::ZERO),
    }
}

impl Settings {
    pub fn from_env_defaults() -> Self {
        Self {
            mode: DeploymentMode::default(),
            listen: std::env::var("AIGNE_HUB_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into()),
            data_dir: std::env::var("AIGNE_HUB_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from("./data")),
            database_url: std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty()),
            operator_token: std::env::var("AIGNE_HUB_OPERATOR_TOKEN")
                .ok()
                .filter(|s| !s.is_empty()),
            master_key: std::env::var("AIGNE_HUB_MASTER_KEY")
                .ok()
                .filter(|s| !s.is_empty()),
            actor_threads: env_count("AIGNE_HUB_ACTOR_THREADS", 2),
            http_workers: env_count("AIGNE_HUB_HTTP_WORKERS", 2),
            limits: Limits {
                webhooks: WebhookSettings::from_env(),
                stream_credit_cutoff: env_switch("AIGNE_HUB_STREAM_CREDIT_CUTOFF", true),
                projector_batch_delay_ms: env_number("AIGNE_HUB_PROJECTOR_BATCH_DELAY_MS")
                    .map(|ms| ms.min(PROJECTOR_BATCH_DELAY_MS_MAX))
                    .unwrap_or(PROJECTOR_BATCH_DELAY_MS_DEFAULT),
                expiring_soon_window_secs: env_number("AIGNE_HUB_EXPIRING_SOON_DAYS")
                    .map(|days| days.saturating_mul(24 * 3600))
                    .unwrap_or(EXPIRING_SOON_WINDOW_SECS_DEFAULT),
                invoice_anchor_day: env_number("AIGNE_HUB_INVOICE_ANCHOR_DAY")
                    .map(|day| day.clamp(1, 28) as u32)
                    .unwrap_or(projections::invoices::ANCHOR_DAY_DEFAULT),
                invoice_grace_secs: env_number("AIGNE_HUB_INVOICE_GRACE_HOURS")
                    .map(|hours| {
                        (hours.saturating_mul(3600) as i64)
                            .clamp(0, projections::invoices::GRACE_SECS_MAX)
                    })
                    .unwrap_or(projections::invoices::GRACE_SECS_DEFAULT),
                upstream_embeddings_answer_max_bytes: env_bytes(
                    "AIGNE_HUB_EMBEDDINGS_ANSWER_MAX_BYTES",
                    EMBEDDINGS_ANSWER_MAX_BYTES_DEFAULT,
                ),
                upstream_images_answer_max_bytes: env_bytes(
                    "AIGNE_HUB_IMAGES_ANSWER_MAX_BYTES",
                    IMAGES_ANSWER_MAX_BYTES_DEFAULT,
                ),
                ..Limits::default()
            },
            aigne: AigneSettings::from_env(),
            notify: crate::notify::NotifySettings::from_env(),
        }
    }
}

/// An on/off setting from the environment (`on`/`off`, `true`/`false`, `1`/`0`);
/// anything else is `default`.
fn env_switch(name: &str, default: bool) -> bool {
    match std::env::var(name)
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        Ok("on" | "true" | "1") => true,
        Ok("off" | "false" | "0") => false,
        _ => default,
    }
}

/// A byte limit from the environment: a whole number of at least 1 KiB (a
/// smaller one would refuse every answer), else `default`.
fn env_bytes(name: &str, default: usize) -> usize {
    match env_number(name) {
        None => default,
        Some(n) if n < 1024 => {
            tracing::warn!("{name}={n} is below 1024 bytes; using the default");
            default
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    }
}

/// A thread count from the environment: a whole number from 1 to 64, else `default`.
fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| (1..=64).contains(n))
        .unwrap_or(default)
}

/// Writes `contents` to a new file readable only by its owner.
fn write_private_file(path: &Path, contents: &str) -> anyhow::Result<()> {
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

/// Reads a secret from `file_name` in the data dir, creating it with `generate` on
/// first start. Returns the secret and whether it was just created.
fn file_secret(
    data_dir: &Path,
    file_name: &str,
    generate: impl FnOnce() -> String,
) -> anyhow::Result<(String, PathBuf, bool)> {
    create_private_dir(data_dir)?;
    let path = data_dir.join(file_name);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            make_file_private(&path)?;
            Ok((text.trim().to_string(), path, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = generate();
            write_private_file(&path, &value)?;
            Ok((value, path, true))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The embedded store's file in the data dir.
pub const SQLITE_FILE_NAME: &str = "aigne-hub.sqlite";
const OPERATOR_TOKEN_FILE_NAME: &str = "operator_token";
const MASTER_KEY_FILE_NAME: &str = "master.key";

/// For every command but `serve`, which alone creates a store: fails, naming the
/// path looked in, unless the store and its master key already exist. The
/// operator token is not needed by commands; when it is neither set nor on
/// disk, a throwaway one is used so that nothing is written.
pub fn require_existing_store(settings: &mut Settings) -> anyhow::Result<()> {
    const HINT: &str = "start `aigne-hub serve` once to create a store, or point --data-dir \
        (AIGNE_HUB_DATA_DIR) or --database-url (DATABASE_URL) at the server's store";
    if let Some(path) = sqlite_path(settings) {
        let path = std::path::absolute(&path).unwrap_or(path);
        anyhow::ensure!(path.is_file(), "no hub store at {}: {HINT}", path.display());
    }
    if settings.master_key.is_none() {
        let path = settings.data_dir.join(MASTER_KEY_FILE_NAME);
        let path = std::path::absolute(&path).unwrap_or(path);
        anyhow::ensure!(
            path.is_file(),
            "no master key at {} and AIGNE_HUB_MASTER_KEY is unset: {HINT}",
            path.display()
        );
    }
    if settings.operator_token.is_none()
        && !settings.data_dir.join(OPERATOR_TOKEN_FILE_NAME).is_file()
    {
        settings.operator_token = Some(crate::auth::random_secret());
    }
    Ok(())
}

/// The SQLite file the settings name, if the store is SQLite.
fn sqlite_path(settings: &Settings) -> Option<PathBuf> {
    match settings.database_url.as_deref() {
        None => Some(settings.data_dir.join(SQLITE_FILE_NAME)),
        Some(url) => {
            let rest = url.strip_prefix("sqlite:")?;
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            let path = rest.split('?').next().unwrap_or_default();
            (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
        }
    }
}

/// Where the operator token came from, for the startup banner.
pub enum TokenSource {
    Env,
    File { path: PathBuf, created: bool },
}

pub fn operator_token(settings: &Settings) -> anyhow::Result<(String, TokenSource)> {
    if let Some(token) = &settings.operator_token {
        return Ok((token.clone(), TokenSource::Env));
    }
    let (token, path, created) = file_secret(&settings.data_dir, OPERATOR_TOKEN_FILE_NAME, || {
        format!("aho_{}", crate::auth::random_secret())
    })?;
    Ok((token, TokenSource::File { path, created }))
}

pub fn master_key(settings: &Settings) -> anyhow::Result<SecretBox> {
    let text = match &settings.master_key {
        Some(text) => text.clone(),
        None => {
            file_secret(&settings.data_dir, MASTER_KEY_FILE_NAME, || {
                hex::encode(SecretBox::generate_master_key())
            })?
            .0
        }
    };
    let key = SecretBox::parse_master_key(&text)
        .map_err(|e| anyhow::anyhow!("AIGNE_HUB_MASTER_KEY: {e}"))?;
    Ok(SecretBox::new(&key)?)
}
