//! Exact snapshots of a directory tree, and a readable diff between two.
//!
//! A snapshot walks the tree with `lstat` (symlinks are never followed) and records, for
//! every path (raw bytes, relative to the root; the root itself is the empty path): file
//! type, full mode (setuid, setgid and sticky included), owner, group, mtime to the
//! nanosecond, xattrs (sorted; `security.*` ignored, since the host adds those), and per
//! type: size, link count and a content hash for regular files, the target for symlinks,
//! `rdev` for devices. Hardlinks are compared as a partition of paths: which names share
//! an inode. Directory sizes and link counts, atime and ctime are never compared.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::Path;

/// Type of a file-system object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
}

/// Everything compared about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Full `st_mode`, type bits included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// `(seconds, nanoseconds)`.
    pub mtime: (i64, i64),
    /// `st_size`; `None` for directories.
    pub size: Option<u64>,
    /// `st_nlink`; `None` for directories.
    pub nlink: Option<u64>,
    /// `st_rdev` of devices; 0 for everything else.
    pub rdev: u64,
    /// Target of a symlink.
    pub target: Option<Vec<u8>>,
    /// Sorted `(name, value)`, without `security.*`.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Hash of a regular file's content (see [`content_hash`]).
    pub content: Option<blake3::Hash>,
    /// `(st_dev, st_ino)` of non-directories, to find hardlinks. Not compared itself.
    pub inode: Option<(u64, u64)>,
}

/// A snapshot: every path under a root, sorted by bytes.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub nodes: BTreeMap<Vec<u8>, Node>,
}

/// A path for messages: `.` for the root, other bytes escaped where not printable.
pub fn show(path: &[u8]) -> String {
    if path.is_empty() {
        ".".into()
    } else {
        path.escape_ascii().to_string()
    }
}

impl Tree {
    pub fn get(&self, path: &[u8]) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Removes `path` and everything under it.
    pub fn remove(&mut self, path: &[u8]) {
        let mut below = path.to_vec();
        below.push(b'/');
        self.nodes
            .retain(|p, _| p.as_slice() != path && !p.starts_with(&below));
    }

    /// Drops the nanoseconds of every mtime (for inputs that only keep seconds).
    pub fn truncate_mtimes_to_seconds(&mut self) {
        for node in self.nodes.values_mut() {
            node.mtime.1 = 0;
        }
    }

    /// The hardlink groups: sets of two or more paths naming one inode.
    pub fn link_groups(&self) -> BTreeSet<Vec<Vec<u8>>> {
        let mut by_inode: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
        for (path, node) in &self.nodes {
            if let Some(key) = node.inode {
                by_inode.entry(key).or_default().push(path.clone());
            }
        }
        by_inode
            .into_values()
            .filter(|g| g.len() > 1)
            .map(|mut g| {
                g.sort();
                g
            })
            .collect()
    }

    /// Count of regular files.
    pub fn file_count(&self) -> usize {
        self.nodes.values().filter(|n| n.kind == Kind::File).count()
    }
}

fn die<T>(result: std::io::Result<T>, what: &str, path: &Path) -> T {
    result.unwrap_or_else(|e| panic!("snapshot: {what} {}: {e}", path.display()))
}

/// Takes a snapshot of the tree at `root` (which must be a directory).
pub fn snapshot(root: &Path) -> Tree {
    let mut tree = Tree::default();
    walk(root, Vec::new(), &mut tree);
    tree
}

fn walk(path: &Path, rel: Vec<u8>, tree: &mut Tree) {
    let node = node(path);
    let is_dir = node.kind == Kind::Dir;
    tree.nodes.insert(rel.clone(), node);
    if !is_dir {
        return;
    }
    for entry in die(fs::read_dir(path), "read_dir", path) {
        let entry = die(entry, "read_dir", path);
        let name = entry.file_name();
        let mut child = rel.clone();
        if !child.is_empty() {
            child.push(b'/');
        }
        child.extend_from_slice(name.as_bytes());
        walk(&path.join(&name), child, tree);
    }
}

