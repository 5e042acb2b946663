//! `--report`: every scenario in turn, each against a fresh server, then the shared
//! yardstick, written to one Markdown file (`BENCHMARKS.md`) with the machine it ran on.
//!
//! The scenarios record their headline figures as [`Row`]s while they print; the server's
//! CPU time, peak memory and data directory size are read from `/proc` and the disk around
//! each measured run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use crate::options::Options;
use crate::server::{cpu_us, dir_size, peak_rss_bytes, server_binary, Server};
use crate::stats::{fmt_mib, fmt_ms, quantile};

/// One line of the report's table.
pub struct Row {
    scenario: String,
    /// Per second, and what was counted.
    rate: Option<(f64, &'static str)>,
    p50_us: Option<u32>,
    p99_us: Option<u32>,
    /// What the server's CPU time is divided by.
    messages: u64,
    cpu_us_per_message: Option<f64>,
    peak_rss: Option<u64>,
    disk: Option<u64>,
    note: String,
}

impl Row {
    pub fn new(scenario: impl Into<String>) -> Row {
        Row {
            scenario: scenario.into(),
            rate: None,
            p50_us: None,
            p99_us: None,
            messages: 0,
            cpu_us_per_message: None,
            peak_rss: None,
            disk: None,
            note: String::new(),
        }
    }

    pub fn rate(mut self, per_second: f64, unit: &'static str) -> Row {
        self.rate = Some((per_second, unit));
        self
    }

    /// p50 and p99 of latencies in microseconds, in any order.
    pub fn latency(mut self, lat: &[u32]) -> Row {
        if !lat.is_empty() {
            let mut sorted = lat.to_vec();
            sorted.sort_unstable();
            self.p50_us = Some(quantile(&sorted, 0.50));
            self.p99_us = Some(quantile(&sorted, 0.99));
        }
        self
    }

    pub fn messages(mut self, n: u64) -> Row {
        self.messages = n;
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }

    /// The server's CPU time per message, where the scenario measured it itself.
    pub fn cpu_per_message(mut self, us: Option<f64>) -> Row {
        self.cpu_us_per_message = us;
        self
    }

    pub fn disk(mut self, bytes: u64) -> Row {
        self.disk = Some(bytes);
        self
    }
}

/// The rows recorded so far, and the server they measure (its pid and data directory).
static ROWS: Mutex<Vec<Row>> = Mutex::new(Vec::new());
static WATCHED: Mutex<Option<(u32, PathBuf)>> = Mutex::new(None);

/// The server whose CPU time, memory and disk the next rows report; `None` for an external
/// server or none at all.
pub fn watch(server: Option<&Server>) {
    let w = server.and_then(|s| Some((s.pid()?, s.data_dir.clone())));
    *WATCHED.lock().unwrap_or_else(|e| e.into_inner()) = w;
}

/// The watched server's CPU time when a measured run starts.
pub struct Mark(Option<u64>);

pub fn mark() -> Mark {
    let pid = WATCHED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|(pid, _)| *pid);
    Mark(cpu_us(pid))
}

impl Mark {
    /// The watched server's CPU time since this mark, in microseconds.
    pub fn spent_us(&self) -> Option<u64> {
        let now = mark().0?;
        Some(now.saturating_sub(self.0?))
    }
}

/// Adds `row`, with the watched server's figures (see [`measured`]).
pub fn record(row: Row, since: Mark) {
    add(measured(row, since));
}

/// `row` with the watched server's CPU time since `since` per message, its peak memory so
/// far and its data directory's size now, where the row has none of its own.
pub fn measured(mut row: Row, since: Mark) -> Row {
    let watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some((pid, dir)) = watched {
        if row.cpu_us_per_message.is_none() && row.messages > 0 {
            if let (Some(before), Some(now)) = (since.0, cpu_us(Some(pid))) {
                let spent = now.saturating_sub(before) as f64;
                row.cpu_us_per_message = Some(spent / row.messages as f64);
            }
        }
        row.peak_rss = row.peak_rss.or_else(|| peak_rss_bytes(pid));
        row.disk = row.disk.or_else(|| Some(dir_size(&dir)));
    }
    row
}

