//! Settings: built-in defaults, then a TOML file, then `WAYBILL_SECTION__KEY` environment
//! variables, then command-line flags. All layers are merged as TOML tables first and
//! deserialized once at the end, so every layer is checked by the same rules and an unknown
//! key is an error wherever it comes from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::net::Cidr;

/// The commented default configuration, compiled into the binary. It doubles as the
/// documentation of every key and is what the packages install as `/etc/waybill/waybill.toml`.
pub const DEFAULT_TOML: &str = include_str!("config.default.toml");

/// Keys that have no default (so they are absent from [`DEFAULT_TOML`]) but may still be
/// set from the environment; they are strings.
const OPTIONAL_STRING_KEYS: &[&str] =
    &["server.tls_cert", "server.tls_key", "server.redirect_http"];

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole, validated configuration.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub outbound: OutboundConfig,
    pub delivery: DeliveryConfig,
    pub background: BackgroundConfig,
    pub subscriptions: SubscriptionsConfig,
    pub retention: RetentionConfig,
    pub limits: LimitsConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub auth: AuthConfig,
    pub admin: AdminConfig,
}

/// `[server]`: where and how the HTTP server listens.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to serve on.
    pub listen: SocketAddr,
    /// Directory of the store and the admin token.
    pub data_dir: PathBuf,
    /// Request body limit in bytes.
    pub max_body_bytes: u64,
    /// Most connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Seconds a request's header may take to arrive, from its first byte.
    pub header_timeout_seconds: u64,
    /// Seconds a connection may wait for its first or next request.
    pub idle_timeout_seconds: u64,
    /// Seconds a request body may take to arrive, and a response may stall unread.
    pub body_timeout_seconds: u64,
    /// PEM certificate chain; with `tls_key`, switches `serve` to HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// With HTTPS on, a second address where plain HTTP is answered with a redirect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_http: Option<SocketAddr>,
}

/// `[outbound]`: which otherwise-refused addresses outbound calls may reach.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// CIDRs allowed although private or loopback.
    pub allow: Vec<String>,
}

/// `[delivery]`: retry policy of pushes and callbacks.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Seconds between attempts.
    pub retry_schedule: Vec<u64>,
    /// Limit of one attempt, in seconds.
    pub timeout_seconds: u64,
    /// Hours without success after which an endpoint is disabled.
    pub disable_after_hours: u64,
    /// Outbound calls under way at once, over all endpoints.
    pub concurrency: usize,
    /// Outbound calls under way at once to one endpoint, so a slow one cannot take every slot.
    pub endpoint_concurrency: usize,
    /// The longest wait a receiver's `Retry-After` can ask for, in seconds.
    pub max_retry_after_seconds: u64,
}

/// `[background]`: the workers that run background jobs.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackgroundConfig {
    /// Jobs running at once.
    pub concurrency: usize,
    /// Time limit of one job's call, in seconds.
    pub timeout_seconds: u64,
    /// The largest answer kept as a job's content, in bytes.
    pub max_content_bytes: u64,
}

/// `[subscriptions]`: event callback batching.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionsConfig {
    /// Milliseconds during which changed ids are collected.
    pub batch_window_ms: u64,
}

/// `[retention]`: pruning of finished work.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Age in days after which finished records are pruned (1 to 3650).
    pub days: u64,
    /// Minutes between two pruning passes (1 to 1440).
    pub every_minutes: u64,
    /// A settled payload segment whose live payloads fill less than this fraction of its
    /// file (0 to 1) has them copied forward so the file can be deleted; 0 = never.
    pub compact_below: f64,
}

/// `[limits]`: per-partner request rate.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per second per partner; 0 = unlimited.
    pub partner_rps: u32,
    /// Failed authentications per minute allowed from one source address before its
    /// calls are answered 429; 0 = no limit.
    pub auth_failures_per_minute: u32,
}

/// `[store]`: the embedded database.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Free disk (MiB) below which intake answers 503.
    pub min_free_mb: u64,
    /// sled page cache size in MiB.
    pub cache_mb: u64,
    /// Writes that may wait for the writer; past it, requests get 503.
    pub writer_queue: usize,
}

