//! The admin subcommands (`partner`, `key`, `route`, `user`, `schema`). sled locks its
//! directory, so the CLI never opens the store: it calls the running server's admin API
//! with the token from `<data dir>/admin.token`.
//!
//! Also the manual page and the shell completions, both generated from the clap definitions
//! so they cannot drift from the real flags. The packages are built with them.

use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::config::Config;

pub mod backup;

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
        /// A note shown in key listings, e.g. what system uses the key.
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

/// `waybill user ...`
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create an admin user; the password is asked for (or read from standard input).
    Add {
        name: String,
        /// `admin` (everything, the default) or `viewer` (reads only).
        #[arg(long, default_value = "admin")]
        role: String,
        /// Read the password from the first line of standard input instead of a prompt.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List admin users.
    List,
    /// Delete an admin user; their sessions end at once.
    Remove { name: String },
    /// Set an admin user's password; their sessions end.
    Passwd {
        name: String,
        /// Read the password from the first line of standard input instead of a prompt.
        #[arg(long)]
        password_stdin: bool,
    },
}

/// `waybill schema ...`
#[derive(Debug, Subcommand)]
pub enum SchemaCmd {
    /// Register the validator of DOCTYPE (replacing the one of the same version).
    Add {
        doctype: String,
        /// The message version it applies to; `*` (the default) for every version.
        #[arg(long, default_value = "*")]
        version: String,
        /// A file holding a JSON Schema (draft 2020-12) for JSON payloads.
        #[arg(long, value_name = "FILE")]
        json_schema: Option<std::path::PathBuf>,
        /// The name the root element of an XML payload must have.
        #[arg(long, value_name = "NAME")]
        xml_root: Option<String>,
        /// Largest payload allowed, in bytes.
        #[arg(long, value_name = "BYTES")]
        max_bytes: Option<u64>,
        /// A content type (type/subtype) payloads may have; repeat for several.
        #[arg(long = "content-type", value_name = "TYPE")]
        content_types: Vec<String>,
    },
    /// List schemas.
    List,
    /// Delete a schema.
    Remove { id: String },
}

/// Any admin subcommand.
#[derive(Debug)]
pub enum AdminCommand {
    Partner(PartnerCmd),
    Key(KeyCmd),
    Route(RouteCmd),
    User(UserCmd),
    Schema(SchemaCmd),
}

