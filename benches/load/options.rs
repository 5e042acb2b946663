//! Command-line options.

use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
usage: cargo bench --bench load -- [options]

  --duration SECS       measured time per phase (default 10)
  --connections N       connections for the inbound phase and the background
                        and subscriptions intake runs (default 64)
  --phase LIST          comma-separated: inbound, pollack, memory, push,
                        push-slow, poll-leased, background, idempotency,
                        subscriptions, all (default inbound,pollack; all adds
                        memory, not push, push-slow, poll-leased, background,
                        idempotency or subscriptions),
                        or compare: inbound plain, then inbound over TLS, each
                        on a fresh server, and the TLS/plain throughput ratio,
                        or tracking: searches over a filled store (alone),
                        or admin: the admin message listing and stats over
                        a filled store (alone), or retention: a month of
                        traffic pruned (data dir before, after, after compact;
                        intake latency with and without pruning; alone),
                        or backup: an online backup of a filled store (MB/s,
                        the writer's pause, intake latency beside it; alone)
  --messages N          messages to store in the memory, tracking and admin phases
                        (default 1000000), in the retention and backup phases (default
                        200000), to push in the push phase (default
                        50000) or to lease in the poll-leased phase (default
                        100000)
  --rate N              messages per second in the push latency run, which
                        lasts --duration (default 1000)
  --tls                 start the server with a self-signed certificate and
                        talk HTTPS (HTTP/1.1 over TLS) to it
  --server URL          use a running server (http://host:port or
                        https://host:port) instead of starting one
  --tls-ca FILE         PEM certificate(s) to trust for an https:// --server
  --admin-token TOKEN   admin token for --server (or WAYBILL_ADMIN_TOKEN)
  --threads N           client runtime threads (default 2)
  --validate            register a 30-property JSON Schema for the intake's
                        doctype first, so every message is validated (run
                        once with and once without to compare)
  --report              run every scenario, each on a fresh server, then
                        ../shared/bench/yardstick all, and write BENCHMARKS.md
                        (throughput, p50/p99, server CPU per message, peak RSS,
                        data on disk, and the machine); takes --duration,
                        --connections, --rate and --threads
  --quick               with --report: small counts and 2 s runs, to check that
                        the report runs (its figures are not measurements)
  --out FILE            with --report: write the report here instead
  --yardstick PATH      with --report: the yardstick script to run
  --no-yardstick        with --report: leave the yardstick out

The push phase starts an HTTP receiver on 127.0.0.1 and sets GLOBEX's pushUrl
to it (the background phase one for its completion webhooks, the subscriptions
phase one for its callbacks); a server we start gets WAYBILL_OUTBOUND__ALLOW=127.0.0.0/8, an external
one must allow loopback targets itself and run on this host.

The server binary is the one cargo built for this package; WAYBILL_BIN overrides it.";

/// What the command line asks for.
#[derive(Clone)]
pub struct Options {
    pub duration: Duration,
    pub connections: usize,
    pub inbound: bool,
    pub pollack: bool,
    pub memory: bool,
    pub push: bool,
    /// A healthy receiver's push latency next to a slow one.
    pub push_slow: bool,
    /// A poll's latency beside many leased items.
    pub poll_leased: bool,
    /// Background jobs and Idempotency-Key.
    pub background: bool,
    /// Only the cost of Idempotency-Key on intake (part of `background`).
    pub idempotency: bool,
    /// Event subscriptions: batching under status changes, and intake beside them.
    pub subscriptions: bool,
    /// `--messages`; each phase that uses it has its own default.
    pub messages: Option<u64>,
    /// Messages per second in the push latency run.
    pub rate: u64,
    /// Inbound plain, then inbound over TLS (`--phase compare`).
    pub compare: bool,
    /// Searches over a filled store (`--phase tracking`), alone.
    pub tracking: bool,
    /// The admin listing and stats over a filled store (`--phase admin`), alone.
    pub admin: bool,
    /// A month of traffic pruned (`--phase retention`), alone.
    pub retention: bool,
    /// An online backup beside intake (`--phase backup`), alone.
    pub backup: bool,
    /// Serve (and talk) HTTPS when starting our own server.
    pub tls: bool,
    pub tls_ca: Option<PathBuf>,
    pub server: Option<String>,
    pub admin_token: Option<String>,
    pub threads: usize,
    /// Register a schema for the intake's doctype before the phases.
    pub validate: bool,
    /// Every scenario and the yardstick, written to one report (`--report`).
    pub report: bool,
    /// Small counts and short runs, to check that the report runs (`--quick`).
    pub quick: bool,
    /// Where the report goes (`--out`); BENCHMARKS.md at the project's root by default.
    pub out: Option<PathBuf>,
    /// The yardstick script (`--yardstick`); ../shared/bench/yardstick by default.
    pub yardstick: Option<PathBuf>,
    /// Leave the yardstick out of the report (`--no-yardstick`).
    pub no_yardstick: bool,
}

impl Options {
    /// Selects no phase; `--phase` and the report then name the ones to run.
    pub fn clear_phases(&mut self) {
        self.inbound = false;
        self.pollack = false;
        self.memory = false;
        self.push = false;
        self.push_slow = false;
        self.poll_leased = false;
        self.background = false;
        self.idempotency = false;
        self.subscriptions = false;
        self.compare = false;
        self.tracking = false;
        self.admin = false;
        self.retention = false;
        self.backup = false;
    }
}

pub fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        duration: Duration::from_secs(10),
        connections: 64,
        inbound: true,
        pollack: true,
        memory: false,
        push: false,
        push_slow: false,
        poll_leased: false,
        background: false,
        idempotency: false,
        subscriptions: false,
        messages: None,
        rate: 1000,
        compare: false,
        tracking: false,
        admin: false,
        retention: false,
        backup: false,
        tls: false,
        tls_ca: None,
        server: None,
        admin_token: None,
        threads: 2,
        validate: false,
        report: false,
        quick: false,
        out: None,
        yardstick: None,
        no_yardstick: false,
    };
    // The report runs every phase itself, with the options below that are not phases.
    let mut phase_given = false;
    let mut duration_given = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        // Accept both `--opt value` and `--opt=value`.
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => args.next().ok_or_else(|| format!("{what} needs a value")),
            }
        };
        match name.as_str() {
            // cargo passes --bench to every harness = false bench binary.
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--duration" => {
                let v = value("--duration")?;
                let secs: f64 = v.parse().map_err(|_| format!("bad --duration {v:?}"))?;
                if !(secs > 0.0 && secs.is_finite()) {
                    return Err(format!("bad --duration {v:?}"));
                }
                o.duration = Duration::from_secs_f64(secs);
                duration_given = true;
            }
            "--connections" => {
                o.connections = parse_count(&value("--connections")?, "--connections")?
            }
            "--messages" => {
                o.messages = Some(parse_count(&value("--messages")?, "--messages")? as u64)
            }
            "--rate" => o.rate = parse_count(&value("--rate")?, "--rate")? as u64,
            "--threads" => o.threads = parse_count(&value("--threads")?, "--threads")?,
            "--tls" => {
                if inline.is_some() {
                    return Err("--tls takes no value".into());
                }
                o.tls = true;
            }
            "--validate" => {
                if inline.is_some() {
                    return Err("--validate takes no value".into());
                }
                o.validate = true;
            }
            "--report" | "--quick" | "--no-yardstick" => {
                if inline.is_some() {
                    return Err(format!("{name} takes no value"));
                }
                match name.as_str() {
                    "--report" => o.report = true,
                    "--quick" => o.quick = true,
                    _ => o.no_yardstick = true,
                }
            }
            "--out" => o.out = Some(PathBuf::from(value("--out")?)),
            "--yardstick" => o.yardstick = Some(PathBuf::from(value("--yardstick")?)),
            "--tls-ca" => o.tls_ca = Some(PathBuf::from(value("--tls-ca")?)),
            "--server" => o.server = Some(value("--server")?),
            "--admin-token" => o.admin_token = Some(value("--admin-token")?),
            "--phase" => {
                phase_given = true;
                let v = value("--phase")?;
                o.clear_phases();
                for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    match p {
                        "compare" => o.compare = true,
                        "tracking" => o.tracking = true,
                        "admin" => o.admin = true,
                        "retention" => o.retention = true,
                        "backup" => o.backup = true,
                        "inbound" => o.inbound = true,
                        "pollack" => o.pollack = true,
                        "memory" => o.memory = true,
                        "push" => o.push = true,
                        "push-slow" => o.push_slow = true,
                        "poll-leased" => o.poll_leased = true,
                        "background" => o.background = true,
                        "idempotency" => o.idempotency = true,
                        "subscriptions" => o.subscriptions = true,
                        "all" => {
                            o.inbound = true;
                            o.pollack = true;
                            o.memory = true;
                        }
                        _ => return Err(format!("unknown phase {p:?}")),
                    }
                }
                let others = o.inbound || o.pollack || o.memory || o.push || o.push_slow;
                let others = others || o.poll_leased || o.background || o.subscriptions;
                let others = others || o.idempotency;
                if o.tracking && (others || o.compare) {
                    return Err(
                        "--phase tracking starts its own server; name no other phase".into(),
                    );
                }
                if o.admin && (others || o.compare || o.tracking) {
                    return Err("--phase admin starts its own server; name no other phase".into());
                }
                if o.retention && (others || o.compare || o.tracking || o.admin) {
                    return Err(
                        "--phase retention fills a store of its own; name no other phase".into(),
                    );
                }
                let alone = o.compare || o.tracking || o.admin || o.retention;
                if o.backup && (others || alone) {
                    return Err(
                        "--phase backup fills a store of its own; name no other phase".into(),
                    );
                }
                if !(others || alone || o.backup) {
                    return Err("--phase names no phase".into());
                }
                if o.compare && others {
                    return Err("--phase compare runs inbound itself; name no other phase".into());
                }
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    let report_only = o.quick || o.out.is_some() || o.yardstick.is_some() || o.no_yardstick;
    if report_only && !o.report {
        return Err("--quick, --out, --yardstick and --no-yardstick go with --report".into());
    }
    if o.report {
        if phase_given || o.server.is_some() || o.tls || o.validate || o.messages.is_some() {
            return Err(
                "--report runs every phase on servers of its own, with each \
                        phase's own message count; drop --phase, --server, --tls, \
                        --validate and --messages"
                    .into(),
            );
        }
        if o.quick && !duration_given {
            o.duration = Duration::from_secs(2);
        }
    }
    if o.compare {
        // Both runs measure intake; each session below starts its own server.
        o.inbound = true;
        if o.server.is_some() {
            return Err("--phase compare starts its own servers; drop --server".into());
        }
    }
    if o.server.is_some() && o.tls {
        return Err("--tls starts a server with its own certificate; \
                    for --server give an https:// URL (and --tls-ca)"
            .into());
    }
    let https_server = o
        .server
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"));
    if o.tls_ca.is_some() && !https_server {
        return Err("--tls-ca is only for --server https://...".into());
    }
    if https_server && o.tls_ca.is_none() {
        return Err(
            "--server https://... needs --tls-ca FILE (the CA or certificate to trust)".into(),
        );
    }
    Ok(o)
}

pub fn parse_count(v: &str, what: &str) -> Result<usize, String> {
    let v = v.replace('_', "");
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("bad {what} {v:?}")),
    }
}
