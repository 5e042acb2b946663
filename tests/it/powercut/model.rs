//! The power-cut filesystem's state: files and directories, each with what a reader sees
//! now and what the last sync made durable, and the cut that keeps only the latter.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, INodeNo, RenameFlags};

const ROOT: u64 = INodeNo::ROOT.0;

/// A change to a file's bytes that no sync has made durable yet.
pub enum Change {
    Write { offset: u64, bytes: Vec<u8> },
    Resize(u64),
}

impl Change {
    fn apply(&self, to: &mut Vec<u8>) {
        match self {
            Change::Write { offset, bytes } => {
                let start = *offset as usize;
                let end = start + bytes.len();
                if to.len() < end {
                    to.resize(end, 0);
                }
                to[start..end].copy_from_slice(bytes);
            }
            Change::Resize(len) => to.resize(*len as usize, 0),
        }
    }
}

#[derive(Default)]
pub struct File {
    pub current: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<Change>,
}

impl File {
    pub fn change(&mut self, change: Change) {
        change.apply(&mut self.current);
        self.unsynced.push(change);
    }

    pub fn sync(&mut self) {
        for change in self.unsynced.drain(..) {
            change.apply(&mut self.durable);
        }
    }
}

pub struct Dir {
    pub current: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
    pub parent: u64,
}

impl Dir {
    pub fn new(parent: u64) -> Dir {
        Dir {
            current: BTreeMap::new(),
            durable: BTreeMap::new(),
            parent,
        }
    }
}

pub enum Body {
    File(File),
    Dir(Dir),
}

pub struct Node {
    pub body: Body,
    pub perm: u16,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

impl Node {
    fn new(body: Body, perm: u16) -> Node {
        let now = SystemTime::now();
        Node {
            body,
            perm,
            atime: now,
            mtime: now,
            ctime: now,
        }
    }

    pub fn attr(&self, ino: u64) -> FileAttr {
        let (kind, size, nlink) = match &self.body {
            Body::File(f) => (FileType::RegularFile, f.current.len() as u64, 1),
            Body::Dir(_) => (FileType::Directory, 0, 2),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.ctime,
            kind,
            perm: self.perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

/// What one cut threw away.
#[derive(Default, Clone, Copy, Debug)]
pub struct Dropped {
    /// Bytes written and never synced.
    pub bytes: u64,
    /// Files that had unsynced writes or resizes.
    pub files: usize,
    /// Directory entries created, removed or renamed and never synced.
    pub entries: usize,
    /// Files and directories that were there before the cut and no durable entry reached
    /// after it.
    pub vanished: usize,
}

impl Dropped {
    pub fn anything(&self) -> bool {
        self.bytes > 0 || self.files > 0 || self.entries > 0 || self.vanished > 0
    }
}

pub struct Model {
    pub nodes: HashMap<u64, Node>,
    next: u64,
}

impl Model {
    pub fn new() -> Model {
        let nodes = HashMap::from([(ROOT, Node::new(Body::Dir(Dir::new(ROOT)), 0o755))]);
        Model {
            nodes,
            next: ROOT + 1,
        }
    }

    pub fn dir(&mut self, ino: u64) -> Result<&mut Dir, Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.body) {
            Some(Body::Dir(d)) => Ok(d),
            Some(Body::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    pub fn file(&mut self, ino: u64) -> Result<&mut File, Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.body) {
            Some(Body::File(f)) => Ok(f),
            Some(Body::Dir(_)) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    pub fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        self.nodes
            .get(&ino)
            .map(|n| n.attr(ino))
            .ok_or(Errno::ENOENT)
    }

    pub fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?
            .current
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    /// Adds `body` as `name` in `parent` (an unsynced change of `parent`).
    pub fn add(&mut self, parent: u64, name: &OsStr, body: Body, perm: u16) -> Result<u64, Errno> {
        let ino = self.next;
        let dir = self.dir(parent)?;
        if dir.current.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        dir.current.insert(name.to_owned(), ino);
        self.next += 1;
        self.nodes.insert(ino, Node::new(body, perm));
        Ok(ino)
    }

    /// Takes `name` out of `parent`. The node itself stays until a cut finds it
    /// unreachable: it may still be open, and a durable entry may still name it.
    pub fn remove(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        match (&self.nodes[&ino].body, want_dir) {
            (Body::Dir(d), true) if !d.current.is_empty() => return Err(Errno::ENOTEMPTY),
            (Body::Dir(_), false) => return Err(Errno::EISDIR),
            (Body::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        self.dir(parent)?.current.remove(name);
        Ok(())
    }

    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        to_parent: u64,
        to_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return Err(Errno::EINVAL);
        }
        if let Some(&there) = self.dir(to_parent)?.current.get(to_name) {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            match (&self.nodes[&ino].body, &self.nodes[&there].body) {
                (Body::Dir(_), Body::Dir(d)) if !d.current.is_empty() => {
                    return Err(Errno::ENOTEMPTY)
                }
                (Body::Dir(_), Body::File(_)) => return Err(Errno::ENOTDIR),
                (Body::File(_), Body::Dir(_)) => return Err(Errno::EISDIR),
                _ => {}
            }
        }
        self.dir(parent)?.current.remove(name);
        self.dir(to_parent)?.current.insert(to_name.to_owned(), ino);
        if let Some(Body::Dir(d)) = self.nodes.get_mut(&ino).map(|n| &mut n.body) {
            d.parent = to_parent;
        }
        Ok(())
    }

    pub fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.body) {
            Some(Body::File(f)) => f.sync(),
            Some(Body::Dir(d)) => d.durable = d.current.clone(),
            None => return Err(Errno::ENOENT),
        }
        Ok(())
    }

    /// Every node the current entries reach from the root; directories learn their
    /// parent on the way.
    fn reachable(&mut self) -> HashSet<u64> {
        let mut reached = HashSet::from([ROOT]);
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            let children: Vec<u64> = match self.nodes.get(&ino).map(|n| &n.body) {
                Some(Body::Dir(d)) => d.current.values().copied().collect(),
                _ => continue,
            };
            for child in children {
                if let Some(Body::Dir(d)) = self.nodes.get_mut(&child).map(|n| &mut n.body) {
                    d.parent = ino;
                }
                if reached.insert(child) {
                    stack.push(child);
                }
            }
        }
        reached
    }

    /// The power cut: every node back to its durable state, then whatever no durable
    /// entry reaches from the root is gone.
    pub fn cut(&mut self) -> Dropped {
        let mut dropped = Dropped::default();
        let before = self.reachable();
        for node in self.nodes.values_mut() {
            match &mut node.body {
                Body::File(f) => {
                    if !f.unsynced.is_empty() {
                        dropped.files += 1;
                        for change in f.unsynced.drain(..) {
                            if let Change::Write { bytes, .. } = change {
                                dropped.bytes += bytes.len() as u64;
                            }
                        }
                    }
                    f.current = f.durable.clone();
                }
                Body::Dir(d) => {
                    let names: HashSet<&OsString> =
                        d.current.keys().chain(d.durable.keys()).collect();
                    dropped.entries += names
                        .into_iter()
                        .filter(|n| d.current.get(*n) != d.durable.get(*n))
                        .count();
                    d.current = d.durable.clone();
                }
            }
        }
        let after = self.reachable();
        dropped.vanished = before.difference(&after).count();
        self.nodes.retain(|ino, _| after.contains(ino));
        dropped
    }
}