/// `[auth]`: partner tokens (JWT) from `POST /api/v1/auth/token`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Lifetime of a token in seconds, 60 to 3600.
    pub token_ttl_seconds: u64,
    /// The `iss` claim tokens carry and must carry to be accepted.
    pub token_issuer: String,
}

/// `[admin]`: admin users' sessions.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// A session unused for this many minutes ends.
    pub session_idle_minutes: u64,
    /// A session ends this many hours after login, however active.
    pub session_max_hours: u64,
    /// Mark the session cookie `Secure` although this server speaks plain HTTP (behind a
    /// TLS-terminating proxy). With HTTPS on it is always `Secure`.
    pub secure_cookies: bool,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// When not empty, `/metrics` asks for `Authorization: Bearer <token>`.
    pub token: String,
}

/// `[log]`: log output.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Values given as command-line flags; they win over every other layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
}

impl Config {
    /// The built-in defaults alone.
    pub fn defaults() -> Config {
        // The embedded file is part of the binary and covered by a unit test.
        Self::load(None, std::iter::empty(), &Overrides::default())
            .expect("the embedded default configuration is valid")
    }

    /// Loads the layers in order: defaults, `file`, `env` (pairs of variable name and
    /// value; only `WAYBILL_*__*` names are read), then `flags`.
    pub fn load(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = DEFAULT_TOML
            .parse()
            .map_err(|e| ConfigError::Invalid(format!("built-in defaults: {e}")))?;
        let defaults = table.clone();

        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let layer: toml::Table = text.parse().map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
            merge(&mut table, layer);
        }

        for (var, value) in env {
            let Some(rest) = var.strip_prefix("WAYBILL_") else {
                continue;
            };
            let Some((section, key)) = rest.split_once("__") else {
                continue;
            };
            let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
            let parsed = env_value(&defaults, &section, &key, &value).map_err(|reason| {
                ConfigError::Env {
                    var: var.clone(),
                    reason,
                }
            })?;
            set(&mut table, &section, &key, parsed);
        }