fn node(path: &Path) -> Node {
    let meta = die(fs::symlink_metadata(path), "lstat", path);
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() {
        Kind::CharDevice
    } else if ft.is_block_device() {
        Kind::BlockDevice
    } else {
        Kind::Socket
    };
    let dir = kind == Kind::Dir;
    let device = matches!(kind, Kind::CharDevice | Kind::BlockDevice);
    Node {
        kind,
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        size: (!dir).then_some(meta.size()),
        nlink: (!dir).then_some(meta.nlink()),
        rdev: if device { meta.rdev() } else { 0 },
        target: (kind == Kind::Symlink).then(|| {
            die(fs::read_link(path), "readlink", path)
                .into_os_string()
                .into_encoded_bytes()
        }),
        xattrs: xattrs(path),
        content: (kind == Kind::File).then(|| content_hash(path, meta.size())),
        inode: (!dir).then_some((meta.dev(), meta.ino())),
    }
}

/// Sorted xattrs of `path` itself (not following symlinks), without `security.*`.
pub fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Vec::new(),
        Err(e) => panic!("snapshot: listxattr {}: {e}", path.display()),
    };
    let mut out = Vec::new();
    for name in names {
        if name.as_bytes().starts_with(b"security.") {
            continue;
        }
        match xattr::get(path, &name) {
            Ok(Some(value)) => out.push((name.as_bytes().to_vec(), value)),
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => panic!(
                "snapshot: getxattr {} {}: {e}",
                path.display(),
                name.to_string_lossy()
            ),
        }
    }
    out.sort();
    out
}

/// Granularity of hole-insensitive hashing.
const CHUNK: u64 = 64 * 1024;
/// Bytes read at once.
const WINDOW: u64 = 4 << 20;

/// `statfs` type of FUSE file systems.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
/// Files at least this big on FUSE are read with `O_DIRECT`: large requests straight to
/// the server instead of page-cache readahead, several times faster for gigabytes.
const DIRECT_MIN: u64 = 64 << 20;

fn is_fuse(file: &File) -> bool {
    // SAFETY: fstatfs fills a zeroed struct for a descriptor we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::fstatfs(file.as_raw_fd(), &mut st) == 0 && st.f_type as i64 == FUSE_SUPER_MAGIC
    }
}

/// Whether a buffer holds only zeros (written to vectorise: no early exit).
fn all_zero(buf: &[u8]) -> bool {
    buf.iter().fold(0u8, |acc, &b| acc | b) == 0
}

/// Hash of a file's logical content that does not depend on where its holes are: the
/// size, then every 64 KiB chunk that is not all zeros, with its offset. Only the data
/// regions reported by `SEEK_DATA`/`SEEK_HOLE` are read (file systems without hole
/// reporting are read in full), so a 5 GiB file that is mostly holes hashes quickly.
pub fn content_hash(path: &Path, size: u64) -> blake3::Hash {
    let mut file = die(File::open(path), "open", path);
    if size >= DIRECT_MIN && is_fuse(&file) {
        use std::os::unix::fs::OpenOptionsExt;
        file = die(
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(path),
            "open (O_DIRECT)",
            path,
        );
    }
    let fd = file.as_raw_fd();
    let mut hasher = blake3::Hasher::new();
    hasher.update(&size.to_le_bytes());
    // Page-aligned, as O_DIRECT may require.
    let mut storage = vec![0u8; WINDOW as usize + 4096];
    let skip = storage.as_ptr().align_offset(4096);
    let buf = &mut storage[skip..skip + WINDOW as usize];
    let mut pos = 0u64;
    while pos < size {
        // SAFETY: lseek on a descriptor we own.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        let (data, hole) = if data < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENXIO) => break, // only a hole remains
                Some(libc::EINVAL) => (pos, size),
                _ => panic!("snapshot: SEEK_DATA {}: {err}", path.display()),
            }
        } else {
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            if hole < 0 {
                let err = std::io::Error::last_os_error();
                panic!("snapshot: SEEK_HOLE {}: {err}", path.display());
            }
            (data as u64, (hole as u64).min(size))
        };
        // Whole chunks from the one holding `data` to the one holding `hole - 1`.
        let mut at = data / CHUNK * CHUNK;
        let end = hole.next_multiple_of(CHUNK).min(size);
        while at < end {
            let len = WINDOW.min(end - at) as usize;
            die(file.read_exact_at(&mut buf[..len], at), "read", path);
            for (i, chunk) in buf[..len].chunks(CHUNK as usize).enumerate() {
                if !all_zero(chunk) {
                    hasher.update(&(at + i as u64 * CHUNK).to_le_bytes());
                    hasher.update(chunk);
                }
            }
            at += len as u64;
        }
        pos = at.max(hole);
    }
    hasher.finalize()
}

