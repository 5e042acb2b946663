//! `waybill backup FILE`, `waybill restore FILE --data-dir DIR` and `waybill export`.
//!
//! A backup is taken by the running server (`GET /admin/api/backup`) and written here to
//! `FILE.partial`, which is synced, checked from end to end and only then renamed to
//! `FILE`: a file named `FILE` is always a whole backup. A restore needs no server: it
//! writes a new store into an empty directory, which the server is then started on.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{CliError, Client};
use crate::config::Config;
use crate::store::backup::{self, RestoreSummary};

fn failed(message: impl Into<String>) -> CliError {
    CliError::Refused {
        status: 0,
        message: message.into(),
    }
}

/// An agent for calls whose answers take as long as they take (a backup of a large
/// store): a time limit for connecting and for the answer to begin, none for the body.
fn long_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .build()
        .into()
}

impl Client {
    /// A `GET` whose body is read as a stream; an error envelope becomes the error.
    fn get_stream(&self, path: &str) -> Result<ureq::http::Response<ureq::Body>, CliError> {
        let url = format!("{}{}", self.base, path);
        let response = long_agent()
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .map_err(|e| CliError::Unreachable {
                url: url.clone(),
                message: e.to_string(),
            })?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(response);
        }
        let envelope: serde_json::Value = response
            .into_body()
            .read_json()
            .unwrap_or(serde_json::Value::Null);
        let message = envelope["error"]["message"]
            .as_str()
            .unwrap_or("request failed")
            .to_owned();
        Err(CliError::Refused { status, message })
    }
}

/// `waybill backup FILE`.
pub fn backup(config: &Config, file: &Path) -> Result<(), CliError> {
    let client = Client::from_config(config)?;
    let partial = partial_path(file);
    let started = Instant::now();
    let response = client.get_stream("/admin/api/backup")?;
    let estimate = response
        .headers()
        .get("x-waybill-estimated-bytes")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let result = download(response, &partial, estimate).and_then(|bytes| {
        let summary = backup::verify(&partial)
            .map_err(|e| failed(format!("the backup received is not whole: {e}")))?;
        std::fs::rename(&partial, file)
            .map_err(|e| failed(format!("cannot rename {}: {e}", partial.display())))?;
        sync_parent(file);
        Ok((bytes, summary))
    });
    let (bytes, summary) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    let took = started.elapsed().as_secs_f64();
    println!(
        "wrote {} ({} bytes in {:.1} s, {:.1} MB/s)",
        file.display(),
        bytes,
        took,
        bytes as f64 / 1e6 / took.max(1e-3)
    );
    print_summary(&summary, false);
    println!(
        "writes were held for {:.1} ms while the backup was made consistent",
        summary.pause_micros as f64 / 1000.0
    );
    Ok(())
}

fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Copies the body to `partial`, with a progress bar on a terminal; returns the bytes.
fn download(
    response: ureq::http::Response<ureq::Body>,
    partial: &Path,
    estimate: u64,
) -> Result<u64, CliError> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(partial)
        .map_err(|e| failed(format!("cannot write {}: {e}", partial.display())))?;
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(estimate);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bytes} of about {total_bytes} ({bytes_per_sec}) {wide_bar}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = body
            .read(&mut buf)
            .map_err(|e| failed(format!("the backup was cut off: {e}")))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .map_err(|e| failed(format!("cannot write {}: {e}", partial.display())))?;
        total += n as u64;
        // The estimate is the store's size on disk; the backup may come out larger.
        if total > bar.length().unwrap_or(0) {
            bar.set_length(total);
        }
        bar.set_position(total);
    }
    bar.finish_and_clear();
    out.sync_all()
        .map_err(|e| failed(format!("cannot sync {}: {e}", partial.display())))?;
    Ok(total)
}

/// Makes a rename durable: the directory holding the new name is synced.
fn sync_parent(file: &Path) {
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
}

fn print_summary(s: &RestoreSummary, after_restore: bool) {
    println!(
        "backup of Waybill {} taken {} (format {})",
        s.header.waybill_version, s.header.created_at, s.header.format
    );
    // After a restore these are the keys in each tree; before, the records the file
    // carries (a key changed during the copy comes more than once).
    let what = if after_restore {
        "records"
    } else {
        "records written"
    };
    for (tree, n) in s.trees.iter().filter(|(_, n)| *n > 0) {
        println!("  {tree:<20} {n} {what}");
    }
    println!(
        "  payload segments     {} ({} bytes)",
        s.segments, s.segment_bytes
    );
    println!("  sha256 {}", s.sha256);
}

/// `waybill restore FILE --data-dir DIR`: no server involved; DIR must be empty.
pub fn restore(file: &Path, dir: Option<&Path>) -> Result<(), CliError> {
    let dir = dir.ok_or_else(|| {
        failed("say where to restore with --data-dir DIR (a new or empty directory)")
    })?;
    let summary = backup::restore(file, dir).map_err(|e| failed(e.to_string()))?;
    println!("restored {} into {}", file.display(), dir.display());
    print_summary(&summary, true);
    println!(
        "start the server with --data-dir {} (it makes a new admin token there on its first start)",
        dir.display()
    );
    Ok(())
}

/// `waybill export`: what the server sends, to standard output.
pub fn export(
    config: &Config,
    since: Option<&str>,
    until: Option<&str>,
    format: &str,
    env: Option<&str>,
    payloads: bool,
) -> Result<(), CliError> {
    if format != "jsonl" {
        return Err(failed(format!(
            "format {format:?} is not offered; the one format is jsonl"
        )));
    }
    let client = Client::from_config(config)?;
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("format", format);
    for (name, value) in [("since", since), ("until", until), ("env", env)] {
        if let Some(v) = value {
            query.append_pair(name, v);
        }
    }
    if payloads {
        query.append_pair("payloads", "true");
    }
    let response = client.get_stream(&format!("/admin/api/export?{}", query.finish()))?;
    let mut body = response.into_body().into_reader();
    let mut out = std::io::stdout().lock();
    std::io::copy(&mut body, &mut out)
        .and_then(|_| out.flush())
        .map_err(|e| failed(format!("the export was cut off: {e}")))?;
    Ok(())
}
