//! The power-cut suite: the crash suite's rounds with the data directory on a filesystem
//! that keeps every write in memory until it is synced (see `fs.rs`). At each kill the
//! machine loses its power too: whatever the server wrote and did not fsync (data) or did
//! not fsync the directory of (creations, removals, renames) is gone before the restart.
//! A SIGKILL alone leaves the page cache to the kernel and so cannot tell a synced write
//! from one that is not; this suite can, and every 2xx must still hold.

mod fs;
mod model;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use fs::Disk;
use model::Dropped;

/// Cuts, each followed by a restart: fewer than the crash suite's kills, as every
/// request here also passes through the filesystem in the test process.
const ROUNDS: usize = 5;

/// The filesystem mounted on a fresh temporary directory, or `None` (said why) where
/// this machine has no FUSE device.
fn mounted() -> Option<(Disk, tempfile::TempDir)> {
    if !Path::new("/dev/fuse").exists() {
        println!("power-cut suite skipped: there is no /dev/fuse to mount the filesystem with");
        return None;
    }
    let mountpoint = tempfile::tempdir().unwrap();
    let disk = Disk::mount(mountpoint.path()).unwrap_or_else(|e| {
        panic!(
            "cannot mount the power-cut filesystem at {} (as root it mounts with mount(2), \
             otherwise through fusermount3 from Debian's fuse3): {e}",
            mountpoint.path().display()
        )
    });
    Some((disk, mountpoint))
}

/// The filesystem itself: a cut keeps exactly what was synced, file data by the file's
/// fsync, names by their directory's.
#[test]
fn a_cut_keeps_only_what_was_synced() {
    let Some((mut disk, dir)) = mounted() else {
        return;
    };
    let root = dir.path();
    let sync_dir = |d: &Path| File::open(d).unwrap().sync_all().unwrap();
    let read = |p: &Path| std::fs::read(p).ok();

    // A synced file whose directory was not synced is gone, with its directory.
    std::fs::create_dir(root.join("sub")).unwrap();
    let mut f = File::create(root.join("sub/a")).unwrap();
    f.write_all(b"one").unwrap();
    f.sync_all().unwrap();
    sync_dir(&root.join("sub"));
    drop(f);
    let dropped = disk.cut().unwrap();
    assert!(!root.join("sub").exists(), "{dropped:?}");
    assert_eq!(dropped.vanished, 2, "{dropped:?}");

    // Synced names and data survive; later writes, a resize and a rename do not.
    std::fs::create_dir(root.join("sub")).unwrap();
    let mut f = File::create(root.join("sub/a")).unwrap();
    f.write_all(b"synced").unwrap();
    f.sync_data().unwrap();
    sync_dir(&root.join("sub"));
    sync_dir(root);
    f.write_all(b" and not").unwrap();
    f.set_len(3).unwrap();
    std::fs::rename(root.join("sub/a"), root.join("sub/b")).unwrap();
    let mut g = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(root.join("sub/c"))
        .unwrap();
    g.write_all(b"unsynced").unwrap();
    drop((f, g));
    let dropped = disk.cut().unwrap();
    assert_eq!(read(&root.join("sub/a")).as_deref(), Some(&b"synced"[..]));
    assert!(read(&root.join("sub/b")).is_none() && read(&root.join("sub/c")).is_none());
    assert_eq!(dropped.bytes, 16, "{dropped:?}");
    assert_eq!((dropped.files, dropped.entries), (2, 3), "{dropped:?}");

    // A removal is undone unless the directory is synced after it.
    std::fs::remove_file(root.join("sub/a")).unwrap();
    disk.cut().unwrap();
    assert_eq!(read(&root.join("sub/a")).as_deref(), Some(&b"synced"[..]));
    std::fs::remove_file(root.join("sub/a")).unwrap();
    sync_dir(&root.join("sub"));
    disk.cut().unwrap();
    assert!(read(&root.join("sub/a")).is_none());

    // sled's lock on its `db`: the kernel keeps flock locks itself on this filesystem,
    // and they stay exclusive.
    let first = File::create(root.join("lock")).unwrap();
    let second = File::open(root.join("lock")).unwrap();
    // SAFETY: flock on descriptors the files own for the whole call.
    let lock = |f: &File| unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(lock(&first), 0, "{}", std::io::Error::last_os_error());
    assert_ne!(lock(&second), 0, "a second exclusive flock was granted");
}

#[test]
fn power_cuts_lose_nothing() {
    let Some((mut disk, mountpoint)) = mounted() else {
        return;
    };
    let mut cuts: Vec<Dropped> = Vec::new();
    crate::crash::rounds_lose_nothing("power-cut suite", ROUNDS, mountpoint.path(), |round| {
        let dropped = disk
            .cut()
            .unwrap_or_else(|e| panic!("power cut {round} failed: {e}"));
        println!(
            "cut {round}: dropped {} unsynced bytes in {} files, {} unsynced directory \
             entries; {} files and directories vanished",
            dropped.bytes, dropped.files, dropped.entries, dropped.vanished
        );
        cuts.push(dropped);
    });
    assert!(
        cuts.iter().any(Dropped::anything),
        "no cut dropped anything, so none tested what a power cut does: {cuts:?}"
    );
}
