//! The `waybill` binary: flags, logging, then the library does the work.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    about = "A single-binary B2B integration appliance"
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
    CheckConfig,
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
    /// Manage partners on the running server.
    #[command(subcommand)]
    Partner(cli::PartnerCmd),
    /// Manage API keys on the running server.
    #[command(subcommand)]
    Key(cli::KeyCmd),
    /// Manage routes on the running server.
    #[command(subcommand)]
    Route(cli::RouteCmd),
}

fn main() -> ExitCode {
    let args = Cli::parse();
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
        Command::Serve => serve(config),
        Command::CheckConfig => {
            print!("{}", config.to_toml());
            eprintln!("configuration OK");
            ExitCode::SUCCESS
        }
        Command::Init {
            self_signed,
            hosts,
            out_dir,
        } => init(&config, self_signed, &hosts, out_dir),
        Command::Partner(c) => admin(AdminCommand::Partner(c)),
        Command::Key(c) => admin(AdminCommand::Key(c)),
        Command::Route(c) => admin(AdminCommand::Route(c)),
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

fn serve(config: Config) -> ExitCode {
    init_tracing(config.log.format);
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
