//! Deletion markers in the upper directory. Every overlay backend records "this lower
//! entry is deleted" and "this directory replaces the lower one" its own way:
//!
//! | format | deleted entry | replaced (opaque) directory |
//! | --- | --- | --- |
//! | kernel (`userxattr`) | char device 0/0 | xattr `user.overlay.opaque=y` |
//! | fuse-overlayfs | char device 0/0, or file `.wh.NAME` | xattr `user.overlay.opaque`, `trusted.overlay.opaque` or `user.fuseoverlayfs.opaque`, or file `.wh..wh..opq` |
//! | unionfs-fuse | `.unionfs-fuse/PATH_HIDDEN~` | `.unionfs-fuse/PATH_HIDDEN~` beside a directory `PATH` |
//!
//! A file in the data directory records which formats may be present. Before a backend
//! mounts, the markers of every recorded format are read into one format-free set and
//! rewritten in the backend's own format, so deletions survive a switch of backend. The
//! record is widened before and narrowed after the rewrite: killed at any point, the next
//! run reads every format that may be present and finishes the job.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use fim_reserved::Overlay;

use crate::durable;
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

/// The opaque-directory xattr of the kernel overlay mounted with `userxattr`; fuse-overlayfs
/// reads it too.
const USER_OPAQUE: &str = "user.overlay.opaque";
/// What fuse-overlayfs writes instead: as real root, and in a user namespace.
const TRUSTED_OPAQUE: &str = "trusted.overlay.opaque";
const FUSE_OVERLAYFS_OPAQUE: &str = "user.fuseoverlayfs.opaque";
/// fuse-overlayfs's file markers (the OCI layer convention).
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_FILE: &str = ".wh..wh..opq";
/// A whiteout fuse-overlayfs leaves beside `.wh..wh..opq`; it marks nothing in the lower layers.
const OPAQUE_WHITEOUT: &str = ".wh..opq";
/// unionfs-fuse's metadata directory at the top of the upper directory, and its suffix.
const UNIONFS_META: &str = ".unionfs-fuse";
const HIDDEN_SUFFIX: &str = "_HIDDEN~";

/// The name of the record file in the data directory.
pub const RECORD: &str = "upper-format";

/// How one backend stores deletions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    Kernel,
    FuseOverlayfs,
    Unionfs,
}

impl Format {
    pub fn of(overlay: Overlay) -> Format {
        match overlay {
            Overlay::Bwrap => Format::Kernel,
            Overlay::Overlayfs => Format::FuseOverlayfs,
            Overlay::Unionfs => Format::Unionfs,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Format::Kernel => "kernel",
            Format::FuseOverlayfs => "fuse-overlayfs",
            Format::Unionfs => "unionfs",
        }
    }

    fn parse(word: &str) -> Option<Format> {
        [Format::Kernel, Format::FuseOverlayfs, Format::Unionfs]
            .into_iter()
            .find(|f| f.name() == word)
    }

    /// fuse-overlayfs reads the kernel's markers, so both are written the kernel's way.
    fn writes_kernel_markers(self) -> bool {
        self != Format::Unionfs
    }
}

/// What the markers of an upper directory say, whatever their format. Paths are relative
/// to the upper directory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Deletions {
    /// Lower entries that are deleted.
    pub whiteouts: BTreeSet<PathBuf>,
    /// Upper directories that hide the lower directory at the same path.
    pub opaque: BTreeSet<PathBuf>,
}

/// A marker as found on disk, so it can be removed once rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stored {
    /// A char device 0/0 at this path.
    Whiteout(PathBuf),
    /// An opaque xattr of this name on this directory.
    Xattr(PathBuf, &'static str),
    /// A marker file or directory tree of fuse-overlayfs or unionfs-fuse.
    Node(PathBuf),
}

/// Reads the record; an upper directory without one was written by the kernel overlay
/// (the only backend of earlier versions).
pub fn recorded(data: &Path) -> anyhow::Result<BTreeSet<Format>> {
    let path = data.join(RECORD);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok([Format::Kernel].into()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    text.split_whitespace()
        .map(|w| {
            Format::parse(w).with_context(|| {
                format!(
                    "{} names an unknown format '{w}'; it is written by this launcher only, so remove it if you edited it",
                    path.display()
                )
            })
        })
        .collect()
}

/// What the merged read-only layers hold at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowerEntry {
    pub is_dir: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: std::time::SystemTime,
}

