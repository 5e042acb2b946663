//! The `waybill` binary: flags, logging, then the library does the work.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use waybill::cli::{self, AdminCommand};
use waybill::config::{Config, LogFormat, Overrides};

/// sled copies a leaf on every change and the HTTP stacks allocate per request: with the
/// system allocator, malloc and free were the top symbols of a push profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "waybill",
    version,
    about = "A single-binary B2B integration appliance",
    long_about = "A single-binary B2B integration appliance.\n\n\
        Waybill takes in documents from business partners, keeps them on disk and hands \
        each receiver its transmissions, by polling or by signed pushes. One process holds \
        the store, the HTTP API and the delivery workers. Without a command it serves."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "WAYBILL_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (store and admin token).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Address to serve on, or of the server the admin commands call.
    #[arg(long, global = true)]
    listen: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance (the default when no command is given).
    Serve,
    /// Load and check the configuration, then print the effective settings.
    CheckConfig {
        /// Print nothing when the configuration is valid (the service runs this on every start).
        #[arg(long)]
        quiet: bool,
    },
    /// Prepare optional set-up files.
    Init {
        /// Write a self-signed TLS certificate and key (for trying HTTPS out).
        #[arg(long)]
        self_signed: bool,
        /// Host names or IP addresses the certificate is for (repeat for several).
        #[arg(long = "host", default_value = "localhost")]
        hosts: Vec<String>,
        /// Where to write cert.pem and key.pem (default: `<data dir>/tls`).
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Rewrite the store's database files to give back the space of pruned records.
    /// Offline: refused while a server runs on the data directory.
    Compact,
    /// Manage partners on the running server.
    #[command(subcommand)]
    Partner(cli::PartnerCmd),
    /// Manage API keys on the running server.
    #[command(subcommand)]
    Key(cli::KeyCmd),
    /// Manage routes on the running server.
    #[command(subcommand)]
    Route(cli::RouteCmd),
    /// Manage admin users (who sign in to the admin API and UI) on the running server.
    #[command(subcommand)]
    User(cli::UserCmd),
    /// Manage doctype schemas (payload validation) on the running server.
    #[command(subcommand)]
    Schema(cli::SchemaCmd),
    /// Take a consistent backup of the running server's store into FILE (while it serves).
    Backup {
        /// Where to write the backup; it is written to FILE.partial first and renamed
        /// once it is whole.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Restore a backup into a new, empty data directory (with no server running on it).
    Restore {
        /// The backup file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Write the messages received in a time range to standard output, one JSON object a line.
    Export {
        /// Received at or after: an RFC 3339 time or a date (its midnight UTC).
        #[arg(long)]
        since: Option<String>,
        /// Received before: an RFC 3339 time or a date (its midnight UTC).
        #[arg(long)]
        until: Option<String>,
        /// The output format; `jsonl` is the one offered.
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// Only this environment (`live` or `test`); both by default.
        #[arg(long)]
        env: Option<String>,
        /// Include each payload (JSON as is, anything else base64).
        #[arg(long)]
        payloads: bool,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff). The packages install it; `man waybill` shows it.
    #[command(hide = true)]
    Man,
}

fn main() -> ExitCode {
    let args = Cli::parse();
    // These only describe the command line, so a broken configuration must not stop them.
    match args.command {
        Some(Command::Completions { shell }) => {
            return print_or_fail(|out| cli::write_completions(shell, Cli::command(), out))
        }
        Some(Command::Man) => return print_or_fail(|out| cli::write_man_page(Cli::command(), out)),
        // Offline: it needs a directory, not a configuration or a server.
        Some(Command::Restore { file }) => {
            return match cli::backup::restore(&file, args.data_dir.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("waybill: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {}
    }
    let overrides = Overrides {
        data_dir: args.data_dir.clone(),
        listen: args.listen.clone(),
    };
    let config = match Config::load(args.config.as_deref(), std::env::vars(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("waybill: {e}");
            return ExitCode::from(2);
        }
    };
    let admin = |cmd: AdminCommand| match cli::run(&config, cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("waybill: {e}");
            ExitCode::FAILURE
        }
    };
    match args.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config, args.config.as_deref()),
        Command::CheckConfig { quiet } => {
            if !quiet {
                print!("{}", config.to_toml());
                eprintln!("configuration OK");
            }
            ExitCode::SUCCESS
        }
        Command::Init {
            self_signed,
            hosts,
            out_dir,
        } => init(&config, self_signed, &hosts, out_dir),
        Command::Compact => compact(&config),
        Command::Partner(c) => admin(AdminCommand::Partner(c)),
        Command::Key(c) => admin(AdminCommand::Key(c)),
        Command::Route(c) => admin(AdminCommand::Route(c)),
        Command::User(c) => admin(AdminCommand::User(c)),
        Command::Schema(c) => admin(AdminCommand::Schema(c)),
        Command::Backup { file } => done(cli::backup::backup(&config, &file)),
        Command::Export {
            since,
            until,
            format,
            env,
            payloads,
        } => done(cli::backup::export(
            &config,
            since.as_deref(),
            until.as_deref(),
            &format,
            env.as_deref(),
            payloads,
        )),
        // Answered before the configuration was loaded.
        Command::Completions { .. } | Command::Man | Command::Restore { .. } => ExitCode::SUCCESS,
    }
}

/// The exit status of a command that ran: its error, if any, goes to standard error.
fn done(result: Result<(), cli::CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("waybill: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes what `write` produces to standard output; a closed pipe or full disk is an error.
fn print_or_fail(write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match write(&mut out).and_then(|()| std::io::Write::flush(&mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("waybill: {e}");
            ExitCode::FAILURE
        }
    }
}

fn compact(config: &Config) -> ExitCode {
    let dir = &config.server.data_dir;
    let payloads = || waybill::store::compact::payload_bytes(dir);
    let before = payloads();
    match waybill::store::compact::compact(dir) {
        Ok(done) => {
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            println!(
                "store files: {:.1} MiB before, {:.1} MiB after ({:.1} MiB given back)",
                mib(done.before),
                mib(done.after),
                mib(done.before.saturating_sub(done.after))
            );
            println!(
                "payload files: {:.1} MiB (retention deletes them while serving)",
                mib(before)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("waybill: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init(
    config: &Config,
    self_signed: bool,
    hosts: &[String],
    out_dir: Option<PathBuf>,
) -> ExitCode {
    if !self_signed {
        eprintln!(
            "waybill: nothing to do; `waybill init --self-signed --host NAME` writes a certificate"
        );
        return ExitCode::from(2);
    }
    let dir = out_dir.unwrap_or_else(|| config.server.data_dir.join("tls"));
    match waybill::tls::write_self_signed(&dir, hosts) {
        Ok((cert, key)) => {
            println!("wrote a self-signed certificate for {}:", hosts.join(", "));
            println!("  {}", cert.display());
            println!("  {}", key.display());
            println!("serve HTTPS with it by setting, in the [server] section of the config file:");
            println!("  tls_cert = {:?}", cert.display().to_string());
            println!("  tls_key = {:?}", key.display().to_string());
            println!("or WAYBILL_SERVER__TLS_CERT and WAYBILL_SERVER__TLS_KEY. Clients must trust cert.pem.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("waybill: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config, config_file: Option<&Path>) -> ExitCode {
    init_tracing(config.log.format);
    announce_admin_token(&config, config_file);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("waybill: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        if config.server.tls_cert.is_none() {
            ignore_sighup();
        }
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| {
                waybill::RunError::Other(format!("cannot listen on {}: {e}", config.server.listen))
            })?;
        waybill::run(config, listener, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "waybill stopped");
            eprintln!("waybill: {e}");
            ExitCode::FAILURE
        }
    }
}

/// On the first start, writes the admin token and says in the log where it is and how the
/// admin commands reach this server with it. The library would write the token too, but only
/// this binary knows which flags brought it its configuration.
fn announce_admin_token(config: &Config, config_file: Option<&Path>) {
    let data_dir = &config.server.data_dir;
    // An error here is left to `waybill::run`, which meets it again and stops with it.
    let Ok((_, true)) = waybill::ensure_admin_token(data_dir) else {
        return;
    };
    // The admin commands need the same data directory and address as this server: the
    // configuration file carries both, else name whichever is not the default.
    let flags = match config_file {
        Some(file) => format!(" --config {}", file.display()),
        None => {
            let defaults = Config::defaults();
            let mut flags = String::new();
            if *data_dir != defaults.server.data_dir {
                flags.push_str(&format!(" --data-dir {}", data_dir.display()));
            }
            if config.server.listen != defaults.server.listen {
                flags.push_str(&format!(" --listen {}", config.server.listen));
            }
            flags
        }
    };
    tracing::info!(
        "first start: wrote the admin token to {} (readable by this user and root only). \
         It is the admin credential. As either user, the admin commands use it: \
         `waybill{flags} partner add CODE`, `waybill{flags} key create CODE`, \
         `waybill{flags} route add SENDER RECEIVER DOCTYPE`. HTTP clients send it as \
         `Authorization: Bearer <token>`.",
        data_dir.join("admin.token").display()
    );
}

/// Keeps SIGHUP from ending the process when there is no certificate to reload: its default
/// action is to terminate, and `systemctl reload waybill` sends it.
fn ignore_sighup() {
    use tokio::signal::unix::{signal, SignalKind};
    // Registering replaces the default action at once, before the server starts.
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: no TLS certificate is configured; nothing to reload");
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; SIGHUP will stop the process")
        }
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WAYBILL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: the journal and log files would store the
    // escape codes as text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
