//! Writes a stack (merged) or a single layer (as stored) back out as a directory tree,
//! keeping types, modes, owners, nanosecond mtimes, xattrs, hardlinks and holes.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{LayerError, Result};
use crate::format::{S_IFBLK, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG};
use crate::stack::{Entry, NodeId, ROOT, Stack};
use crate::writer::{NoProgress, Progress};

/// What was extracted, and what could not be reproduced exactly (e.g. device nodes or
/// `trusted.*` xattrs when not running as root).
#[derive(Debug, Default)]
pub struct ExtractReport {
    pub entries: u64,
    pub bytes: u64,
    pub warnings: Vec<String>,
}

/// How whiteouts in a single stored layer are written out.
const OCI_WHITEOUT_PREFIX: &[u8] = b".wh.";
const OCI_OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Extracts the merged view of `stack` into `dest` (created; must not exist or be empty).
/// With `as_stored`, whiteouts and opaque markers are written as OCI `.wh.` files, so a
/// single layer round-trips through `fim build --whiteouts oci`.
pub fn extract(stack: &Stack, dest: &Path, as_stored: bool) -> Result<ExtractReport> {
    extract_reporting(stack, dest, as_stored, &NoProgress)
}

/// [`extract`], telling `progress` the bytes of file content written as they are.
pub fn extract_reporting(
    stack: &Stack,
    dest: &Path,
    as_stored: bool,
    progress: &dyn Progress,
) -> Result<ExtractReport> {
    match fs::read_dir(dest) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(LayerError::io(
                    dest,
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "destination is not empty",
                    ),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dest).map_err(|e| LayerError::io(dest, e))?;
        }
        Err(e) => return Err(LayerError::io(dest, e)),
    }
    let mut x = Extractor {
        stack,
        as_stored,
        links: HashMap::new(),
        dirs_seen: HashSet::new(),
        report: ExtractReport::default(),
        is_root: unsafe_geteuid() == 0,
        progress,
    };
    let root = stack.entry(ROOT)?;
    x.dir_contents(ROOT, dest)?;
    x.finish_attrs(dest, &root)?;
    Ok(x.report)
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

struct Extractor<'a> {
    stack: &'a Stack,
    as_stored: bool,
    /// First path of each multiply-linked file, so later names become hardlinks.
    links: HashMap<NodeId, PathBuf>,
    dirs_seen: HashSet<NodeId>,
    report: ExtractReport,
    is_root: bool,
    progress: &'a dyn Progress,
}