/// Adds a row as it is: measured already, or by a scenario without a server of ours.
pub fn add(row: Row) {
    ROWS.lock().unwrap_or_else(|e| e.into_inner()).push(row);
}

// ---------------------------------------------------------------------------
// The run

/// One scenario of the report: a name and the options that select it.
struct Step {
    name: &'static str,
    select: fn(&mut Options),
    /// `--messages` in quick mode; `None` keeps the phase's own default in both modes.
    quick_messages: Option<u64>,
}

fn steps() -> Vec<Step> {
    fn step(name: &'static str, select: fn(&mut Options), quick: Option<u64>) -> Step {
        Step {
            name,
            select,
            quick_messages: quick,
        }
    }
    vec![
        step(
            "intake, then poll + ack",
            |o| {
                o.inbound = true;
                o.pollack = true;
            },
            None,
        ),
        step(
            "intake over HTTPS",
            |o| {
                o.inbound = true;
                o.tls = true;
            },
            None,
        ),
        step(
            "intake with a JSON Schema",
            |o| {
                o.inbound = true;
                o.validate = true;
            },
            None,
        ),
        step("push", |o| o.push = true, Some(2_000)),
        step("push beside a slow receiver", |o| o.push_slow = true, None),
        step(
            "poll beside leased items",
            |o| o.poll_leased = true,
            Some(2_000),
        ),
        step("background calls", |o| o.background = true, None),
        step("subscriptions", |o| o.subscriptions = true, None),
        step("memory and restart", |o| o.memory = true, Some(5_000)),
        step("tracking search", |o| o.tracking = true, Some(5_000)),
        step("admin listing", |o| o.admin = true, Some(5_000)),
        step("retention", |o| o.retention = true, Some(5_000)),
        step("backup", |o| o.backup = true, Some(5_000)),
    ]
}

/// The options of one step: everything from the command line that is not a phase.
fn step_options(base: &Options, step: &Step) -> Options {
    let mut o = base.clone();
    o.clear_phases();
    o.tls = false;
    o.validate = false;
    o.report = false;
    if base.quick {
        o.messages = step.quick_messages;
    }
    (step.select)(&mut o);
    o
}