/// A new password: the first line of standard input, or typed twice at a prompt that does
/// not echo it.
fn read_password(from_stdin: bool) -> Result<String, CliError> {
    let fail = |message: String| CliError::Refused { status: 0, message };
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| fail(format!("cannot read the password: {e}")))?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    let first = rpassword::prompt_password("New password: ")
        .map_err(|e| fail(format!("cannot read the password: {e}")))?;
    let again = rpassword::prompt_password("Again: ")
        .map_err(|e| fail(format!("cannot read the password: {e}")))?;
    if first != again {
        return Err(fail("the passwords differ".into()));
    }
    Ok(first)
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
    let client = Client::from_config(config)?;
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
        AdminCommand::User(UserCmd::Add {
            name,
            role,
            password_stdin,
        }) => {
            let password = read_password(password_stdin)?;
            let u = client.call(
                "POST",
                "/admin/api/users",
                Some(json!({"username": name, "password": password, "role": role})),
            )?;
            println!(
                "created {} user {}",
                u["role"].as_str().unwrap_or_default(),
                u["username"].as_str().unwrap_or_default()
            );
        }
        AdminCommand::User(UserCmd::List) => {
            let list = client.call("GET", "/admin/api/users", None)?;
            println!("{:<24} {:<8} LAST LOGIN", "USERNAME", "ROLE");
            for u in list.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<8} {}",
                    u["username"].as_str().unwrap_or_default(),
                    u["role"].as_str().unwrap_or_default(),
                    u["lastLoginAt"].as_str().unwrap_or("-"),
                );
            }
        }
        AdminCommand::User(UserCmd::Remove { name }) => {
            client.call("DELETE", &format!("/admin/api/users/{name}"), None)?;
            println!("removed user {name}");
        }
        AdminCommand::User(UserCmd::Passwd {
            name,
            password_stdin,
        }) => {
            let password = read_password(password_stdin)?;
            client.call(
                "PUT",
                &format!("/admin/api/users/{name}/password"),
                Some(json!({"password": password})),
            )?;
            println!("password of {name} changed; their sessions ended");
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
        AdminCommand::Schema(SchemaCmd::Add {
            doctype,
            version,
            json_schema,
            xml_root,
            max_bytes,
            content_types,
        }) => {
            let json_schema = json_schema
                .map(|path| {
                    let fail = |why: String| CliError::Refused {
                        status: 0,
                        message: format!("{}: {why}", path.display()),
                    };
                    let text = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
                    serde_json::from_slice::<Value>(&text)
                        .map_err(|e| fail(format!("not JSON: {e}")))
                })
                .transpose()?;
            let mut body = json!({"doctype": doctype, "version": version});
            for (key, value) in [
                ("jsonSchema", json_schema),
                ("xmlRoot", xml_root.map(Value::from)),
                ("maxBytes", max_bytes.map(Value::from)),
                (
                    "contentTypes",
                    (!content_types.is_empty()).then(|| Value::from(content_types)),
                ),
            ] {
                if let Some(v) = value {
                    body[key] = v;
                }
            }
            let r = client.call("POST", "/admin/api/schemas", Some(body))?;
            println!("created schema {}", r["id"].as_str().unwrap_or_default());
            if let Some(old) = r["replaced"].as_str() {
                println!("replaced schema {old}");
            }
        }
        AdminCommand::Schema(SchemaCmd::List) => {
            let list = client.call("GET", "/admin/api/schemas", None)?;
            println!("{:<38} {:<24} {:<10} CHECKS", "ID", "DOCTYPE", "VERSION");
            for r in list.as_array().into_iter().flatten() {
                let mut checks = Vec::new();
                if !r["jsonSchema"].is_null() {
                    checks.push("json-schema".to_owned());
                }
                if let Some(root) = r["xmlRoot"].as_str() {
                    checks.push(format!("xml-root={root}"));
                }
                if let Some(max) = r["maxBytes"].as_u64() {
                    checks.push(format!("max-bytes={max}"));
                }
                for t in r["contentTypes"].as_array().into_iter().flatten() {
                    checks.push(format!("type={}", t.as_str().unwrap_or_default()));
                }
                println!(
                    "{:<38} {:<24} {:<10} {}",
                    r["id"].as_str().unwrap_or_default(),
                    r["doctype"].as_str().unwrap_or_default(),
                    r["version"].as_str().unwrap_or_default(),
                    checks.join(" "),
                );
            }
        }
        AdminCommand::Schema(SchemaCmd::Remove { id }) => {
            client.call("DELETE", &format!("/admin/api/schemas/{id}"), None)?;
            println!("removed schema {id}");
        }
    }
    Ok(())
}

struct Client {
    base: String,
    token: String,
}

impl Client {
    /// The server the configuration (or `WAYBILL_URL`) points at, with the admin token
    /// from `WAYBILL_ADMIN_TOKEN` or the data directory.
    fn from_config(config: &Config) -> Result<Client, CliError> {
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
        Ok(Client { base, token })
    }

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
            ("PUT", body) => agent
                .put(&url)
                .header("Authorization", &auth)
                .send_json(body.unwrap_or_else(|| json!({}))),
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

/// Writes the completion script for `shell`, generated from the command definition `cmd`.
pub fn write_completions(
    shell: clap_complete::Shell,
    mut cmd: clap::Command,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let name = cmd.get_name().to_owned();
    // clap_complete writes through a `Write` it cannot report errors from, so collect the
    // script first and write it where a failure is seen.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    out.write_all(&script)
}

/// Writes the `waybill(1)` manual page in roff: the flags and every command with its own
/// arguments from `cmd`, then the files, environment and signals a service operator needs.
/// One page holds it all, so `man waybill` never points at a page that is not installed.
pub fn write_man_page(mut cmd: clap::Command, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    // Building fills in what clap derives (help flags, value names) before it is read.
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone()).manual("Waybill Manual");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    let mut commands = roff::Roff::new();
    commands.control("SH", ["COMMANDS"]);
    man_commands(&mut commands, &cmd, cmd.get_name());
    commands.to_writer(out)?;
    out.write_all(MAN_OPERATION.as_bytes())?;
    man.render_version_section(out)
}

