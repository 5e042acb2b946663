//! The disk-full part of the fault suite: the real binary with its data directory on a
//! 64 MiB tmpfs, filled by a ballast file.
//!
//! First under `store.min_free_mb`: every write endpoint that acknowledges data refuses
//! with 503 `insufficient_storage` and stores nothing, receivers can still poll and
//! acknowledge, and intake resumes once the ballast is gone. Then with the guard off
//! (`min_free_mb = 0`) and the disk full to the last byte, so that the store's own writes
//! fail with ENOSPC: no write may be answered 2xx unless it is on disk. Once the store's
//! own flush has failed, the process refuses every write and is not ready until it is
//! restarted, even with room again. A start while the disk is still full fails and must
//! leave the store as it was; a restart with room finds every 2xx and nothing refused.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::process::{start_with, Server};
use crate::{agent, send, Resp};

const MIB: u64 = 1024 * 1024;

/// A tmpfs mounted for the test; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `mb` MiB on `dir`, or says why it cannot.
    fn mount(dir: &Path, mb: u64) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(dir.to_owned()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn free(dir: &Path) -> u64 {
    waybill::worker::free_bytes(dir).expect("statvfs")
}

/// Writes zeros to `path` until `leave` bytes are free on its file system, or until the
/// file system refuses (ENOSPC) when `leave` is 0. Returns the bytes written.
fn fill(path: &Path, leave: u64) -> u64 {
    let dir = path.parent().expect("parent");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("ballast");
    let mut written = 0;
    for chunk in [MIB, 64 * 1024, 4096, 512, 1] {
        let zeros = vec![0u8; chunk as usize];
        loop {
            let room = free(dir);
            if leave > 0 && room <= leave + chunk {
                break;
            }
            if f.write_all(&zeros).and_then(|()| f.sync_data()).is_err() {
                break;
            }
            written += chunk;
        }
    }
    written
}

fn single(server: &Server, key: &str, reference: &str) -> Resp {
    let url = format!(
        "{}/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order&externalReference={reference}",
        server.base
    );
    let body = format!(
        "{{\"ref\":\"{reference}\",\"pad\":\"{}\"}}",
        "p".repeat(2000)
    );
    let headers = [("X-Api-Key", key), ("Content-Type", "application/json")];
    send(&agent(), "POST", &url, &headers, Some(body.as_bytes()))
}

fn post(server: &Server, key: &str, path: &str, extra: &[(&str, &str)], body: &str) -> Resp {
    let mut headers = vec![("X-Api-Key", key), ("Content-Type", "application/json")];
    headers.extend_from_slice(extra);
    let url = format!("{}{path}", server.base);
    send(&agent(), "POST", &url, &headers, Some(body.as_bytes()))
}

/// External references of everything GLOBEX can poll.
fn pollable(server: &Server, globex: &str) -> HashSet<String> {
    let url = format!("{}/api/v1/transmissions?limit=100", server.base);
    let r = send(&agent(), "GET", &url, &[("X-Api-Key", globex)], None);
    r.data(200)
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["externalReference"].as_str().map(str::to_owned))
        .collect()
}

