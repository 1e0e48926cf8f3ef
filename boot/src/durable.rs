//! Writes that survive a crash: a small file replaced whole, and a directory's entries
//! flushed after a rename.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Replaces `dir/name` with `text` atomically: written to `name.new`, synced, renamed
/// over, and the directory synced. Killed at any point, the old or the new file is there.
pub fn replace_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let path = dir.join(name);
    let temporary = dir.join(format!("{name}.new"));
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, &path)?;
        File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// Flushes the entries of `dir` (best effort: some file systems refuse it).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The directory holding `path` (`.` for a bare file name): where a file that replaces it
/// is written first.
pub fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
