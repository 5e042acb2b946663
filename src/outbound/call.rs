//! One outbound HTTP call and its outcome, whatever kind of delivery it carries: a signed
//! `POST` of a body, with the answer's status, latency, first KiB and `Retry-After` read
//! back. It blocks; callers run it off the async threads.

use std::io::Read;
use std::time::{Instant, SystemTime};

use super::sign;

/// Everything one call needs, owned, so it can run on a blocking thread.
#[derive(Debug, Clone)]
pub struct Call {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub content_type: String,
    pub body: bytes::Bytes,
    /// The Standard Webhooks `webhook-id`: the same on every retry.
    pub webhook_id: String,
    /// The secrets that sign it (two during a rotation).
    pub signing_secrets: Vec<String>,
}

/// What came of a call.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When it started (unix ms).
    pub at: i64,
    pub url: String,
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// The first KiB of the answer.
    pub response: String,
    pub error: Option<String>,
    /// Seconds a 429 or 503 answer asked to wait, saturated at `u64::MAX`.
    pub retry_after_secs: Option<u64>,
}

impl Outcome {
    /// Whether the receiver took it (2xx).
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Call {
    /// Makes the call with `agent`.
    pub fn send(self, agent: &ureq::Agent) -> Outcome {
        let at = now_ms();
        let failed = |url: String, latency_ms, error: String| Outcome {
            at,
            url,
            status: None,
            latency_ms,
            response: String::new(),
            error: Some(error),
            retry_after_secs: None,
        };
        let timestamp = at / 1000;
        let secrets: Vec<&str> = self.signing_secrets.iter().map(String::as_str).collect();
        let signature = match sign::header(&secrets, &self.webhook_id, timestamp, &self.body) {
            Ok(s) => s,
            Err(e) => return failed(self.url, 0, e.to_string()),
        };
        let mut req = agent
            .post(&self.url)
            .header("content-type", &self.content_type)
            .header("webhook-id", &self.webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature);
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let started = Instant::now();
        match req.send(&self.body[..]) {
            Ok(mut res) => {
                let status = res.status().as_u16();
                let retry_after_secs = (status == 429 || status == 503)
                    .then(|| res.headers().get("retry-after"))
                    .flatten()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after(v, SystemTime::now()));
                let mut head = Vec::with_capacity(1024);
                let _ = res.body_mut().as_reader().take(1024).read_to_end(&mut head);
                Outcome {
                    at,
                    url: self.url,
                    status: Some(status),
                    latency_ms: started.elapsed().as_millis() as u64,
                    response: String::from_utf8_lossy(&head).into_owned(),
                    error: (300..400)
                        .contains(&status)
                        .then(|| format!("HTTP {status}: redirects are not followed")),
                    retry_after_secs,
                }
            }
            Err(e) => {
                let error = match e {
                    ureq::Error::Timeout(_) => "timed out".to_owned(),
                    other => other.to_string(),
                };
                failed(self.url, started.elapsed().as_millis() as u64, error)
            }
        }
    }
}

/// The seconds a `Retry-After` value asks for: a number of seconds (any length; too large
/// saturates) or an HTTP date (a date in the past is 0). `None` if it is neither.
pub fn retry_after(value: &str, now: SystemTime) -> Option<u64> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(v.parse::<u64>().unwrap_or(u64::MAX));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let date = time::PrimitiveDateTime::parse(v, format).ok()?.assume_utc();
    let then = SystemTime::from(date);
    Some(then.duration_since(now).map_or(0, |d| d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_never_overflows() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(retry_after("120", now), Some(120));
        assert_eq!(retry_after(" 0 ", now), Some(0));
        assert_eq!(
            retry_after("99999999999999999999999999999", now),
            Some(u64::MAX)
        );
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:51:37 GMT", now), Some(120));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(0));
        for bad in ["", "-5", "1.5", "soon", "Sun, 06 Nov 1994"] {
            assert_eq!(retry_after(bad, now), None, "{bad:?}");
        }
    }
}
