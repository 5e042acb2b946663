//! Tallies of requests and their latencies, and how they are printed.

use std::time::Duration;

// ---------------------------------------------------------------------------
// Statistics

#[derive(Default)]
pub struct Tally {
    pub ok: u64,
    pub err: u64,
    /// Every message the server accepted, including warm-up; the pollack phase
    /// needs to know how much backlog exists, not just what was measured.
    pub created: u64,
    pub lat: Vec<u32>,
    pub first_err: Option<String>,
}

impl Tally {
    pub fn with_capacity(n: usize) -> Tally {
        Tally {
            lat: Vec::with_capacity(n),
            ..Tally::default()
        }
    }

    pub fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.err += other.err;
        self.created += other.created;
        self.lat.extend_from_slice(&other.lat);
        if self.first_err.is_none() {
            self.first_err = other.first_err;
        }
    }

    pub fn note_error(&mut self, counted: bool, what: impl FnOnce() -> String) {
        if counted {
            self.err += 1;
        }
        if self.first_err.is_none() {
            self.first_err = Some(what());
        }
    }
}

pub fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

pub fn latency_summary(mut lat: Vec<u32>, quantiles: &[(&str, f64)], with_max: bool) -> String {
    if lat.is_empty() {
        return "latency n/a".into();
    }
    lat.sort_unstable();
    let mut parts: Vec<String> = quantiles
        .iter()
        .map(|(name, q)| format!("{name} {}", fmt_ms(quantile(&lat, *q))))
        .collect();
    if with_max {
        parts.push(format!("max {}", fmt_ms(lat[lat.len() - 1])));
    }
    parts.join(", ")
}

/// The `q` quantile of sorted, non-empty latencies: the smallest value at least a `q`
/// share of them do not exceed.
pub fn quantile(sorted: &[u32], q: f64) -> u32 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Bytes in MiB, one decimal.
pub fn fmt_mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn fmt_ms(us: u32) -> String {
    let ms = us as f64 / 1000.0;
    if ms < 1.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

pub fn print_first_error(e: &Option<String>) {
    if let Some(e) = e {
        println!("         first error: {e}");
    }
}

pub fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

pub fn snippet(body: &[u8]) -> String {
    let cut = &body[..body.len().min(400)];
    let mut s = String::from_utf8_lossy(cut).replace('\n', " ");
    if body.len() > cut.len() {
        s.push_str("...");
    }
    s
}

pub fn fmt_mb(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) => format!("{:.1} MB", b as f64 / (1024.0 * 1024.0)),
        None => "n/a".into(),
    }
}

/// Microseconds since the UNIX epoch: the one clock both the sender (stamped
/// into the body) and the receiver (arrival) read, as both run in this process.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
