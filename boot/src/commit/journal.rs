//! The commit journal: what makes a commit happen exactly once.
//!
//! ```text
//! <data>/commit-journal     the digest of the layer being committed (hex, one line)
//! <data>/upper.committed/   the committed upper directory, waiting to be removed
//! ```
//!
//! A commit writes and syncs the new layer, then the journal, then renames the layer into
//! place, and only then empties the upper directory. Whoever next holds the data
//! directory (a commit, or the session daemon before it mounts anything) calls [`recover`]:
//! if a layer with the journal's digest is in place the upper directory is emptied,
//! otherwise the journal is dropped and the changes stay. Each step can be repeated.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use anyhow::Context;
use fim_image::Image;
use fim_layers::hex;

use crate::durable;
use crate::places::Places;
use crate::view::layer_stack;
use crate::view::markers;

/// The journal of a commit in flight, in the data directory.
pub const JOURNAL: &str = "commit-journal";
/// Where the committed upper directory waits to be removed.
const COMMITTED: &str = "upper.committed";
/// Test-only switch: `FIM_TEST_COMMIT_CRASH=POINT` ends the commit process at once, as a
/// SIGKILL would, at POINT: `sealed` (the new layer is written), `journaled` (the journal
/// too), `persisted` (the layer is in place) or `moved` (the old upper directory is set
/// aside). Tests use it to check recovery from each of these states.
const CRASH_POINT: &str = "FIM_TEST_COMMIT_CRASH";

pub fn crash_point(point: &str) {
    if std::env::var_os(CRASH_POINT).is_some_and(|v| v == point) {
        // SAFETY: ends the process without unwinding, as a kill would.
        unsafe { libc::_exit(137) }
    }
}

pub fn write_journal(data: &Path, digest: &[u8; 32]) -> anyhow::Result<()> {
    durable::replace_file(data, JOURNAL, &format!("{}\n", hex(digest)))
}

/// Finishes or forgets a commit that was interrupted. The caller holds the data directory.
pub fn recover(places: &Places, image: &Image) -> anyhow::Result<()> {
    let journal = places.data.join(JOURNAL);
    match fs::read_to_string(&journal) {
        Ok(text) => {
            let digest = text.trim();
            let landed = image
                .layer_entries()
                .iter()
                .any(|l| hex(&l.digest) == digest)
                || managed_digests(&places.data)?
                    .iter()
                    .any(|d| hex(d) == digest);
            if landed {
                empty_upper(places)?;
            } else {
                fs::remove_file(&journal)
                    .with_context(|| format!("cannot remove {}", journal.display()))?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", journal.display())),
    }
    let committed = places.data.join(COMMITTED);
    if fs::symlink_metadata(&committed).is_ok() {
        fs::remove_dir_all(&committed)
            .with_context(|| format!("cannot remove {}", committed.display()))?;
    }
    // Temporaries of managed layers whose commit was killed.
    if let Ok(entries) = fs::read_dir(layer_stack::managed_dir(&places.data)) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(layer_stack::TEMP_PREFIX)
            {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

fn managed_digests(data: &Path) -> anyhow::Result<Vec<[u8; 32]>> {
    let dir = layer_stack::managed_dir(data);
    let mut digests = Vec::new();
    for path in layer_stack::layer_files(&dir, true)? {
        let (file, _) = layer_stack::LayerFile::open(&path, layer_stack::Origin::Managed)?;
        digests.push(file.digest);
    }
    Ok(digests)
}

/// Replaces the committed upper directory by an empty one, then forgets the journal.
/// Each step can be repeated after a crash.
pub fn empty_upper(places: &Places) -> anyhow::Result<()> {
    let committed = places.data.join(COMMITTED);
    let upper = &places.upper;
    let meta = fs::metadata(upper).ok();
    if fs::symlink_metadata(&committed).is_err() && meta.is_some() {
        fs::rename(upper, &committed)
            .with_context(|| format!("cannot move {} aside", upper.display()))?;
        crash_point("moved");
    }
    if fs::symlink_metadata(upper).is_err() {
        DirBuilder::new()
            .mode(0o755)
            .create(upper)
            .with_context(|| format!("cannot create {}", upper.display()))?;
    }
    // An empty upper directory holds no markers of any format.
    for name in [markers::RECORD, JOURNAL] {
        let path = places.data.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }
    durable::sync_dir(&places.data);
    fs::remove_dir_all(&committed).with_context(|| format!("cannot remove {}", committed.display()))
}
