//! The layers extracted into a per-user cache, for hosts where FUSE is not available (no
//! `/dev/fuse`, or not open to the user, as in many containers) or when `FIM_EXTRACT=1`
//! asks for it. The kernel overlay then sits on the extracted tree instead of the FUSE
//! mount.
//!
//! ```text
//! $XDG_CACHE_HOME/fim/extract/        (~/.cache/fim/extract/ by default)
//!   <layers identity>/tree/           the merged layers
//!   <layers identity>/manifest        every entry's type, mode, size and mtime, under a checksum
//!   <layers identity>/image           the image it was made for; its mtime is the last use
//!   <layers identity>/size            bytes of file content extracted
//!   <layers identity>/lock            held shared by every session using the tree
//! ```
//!
//! Later runs of the same layers reuse a tree after checking it against its manifest (an
//! entry that differs makes it rebuilt). A first extraction says so in one line, with its
//! size and place, and shows its progress on a terminal. Once a new tree is complete,
//! trees of older identities of the same image (before a commit, say) are removed, and
//! then the least recently used others until the cache fits in `FIM_EXTRACT_MAX` (default
//! [`DEFAULT_MAX`]); a tree in use by a session, and the new one, are never removed.

use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use fim_layers::{Progress, Stack, extract_reporting};
use nix::fcntl::{Flock, FlockArg};

use crate::debug;
use crate::locks::lock_file;

const MANIFEST: &str = "manifest";
const TREE: &str = "tree";
const IMAGE: &str = "image";
const SIZE: &str = "size";
const LOCK: &str = "lock";

/// The cache bound without `FIM_EXTRACT_MAX`: room for several extracted apps of a few
/// hundred MiB (a Debian minbase root with python3 extracts to 373 MB), small against a
/// home directory. uruntime refuses to extract images over 350 MB at all; here any image
/// runs, and the bound only decides what older trees to keep.
pub const DEFAULT_MAX: u64 = 2 << 30;

/// Why the layers must be extracted, or `None` when FUSE can serve them.
pub fn needed() -> Option<String> {
    if std::env::var_os("FIM_EXTRACT").is_some_and(|v| v == "1") {
        return Some("FIM_EXTRACT=1".into());
    }
    match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/fuse cannot be opened ({e})")),
    }
}

/// The cache's base directory.
fn cache_base() -> anyhow::Result<PathBuf> {
    let base = crate::places::xdg_base("XDG_CACHE_HOME", ".cache").context(
        "FUSE is unavailable, and neither XDG_CACHE_HOME nor HOME is set for the extraction cache",
    )?;
    Ok(base.join("fim").join("extract"))
}

/// The bound of the cache: `FIM_EXTRACT_MAX` (bytes, or with a K, M, G or T suffix).
fn max_bytes() -> anyhow::Result<u64> {
    match std::env::var("FIM_EXTRACT_MAX") {
        Ok(text) => parse_size(&text).with_context(|| {
            format!("FIM_EXTRACT_MAX={text:?} is not a size (bytes, or a number with K, M, G or T)")
        }),
        Err(_) => Ok(DEFAULT_MAX),
    }
}

