//! Walks a source directory into an in-memory tree of nodes, ready to be written as a layer.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{LayerError, Result};
use crate::format::{FLAG_OPAQUE, FLAG_WHITEOUT, S_IFCHR, S_IFDIR, S_IFMT, S_IFREG};

/// How deletions are marked in the source tree, so they become first-class whiteouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutFormat {
    /// No markers: every entry is taken literally (a root filesystem).
    #[default]
    None,
    /// OCI image layers: `.wh.NAME` hides NAME, `.wh..wh..opq` makes its directory opaque.
    Oci,
    /// Kernel overlayfs upper dirs: a 0/0 character device hides its name, an
    /// `trusted.overlay.opaque` or `user.overlay.opaque` xattr of `y` makes a directory opaque.
    Overlay,
}

const OCI_WHITEOUT_PREFIX: &[u8] = b".wh.";
const OCI_OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OVERLAY_OPAQUE_XATTRS: [&[u8]; 2] = [b"trusted.overlay.opaque", b"user.overlay.opaque"];
/// Bookkeeping of overlay implementations in an upper directory (origin, impure, uuid...):
/// not the user's data, and meaningless in a layer.
const OVERLAY_PRIVATE_PREFIXES: [&[u8]; 3] = [
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
];

/// Whether xattr `name` is an overlay implementation's bookkeeping rather than user data.
pub fn is_overlay_private_xattr(name: &[u8]) -> bool {
    OVERLAY_PRIVATE_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Where a regular file's bytes are on the host, as runs of data (holes omitted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// One run covering the whole file.
    Dense,
    /// Data runs `(offset, len)`; everything else is a hole.
    Sparse(Vec<(u64, u64)>),
}

/// One file-system object found in the source tree.
#[derive(Debug, Clone)]
pub struct Node {
    /// Host path, for reading content and for error messages.
    pub path: PathBuf,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub rdev: u64,
    pub size: u64,
    pub flags: u32,
    pub nlink: u32,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub symlink_target: Vec<u8>,
    pub content: Content,
    /// Directory entries `(name, node index)`, sorted by name bytes.
    pub children: Vec<(OsString, u32)>,
}

/// A scanned source tree; node 0 is the root directory.
#[derive(Debug, Default)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Bytes of regular-file content that will be read (holes excluded).
    pub fn content_bytes(&self) -> u64 {
        self.nodes
            .iter()
            .filter(|n| n.mode & S_IFMT == S_IFREG)
            .map(|n| match &n.content {
                Content::Dense => n.size,
                Content::Sparse(runs) => runs.iter().map(|r| r.1).sum(),
            })
            .sum()
    }
}