impl Extractor<'_> {
    fn dir_contents(&mut self, dir: NodeId, path: &Path) -> Result<()> {
        let dir_entry = self.stack.entry(dir)?;
        if self.as_stored && dir_entry.inode.is_opaque() {
            let marker = path.join(OsStr::from_bytes(OCI_OPAQUE_MARKER));
            File::create(&marker).map_err(|e| LayerError::io(&marker, e))?;
        }
        for (name, entry) in self.stack.read_dir_with(dir, self.as_stored)? {
            let child = path.join(OsStr::from_bytes(&name));
            if entry.inode.is_whiteout() {
                let mut marked = OCI_WHITEOUT_PREFIX.to_vec();
                marked.extend_from_slice(&name);
                let marker = path.join(OsStr::from_bytes(&marked));
                File::create(&marker).map_err(|e| LayerError::io(&marker, e))?;
                continue;
            }
            self.entry(&entry, &child)?;
        }
        Ok(())
    }

    fn entry(&mut self, entry: &Entry, path: &Path) -> Result<()> {
        self.report.entries += 1;
        let inode = &entry.inode;
        let io = |e| LayerError::io(path, e);
        if inode.file_type() != S_IFDIR && inode.nlink > 1 {
            if let Some(first) = self.links.get(&entry.id) {
                return fs::hard_link(first, path).map_err(io);
            }
            self.links.insert(entry.id, path.to_owned());
        }
        match inode.file_type() {
            S_IFDIR => {
                // A damaged layer could name one directory twice (even inside itself).
                if !self.dirs_seen.insert(entry.id) {
                    return Err(LayerError::corrupt(format!(
                        "{}: directory appears twice in the tree",
                        path.display()
                    )));
                }
                fs::create_dir(path).map_err(io)?;
                self.dir_contents(entry.id, path)?;
            }
            S_IFREG => self.file(entry, path)?,
            S_IFLNK => {
                let target = self.stack.read_link(entry)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), path).map_err(io)?;
            }
            _ => {
                let c = cpath(path)?;
                let rdev = match inode.file_type() {
                    S_IFCHR | S_IFBLK => inode.a as libc::dev_t,
                    _ => 0,
                };
                // SAFETY: `c` is a valid NUL-terminated path.
                let rc = unsafe { libc::mknod(c.as_ptr(), inode.mode as libc::mode_t, rdev) };
                if rc != 0 {
                    let err = std::io::Error::last_os_error();
                    if err.raw_os_error() == Some(libc::EPERM) && !self.is_root {
                        self.report.warnings.push(format!(
                            "{}: cannot create a device node without root; skipped",
                            path.display()
                        ));
                        return Ok(());
                    }
                    return Err(io(err));
                }
            }
        }
        self.finish_attrs(path, entry)
    }

    fn file(&mut self, entry: &Entry, path: &Path) -> Result<()> {
        let file = File::create(path).map_err(|e| LayerError::io(path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        for (offset, len) in self.stack.data_runs(entry)? {
            let mut done = 0;
            while done < len {
                let want = (len - done).min(buf.len() as u64) as usize;
                let n = self.stack.read(entry, offset + done, &mut buf[..want])?;
                if n == 0 {
                    return Err(LayerError::corrupt("file data ends early"));
                }
                file.write_all_at(&buf[..n], offset + done)
                    .map_err(|e| LayerError::io(path, e))?;
                done += n as u64;
            }
            self.report.bytes += len;
            self.progress.advance(len);
        }
        // Trailing holes: the length comes from the inode, not from the data written.
        file.set_len(entry.inode.size)
            .map_err(|e| LayerError::io(path, e))?;
        Ok(())
    }

    /// Owner, xattrs, mode and mtime, in the order that keeps setuid bits and mtimes.
    fn finish_attrs(&mut self, path: &Path, entry: &Entry) -> Result<()> {
        let inode = &entry.inode;
        let c = cpath(path)?;
        // SAFETY: valid path; lchown does not follow symlinks.
        if unsafe { libc::lchown(c.as_ptr(), inode.uid, inode.gid) } != 0 {
            let err = std::io::Error::last_os_error();
            if self.is_root {
                return Err(LayerError::io(path, err));
            }
        }
        for (name, value) in self.stack.xattrs(entry)? {
            if let Err(e) = xattr::set(path, OsStr::from_bytes(&name), &value) {
                self.report.warnings.push(format!(
                    "{}: xattr {}: {e}",
                    path.display(),
                    String::from_utf8_lossy(&name)
                ));
            }
        }
        if inode.file_type() != S_IFLNK {
            // SAFETY: valid path.
            if unsafe { libc::chmod(c.as_ptr(), (inode.mode & 0o7777) as libc::mode_t) } != 0 {
                return Err(LayerError::io(path, std::io::Error::last_os_error()));
            }
        }
        set_mtime_nofollow(path, inode.mtime_sec, inode.mtime_nsec)
    }
}

/// Sets the mtime (and atime) of `path` itself, not of a symlink's target, to the
/// nanosecond: the one place extraction and tarball unpacking set times.
pub fn set_mtime_nofollow(path: &Path, secs: i64, nanos: u32) -> Result<()> {
    let c = cpath(path)?;
    let t = libc::timespec {
        tv_sec: secs as _,
        tv_nsec: nanos as _,
    };
    // SAFETY: valid path and a two-element timespec array.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [t, t].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(LayerError::io(path, std::io::Error::last_os_error()));
    }
    Ok(())
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        LayerError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"),
        )
    })
}