/// Sends singles until one is answered `status` (or panics after `secs`); every one
/// answered 202 on the way is added to `accepted`.
fn until_status(
    server: &Server,
    key: &str,
    prefix: &str,
    status: u16,
    accepted: &mut HashSet<String>,
) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(15);
    for n in 0.. {
        let reference = format!("{prefix}{n}");
        let r = single(server, key, &reference);
        if r.status == 202 {
            accepted.insert(reference);
        }
        if r.status == status {
            return r;
        }
        assert!(Instant::now() < deadline, "intake never answered {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    unreachable!()
}

#[test]
fn a_full_disk_pauses_intake_and_everything_resumes_when_space_returns() {
    let mnt = tempfile::tempdir().unwrap();
    let _tmpfs = match Tmpfs::mount(mnt.path(), 64) {
        Ok(m) => m,
        Err(why) => {
            println!("fault suite, disk part skipped: cannot mount a tmpfs ({why})");
            return;
        }
    };
    let data = mnt.path().join("data");
    let ballast = mnt.path().join("ballast");
    let guarded = [("WAYBILL_STORE__MIN_FREE_MB", "16")];
    let mut server = start_with(&data, &guarded);
    let (acme, globex) = server.acme_to_globex(json!({}));
    let mut accepted = HashSet::new();
    for i in 0..10 {
        let reference = format!("before-{i}");
        assert_eq!(single(&server, &acme, &reference).status, 202);
        accepted.insert(reference);
    }

    // Under store.min_free_mb: intake pauses within the watcher's poll interval.
    fill(&ballast, 8 * MIB);
    let r = until_status(&server, &acme, "filling-", 503, &mut accepted);
    r.error(503, "insufficient_storage");
    let batch = json!({"batchReference": "low-batch", "messages": [
        {"messageType": "order", "receiver": "GLOBEX", "externalReference": "low-b1", "payload": "e30="},
    ]});
    let refusals = [
        single(&server, &acme, "low-single"),
        post(&server, &acme, "/api/v1/requests", &[], &batch.to_string()),
        post(
            &server,
            &acme,
            "/api/v1/documents/order?externalReference=low-doc",
            &[],
            "{}",
        ),
        single_in_background(&server, &acme),
    ];
    for r in &refusals {
        r.error(503, "insufficient_storage");
        assert!(r.headers.contains_key("retry-after"));
    }
    assert_eq!(
        pollable(&server, &globex),
        accepted,
        "nothing new was stored"
    );
    // Receivers go on draining: a poll and an acknowledgement still work.
    let url = format!("{}/api/v1/transmissions?limit=1", server.base);
    let first = send(&agent(), "GET", &url, &[("X-Api-Key", &globex)], None).data(200);
    let uuid = first[0]["uuid"].as_str().expect("uuid").to_owned();
    let acked = first[0]["externalReference"]
        .as_str()
        .expect("ref")
        .to_owned();
    let ack = format!("{}/api/v1/transmissions/status/{uuid}", server.base);
    let headers = [
        ("X-Api-Key", globex.as_str()),
        ("Content-Type", "application/json"),
    ];
    let body = br#"{"status":"processed"}"#;
    send(&agent(), "PUT", &ack, &headers, Some(body)).data(200);
    accepted.remove(&acked);

    // Space returns: intake resumes by itself.
    std::fs::remove_file(&ballast).unwrap();
    until_status(&server, &acme, "resuming-", 202, &mut accepted);
    for i in 0..10 {
        let reference = format!("after-{i}");
        assert_eq!(single(&server, &acme, &reference).status, 202);
        accepted.insert(reference);
    }
    assert_eq!(pollable(&server, &globex), accepted);

    // The guard off, the disk full to the last byte: the store's own writes hit ENOSPC.
    drop(server);
    server = start_with(&data, &[("WAYBILL_STORE__MIN_FREE_MB", "0")]);
    let ballast_bytes = fill(&ballast, 0);
    let mut statuses: Vec<u16> = Vec::new();
    let mut codes = HashSet::new();
    let mut full_ok = HashSet::new();
    for i in 0..40 {
        let reference = format!("full-{i}");
        let r = single(&server, &acme, &reference);
        statuses.push(r.status);
        if r.status == 202 {
            full_ok.insert(reference);
        } else {
            codes.insert(r.json()["error"]["code"].as_str().unwrap_or("?").to_owned());
        }
    }
    // Acknowledgements carry no payload: their records reach sled itself, whose writes
    // now fail.
    let (acked_ok, acked_unsure, ack_statuses) = acknowledge(&server, &globex, 20);
    // Larger records (schemas of 60 KiB) until the store runs out of room for them.
    let schemas = fill_with_schemas(&server);
    let refused_schema = format!("fill{}", schemas.created.len());
    let refused_seen = schema_doctypes(&server).contains(&refused_schema);
    let ready = send(
        &agent(),
        "GET",
        &format!("{}/readyz", server.base),
        &[],
        None,
    );
    println!(
        "disk full ({} MiB of ballast, {} bytes free): {} of 40 intakes answered 202, the others \
         {codes:?}; acknowledgements answered {ack_statuses:?}; schemas: {} answered 201, \
         then {:?} (listed by the same process afterwards: {refused_seen}); /readyz {}",
        ballast_bytes / MIB,
        free(mnt.path()),
        full_ok.len(),
        schemas.created.len(),
        schemas.refused,
        ready.status
    );
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 503),
        "only 202 or 503: {statuses:?}"
    );

    // Room again; what does the running process do?
    std::fs::remove_file(&ballast).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let later = single(&server, &acme, "room-again");
    let ready_later = send(
        &agent(),
        "GET",
        &format!("{}/readyz", server.base),
        &[],
        None,
    );
    println!(
        "space back, same process: intake {}, /readyz {}",
        later.status, ready_later.status
    );
    // A failed write of the store itself (its flush) makes the process refuse every
    // write, and fail readiness, until it is restarted: sled keeps the error.
    assert!(
        schemas.refused.is_some(),
        "the store's own writes never hit ENOSPC"
    );
    assert_eq!(ready.status, 503, "not ready after a failed store write");
    later.error(503, "store_unavailable");
    assert_eq!(ready_later.status, 503, "still not ready with room again");

    // SIGKILL on a full disk, and a start while it is still full: it cannot open the
    // store, and must leave it as it was.
    fill(&ballast, 0);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let on_full = start_on_full_disk(&data);
    println!("started again on the full disk: {on_full}");
    std::fs::remove_file(&ballast).unwrap();

    // Room again, and a restart: only what was flushed before each 2xx survived, and
    // every 2xx must be there.
    let server = start_with(&data, &guarded);
    for i in 0..10 {
        let reference = format!("restarted-{i}");
        assert_eq!(single(&server, &acme, &reference).status, 202);
        accepted.insert(reference);
    }
    accepted.extend(full_ok.iter().cloned());
    let have = pollable(&server, &globex);
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|r| !have.contains(*r) && !acked_ok.contains(*r) && !acked_unsure.contains(*r))
        .collect();
    assert!(lost.is_empty(), "answered 202 and lost: {lost:?}");
    let undone: Vec<&String> = acked_ok.iter().filter(|r| have.contains(*r)).collect();
    assert!(
        undone.is_empty(),
        "acknowledged with 200 and handed out again: {undone:?}"
    );
    let kept = schema_doctypes(&server);
    let refused_kept = kept.contains(&refused_schema);
    let gone: Vec<&String> = schemas
        .created
        .iter()
        .filter(|d| !kept.contains(*d))
        .collect();
    assert!(gone.is_empty(), "schemas answered 201 and lost: {gone:?}");
    let unknown: Vec<&String> = have.iter().filter(|r| !accepted.contains(*r)).collect();
    assert!(unknown.is_empty(), "stored although refused: {unknown:?}");
    println!(
        "after a restart with room: {} messages pollable ({} answered 202 before, {} \
         acknowledged with 200 on the full disk, {} refused acknowledgements kept), {} \
         schemas answered 201 there, the refused one {}; 10 more accepted",
        have.len(),
        accepted.len() - 10,
        acked_ok.len(),
        acked_unsure.iter().filter(|r| !have.contains(*r)).count(),
        schemas.created.len(),
        if refused_kept { "kept" } else { "not kept" }
    );
}

