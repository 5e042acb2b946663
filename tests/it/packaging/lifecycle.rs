//! The .deb's whole life in a scratch root: install, upgrade from a lower version with the
//! data and an edited configuration kept, removal and purge.

use super::*;

/// A store with partners, keys, a route and one message, filled through the API.
struct Filled {
    acme: String,
    globex: String,
    sent: Value,
    token: String,
}

impl Filled {
    fn by(server: &Served) -> Filled {
        server.admin(
            "/admin/api/partners",
            json!({"code": "ACME", "name": "Acme"}),
        );
        server.admin(
            "/admin/api/partners",
            json!({"code": "GLOBEX", "name": "Globex"}),
        );
        server.admin(
            "/admin/api/routes",
            json!({"sender": "ACME", "receiver": "GLOBEX", "doctype": "order"}),
        );
        let key = |code: &str| {
            server.admin(&format!("/admin/api/partners/{code}/keys"), json!({}))["key"]
                .as_str()
                .expect("key")
                .to_owned()
        };
        let (acme, globex) = (key("ACME"), key("GLOBEX"));
        let sent = server
            .post(
                "/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order&version=1",
                &[("X-Api-Key", &acme)],
                &json!({"orderNo": "PO-upgrade"}),
            )
            .data(202);
        Filled {
            acme,
            globex,
            sent,
            token: server.token.clone(),
        }
    }

    /// `server` serves everything that was filled in, with the same token and keys.
    fn check(&self, server: &Served) {
        assert_eq!(server.token, self.token, "the admin token survives");
        let polled = server
            .get(
                "/api/v1/transmissions?limit=10",
                &[("X-Api-Key", &self.globex)],
            )
            .data(200);
        let items = polled.as_array().expect("items");
        assert_eq!(items.len(), 1, "{polled}");
        assert_eq!(items[0]["messageId"], self.sent["id"]);
        assert_eq!(items[0]["payload"]["orderNo"], "PO-upgrade");
        let tracking = self.sent["trackingLocation"].as_str().expect("tracking");
        let summary = server.get(tracking, &[("X-Api-Key", &self.acme)]).data(200);
        assert_eq!(summary["messages"][0]["id"], self.sent["id"], "{summary}");
    }
}

/// dpkg installs into a scratch root: `--root` keeps its database and files there, and
/// `--force-script-chrootless` runs the maintainer scripts here with `DPKG_ROOT` set, which
/// they honour (every path under it, no service touched). So this is the real install,
/// upgrade, removal and purge, without changing this machine.
///
/// The 0.0.1 package holds the binary of this build under a lower version, as no release
/// exists yet to upgrade from. So this covers the packaging side of an upgrade: dpkg
/// replaces the files of an installed, configured package whose binary filled the data
/// directory, keeps the edited configuration, and the new binary serves that data. Reading
/// older record formats is the store's own tests' job (`codec::Record::upgrade`). Once a
/// release is out, its package can take the 0.0.1 package's place here.
#[test]
fn dpkg_installs_upgrades_removes_and_purges_in_a_scratch_root() {
    let Some(p) = packages() else { return };
    if !have("dpkg") {
        return;
    }
    if run(Command::new("id").arg("-u")).trim() != "0" {
        eprintln!("skipped: dpkg installs only as root, even into a scratch root");
        return;
    }
    let (old_v, new_v) = (format!("{OLD_VERSION}-1"), format!("{VERSION}-1"));
    let newer = Command::new("dpkg")
        .args(["--compare-versions", &old_v, "lt", &new_v])
        .status()
        .unwrap();
    assert!(
        newer.success(),
        "dpkg must see {new_v} as an upgrade of {old_v}"
    );

    let target = tempfile::tempdir().unwrap();
    let root = target.path();
    fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        run(Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            // The scratch root has no libc6 package for the dependency to be met by.
            .args(["--force-script-chrootless", "--force-depends"])
            .args(args)
            .stdin(Stdio::null()))
    };
    let status = || dpkg(&["-s", "waybill"]);
    let deb = |d: &Path| d.to_str().expect("UTF-8 path").to_owned();

    // Install: files, the user (in the scratch root's passwd) and the unit enabled for boot.
    dpkg(&["-i", &deb(&p.old_deb)]);
    assert!(status().contains(&format!("Version: {old_v}")));
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd.lines().any(
            |l| l.starts_with("waybill:") && l.ends_with(":/var/lib/waybill:/usr/sbin/nologin")
        ),
        "{passwd}"
    );
    let wants = root.join("etc/systemd/system/multi-user.target.wants/waybill.service");
    assert!(wants.symlink_metadata().is_ok(), "enabled for boot");

    // The installed binary fills the data directory the packaged config names.
    let bin = root.join("usr/bin/waybill");
    let config = root.join("etc/waybill/waybill.toml");
    let data = root.join("var/lib/waybill");
    let log = |name: &str| target.path().join(name);
    let old = Served::start(&bin, &config, &data, log("old.log"));
    let filled = Filled::by(&old);
    old.stop();
    let mut edited = fs::read_to_string(&config).unwrap();
    edited.push_str("# a local edit\n");
    fs::write(&config, &edited).unwrap();

    // Upgrade: the new binary serves the same data; the edited conffile stays.
    dpkg(&["-i", &deb(&p.deb)]);
    assert!(status().contains(&format!("Version: {new_v}")));
    assert_eq!(fs::read_to_string(&config).unwrap(), edited);
    let version = run(Command::new(&bin).arg("--version"));
    assert_eq!(version.trim(), format!("waybill {VERSION}"));
    let new = Served::start(&bin, &config, &data, log("new.log"));
    filled.check(&new);
    new.stop();

    // Remove: the program goes, data and configuration stay.
    dpkg(&["-r", "waybill"]);
    assert!(!bin.exists());
    assert!(!root.join("usr/lib/systemd/system/waybill.service").exists());
    assert!(data.join("admin.token").exists());
    assert_eq!(fs::read_to_string(&config).unwrap(), edited);

    // Purge: data, configuration and the enable state go; the user stays.
    dpkg(&["-P", "waybill"]);
    assert!(!data.exists(), "purge deletes /var/lib/waybill");
    assert!(!root.join("etc/waybill").exists());
    assert!(wants.symlink_metadata().is_err());
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains("waybill:"), "{passwd}");
}