        if let Some(dir) = &flags.data_dir {
            set(
                &mut table,
                "server",
                "data_dir",
                toml::Value::String(dir.display().to_string()),
            );
        }
        if let Some(listen) = &flags.listen {
            set(
                &mut table,
                "server",
                "listen",
                toml::Value::String(listen.clone()),
            );
        }

        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.server.max_body_bytes == 0 {
            return bad("server.max_body_bytes must be greater than 0");
        }
        if self.server.max_connections == 0 {
            return bad("server.max_connections must be greater than 0");
        }
        for (name, secs) in [
            ("header_timeout_seconds", self.server.header_timeout_seconds),
            ("idle_timeout_seconds", self.server.idle_timeout_seconds),
            ("body_timeout_seconds", self.server.body_timeout_seconds),
        ] {
            if !(1..=3600).contains(&secs) {
                return Err(ConfigError::Invalid(format!(
                    "server.{name} must be 1-3600 seconds"
                )));
            }
        }
        if !(1..=1440).contains(&self.admin.session_idle_minutes) {
            return bad("admin.session_idle_minutes must be 1-1440");
        }
        if !(1..=720).contains(&self.admin.session_max_hours) {
            return bad("admin.session_max_hours must be 1-720");
        }
        if self.store.writer_queue == 0 {
            return bad("store.writer_queue must be greater than 0");
        }
        if !(1..=3650).contains(&self.retention.days) {
            return bad("retention.days must be 1-3650");
        }
        if !(1..=1440).contains(&self.retention.every_minutes) {
            return bad("retention.every_minutes must be 1-1440");
        }
        if !(0.0..=1.0).contains(&self.retention.compact_below) {
            return bad("retention.compact_below must be 0-1");
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return bad("server.tls_cert and server.tls_key must be set together");
        }
        if self.server.redirect_http.is_some() && self.server.tls_cert.is_none() {
            return bad("server.redirect_http needs HTTPS (server.tls_cert and server.tls_key)");
        }
        if self.delivery.retry_schedule.is_empty() {
            return bad("delivery.retry_schedule needs at least one entry");
        }
        if self.delivery.disable_after_hours == 0 {
            return bad("delivery.disable_after_hours must be greater than 0");
        }
        if self.delivery.timeout_seconds == 0 {
            return bad("delivery.timeout_seconds must be greater than 0");
        }
        if !(1..=256).contains(&self.background.concurrency) {
            return bad("background.concurrency must be 1-256");
        }
        if !(1..=86_400).contains(&self.background.timeout_seconds) {
            return bad("background.timeout_seconds must be 1-86400");
        }
        if !(1024..=1 << 30).contains(&self.background.max_content_bytes) {
            return bad("background.max_content_bytes must be 1024 to 1073741824");
        }
        if !(1..=1024).contains(&self.delivery.concurrency) {
            return bad("delivery.concurrency must be 1-1024");
        }
        if !(1..=self.delivery.concurrency).contains(&self.delivery.endpoint_concurrency) {
            return bad("delivery.endpoint_concurrency must be 1 to delivery.concurrency");
        }
        if !(1..=3_600_000).contains(&self.subscriptions.batch_window_ms) {
            return bad("subscriptions.batch_window_ms must be 1-3600000");
        }
        if !(60..=3600).contains(&self.auth.token_ttl_seconds) {
            return bad("auth.token_ttl_seconds must be 60-3600");
        }
        let issuer = &self.auth.token_issuer;
        if issuer.is_empty() || issuer.len() > 255 || issuer.chars().any(char::is_control) {
            return bad("auth.token_issuer must be 1-255 characters without control characters");
        }
        for cidr in &self.outbound.allow {
            if cidr.parse::<Cidr>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "outbound.allow: {cidr:?} is not a CIDR such as 10.0.0.0/8"
                )));
            }
        }
        Ok(())
    }

    /// The parsed `outbound.allow` ranges (validated at load).
    pub fn outbound_allow(&self) -> Vec<Cidr> {
        self.outbound
            .allow
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
    }

    /// The effective configuration as TOML, for `waybill check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// Overlays `layer` onto `base`, section by section, so a file may set a single key.
fn merge(base: &mut toml::Table, layer: toml::Table) {
    for (key, value) in layer {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(l)) => merge(b, l),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = entry {
        t.insert(key.to_owned(), value);
    } else {
        // A file that set a whole section to a scalar; replace it so the error below names it.
        let mut t = toml::Table::new();
        t.insert(key.to_owned(), value);
        *entry = toml::Value::Table(t);
    }
}

/// An environment string takes the type of the key's default, so `WAYBILL_LIMITS__PARTNER_RPS=5`
/// becomes an integer and list keys are split on commas.
fn env_value(
    defaults: &toml::Table,
    section: &str,
    key: &str,
    raw: &str,
) -> Result<toml::Value, String> {
    let default = defaults
        .get(section)
        .and_then(|s| s.as_table())
        .and_then(|s| s.get(key));
    let Some(default) = default else {
        if OPTIONAL_STRING_KEYS.contains(&format!("{section}.{key}").as_str()) {
            return Ok(toml::Value::String(raw.to_owned()));
        }
        return Err(format!("{section}.{key} is not a configuration key"));
    };
    scalar_like(default, raw).or_else(|e| match default {
        toml::Value::Array(items) => {
            let sample = items
                .first()
                .cloned()
                .unwrap_or(toml::Value::String(String::new()));
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|part| scalar_like(&sample, part))
                .collect::<Result<Vec<_>, _>>()
                .map(toml::Value::Array)
        }
        _ => Err(e),
    })
}