/// Polls up to `n` of GLOBEX's transmissions and acknowledges each. Returns the references
/// acknowledged with 200, those refused (whose change may or may not have been kept), and
/// every status.
fn acknowledge(
    server: &Server,
    globex: &str,
    n: usize,
) -> (HashSet<String>, HashSet<String>, Vec<u16>) {
    let url = format!("{}/api/v1/transmissions?limit={n}", server.base);
    let items = send(&agent(), "GET", &url, &[("X-Api-Key", globex)], None).data(200);
    let (mut ok, mut unsure, mut statuses) = (HashSet::new(), HashSet::new(), Vec::new());
    for t in items.as_array().into_iter().flatten() {
        let uuid = t["uuid"].as_str().expect("uuid");
        let reference = t["externalReference"].as_str().expect("ref").to_owned();
        let url = format!("{}/api/v1/transmissions/status/{uuid}", server.base);
        let headers = [("X-Api-Key", globex), ("Content-Type", "application/json")];
        let body = br#"{"status":"processed"}"#;
        let r = send(&agent(), "PUT", &url, &headers, Some(body));
        statuses.push(r.status);
        if r.status == 200 {
            ok.insert(reference);
        } else {
            unsure.insert(reference);
        }
    }
    (ok, unsure, statuses)
}

/// Starts the binary on `data` (with the guard off) and says how far it got in 15 s: its
/// readiness, and what a write (creating a partner) was answered.
fn start_on_full_disk(data: &Path) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--listen", &listen])
        .env("WAYBILL_STORE__MIN_FREE_MB", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn waybill");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = "no answer".to_owned();
    while Instant::now() < deadline {
        if let Ok(Some(exit)) = child.try_wait() {
            seen = format!("exited ({exit})");
            break;
        }
        let url = format!("http://{listen}/readyz");
        if let Ok(r) = agent().get(&url).call() {
            seen = format!("/readyz {}", r.status().as_u16());
            if r.status() == 200 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let log = String::from_utf8_lossy(&out.stderr);
    let last: Vec<&str> = log.lines().rev().take(6).collect();
    format!("{seen}; log ends {last:?}")
}

/// What writing schemas on a full disk gave.
struct Schemas {
    /// Doctypes whose schema was answered 201.
    created: Vec<String>,
    /// The error of the first one refused.
    refused: Option<String>,
}

/// Creates schemas of 60 KiB each until one is refused (at most 100).
fn fill_with_schemas(server: &Server) -> Schemas {
    let mut s = Schemas {
        created: Vec::new(),
        refused: None,
    };
    for n in 0..100 {
        let doctype = format!("fill{n}");
        let description = "d".repeat(60 * 1024);
        let body = json!({"doctype": doctype, "jsonSchema": {"description": description}});
        let r = server.admin("POST", "/admin/api/schemas", body);
        if r["success"] == true {
            s.created.push(doctype);
        } else {
            let code = r["error"]["code"].as_str().unwrap_or("?");
            let message = r["error"]["message"].as_str().unwrap_or("?");
            s.refused = Some(format!("{code}: {message}"));
            break;
        }
    }
    s
}

/// The doctypes that have a schema.
fn schema_doctypes(server: &Server) -> HashSet<String> {
    let list = server.admin("GET", "/admin/api/schemas", serde_json::Value::Null);
    list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["doctype"].as_str().map(str::to_owned))
        .collect()
}

/// A background submission of a single intake.
fn single_in_background(server: &Server, key: &str) -> Resp {
    post(
        server,
        key,
        "/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order&externalReference=low-job",
        &[("Waybill-Background", "none")],
        "{}",
    )
}