/// Scans `root` (which must be a directory) without following symlinks. Files whose
/// host `(device, inode)` is in `exclude` are left out (e.g. the image being written).
pub fn scan(root: &Path, whiteouts: WhiteoutFormat, exclude: &[(u64, u64)]) -> Result<Tree> {
    let meta = fs::symlink_metadata(root).map_err(|e| LayerError::io(root, e))?;
    if !meta.is_dir() {
        return Err(LayerError::io(
            root,
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    let mut scanner = Scanner {
        tree: Tree::default(),
        hardlinks: HashMap::new(),
        whiteouts,
        exclude,
    };
    let root_node = scanner.node_for(root, &meta)?;
    scanner.tree.nodes.push(root_node);
    scanner.scan_dir(root, 0)?;
    Ok(scanner.tree)
}

struct Scanner<'a> {
    tree: Tree,
    exclude: &'a [(u64, u64)],
    /// Host (dev, ino) of multiply-linked files to their node, so hardlinks stay hardlinks.
    hardlinks: HashMap<(u64, u64), u32>,
    whiteouts: WhiteoutFormat,
}

impl Scanner<'_> {
    fn scan_dir(&mut self, dir: &Path, dir_index: u32) -> Result<()> {
        let mut names: Vec<OsString> = fs::read_dir(dir)
            .map_err(|e| LayerError::io(dir, e))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| LayerError::io(dir, e))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));

        let mut children: Vec<(OsString, u32)> = Vec::with_capacity(names.len());
        let mut subdirs = 0u32;
        for name in names {
            let path = dir.join(&name);
            if self.whiteouts == WhiteoutFormat::Oci {
                let bytes = name.as_bytes();
                if bytes == OCI_OPAQUE_MARKER {
                    self.tree.nodes[dir_index as usize].flags |= FLAG_OPAQUE;
                    continue;
                }
                if let Some(hidden) = bytes.strip_prefix(OCI_WHITEOUT_PREFIX) {
                    if hidden.is_empty() {
                        return Err(LayerError::Unsupported(format!(
                            "{}: a whiteout marker must name what it hides",
                            path.display()
                        )));
                    }
                    let index = self.push_whiteout(&path)?;
                    children.push((std::ffi::OsStr::from_bytes(hidden).to_owned(), index));
                    continue;
                }
            }
            let meta = fs::symlink_metadata(&path).map_err(|e| LayerError::io(&path, e))?;
            let key = (meta.dev(), meta.ino());
            if self.exclude.contains(&key) {
                continue;
            }
            if !meta.is_dir()
                && meta.nlink() > 1
                && let Some(&existing) = self.hardlinks.get(&key)
            {
                self.tree.nodes[existing as usize].nlink += 1;
                children.push((name, existing));
                continue;
            }
            let node = self.node_for(&path, &meta)?;
            let is_dir = node.mode & S_IFMT == S_IFDIR;
            let index = self.push(node)?;
            if !is_dir && meta.nlink() > 1 {
                self.hardlinks.insert(key, index);
            }
            if is_dir {
                subdirs += 1;
                self.scan_dir(&path, index)?;
            }
            children.push((name, index));
        }
        // Stripping `.wh.` can reorder names and, in an inconsistent source, collide with a
        // real entry: sort again and let the real entry win.
        let nodes = &self.tree.nodes;
        let is_whiteout = |index: u32| nodes[index as usize].flags & FLAG_WHITEOUT != 0;
        children.sort_by(|a, b| {
            (a.0.as_bytes(), is_whiteout(a.1)).cmp(&(b.0.as_bytes(), is_whiteout(b.1)))
        });
        // A whiteout next to a real directory of its name (OCI: delete, then recreate)
        // means the directory replaces the lower one: it becomes opaque.
        let replaced: Vec<u32> = children
            .windows(2)
            .filter(|w| w[0].0 == w[1].0 && is_whiteout(w[1].1))
            .map(|w| w[0].1)
            .collect();
        children.dedup_by(|later, earlier| later.0 == earlier.0);
        for index in replaced {
            let node = &mut self.tree.nodes[index as usize];
            if node.mode & S_IFMT == S_IFDIR {
                node.flags |= FLAG_OPAQUE;
            }
        }
        let node = &mut self.tree.nodes[dir_index as usize];
        node.nlink = 2 + subdirs;
        node.children = children;
        Ok(())
    }

    fn push(&mut self, node: Node) -> Result<u32> {
        let index = u32::try_from(self.tree.nodes.len())
            .map_err(|_| LayerError::Unsupported("more than 2^32 entries".into()))?;
        self.tree.nodes.push(node);
        Ok(index)
    }

    fn push_whiteout(&mut self, path: &Path) -> Result<u32> {
        self.push(Node {
            path: path.to_owned(),
            mode: S_IFCHR,
            uid: 0,
            gid: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            rdev: 0,
            size: 0,
            flags: FLAG_WHITEOUT,
            nlink: 1,
            xattrs: Vec::new(),
            symlink_target: Vec::new(),
            content: Content::Dense,
            children: Vec::new(),
        })
    }

    fn node_for(&self, path: &Path, meta: &fs::Metadata) -> Result<Node> {
        let ft = meta.file_type();
        let mut xattrs = read_xattrs(path)?;
        let mut flags = 0;
        if self.whiteouts == WhiteoutFormat::Overlay {
            if ft.is_char_device() && meta.rdev() == 0 {
                flags |= FLAG_WHITEOUT;
            }
            if ft.is_dir() {
                let before = xattrs.len();
                xattrs.retain(|(name, value)| {
                    !(OVERLAY_OPAQUE_XATTRS.contains(&name.as_slice()) && value == b"y")
                });
                if xattrs.len() != before {
                    flags |= FLAG_OPAQUE;
                }
            }
            xattrs.retain(|(name, _)| !is_overlay_private_xattr(name));
        }
        let symlink_target = if ft.is_symlink() {
            fs::read_link(path)
                .map_err(|e| LayerError::io(path, e))?
                .into_os_string()
                .into_vec()
        } else {
            Vec::new()
        };
        let content = if ft.is_file() && meta.blocks() * 512 < meta.size() {
            data_runs(path, meta.size())?
        } else {
            Content::Dense
        };
        Ok(Node {
            path: path.to_owned(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec() as u32,
            rdev: meta.rdev(),
            size: if ft.is_file() { meta.size() } else { 0 },
            flags,
            nlink: 1,
            xattrs,
            symlink_target,
            content,
            children: Vec::new(),
        })
    }
}

use std::os::unix::ffi::OsStringExt;

fn read_xattrs(path: &Path) -> Result<crate::format::Xattrs> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        // File systems without xattr support simply have none.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(LayerError::io(path, e)),
    };
    let mut out = Vec::new();
    for name in names {
        match xattr::get(path, &name) {
            Ok(Some(value)) => out.push((name.into_vec(), value)),
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(LayerError::io(path, e)),
        }
    }
    out.sort();
    Ok(out)
}

/// Finds the data runs of a file with holes, with `SEEK_DATA`/`SEEK_HOLE`.
fn data_runs(path: &Path, size: u64) -> Result<Content> {
    use std::os::fd::AsRawFd;
    let file = fs::File::open(path).map_err(|e| LayerError::io(path, e))?;
    let fd = file.as_raw_fd();
    let mut runs = Vec::new();
    let mut pos: i64 = 0;
    let end = size as i64;
    while pos < end {
        // SAFETY: lseek on a file descriptor we own; no memory is touched.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break; // Only a hole remains.
            }
            if err.raw_os_error() == Some(libc::EINVAL) {
                return Ok(Content::Dense); // File system without hole reporting.
            }
            return Err(LayerError::io(path, err));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(LayerError::io(path, std::io::Error::last_os_error()));
        }
        let hole = hole.min(end);
        if hole > data {
            runs.push((data as u64, (hole - data) as u64));
        }
        pos = hole;
    }
    if runs.len() == 1 && runs[0] == (0, size) {
        return Ok(Content::Dense);
    }
    Ok(Content::Sparse(runs))
}
