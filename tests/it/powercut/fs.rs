//! A filesystem in memory that forgets, on a power cut, everything not yet synced.
//!
//! Each file keeps two copies of its bytes: what reads see now, and what a sync made
//! durable, with the changes (writes and resizes) made since that sync. `fsync` and
//! `fdatasync` apply those changes to the durable copy, so a sync costs what was written
//! since the last one. Each directory keeps its entries twice the same way: creating,
//! removing and renaming change the current entries, and only an `fsync` of that very
//! directory makes them durable. A cut puts every file and directory back to its durable
//! state; a file or directory no durable entry reaches is gone. That state and the cut
//! are `model.rs`; this file serves them over FUSE.
//!
//! The model outlives a mount, so a cut unmounts (dropping every cache the kernel kept),
//! forgets, and mounts the same model again. Modes and times are kept as they are: the
//! store relies on neither. Locks are left to the kernel, which keeps `flock` locks
//! itself for a filesystem that does not take them.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, BsdFileFlags, Config, Errno, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};

use super::model::{Body, Change, Dir, Dropped, File, Model};

/// Attributes and entries are never cached by the kernel: every lookup asks the model.
const TTL: Duration = Duration::ZERO;

/// The FUSE side: every request answered from the shared model.
struct PowerCutFs(Arc<Mutex<Model>>);

impl PowerCutFs {
    fn model(&self) -> MutexGuard<'_, Model> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn perm(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

fn now(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for PowerCutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut m = self.model();
        match m.lookup(parent.0, name).and_then(|ino| m.attr(ino)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.model().attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut m = self.model();
        if let Some(size) = size {
            match m.file(ino.0) {
                Ok(f) => f.change(Change::Resize(size)),
                Err(e) => return reply.error(e),
            }
        }
        let Some(node) = m.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(mode) = mode {
            node.perm = perm(mode, 0);
        }
        if let Some(t) = atime {
            node.atime = now(t);
        }
        if let Some(t) = mtime {
            node.mtime = now(t);
        }
        node.ctime = SystemTime::now();
        reply.attr(&TTL, &node.attr(ino.0));
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let mut m = self.model();
        let body = Body::File(File::default());
        match m
            .add(parent.0, name, body, perm(mode, umask))
            .and_then(|ino| m.attr(ino))
        {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut m = self.model();
        let body = Body::Dir(Dir::new(parent.0));
        match m
            .add(parent.0, name, body, perm(mode, umask))
            .and_then(|ino| m.attr(ino))
        {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.model().remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.model().remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self
            .model()
            .rename(parent.0, name, newparent.0, newname, flags)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.model().attr(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut m = self.model();
        match m.file(ino.0) {
            Ok(f) => {
                let start = (offset as usize).min(f.current.len());
                let end = (start + size as usize).min(f.current.len());
                reply.data(&f.current[start..end]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut m = self.model();
        match m.file(ino.0) {
            Ok(f) => {
                f.change(Change::Write {
                    offset,
                    bytes: data.to_vec(),
                });
                if let Some(node) = m.nodes.get_mut(&ino.0) {
                    node.mtime = SystemTime::now();
                }
                reply.written(data.len() as u32);
            }
            Err(e) => reply.error(e),
        }
    }

    /// Closing a file makes nothing durable.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.model().sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.model().dir(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let m = self.model();
        let Some(Body::Dir(dir)) = m.nodes.get(&ino.0).map(|n| &n.body) else {
            return reply.error(Errno::ENOTDIR);
        };
        let dots = [(ino.0, OsStr::new(".")), (dir.parent, OsStr::new(".."))];
        let entries = dots
            .into_iter()
            .chain(dir.current.iter().map(|(name, i)| (*i, name.as_os_str())));
        for (n, (child, name)) in entries.enumerate().skip(offset as usize) {
            let kind = match m.nodes.get(&child).map(|n| &n.body) {
                Some(Body::File(_)) => FileType::RegularFile,
                _ => FileType::Directory,
            };
            if reply.add(INodeNo(child), n as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.model().sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = 1 << 24;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut m = self.model();
        let ino = match m.lookup(parent.0, name) {
            Ok(_) if flags & libc::O_EXCL != 0 => return reply.error(Errno::EEXIST),
            Ok(ino) => ino,
            Err(_) => {
                let body = Body::File(File::default());
                match m.add(parent.0, name, body, perm(mode, umask)) {
                    Ok(ino) => ino,
                    Err(e) => return reply.error(e),
                }
            }
        };
        match m.attr(ino) {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    /// Only plain allocation, which may grow the file like a resize.
    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let mut m = self.model();
        match m.file(ino.0) {
            Ok(f) => {
                if (f.current.len() as u64) < offset + length {
                    f.change(Change::Resize(offset + length));
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }
}

/// The model mounted at a directory. Dropping it unmounts.
pub struct Disk {
    model: Arc<Mutex<Model>>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl Disk {
    /// An empty filesystem mounted at `mountpoint`.
    pub fn mount(mountpoint: &Path) -> io::Result<Disk> {
        let mut disk = Disk {
            model: Arc::new(Mutex::new(Model::new())),
            mountpoint: mountpoint.to_owned(),
            session: None,
        };
        disk.attach()?;
        Ok(disk)
    }

    fn attach(&mut self) -> io::Result<()> {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("waybill-powercut".into()),
            MountOption::NoAtime,
        ];
        let fs = PowerCutFs(Arc::clone(&self.model));
        self.session = Some(fuser::spawn_mount(fs, &self.mountpoint, &config)?);
        Ok(())
    }

    /// The power cut, once nothing uses the filesystem any more: unmounts, forgets every
    /// unsynced change and mounts what is left.
    pub fn cut(&mut self) -> io::Result<Dropped> {
        if let Some(session) = self.session.take() {
            session.umount_and_join()?;
        }
        let dropped = self
            .model
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .cut();
        self.attach()?;
        Ok(dropped)
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if session.umount_and_join().is_ok() {
                return;
            }
        }
        // Whatever went wrong, no mount is left behind: detach it lazily.
        if let Ok(path) = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes()) {
            // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
