//! What `/metrics` shows, in the Prometheus/OpenMetrics text format, through
//! `prometheus-client`.
//!
//! Events are counted where they happen (a request answered, messages accepted, an
//! outbound attempt ended, a writer round flushed), into lock-free counters and
//! histograms. Levels (queue depths, bytes on disk, free disk) are read when the
//! metrics are asked for, by [`Metrics::render`]'s caller, and set just before encoding:
//! nothing polls in the background for them.
//!
//! HTTP requests are labelled by route template (`/api/v1/transmissions/:uuid`), taken
//! from the OpenAPI document's paths, so a client cannot grow the label set by sending
//! made-up paths: those count as `unmatched`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The media type of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    env: &'static str,
    status: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// Every metric Waybill keeps. One per process, shared through `AppState`.
pub struct Metrics {
    registry: Registry,
    routes: RouteTable,
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    messages_accepted: Counter,
    messages_invalid: Counter,
    transmissions_handed_out: Counter,
    transmissions_acknowledged: Counter,
    deliveries: Family<DeliveryLabels, Counter>,
    delivery_seconds: Family<KindLabel, Histogram, fn() -> Histogram>,
    writer_group: Histogram,
    writer_flush_seconds: Histogram,
    writer_queue: Gauge,
    queue_depth: Family<QueueLabel, Gauge>,
    messages_by_status: Family<StatusLabels, Gauge>,
    payload_bytes: Gauge,
    store_bytes: Gauge,
    free_disk_bytes: Gauge,
    uptime_seconds: Gauge<f64, AtomicU64>,
    pruned: Family<KindLabel, Counter>,
    reclaimed_bytes: Counter,
    compacted_segments: Counter,
    compacted_bytes: Counter,
}