struct Octal(u32);
impl fmt::Display for Octal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:o}", self.0)
    }
}

fn show_xattrs(x: &[(Vec<u8>, Vec<u8>)]) -> String {
    let parts: Vec<String> = x
        .iter()
        .map(|(n, v)| format!("{}=\"{}\"", show(n), v.escape_ascii()))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Every difference between `expected` and `actual`, one readable line each; empty when
/// the trees are the same.
pub fn diff(expected: &Tree, actual: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (path, e) in &expected.nodes {
        let p = show(path);
        let Some(a) = actual.nodes.get(path) else {
            out.push(format!("{p}: missing ({:?})", e.kind));
            continue;
        };
        if e.kind != a.kind {
            out.push(format!("{p}: type {:?}, got {:?}", e.kind, a.kind));
            continue;
        }
        let mut field = |name: &str, want: String, got: String| {
            if want != got {
                out.push(format!("{p}: {name} {want}, got {got}"));
            }
        };
        field("mode", Octal(e.mode).to_string(), Octal(a.mode).to_string());
        field("uid", e.uid.to_string(), a.uid.to_string());
        field("gid", e.gid.to_string(), a.gid.to_string());
        field(
            "mtime",
            format!("{}.{:09}", e.mtime.0, e.mtime.1),
            format!("{}.{:09}", a.mtime.0, a.mtime.1),
        );
        field("size", format!("{:?}", e.size), format!("{:?}", a.size));
        field("nlink", format!("{:?}", e.nlink), format!("{:?}", a.nlink));
        field("rdev", format!("{:#x}", e.rdev), format!("{:#x}", a.rdev));
        field(
            "symlink target",
            e.target.as_deref().map(show).unwrap_or_default(),
            a.target.as_deref().map(show).unwrap_or_default(),
        );
        field("xattrs", show_xattrs(&e.xattrs), show_xattrs(&a.xattrs));
        if e.content != a.content {
            out.push(format!("{p}: content differs"));
        }
    }
    for (path, a) in &actual.nodes {
        if !expected.nodes.contains_key(path) {
            out.push(format!("{}: unexpected ({:?})", show(path), a.kind));
        }
    }
    let show_group = |g: &Vec<Vec<u8>>| {
        let names: Vec<String> = g.iter().map(|p| show(p)).collect();
        format!("{{{}}}", names.join(", "))
    };
    let (want, got) = (expected.link_groups(), actual.link_groups());
    for g in want.difference(&got) {
        out.push(format!("hardlink group {} not reproduced", show_group(g)));
    }
    for g in got.difference(&want) {
        out.push(format!("unexpected hardlink group {}", show_group(g)));
    }
    out
}

/// Panics with the differences (the first 100) unless the trees are the same.
#[track_caller]
pub fn assert_same_tree(expected: &Tree, actual: &Tree, what: &str) {
    let d = diff(expected, actual);
    if !d.is_empty() {
        let shown: Vec<&str> = d.iter().take(100).map(String::as_str).collect();
        panic!(
            "{what}: {} difference(s) (expected vs got):\n  {}{}",
            d.len(),
            shown.join("\n  "),
            if d.len() > 100 { "\n  ..." } else { "" }
        );
    }
}

/// Convenience for building paths from raw bytes.
pub fn bytes_path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}