fn scalar_like(default: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    match default {
        toml::Value::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("{raw:?} is not a whole number")),
        toml::Value::Float(_) => raw
            .trim()
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| format!("{raw:?} is not a number")),
        toml::Value::Boolean(_) => raw
            .trim()
            .parse::<bool>()
            .map(toml::Value::Boolean)
            .map_err(|_| format!("{raw:?} is not true or false")),
        toml::Value::String(_) => Ok(toml::Value::String(raw.to_owned())),
        _ => Err("needs a comma-separated list".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::defaults();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.data_dir, PathBuf::from("./waybill-data"));
        assert_eq!(c.server.max_body_bytes, 10_485_760);
        assert_eq!(
            c.delivery.retry_schedule,
            vec![5, 300, 1800, 7200, 18000, 36000, 36000]
        );
        assert_eq!(c.delivery.timeout_seconds, 15);
        assert_eq!(c.subscriptions.batch_window_ms, 1000);
        assert_eq!(c.retention.days, 30);
        assert_eq!(c.retention.compact_below, 0.25);
        assert_eq!(c.delivery.disable_after_hours, 120);
        assert_eq!(c.delivery.concurrency, 64);
        assert_eq!(c.delivery.endpoint_concurrency, 16);
        assert_eq!(c.delivery.max_retry_after_seconds, 3600);
        assert_eq!(c.limits.partner_rps, 0);
        assert_eq!(c.store.min_free_mb, 512);
        assert_eq!(c.store.cache_mb, 24);
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.auth.token_ttl_seconds, 3600);
        assert_eq!(c.auth.token_issuer, "waybill");
        assert!(c.outbound.allow.is_empty());
        assert!(c.server.tls_cert.is_none());
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"127.0.0.1:9000\"\nmax_body_bytes = 100\n[limits]\npartner_rps = 3\n",
        )
        .unwrap();
        let flags = Overrides {
            data_dir: Some("/tmp/x".into()),
            listen: None,
        };
        let c = Config::load(
            Some(&file),
            env(&[
                ("WAYBILL_LIMITS__PARTNER_RPS", "7"),
                ("WAYBILL_OUTBOUND__ALLOW", "127.0.0.0/8, 10.0.0.0/8"),
                ("WAYBILL_DELIVERY__RETRY_SCHEDULE", "1,2"),
                ("WAYBILL_SERVER__TLS_CERT", "/c.pem"),
                ("WAYBILL_SERVER__TLS_KEY", "/k.pem"),
                ("WAYBILL_RETENTION__COMPACT_BELOW", "0.5"),
                ("UNRELATED", "x"),
            ]),
            &flags,
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 9000, "file overrides default");
        assert_eq!(c.server.max_body_bytes, 100);
        assert_eq!(c.limits.partner_rps, 7, "env overrides file");
        assert_eq!(c.outbound.allow, vec!["127.0.0.0/8", "10.0.0.0/8"]);
        assert_eq!(c.delivery.retry_schedule, vec![1, 2]);
        assert_eq!(
            c.server.data_dir,
            PathBuf::from("/tmp/x"),
            "flag overrides all"
        );
        assert_eq!(c.server.tls_cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(
            c.retention.compact_below, 0.5,
            "a fraction from the environment"
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let none = Overrides::default();
        let cases: &[&[(&str, &str)]] = &[
            &[("WAYBILL_LIMITS__PARTNER_RPS", "many")],
            &[("WAYBILL_NOPE__KEY", "1")],
            &[("WAYBILL_OUTBOUND__ALLOW", "not-a-cidr")],
            &[("WAYBILL_SERVER__LISTEN", "localhost")],
            &[("WAYBILL_SERVER__TLS_CERT", "/only-cert.pem")],
            &[("WAYBILL_LOG__FORMAT", "xml")],
            &[("WAYBILL_AUTH__TOKEN_TTL_SECONDS", "7200")],
            &[("WAYBILL_AUTH__TOKEN_TTL_SECONDS", "0")],
            &[("WAYBILL_RETENTION__COMPACT_BELOW", "1.5")],
            &[("WAYBILL_RETENTION__COMPACT_BELOW", "-0.1")],
            &[("WAYBILL_RETENTION__COMPACT_BELOW", "NaN")],
            &[("WAYBILL_RETENTION__COMPACT_BELOW", "most")],
        ];
        for case in cases {
            assert!(
                Config::load(None, env(case), &none).is_err(),
                "accepted {case:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.toml");
        std::fs::write(&file, "[server]\nlisten_typo = 1\n").unwrap();
        assert!(Config::load(Some(&file), env(&[]), &none).is_err());
    }
}