pub async fn run(opts: Options) -> Result<(), String> {
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| repo_root().join("BENCHMARKS.md"));
    let started = Instant::now();
    let load_before = load_average();
    let mut failures = Vec::new();
    for step in steps() {
        println!("report   --- {}", step.name);
        let o = step_options(&opts, &step);
        let before = ROWS.lock().unwrap_or_else(|e| e.into_inner()).len();
        if let Err(e) = crate::run(o).await {
            let first = e.lines().next().unwrap_or("").to_string();
            println!("report   {} failed: {e}", step.name);
            add(Row::new(step.name).note(format!("failed: {first}")));
            failures.push(step.name);
        } else if ROWS.lock().unwrap_or_else(|e| e.into_inner()).len() == before {
            add(Row::new(step.name).note("no figures recorded"));
        }
        watch(None);
    }
    let yardstick = if opts.no_yardstick {
        Yardstick::Skipped
    } else {
        let path = opts
            .yardstick
            .clone()
            .unwrap_or_else(|| repo_root().join("../shared/bench/yardstick"));
        println!("report   --- yardstick all ({})", path.display());
        run_yardstick(&path, opts.quick).await
    };
    let load_after = load_average();
    let text = render(&opts, &load_before, &load_after, started, &yardstick);
    std::fs::write(&out, text).map_err(|e| format!("writing {}: {e}", out.display()))?;
    println!(
        "report   wrote {} ({} scenarios in {:.0} s{})",
        out.display(),
        steps().len(),
        started.elapsed().as_secs_f64(),
        if failures.is_empty() {
            String::new()
        } else {
            format!("; failed: {}", failures.join(", "))
        }
    );
    Ok(())
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `path` as the report shows it: relative to the project's root when it is under it, so
/// the file does not name the directory it was written in.
fn shown(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

// ---------------------------------------------------------------------------
// The yardstick

enum Yardstick {
    Skipped,
    Missing(PathBuf),
    /// The command line, its headline lines, and a failure if it failed.
    Ran {
        command: String,
        lines: Vec<String>,
        failure: Option<String>,
    },
}

/// Runs `yardstick all` from the project's root (it builds and starts the release binary
/// itself) and keeps its figure lines.
async fn run_yardstick(path: &Path, quick: bool) -> Yardstick {
    if !path.exists() {
        println!("report   yardstick not found at {}", path.display());
        return Yardstick::Missing(path.to_path_buf());
    }
    let mut args = vec!["all".to_string()];
    if quick {
        args.extend(["--secs".to_string(), "2".to_string()]);
    }
    let command = format!("{} {}", shown(path), args.join(" "));
    let mut cmd = Command::new(path);
    cmd.args(&args).current_dir(repo_root());
    let output = tokio::task::spawn_blocking(move || cmd.output()).await;
    let output = match output {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            return Yardstick::Ran {
                command,
                lines: Vec::new(),
                failure: Some(format!("could not start: {e}")),
            }
        }
        Err(e) => {
            return Yardstick::Ran {
                command,
                lines: Vec::new(),
                failure: Some(format!("could not start: {e}")),
            }
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("intake:") || l.starts_with("push:"))
        .map(str::to_string)
        .collect();
    for l in &lines {
        println!("yardstick {l}");
    }
    let failure = (!output.status.success()).then(|| {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{} ({})", output.status, tail.join(" / "))
    });
    if let Some(f) = &failure {
        println!("report   yardstick failed: {f}");
    }
    Yardstick::Ran {
        command,
        lines,
        failure,
    }
}

// ---------------------------------------------------------------------------
// The machine and the file

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn load_average() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn cpu_model() -> String {
    let info = read("/proc/cpuinfo");
    let model = info
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores available")
}

fn memory_total() -> String {
    let kb = read("/proc/meminfo").lines().find_map(|l| {
        l.strip_prefix("MemTotal:")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
    });
    kb.map_or("unknown".into(), |kb| {
        format!("{:.1} GiB", kb as f64 / (1024.0 * 1024.0))
    })
}

fn os_name() -> String {
    let pretty = read("/etc/os-release").lines().find_map(|l| {
        l.strip_prefix("PRETTY_NAME=")
            .map(|v| v.trim_matches('"').to_string())
    });
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    match pretty {
        Some(p) => format!("{p}, Linux {kernel}"),
        None => format!("Linux {kernel}"),
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(repo_root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn commit() -> String {
    let Some(hash) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) if !s.is_empty() => format!("`{hash}` with uncommitted changes"),
        _ => format!("`{hash}`"),
    }
}

/// The server binary, how it was built (from its path), and what it says its version is.
fn binary() -> String {
    let bin = server_binary();
    let profile = if bin.components().any(|c| c.as_os_str() == "release") {
        "release build"
    } else if bin.components().any(|c| c.as_os_str() == "debug") {
        "debug build: not for comparison"
    } else {
        "build profile unknown"
    };
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let version = if version.is_empty() {
        String::new()
    } else {
        format!(", {version}")
    };
    format!("`{}` ({profile}{version})", shown(&bin))
}

fn now_utc() -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_else(|_| "unknown date".into())
}

fn fmt_rate(rate: Option<(f64, &str)>) -> String {
    match rate {
        Some((r, unit)) => format!("{} {unit}", thousands(r.round() as u64)),
        None => String::new(),
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn render(
    opts: &Options,
    load_before: &str,
    load_after: &str,
    started: Instant,
    yardstick: &Yardstick,
) -> String {
    let rows = ROWS.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = String::new();
    let command = if opts.quick {
        "cargo bench --bench load -- --report --quick"
    } else {
        "cargo bench --bench load -- --report"
    };
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = write!(
        s,
        "Written by `{command}` on {}, in {:.0} minutes. Every figure below comes from that one \
         run.",
        now_utc(),
        started.elapsed().as_secs_f64() / 60.0
    );
    if opts.quick {
        let _ = writeln!(
            s,
            "\n\n**Quick mode**: small counts and short runs that only show the command works; \
             these figures are not measurements.\n"
        );
    } else {
        let _ = writeln!(s, " The README quotes its headline figures from here.\n");
    }
    let _ = writeln!(s, "## Machine\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| commit | {} |", commit());
    let _ = writeln!(s, "| server | {} |", binary());
    let _ = writeln!(
        s,
        "| load generator | {} build, {} runtime threads, on the same machine as the server |",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "optimised"
        },
        opts.threads
    );
    let _ = writeln!(s, "| CPU | {} |", cpu_model());
    let _ = writeln!(s, "| memory | {} |", memory_total());
    let _ = writeln!(s, "| system | {} |", os_name());
    let _ = writeln!(
        s,
        "| load average (1, 5, 15 min) | {load_before} before, {load_after} after |"
    );
    let _ = writeln!(
        s,
        "| run | {:.1} s per timed phase, {} connections |\n",
        opts.duration.as_secs_f64(),
        opts.connections
    );
    let _ = writeln!(s, "## Scenarios\n");
    let _ = writeln!(
        s,
        "Each scenario starts the server afresh on an empty data directory (tracking, admin, \
         retention and backup fill theirs first). CPU per message is the server's user and \
         system CPU time over the row's run divided by the messages the row counts; peak RSS \
         is the server's high-water mark (`VmHWM`) at the end of the row; on disk is the data \
         directory's size then. The load generator shares the machine's cores with the server. \
         The command's output holds every figure a scenario prints; these rows are its \
         headline figures.\n"
    );
    let _ = writeln!(
        s,
        "| scenario | throughput | p50 | p99 | CPU per message | peak RSS | on disk | notes |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for r in rows.iter() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            fmt_rate(r.rate),
            r.p50_us.map_or(String::new(), fmt_ms),
            r.p99_us.map_or(String::new(), fmt_ms),
            r.cpu_us_per_message
                .map_or(String::new(), |us| format!("{:.3} ms", us / 1000.0)),
            r.peak_rss.map_or(String::new(), fmt_mib),
            r.disk.map_or(String::new(), fmt_mib),
            r.note
        );
    }
    let _ = writeln!(s, "\n## Yardstick\n");
    match yardstick {
        Yardstick::Skipped => {
            let _ = writeln!(s, "Not run (`--no-yardstick`).");
        }
        Yardstick::Missing(path) => {
            let _ = writeln!(
                s,
                "The yardstick was not found at `{}`, so its figures (the ratio to the bare \
                 sled + warp limit, and the push scenario against svix-server's figure) are not \
                 in this report.",
                path.display()
            );
        }
        Yardstick::Ran {
            command,
            lines,
            failure,
        } => {
            let _ = writeln!(
                s,
                "`{command}`: durable intake against the bare sled + warp group-commit limit \
                 measured in the same run, and svix-server's push scenario against its published \
                 figure. Its lines, verbatim:\n"
            );
            let _ = writeln!(s, "```");
            for l in lines {
                let _ = writeln!(s, "{l}");
            }
            let _ = writeln!(s, "```");
            if let Some(f) = failure {
                let _ = writeln!(s, "\nThe yardstick failed: {f}");
            }
        }
    }
    s
}