/// The levels read at scrape time, set just before the metrics are encoded.
#[derive(Debug, Default)]
pub struct Levels {
    pub writer_queue: u64,
    /// (queue name, depth), e.g. `("pending_transmissions", 12)`.
    pub queues: Vec<(&'static str, u64)>,
    /// (environment, status, count).
    pub messages: Vec<(&'static str, &'static str, u64)>,
    pub payload_bytes: u64,
    pub store_bytes: u64,
    pub free_disk_bytes: u64,
    pub uptime: Duration,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut root = Registry::with_prefix("waybill");
        let m = Metrics {
            registry: Registry::default(),
            routes: RouteTable::from_openapi(),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(latency_histogram),
            messages_accepted: Counter::default(),
            messages_invalid: Counter::default(),
            transmissions_handed_out: Counter::default(),
            transmissions_acknowledged: Counter::default(),
            deliveries: Family::default(),
            delivery_seconds: Family::new_with_constructor(latency_histogram),
            writer_group: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            writer_flush_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            writer_queue: Gauge::default(),
            queue_depth: Family::default(),
            messages_by_status: Family::default(),
            payload_bytes: Gauge::default(),
            store_bytes: Gauge::default(),
            free_disk_bytes: Gauge::default(),
            uptime_seconds: Gauge::default(),
            pruned: Family::default(),
            reclaimed_bytes: Counter::default(),
            compacted_segments: Counter::default(),
            compacted_bytes: Counter::default(),
        };
        root.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            m.http_requests.clone(),
        );
        root.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its answer",
            Unit::Seconds,
            m.http_seconds.clone(),
        );
        root.register(
            "messages_accepted",
            "Messages accepted at intake (stored, answered 2xx)",
            m.messages_accepted.clone(),
        );
        root.register(
            "messages_invalid",
            "Messages stored as invalid at intake",
            m.messages_invalid.clone(),
        );
        root.register(
            "transmissions_handed_out",
            "Transmissions handed out to polling receivers",
            m.transmissions_handed_out.clone(),
        );
        root.register(
            "transmissions_acknowledged",
            "Transmissions acknowledged by their receivers",
            m.transmissions_acknowledged.clone(),
        );
        root.register(
            "deliveries",
            "Outbound delivery attempts, by kind (push, webhook, subscription) and outcome",
            m.deliveries.clone(),
        );
        root.register_with_unit(
            "delivery_duration",
            "Time of one outbound delivery attempt",
            Unit::Seconds,
            m.delivery_seconds.clone(),
        );
        root.register(
            "writer_group_size",
            "Writes applied together in one writer round (one transaction and one flush)",
            m.writer_group.clone(),
        );
        root.register_with_unit(
            "writer_flush_duration",
            "Time of one writer round's flush to disk",
            Unit::Seconds,
            m.writer_flush_seconds.clone(),
        );
        root.register(
            "writer_queue_length",
            "Writes waiting for the writer",
            m.writer_queue.clone(),
        );
        root.register(
            "queue_depth",
            "Work waiting, by queue",
            m.queue_depth.clone(),
        );
        root.register(
            "messages",
            "Messages in the store, by environment and status",
            m.messages_by_status.clone(),
        );
        root.register_with_unit(
            "payload_log_size",
            "Bytes of the payload segment files",
            Unit::Bytes,
            m.payload_bytes.clone(),
        );
        root.register_with_unit(
            "store_size",
            "Bytes of the store's own files",
            Unit::Bytes,
            m.store_bytes.clone(),
        );
        root.register_with_unit(
            "free_disk",
            "Bytes free for the data directory",
            Unit::Bytes,
            m.free_disk_bytes.clone(),
        );
        root.register_with_unit(
            "uptime",
            "Time since the process started",
            Unit::Seconds,
            m.uptime_seconds.clone(),
        );
        root.register(
            "pruned_rows",
            "Rows removed by retention, by kind (message, row: their index entries, requests and attempt logs, job and idempotency: background records)",
            m.pruned.clone(),
        );
        root.register_with_unit(
            "reclaimed",
            "Bytes of payload segment files deleted by retention",
            Unit::Bytes,
            m.reclaimed_bytes.clone(),
        );
        root.register(
            "compacted_segments",
            "Payload segment files whose live payloads retention copied forward, so that the next pass deletes them",
            m.compacted_segments.clone(),
        );
        root.register_with_unit(
            "compacted",
            "Bytes of live payloads copied forward by segment compaction",
            Unit::Bytes,
            m.compacted_bytes.clone(),
        );
        Metrics {
            registry: root,
            ..m
        }
    }

    /// Retention removed `n` rows of `kind`.
    pub fn pruned(&self, kind: &'static str, n: u64) {
        if n > 0 {
            self.pruned.get_or_create(&KindLabel { kind }).inc_by(n);
        }
    }

    /// Retention deleted segment files of `bytes` in all.
    pub fn reclaimed(&self, bytes: u64) {
        self.reclaimed_bytes.inc_by(bytes);
    }

    /// Compaction emptied `segments` segment files by copying `bytes` forward. The files
    /// themselves count in [`Metrics::reclaimed`] once deleted.
    pub fn compacted(&self, segments: u64, bytes: u64) {
        self.compacted_segments.inc_by(segments);
        self.compacted_bytes.inc_by(bytes);
    }

    /// Counts one answered request to `route` (from [`Metrics::route_of`]).
    pub fn request(&self, method: &http::Method, route: &'static str, status: u16, took: Duration) {
        let method = method_label(method);
        self.http_requests
            .get_or_create(&HttpLabels {
                method,
                route,
                status,
            })
            .inc();
        self.http_seconds
            .get_or_create(&RouteLabels { method, route })
            .observe(took.as_secs_f64());
    }

    /// Messages stored at intake: `valid` go on to their receivers, `invalid` do not.
    pub fn accepted(&self, valid: u64, invalid: u64) {
        self.messages_accepted.inc_by(valid + invalid);
        if invalid > 0 {
            self.messages_invalid.inc_by(invalid);
        }
    }

    pub fn handed_out(&self, n: u64) {
        if n > 0 {
            self.transmissions_handed_out.inc_by(n);
        }
    }

    pub fn acknowledged(&self) {
        self.transmissions_acknowledged.inc();
    }

    /// One outbound attempt of `kind` ended with `outcome` after `took`.
    pub fn delivery(&self, kind: &'static str, outcome: &'static str, took: Duration) {
        self.deliveries
            .get_or_create(&DeliveryLabels { kind, outcome })
            .inc();
        self.delivery_seconds
            .get_or_create(&KindLabel { kind })
            .observe(took.as_secs_f64());
    }

    /// One writer round: how many writes it applied and how long its flush took.
    pub fn writer_round(&self, group: usize, flush: Duration) {
        self.writer_group.observe(group as f64);
        self.writer_flush_seconds.observe(flush.as_secs_f64());
    }

    /// The text exposition, with the levels set first.
    pub fn render(&self, levels: &Levels) -> String {
        self.writer_queue.set(levels.writer_queue as i64);
        for (queue, depth) in &levels.queues {
            self.queue_depth
                .get_or_create(&QueueLabel { queue })
                .set(*depth as i64);
        }
        for (env, status, n) in &levels.messages {
            self.messages_by_status
                .get_or_create(&StatusLabels { env, status })
                .set(*n as i64);
        }
        self.payload_bytes.set(levels.payload_bytes as i64);
        self.store_bytes.set(levels.store_bytes as i64);
        self.free_disk_bytes.set(levels.free_disk_bytes as i64);
        self.uptime_seconds.set(levels.uptime.as_secs_f64());
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }

    /// The route template `path` matches, or `unmatched`.
    pub fn route_of(&self, path: &str) -> &'static str {
        self.routes.template(path)
    }
}

fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The paths of the OpenAPI document, split into segments; `{name}` matches any one
/// segment. Paths under `/ui/` are one template.
struct RouteTable {
    templates: Vec<(&'static str, Vec<Segment>)>,
}

enum Segment {
    Literal(String),
    Param,
}

impl RouteTable {
    fn from_openapi() -> RouteTable {
        let doc: serde_json::Value =
            serde_json::from_str(crate::api::OPENAPI).unwrap_or(serde_json::Value::Null);
        let mut templates = Vec::new();
        if let Some(paths) = doc.get("paths").and_then(|p| p.as_object()) {
            for path in paths.keys() {
                // Parameters are written `:name` in labels: some exposition parsers
                // stumble over braces inside label values.
                let label = path.replace('{', ":").replace('}', "");
                // Built once per process from a fixed document: bounded.
                let label: &'static str = Box::leak(label.into_boxed_str());
                let segments: Vec<Segment> = path
                    .split('/')
                    .skip(1)
                    .map(|s| {
                        if s.starts_with('{') && s.ends_with('}') {
                            Segment::Param
                        } else {
                            Segment::Literal(s.to_owned())
                        }
                    })
                    .collect();
                templates.push((label, segments));
            }
        }
        // A literal segment beats a parameter in the same place
        // (`/transmissions/status/{uuid}` before `/transmissions/{uuid}/payload`).
        templates.sort_by_key(|(_, segs)| {
            segs.iter()
                .map(|s| matches!(s, Segment::Param))
                .collect::<Vec<_>>()
        });
        RouteTable { templates }
    }

    fn template(&self, path: &str) -> &'static str {
        if path == "/ui" || path.starts_with("/ui/") {
            return "/ui/";
        }
        if path == "/metrics" {
            return "/metrics";
        }
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        'next: for (template, segments) in &self.templates {
            if segments.len() != parts.len() {
                continue;
            }
            for (seg, part) in segments.iter().zip(&parts) {
                match seg {
                    Segment::Literal(l) if l != part => continue 'next,
                    _ => {}
                }
            }
            return template;
        }
        "unmatched"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_templates_and_strangers_to_unmatched() {
        let m = Metrics::new();
        assert_eq!(m.route_of("/api/v1/inbound"), "/api/v1/inbound");
        assert_eq!(
            m.route_of("/api/v1/transmissions/status/0190-abc"),
            "/api/v1/transmissions/status/:uuid"
        );
        assert_eq!(
            m.route_of("/api/v1/transmissions/0190-abc"),
            "/api/v1/transmissions/:uuid"
        );
        assert_eq!(m.route_of("/ui/app.js"), "/ui/");
        assert_eq!(m.route_of("/wp-login.php"), "unmatched");
        assert_eq!(m.route_of("/api/v1/inbound/extra"), "unmatched");
    }

    #[test]
    fn the_exposition_names_what_happened() {
        let m = Metrics::new();
        m.request(
            &http::Method::POST,
            m.route_of("/api/v1/inbound"),
            202,
            Duration::from_millis(3),
        );
        m.accepted(4, 1);
        m.delivery("push", "delivered", Duration::from_millis(2));
        let text = m.render(&Levels {
            queues: vec![("pending_transmissions", 7)],
            ..Levels::default()
        });
        assert!(
            text.contains(
                r#"waybill_http_requests_total{method="POST",route="/api/v1/inbound",status="202"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("waybill_messages_accepted_total 5"), "{text}");
        assert!(text.contains("waybill_messages_invalid_total 1"), "{text}");
        assert!(
            text.contains(r#"waybill_deliveries_total{kind="push",outcome="delivered"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"waybill_queue_depth{queue="pending_transmissions"} 7"#),
            "{text}"
        );
    }
}