/// The merged read-only layers under the upper directory, looked up by relative path.
pub trait Lower {
    /// `None` when nothing is there.
    fn entry(&self, path: &Path) -> io::Result<Option<LowerEntry>>;
}

/// The layers as mounted at a directory (the session's FUSE mount).
pub struct MountedLower<'a>(pub &'a Path);

impl Lower for MountedLower<'_> {
    fn entry(&self, path: &Path) -> io::Result<Option<LowerEntry>> {
        match fs::symlink_metadata(self.0.join(path)) {
            Ok(m) => Ok(Some(LowerEntry {
                is_dir: m.is_dir(),
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                mtime: m.modified()?,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Rewrites the markers of `upper` in `target`'s format. `lower` decides which deletions
/// still matter and gives created parent directories their attributes. Returns whether
/// anything had to be converted.
pub fn convert(
    data: &Path,
    upper: &Path,
    lower: &dyn Lower,
    target: Format,
) -> anyhow::Result<bool> {
    let present = recorded(data)?;
    if present.len() == 1 && present.contains(&target) {
        return Ok(false);
    }
    let mut widened = present.clone();
    widened.insert(target);
    record(data, &widened)?;

    let mut deletions = Deletions::default();
    let mut stored = Vec::new();
    for format in &widened {
        scan(upper, *format, &mut deletions, &mut stored)
            .with_context(|| format!("cannot read the markers in {}", upper.display()))?;
    }
    let wanted = meaningful(upper, lower, &deletions);
    let kept = write(upper, lower, target, &wanted)
        .with_context(|| format!("cannot write the markers in {}", upper.display()))?;
    for item in stored.iter().filter(|s| !kept.contains(s)) {
        remove(upper, item)
            .with_context(|| format!("cannot remove an old marker in {}", upper.display()))?;
    }
    let dir = File::open(upper)?;
    nix::unistd::syncfs(dir.as_fd()).context("cannot flush the upper directory")?;
    record(data, &[target].into())?;
    Ok(true)
}

/// Replaces the record atomically.
fn record(data: &Path, formats: &BTreeSet<Format>) -> anyhow::Result<()> {
    let text: Vec<&str> = formats.iter().map(|f| f.name()).collect();
    durable::replace_file(data, RECORD, &format!("{}\n", text.join(" ")))
}

/// Adds the markers of `format` found in `upper` to `deletions` and `stored`.
fn scan(
    upper: &Path,
    format: Format,
    deletions: &mut Deletions,
    stored: &mut Vec<Stored>,
) -> io::Result<()> {
    match format {
        Format::Kernel | Format::FuseOverlayfs => {
            walk(upper, Path::new(""), format, deletions, stored)
        }
        Format::Unionfs => {
            let meta = upper.join(UNIONFS_META);
            if fs::symlink_metadata(&meta).is_ok_and(|m| m.is_dir()) {
                scan_unionfs(upper, &meta, Path::new(""), deletions)?;
                stored.push(Stored::Node(PathBuf::from(UNIONFS_META)));
            }
            Ok(())
        }
    }
}

/// Walks the upper directory for the kernel's (and, with `FuseOverlayfs`, fuse-overlayfs's)
/// markers. `relative` is the directory being read.
fn walk(
    upper: &Path,
    relative: &Path,
    format: Format,
    deletions: &mut Deletions,
    stored: &mut Vec<Stored>,
) -> io::Result<()> {
    let fuse = format == Format::FuseOverlayfs;
    let dir = upper.join(relative);
    let names: &[&'static str] = if fuse {
        &[USER_OPAQUE, TRUSTED_OPAQUE, FUSE_OVERLAYFS_OPAQUE]
    } else {
        &[USER_OPAQUE]
    };
    if !relative.as_os_str().is_empty() {
        for name in names.iter().filter(|n| has_yes(&dir, n)) {
            deletions.opaque.insert(relative.to_path_buf());
            stored.push(Stored::Xattr(relative.to_path_buf(), name));
        }
    }
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let path = relative.join(&name);
        let kind = entry.file_type()?;
        if kind.is_char_device() && entry.metadata()?.rdev() == 0 {
            if fuse && name == OPAQUE_WHITEOUT {
                stored.push(Stored::Node(path));
            } else {
                deletions.whiteouts.insert(path.clone());
                stored.push(Stored::Whiteout(path));
            }
        } else if fuse && kind.is_file() && name == OPAQUE_FILE {
            if !relative.as_os_str().is_empty() {
                deletions.opaque.insert(relative.to_path_buf());
            }
            stored.push(Stored::Node(path));
        } else if let Some(target) = fuse
            .then(|| name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()))
            .flatten()
            .filter(|t| !t.is_empty() && kind.is_file())
        {
            deletions
                .whiteouts
                .insert(relative.join(OsStr::from_bytes(target)));
            stored.push(Stored::Node(path));
        } else if kind.is_dir() {
            walk(upper, &path, format, deletions, stored)?;
        }
    }
    Ok(())
}

/// Reads unionfs-fuse's metadata directory `meta`, at `relative` below its top.
fn scan_unionfs(
    upper: &Path,
    meta: &Path,
    relative: &Path,
    deletions: &mut Deletions,
) -> io::Result<()> {
    for entry in fs::read_dir(meta.join(relative))? {
        let entry = entry?;
        let name = entry.file_name();
        match name.as_bytes().strip_suffix(HIDDEN_SUFFIX.as_bytes()) {
            Some(hidden) if !hidden.is_empty() => {
                let path = relative.join(OsStr::from_bytes(hidden));
                match fs::symlink_metadata(upper.join(&path)) {
                    // A new directory over a hidden one replaces it.
                    Ok(m) if m.is_dir() => {
                        deletions.opaque.insert(path);
                    }
                    // A new file simply shadows the hidden entry.
                    Ok(_) => {}
                    Err(_) => {
                        deletions.whiteouts.insert(path);
                    }
                }
            }
            _ if entry.file_type()?.is_dir() => {
                scan_unionfs(upper, meta, &relative.join(&name), deletions)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Keeps the deletions that still hide something: a whiteout of an entry the lower tree
/// has, an opaque directory over a lower directory, neither below a deleted or replaced
/// directory nor below an upper non-directory.
fn meaningful(upper: &Path, lower: &dyn Lower, all: &Deletions) -> Deletions {
    let visible_below = |path: &Path| -> bool {
        let mut ancestor = PathBuf::new();
        let parents: Vec<&OsStr> = path.parent().map_or(Vec::new(), |p| p.iter().collect());
        for part in parents {
            ancestor.push(part);
            if all.whiteouts.contains(&ancestor) || all.opaque.contains(&ancestor) {
                return false;
            }
            if fs::symlink_metadata(upper.join(&ancestor)).is_ok_and(|m| !m.is_dir()) {
                return false;
            }
        }
        true
    };
    // Only a definite "not there" drops a deletion: any other error keeps it.
    let lower_kind = |path: &Path| match lower.entry(path) {
        Ok(Some(e)) => Some(e.is_dir),
        Ok(None) => None,
        Err(_) => Some(true),
    };
    // A real upper entry at a deleted path supersedes the deletion.
    let free = |path: &Path| {
        let at = upper.join(path);
        fs::symlink_metadata(&at).is_err() || is_whiteout(&at)
    };
    Deletions {
        whiteouts: all
            .whiteouts
            .iter()
            .filter(|p| !all.opaque.contains(*p) && free(p))
            .filter(|p| visible_below(p) && lower_kind(p).is_some())
            .cloned()
            .collect(),
        opaque: all
            .opaque
            .iter()
            .filter(|p| fs::symlink_metadata(upper.join(p)).is_ok_and(|m| m.is_dir()))
            .filter(|p| visible_below(p) && lower_kind(p) == Some(true))
            .cloned()
            .collect(),
    }
}

/// Writes `wanted` in `target`'s format; returns the markers this produced or kept.
fn write(
    upper: &Path,
    lower: &dyn Lower,
    target: Format,
    wanted: &Deletions,
) -> io::Result<Vec<Stored>> {
    let mut kept = Vec::new();
    if target.writes_kernel_markers() {
        for path in &wanted.whiteouts {
            let at = upper.join(path);
            if !is_whiteout(&at) {
                if let Some(parent) = path.parent() {
                    copy_up_dirs(upper, lower, parent)?;
                }
                mknod(&at, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                    .map_err(io::Error::from)?;
            }
            kept.push(Stored::Whiteout(path.clone()));
        }
        for path in &wanted.opaque {
            xattr::set(upper.join(path), USER_OPAQUE, b"y")?;
            kept.push(Stored::Xattr(path.clone(), USER_OPAQUE));
        }
    } else {
        let meta = upper.join(UNIONFS_META);
        for path in wanted.whiteouts.iter().chain(&wanted.opaque) {
            let mut marker: OsString = meta.join(path).into_os_string();
            marker.push(HIDDEN_SUFFIX);
            let marker = PathBuf::from(marker);
            if let Some(parent) = marker.parent() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)?;
            }
            if fs::symlink_metadata(&marker).is_err() {
                File::options().write(true).create_new(true).open(&marker)?;
            }
        }
        kept.push(Stored::Node(PathBuf::from(UNIONFS_META)));
    }
    Ok(kept)
}

/// Creates the upper directories leading to `relative`, each with the mode, owner and
/// times of the lower directory it covers, as an overlay's copy-up would.
fn copy_up_dirs(upper: &Path, lower: &dyn Lower, relative: &Path) -> io::Result<()> {
    let mut path = PathBuf::new();
    for part in relative.iter() {
        path.push(part);
        let at = upper.join(&path);
        if fs::symlink_metadata(&at).is_ok() {
            continue;
        }
        let source = lower.entry(&path)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not in the layers", path.display()),
            )
        })?;
        fs::create_dir(&at)?;
        fs::set_permissions(&at, fs::Permissions::from_mode(source.mode & 0o7777))?;
        // Best effort: an unmapped owner cannot be set in a user namespace.
        let _ = std::os::unix::fs::lchown(&at, Some(source.uid), Some(source.gid));
        let times = fs::FileTimes::new()
            .set_accessed(source.mtime)
            .set_modified(source.mtime);
        File::open(&at)?.set_times(times)?;
    }
    Ok(())
}

fn remove(upper: &Path, item: &Stored) -> io::Result<()> {
    let gone = |r: io::Result<()>| match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    match item {
        Stored::Whiteout(path) => gone(fs::remove_file(upper.join(path))),
        Stored::Node(path) => {
            let at = upper.join(path);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => gone(fs::remove_dir_all(&at)),
                Ok(_) => gone(fs::remove_file(&at)),
                Err(_) => Ok(()),
            }
        }
        Stored::Xattr(path, name) => match xattr::remove(upper.join(path), name) {
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
            other => gone(other),
        },
    }
}

fn is_whiteout(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

/// Whether `dir`, in the kernel's format, replaces the lower directory at its path.
pub fn is_opaque(dir: &Path) -> bool {
    has_yes(dir, USER_OPAQUE)
}

/// Whether `dir` carries the opaque xattr `name`; unreadable counts as absent (a user
/// cannot read `trusted.*`, and then no backend of theirs wrote it).
fn has_yes(dir: &Path, name: &str) -> bool {
    matches!(
        xattr::get(dir, name).ok().flatten().as_deref(),
        Some(b"y") | Some(b"x")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A data directory with `upper/` and a `lower/` tree standing for the merged layers:
    /// `d/b`, `d/sub/c`, `r/x`, `keep`.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        /// `None` (with the reason printed) where this user cannot create whiteout devices.
        fn new() -> Option<Fixture> {
            let dir = tempfile::tempdir().expect("tempdir");
            let probe = dir.path().join("probe");
            if let Err(e) = mknod(&probe, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)) {
                eprintln!("skipped: cannot create a whiteout device here ({e})");
                return None;
            }
            fs::remove_file(probe).expect("remove probe");
            for d in ["upper", "lower/d/sub", "lower/r"] {
                fs::create_dir_all(dir.path().join(d)).expect("mkdir");
            }
            for f in ["lower/d/b", "lower/d/sub/c", "lower/r/x", "lower/keep"] {
                fs::write(dir.path().join(f), f).expect("write");
            }
            fs::set_permissions(
                dir.path().join("lower/d"),
                fs::Permissions::from_mode(0o750),
            )
            .expect("chmod");
            Some(Fixture { dir })
        }
        /// A 0/0 char device at `rel` in the upper directory.
        fn whiteout(&self, rel: &str) {
            let path = self.upper(rel);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            mknod(&path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).expect("mknod");
        }
        fn data(&self) -> &Path {
            self.dir.path()
        }
        fn upper(&self, rel: &str) -> PathBuf {
            self.dir.path().join("upper").join(rel)
        }
        fn convert(&self, target: Format) -> bool {
            let d = self.data();
            let lower = d.join("lower");
            convert(d, &d.join("upper"), &MountedLower(&lower), target).expect("convert")
        }
        fn set_record(&self, text: &str) {
            fs::write(self.data().join(RECORD), text).expect("record");
        }
        fn record(&self) -> String {
            fs::read_to_string(self.data().join(RECORD)).expect("record")
        }
        /// Every path under upper/, sorted, with a type letter.
        fn listing(&self) -> Vec<String> {
            let mut out = Vec::new();
            list(&self.upper(""), Path::new(""), &mut out);
            out.sort();
            out
        }
    }

    fn list(base: &Path, rel: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(base.join(rel)).expect("readdir") {
            let e = e.expect("entry");
            let path = rel.join(e.file_name());
            let t = e.file_type().expect("type");
            let letter = if t.is_dir() {
                "d"
            } else if t.is_char_device() {
                "c"
            } else if t.is_symlink() {
                "l"
            } else {
                "f"
            };
            out.push(format!("{letter} {}", path.display()));
            if t.is_dir() {
                list(base, &path, out);
            }
        }
    }

    fn opaque_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        xattr::get(path, name).ok().flatten()
    }

    #[test]
    fn kernel_markers_become_unionfs_markers() {
        let Some(f) = Fixture::new() else {
            return;
        };
        f.whiteout("d/b");
        fs::create_dir(f.upper("r")).expect("mkdir");
        fs::write(f.upper("r/y"), "y").expect("write");
        xattr::set(f.upper("r"), USER_OPAQUE, b"y").expect("xattr");

        assert!(f.convert(Format::Unionfs));
        assert_eq!(
            f.listing(),
            [
                "d .unionfs-fuse",
                "d .unionfs-fuse/d",
                "d d",
                "d r",
                "f .unionfs-fuse/d/b_HIDDEN~",
                "f .unionfs-fuse/r_HIDDEN~",
                "f r/y",
            ]
        );
        assert_eq!(opaque_xattr(&f.upper("r"), USER_OPAQUE), None);
        assert_eq!(f.record(), "unionfs\n");
    }

    #[test]
    fn unionfs_markers_become_kernel_markers_under_copied_up_parents() {
        let Some(f) = Fixture::new() else {
            return;
        };
        fs::create_dir_all(f.upper(".unionfs-fuse/d/sub")).expect("mkdir");
        fs::write(f.upper(".unionfs-fuse/d/sub/c_HIDDEN~"), "").expect("write");
        fs::write(f.upper(".unionfs-fuse/r_HIDDEN~"), "").expect("write");
        fs::create_dir(f.upper("r")).expect("mkdir");
        f.set_record("unionfs\n");

        assert!(f.convert(Format::Kernel));
        assert_eq!(f.listing(), ["c d/sub/c", "d d", "d d/sub", "d r"]);
        assert_eq!(
            opaque_xattr(&f.upper("r"), USER_OPAQUE).as_deref(),
            Some(&b"y"[..])
        );
        // The created parent looks like the lower directory it covers.
        let (made, lower) = (
            fs::metadata(f.upper("d")).expect("stat"),
            fs::metadata(f.data().join("lower/d")).expect("stat"),
        );
        assert_eq!(made.mode() & 0o7777, 0o750);
        assert_eq!(made.mtime(), lower.mtime());
        assert_eq!(f.record(), "kernel\n");
    }

    #[test]
    fn fuse_overlayfs_file_markers_become_kernel_markers() {
        let Some(f) = Fixture::new() else {
            return;
        };
        f.whiteout("r/.wh..opq");
        fs::write(f.upper("r/.wh..wh..opq"), "").expect("write");
        fs::create_dir(f.upper("d")).expect("mkdir");
        fs::write(f.upper("d/.wh.b"), "").expect("write");
        fs::create_dir(f.upper("d/sub")).expect("mkdir");
        xattr::set(f.upper("d/sub"), FUSE_OVERLAYFS_OPAQUE, b"y").expect("xattr");
        f.set_record("fuse-overlayfs\n");

        assert!(f.convert(Format::Kernel));
        assert_eq!(f.listing(), ["c d/b", "d d", "d d/sub", "d r"]);
        assert_eq!(
            opaque_xattr(&f.upper("r"), USER_OPAQUE).as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(
            opaque_xattr(&f.upper("d/sub"), USER_OPAQUE).as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(opaque_xattr(&f.upper("d/sub"), FUSE_OVERLAYFS_OPAQUE), None);
    }

    #[test]
    fn deletions_that_hide_nothing_are_dropped() {
        let Some(f) = Fixture::new() else {
            return;
        };
        // Not in the lower tree; inside a replaced directory; shadowed by a new file.
        f.whiteout("gone");
        fs::create_dir(f.upper("r")).expect("mkdir");
        xattr::set(f.upper("r"), USER_OPAQUE, b"y").expect("xattr");
        f.whiteout("r/x");
        fs::write(f.upper("keep"), "new").expect("write");
        fs::create_dir_all(f.upper(".unionfs-fuse")).expect("mkdir");
        fs::write(f.upper(".unionfs-fuse/keep_HIDDEN~"), "").expect("write");
        f.set_record("kernel unionfs\n");

        assert!(f.convert(Format::Kernel));
        assert_eq!(f.listing(), ["d r", "f keep"]);
    }

    #[test]
    fn an_interrupted_conversion_is_finished_by_the_next() {
        let Some(f) = Fixture::new() else {
            return;
        };
        // Killed half way from unionfs to kernel: some markers in each format.
        f.whiteout("d/b");
        fs::create_dir_all(f.upper(".unionfs-fuse")).expect("mkdir");
        fs::write(f.upper(".unionfs-fuse/keep_HIDDEN~"), "").expect("write");
        f.set_record("kernel unionfs\n");

        assert!(f.convert(Format::Unionfs));
        assert_eq!(
            f.listing(),
            [
                "d .unionfs-fuse",
                "d .unionfs-fuse/d",
                "d d",
                "f .unionfs-fuse/d/b_HIDDEN~",
                "f .unionfs-fuse/keep_HIDDEN~",
            ]
        );
        assert_eq!(f.record(), "unionfs\n");
    }

    #[test]
    fn the_same_format_is_left_alone() {
        let Some(f) = Fixture::new() else {
            return;
        };
        symlink("x", f.upper("link")).expect("symlink");
        assert!(!f.convert(Format::Kernel), "no record means kernel");
        f.set_record("unionfs\n");
        assert!(!f.convert(Format::Unionfs));
        assert_eq!(f.listing(), ["l link"]);
    }

    #[test]
    fn fuse_overlayfs_reads_kernel_markers_so_switching_keeps_them() {
        let Some(f) = Fixture::new() else {
            return;
        };
        f.whiteout("d/b");
        assert!(f.convert(Format::FuseOverlayfs));
        assert_eq!(f.listing(), ["c d/b", "d d"]);
        assert_eq!(f.record(), "fuse-overlayfs\n");
    }

    #[test]
    fn an_unknown_record_is_an_error() {
        let Some(f) = Fixture::new() else {
            return;
        };
        f.set_record("kernel zfs\n");
        let err = recorded(f.data()).expect_err("unknown word");
        assert!(
            format!("{err:#}").contains("unknown format 'zfs'"),
            "{err:#}"
        );
    }
}