/// Bytes, or a number with a K, M, G or T suffix (powers of 1024).
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (digits, shift) = match t.chars().last()?.to_ascii_uppercase() {
        'K' => (&t[..t.len() - 1], 10),
        'M' => (&t[..t.len() - 1], 20),
        'G' => (&t[..t.len() - 1], 30),
        'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// What the extraction tells the user: one line at its start, then its progress.
pub trait Report: Send {
    fn note(&mut self, line: String);
    fn progress(&mut self, done: u64, total: u64);
}

/// An extracted tree in use: its lock is held shared while the session lives.
pub struct Extraction {
    pub tree: PathBuf,
    _in_use: Flock<File>,
}

/// The extracted tree of `stack` for `image`, made (or remade) when missing or not as
/// recorded, with the cache pruned afterwards.
pub fn tree(
    stack: &Stack,
    identity: &str,
    image: &Path,
    report: &mut dyn Report,
) -> anyhow::Result<Extraction> {
    let max = max_bytes()?;
    let base = cache_base()?;
    let dir = base.join(identity);
    let tree = dir.join(TREE);
    {
        let _step = debug::Step::new("check the extracted layers");
        let existing = dir
            .join(LOCK)
            .exists()
            .then(|| lock_file(&dir.join(LOCK)).ok())
            .flatten()
            .and_then(|lock| Flock::lock(lock, FlockArg::LockShared).ok());
        if let Some(in_use) = existing {
            match fs::read_to_string(dir.join(MANIFEST)) {
                Ok(recorded) if manifest(&tree).ok().as_deref() == Some(recorded.as_str()) => {
                    stamp(&dir, image);
                    return Ok(Extraction {
                        tree,
                        _in_use: in_use,
                    });
                }
                Ok(_) => {
                    debug::log("the extracted layers differ from their manifest; extracting again")
                }
                Err(_) => debug::log("no complete extraction of these layers yet"),
            }
        } else {
            debug::log("no extracted layers yet");
        }
    }
    let _step = debug::Step::new("extract the layers");
    fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let total: u64 = stack
        .layers()
        .iter()
        .map(|l| l.superblock().data_size)
        .sum();
    report.note(format!(
        "extracting the image's layers (about {} MiB) into {}; later runs reuse them",
        total.div_ceil(1 << 20),
        dir.display()
    ));
    // Built beside its place, then renamed in: a run never sees half a tree.
    let temporary = tempfile::Builder::new()
        .prefix(".extracting-")
        .tempdir_in(&base)
        .with_context(|| format!("cannot create a directory in {}", base.display()))?;
    let in_use = Flock::lock(
        lock_file(&temporary.path().join(LOCK))?,
        FlockArg::LockShared,
    )
    .map_err(|(_, e)| e)
    .context("cannot lock the new extraction")?;
    let meter = Meter::new(total, report);
    let done = extract_reporting(stack, &temporary.path().join(TREE), false, &meter)
        .context("cannot extract the layers")?;
    drop(meter);
    for warning in &done.warnings {
        debug::log(format!("extract: {warning}"));
    }
    let recorded = manifest(&temporary.path().join(TREE))?;
    fs::write(temporary.path().join(MANIFEST), &recorded)
        .and_then(|()| fs::write(temporary.path().join(SIZE), format!("{}\n", done.bytes)))
        .context("cannot write the extraction manifest")?;
    stamp(temporary.path(), image);
    if fs::symlink_metadata(&dir).is_ok() {
        remove_tree(&dir)?;
    }
    let made = temporary.keep();
    if let Err(e) = fs::rename(&made, &dir) {
        // Another launcher put the same layers in place meanwhile: use theirs.
        let _ = remove_tree(&made);
        if fs::read_to_string(dir.join(MANIFEST)).ok().as_deref() != Some(recorded.as_str()) {
            return Err(e).with_context(|| format!("cannot create {}", dir.display()));
        }
    }
    prune(&base, identity, image, max);
    Ok(Extraction {
        tree,
        _in_use: in_use,
    })
}

/// Records that `dir` serves `image`, now.
fn stamp(dir: &Path, image: &Path) {
    let _ = fs::write(dir.join(IMAGE), image.as_os_str().as_bytes());
}

/// Removes the other trees of `image`, then the least recently used ones beyond `max`
/// bytes. Trees in use, and `keep`, stay. Failures only cost disk space: they are logged.
fn prune(base: &Path, keep: &str, image: &Path, max: u64) {
    struct Cached {
        dir: PathBuf,
        image: Vec<u8>,
        used: SystemTime,
        size: u64,
    }
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    let mut cached: Vec<Cached> = entries
        .flatten()
        .filter(|e| !e.file_name().as_bytes().starts_with(b"."))
        .map(|e| {
            let dir = e.path();
            Cached {
                image: fs::read(dir.join(IMAGE)).unwrap_or_default(),
                used: fs::metadata(dir.join(IMAGE))
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                size: fs::read_to_string(dir.join(SIZE))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0),
                dir,
            }
        })
        .collect();
    // Oldest first.
    cached.sort_by_key(|c| c.used);
    let mut total: u64 = cached.iter().map(|c| c.size).sum();
    let ours = image.as_os_str().as_bytes();
    for c in &cached {
        if c.dir.file_name().is_some_and(|n| n == keep) {
            continue;
        }
        let same_image = c.image == ours;
        if !same_image && total <= max {
            continue;
        }
        match remove_unused(&c.dir) {
            Ok(true) => {
                total = total.saturating_sub(c.size);
                debug::log(format!(
                    "removed the extraction {} ({})",
                    c.dir.display(),
                    if same_image {
                        "an older state of this image"
                    } else {
                        "the cache is over FIM_EXTRACT_MAX"
                    }
                ));
            }
            Ok(false) => debug::log(format!("{} is in use; kept", c.dir.display())),
            Err(e) => debug::log(format!("cannot prune {}: {e:#}", c.dir.display())),
        }
    }
    if total > max {
        debug::log(format!(
            "the extraction cache holds {total} bytes, over its bound of {max}: the rest is in use"
        ));
    }
}