/// One entry per leaf command (`waybill partner add CODE`): its arguments, what it does,
/// and its own options.
fn man_commands(page: &mut roff::Roff, cmd: &clap::Command, path: &str) {
    use roff::{bold, italic, roman};
    let visible = cmd
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help");
    for sub in visible {
        let path = format!("{path} {}", sub.get_name());
        if sub.has_subcommands() {
            man_commands(page, sub, &path);
            continue;
        }
        let mut line = vec![bold(path)];
        for arg in sub.get_positionals() {
            let name = value_name(arg);
            line.push(roman(" "));
            if arg.is_required_set() {
                line.push(italic(name));
            } else {
                line.extend([roman("["), italic(name), roman("]")]);
            }
        }
        page.control("TP", []);
        page.text(line);
        if let Some(about) = sub.get_about() {
            page.text([roman(about.to_string())]);
        }
        let options = sub.get_arguments().filter(|a| {
            !a.is_positional() && !a.is_hide_set() && !a.is_global_set() && a.get_id() != "help"
        });
        for arg in options {
            let Some(long) = arg.get_long() else { continue };
            let mut flag = vec![bold(format!("--{long}"))];
            if arg.get_num_args().is_some_and(|n| n.takes_values()) {
                flag.extend([roman(" "), italic(value_name(arg))]);
            }
            page.control("RS", []);
            page.control("TP", []);
            page.text(flag);
            if let Some(help) = arg.get_help() {
                page.text([roman(help.to_string())]);
            }
            page.control("RE", []);
        }
    }
}

/// The placeholder an argument is shown with: its value name, else its id in capitals.
fn value_name(arg: &clap::Arg) -> String {
    arg.get_value_names()
        .and_then(|names| names.first())
        .map(|n| n.to_string())
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
}

/// The hand-written part of the manual page, in roff. The paths are the packages' layout.
const MAN_OPERATION: &str = r#".SH "FILES"
.TP
.I /etc/waybill/waybill.toml
The configuration the packaged service reads. It lists every setting with its default and
meaning; package upgrades keep local edits.
.B waybill \-\-config /etc/waybill/waybill.toml check\-config
checks it and prints the effective settings.
.TP
.I /var/lib/waybill
The packaged service's data directory: the store and the payload segments. Only the
.B waybill
user can read it. Without a configuration file the data directory is
.IR ./waybill\-data .
.TP
.I /var/lib/waybill/admin.token
The admin token (mode 0600), written on the first start. The admin commands
.RB ( partner ", " key ", " route )
read it from the data directory; HTTP clients send it as
.BR "Authorization: Bearer" " \fItoken\fR."
.TP
.I /usr/lib/systemd/system/waybill.service
The systemd unit. Logs go to the journal:
.BR "journalctl \-u waybill" .
.SH "ENVIRONMENT"
.TP
.B WAYBILL_CONFIG
The configuration file, as
.BR \-\-config .
.TP
.B WAYBILL_\fISECTION\fB__\fIKEY\fR
Any setting, e.g.
.B WAYBILL_SERVER__LISTEN=0.0.0.0:8080
for
.B listen
in
.BR [server] .
Lists are comma\-separated. Environment variables win over the file; flags win over both.
.TP
.B WAYBILL_LOG
The log filter, e.g.
.BR debug " or " waybill=debug,info .
.TP
.B WAYBILL_URL
Where the admin commands find the server, when
.B \-\-listen
does not say.
.TP
.B WAYBILL_ADMIN_TOKEN
The admin token for the admin commands, instead of the file in the data directory.
.SH "SIGNALS"
.TP
.BR SIGTERM ", " SIGINT
Stop accepting connections, let in\-flight requests finish, flush the store and exit.
.TP
.B SIGHUP
Read the TLS certificate and key again
.RB ( "systemctl reload waybill" ).
Without TLS it is logged and ignored.
.SH "EXIT STATUS"
0 on success, 1 when a command or the server fails, 2 when the command line or the
configuration is invalid.
.SH "SEE ALSO"
.BR systemctl (1),
.BR journalctl (1).
The HTTP API is described by the server itself at
.BR /api/v1/openapi.json .
"#;
