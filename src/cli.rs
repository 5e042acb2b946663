//! The admin subcommands. sled locks its directory, so the CLI never opens the store: it
//! calls the running server's admin API with the token from `<data dir>/admin.token`.

use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::config::Config;

/// `waybill partner ...`
#[derive(Debug, Subcommand)]
pub enum PartnerCmd {
    /// Create a partner.
    Add {
        /// Partner code, e.g. ACME.
        code: String,
        /// Display name (defaults to the code).
        #[arg(long)]
        name: Option<String>,
        /// URL live transmissions are pushed to.
        #[arg(long)]
        push_url: Option<String>,
        /// URL test-environment transmissions are pushed to.
        #[arg(long)]
        test_push_url: Option<String>,
    },
    /// List partners.
    List,
    /// Delete a partner (its keys are revoked and its routes removed).
    Remove { code: String },
}

/// `waybill key ...`
#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create an API key; it is printed once and cannot be shown again.
    Create {
        partner: String,
        #[arg(long)]
        label: Option<String>,
        /// `live` (default) or `test`.
        #[arg(long, default_value = "live")]
        env: String,
    },
    /// List a partner's keys.
    List {
        partner: String,
        /// Only keys of this environment (`live` or `test`).
        #[arg(long)]
        env: Option<String>,
    },
    /// Revoke a key; it stops working at once.
    Revoke { partner: String, id: String },
}

/// `waybill route ...`
#[derive(Debug, Subcommand)]
pub enum RouteCmd {
    /// Allow SENDER to send DOCTYPE (or `*`) to RECEIVER.
    Add {
        sender: String,
        receiver: String,
        doctype: String,
        /// Live traffic only; test messages may not use this route.
        #[arg(long)]
        live_only: bool,
    },
    /// List routes.
    List,
    /// Delete a route.
    Remove { id: String },
}

/// Any admin subcommand.
#[derive(Debug)]
pub enum AdminCommand {
    Partner(PartnerCmd),
    Key(KeyCmd),
    Route(RouteCmd),
}

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot read the admin token {path}: {source} (is the server's data dir right? use --data-dir or set WAYBILL_ADMIN_TOKEN)")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot reach the server at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{status}: {message}")]
    Refused { status: u16, message: String },
}