/// Removes a cached tree unless a session holds it; `false` when one does.
fn remove_unused(dir: &Path) -> anyhow::Result<bool> {
    let lock = lock_file(&dir.join(LOCK))?;
    let Ok(_held) = Flock::lock(lock, FlockArg::LockExclusiveNonblock) else {
        return Ok(false);
    };
    remove_tree(dir)?;
    Ok(true)
}

/// Passes the extraction's progress on, at most five times a second.
struct Meter<'a> {
    total: u64,
    state: std::sync::Mutex<(u64, Instant, &'a mut dyn Report)>,
}

impl<'a> Meter<'a> {
    fn new(total: u64, report: &'a mut dyn Report) -> Self {
        Meter {
            total,
            state: std::sync::Mutex::new((0, Instant::now(), report)),
        }
    }
}

impl Progress for Meter<'_> {
    fn advance(&self, bytes: u64) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let (done, last, report) = &mut *state;
        *done += bytes;
        if last.elapsed() >= Duration::from_millis(200) {
            *last = Instant::now();
            report.progress((*done).min(self.total), self.total);
        }
    }
}

impl Drop for Meter<'_> {
    fn drop(&mut self) {
        if let Ok(state) = self.state.get_mut() {
            let total = self.total;
            state.2.progress(total, total);
        }
    }
}

/// One line per entry of `tree`, sorted: path, type and mode, size, mtime; the first
/// line is the XXH3 of the rest.
fn manifest(tree: &Path) -> anyhow::Result<String> {
    let mut lines = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let here = tree.join(&relative);
        let meta = fs::symlink_metadata(&here)
            .with_context(|| format!("cannot inspect {}", here.display()))?;
        lines.push(format!(
            "{} {:o} {} {}.{:09}",
            hex(relative.as_os_str().as_bytes()),
            meta.mode(),
            if meta.is_dir() { 0 } else { meta.size() },
            meta.mtime(),
            meta.mtime_nsec()
        ));
        if meta.is_dir() {
            for entry in
                fs::read_dir(&here).with_context(|| format!("cannot read {}", here.display()))?
            {
                pending.push(relative.join(entry?.file_name()));
            }
        }
    }
    lines.sort();
    let body = lines.join("\n");
    Ok(format!(
        "{:016x}\n{body}\n",
        xxhash_rust::xxh3::xxh3_64(body.as_bytes())
    ))
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return ".".into();
    }
    fim_layers::hex(bytes)
}

/// Removes a cache directory, first making its directories writable (an image's
/// read-only directories are extracted read-only).
fn remove_tree(dir: &Path) -> anyhow::Result<()> {
    fn open_up(path: &Path) -> io::Result<()> {
        let meta = fs::symlink_metadata(path)?;
        if meta.is_dir() {
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
            for entry in fs::read_dir(path)? {
                open_up(&entry?.path())?;
            }
        }
        Ok(())
    }
    let _ = open_up(dir);
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", dir.display())),
    }
}

/// Refuses a FUSE backend where FUSE is unavailable.
pub fn refuse_fuse_backend(overlay: fim_reserved::Overlay, why: &str) -> anyhow::Result<()> {
    if overlay != fim_reserved::Overlay::Bwrap {
        bail!(
            "the {overlay} overlay needs FUSE, which is unavailable here ({why}); use FIM_OVERLAY=bwrap"
        );
    }
    Ok(())
}

/// Refuses the casefold view where FUSE is unavailable: it is a FUSE file system.
pub fn refuse_casefold(casefold: bool, why: &str) -> anyhow::Result<()> {
    if casefold {
        bail!(
            "casefold needs FUSE, which is unavailable here ({why}); turn it off with FIM_CASEFOLD=0 or fim-casefold off"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_a_binary_suffix_or_none() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("500m"), Some(500 << 20));
        assert_eq!(parse_size(" 1K "), Some(1024));
        for bad in ["", "G", "1.5G", "-1", "10X", "99999999999999T"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }
}
