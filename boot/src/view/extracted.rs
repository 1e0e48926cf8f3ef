//! The layers extracted into a per-user cache, for hosts where FUSE is not available (no
//! `/dev/fuse`, or not open to the user, as in many containers) or when `FIM_EXTRACT=1`
//! asks for it. The kernel overlay then sits on the extracted tree instead of the FUSE
//! mount. The cache is content-addressed (`$XDG_CACHE_HOME/fim/extract/<layers identity>/`,
//! `~/.cache` by default), so later runs of the same layers reuse it, and it is checked
//! before every use against the manifest written when it was made (every entry's type,
//! mode, size and mtime, under a checksum); an entry that differs makes it rebuilt.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use fim_layers::{Stack, extract};

use crate::debug;

const MANIFEST: &str = "manifest";
const TREE: &str = "tree";

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

/// The cache directory of the layers with `identity`.
fn cache_dir(identity: &str) -> anyhow::Result<PathBuf> {
    let base = crate::places::xdg_base("XDG_CACHE_HOME", ".cache").context(
        "FUSE is unavailable, and neither XDG_CACHE_HOME nor HOME is set for the extraction cache",
    )?;
    Ok(base.join("fim").join("extract").join(identity))
}

/// The extracted tree of `stack`, made (or remade) when missing or not as recorded.
pub fn tree(stack: &Stack, identity: &str) -> anyhow::Result<PathBuf> {
    let dir = cache_dir(identity)?;
    let tree = dir.join(TREE);
    {
        let _step = debug::Step::new("check the extracted layers");
        match fs::read_to_string(dir.join(MANIFEST)) {
            Ok(recorded) if manifest(&tree).ok().as_deref() == Some(recorded.as_str()) => {
                return Ok(tree);
            }
            Ok(_) => {
                debug::log("the extracted layers differ from their manifest; extracting again")
            }
            Err(_) => debug::log("no extracted layers yet"),
        }
    }
    let _step = debug::Step::new("extract the layers");
    let parent = dir.parent().context("the cache directory has a parent")?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    // Built beside its place, then renamed in: a run never sees half a tree.
    let temporary = tempfile::Builder::new()
        .prefix(".extracting-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a directory in {}", parent.display()))?;
    let report =
        extract(stack, &temporary.path().join(TREE), false).context("cannot extract the layers")?;
    for warning in &report.warnings {
        debug::log(format!("extract: {warning}"));
    }
    let recorded = manifest(&temporary.path().join(TREE))?;
    fs::write(temporary.path().join(MANIFEST), &recorded)
        .context("cannot write the extraction manifest")?;
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
    Ok(tree)
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