/// Runs an admin command against the server the configuration points at.
pub fn run(config: &Config, cmd: AdminCommand) -> Result<(), CliError> {
    let token = match std::env::var("WAYBILL_ADMIN_TOKEN") {
        Ok(t) if !t.is_empty() => t,
        _ => {
            let path = config.server.data_dir.join("admin.token");
            std::fs::read_to_string(&path)
                .map_err(|source| CliError::Token {
                    path: path.display().to_string(),
                    source,
                })?
                .trim()
                .to_owned()
        }
    };
    let base = std::env::var("WAYBILL_URL").unwrap_or_else(|_| {
        let scheme = if config.server.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        let mut addr = config.server.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("{scheme}://{addr}")
    });
    let client = Client { base, token };
    match cmd {
        AdminCommand::Partner(PartnerCmd::Add {
            code,
            name,
            push_url,
            test_push_url,
        }) => {
            let mut body = json!({"code": code, "name": name.unwrap_or_else(|| code.clone())});
            if let Some(url) = push_url {
                body["pushUrl"] = Value::String(url);
            }
            if let Some(url) = test_push_url {
                body["testPushUrl"] = Value::String(url);
            }
            let p = client.call("POST", "/admin/api/partners", Some(body))?;
            println!("created partner {}", p["code"].as_str().unwrap_or_default());
        }
        AdminCommand::Partner(PartnerCmd::List) => {
            let list = client.call("GET", "/admin/api/partners", None)?;
            println!("{:<20} {:<8} {:<30} PUSH URL", "CODE", "ACTIVE", "NAME");
            for p in list.as_array().into_iter().flatten() {
                println!(
                    "{:<20} {:<8} {:<30} {}",
                    p["code"].as_str().unwrap_or_default(),
                    p["active"].as_bool().unwrap_or_default(),
                    p["name"].as_str().unwrap_or_default(),
                    p["pushUrl"].as_str().unwrap_or("-"),
                );
            }
        }
        AdminCommand::Partner(PartnerCmd::Remove { code }) => {
            client.call("DELETE", &format!("/admin/api/partners/{code}"), None)?;
            println!("removed partner {code}");
        }
        AdminCommand::Key(KeyCmd::Create {
            partner,
            label,
            env,
        }) => {
            let k = client.call(
                "POST",
                &format!("/admin/api/partners/{partner}/keys"),
                Some(json!({"label": label, "env": env})),
            )?;
            println!("key id: {}", k["id"].as_str().unwrap_or_default());
            println!("env:    {}", k["env"].as_str().unwrap_or_default());
            println!("key:    {}", k["key"].as_str().unwrap_or_default());
            eprintln!("store the key now: it is not shown again");
        }
        AdminCommand::Key(KeyCmd::List { partner, env }) => {
            let filter = env.map(|e| format!("?env={e}")).unwrap_or_default();
            let list = client.call(
                "GET",
                &format!("/admin/api/partners/{partner}/keys{filter}"),
                None,
            )?;
            println!(
                "{:<38} {:<14} {:<6} {:<8} LABEL",
                "ID", "PREFIX", "ENV", "ACTIVE"
            );
            for k in list.as_array().into_iter().flatten() {
                println!(
                    "{:<38} {:<14} {:<6} {:<8} {}",
                    k["id"].as_str().unwrap_or_default(),
                    k["prefix"].as_str().unwrap_or_default(),
                    k["env"].as_str().unwrap_or_default(),
                    k["active"].as_bool().unwrap_or_default(),
                    k["label"].as_str().unwrap_or("-"),
                );
            }
        }
        AdminCommand::Key(KeyCmd::Revoke { partner, id }) => {
            client.call(
                "DELETE",
                &format!("/admin/api/partners/{partner}/keys/{id}"),
                None,
            )?;
            println!("revoked key {id}");
        }
        AdminCommand::Route(RouteCmd::Add {
            sender,
            receiver,
            doctype,
            live_only,
        }) => {
            let body = json!({"sender": sender, "receiver": receiver, "doctype": doctype, "liveOnly": live_only});
            let r = client.call("POST", "/admin/api/routes", Some(body))?;
            println!("created route {}", r["id"].as_str().unwrap_or_default());
        }
        AdminCommand::Route(RouteCmd::List) => {
            let list = client.call("GET", "/admin/api/routes", None)?;
            println!("{:<38} {:<20} {:<20} DOCTYPE", "ID", "SENDER", "RECEIVER");
            for r in list.as_array().into_iter().flatten() {
                let live_only = if r["liveOnly"] == true {
                    " (live only)"
                } else {
                    ""
                };
                println!(
                    "{:<38} {:<20} {:<20} {}{live_only}",
                    r["id"].as_str().unwrap_or_default(),
                    r["sender"].as_str().unwrap_or_default(),
                    r["receiver"].as_str().unwrap_or_default(),
                    r["doctype"].as_str().unwrap_or_default(),
                );
            }
        }
        AdminCommand::Route(RouteCmd::Remove { id }) => {
            client.call("DELETE", &format!("/admin/api/routes/{id}"), None)?;
            println!("removed route {id}");
        }
    }
    Ok(())
}

struct Client {
    base: String,
    token: String,
}

impl Client {
    /// Calls the admin API and returns the envelope's `data`, or the envelope's error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        let url = format!("{}{}", self.base, path);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let auth = format!("Bearer {}", self.token);
        let unreachable = |e: ureq::Error| CliError::Unreachable {
            url: url.clone(),
            message: e.to_string(),
        };
        let response = match (method, body) {
            ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
            (_, body) => agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(body.unwrap_or_else(|| json!({}))),
        }
        .map_err(unreachable)?;
        let status = response.status().as_u16();
        let envelope: Value = response.into_body().read_json().map_err(unreachable)?;
        if envelope["success"].as_bool() == Some(true) {
            Ok(envelope["data"].clone())
        } else {
            let message = envelope["error"]["message"]
                .as_str()
                .unwrap_or("request failed")
                .to_owned();
            Err(CliError::Refused { status, message })
        }
    }
}
