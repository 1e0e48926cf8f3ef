//! Commit: the upper directory becomes a layer, exactly once.
//!
//! Data flows one way: the upper directory's deletion markers are first brought to the
//! kernel's form (`view::markers`), files copied up but left unchanged are set aside,
//! and the rest becomes a layer: appended to the image, saved as the next managed layer,
//! or written to a file. The new layer is written and synced first, then the journal
//! names its digest, then the layer is renamed into place, and only then is the upper
//! directory emptied (`journal`). Killed at any instant, the user's changes are committed
//! or still in the upper directory, never lost and never committed twice.
//!
//! The caller holds the locks (see `crate::locks`): the image's change lock, no running
//! instance, and the data directory, taken from a lingering session by `session`.

pub mod journal;

use std::fs::{self, DirBuilder, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use fim_image::{ChangeLock, Image, ImageWriter};
use fim_layers::{BlockCache, BuildOptions, NoProgress, Stack, WhiteoutFormat};

use crate::durable;
use crate::locks::{DataLock, NoInstances};
use crate::places::Places;
use crate::view::layer_stack::{self, StackLower};
use crate::view::markers::{self, Format};
use journal::{crash_point, empty_upper, recover, write_journal};

/// Where `fim-layer commit` puts the new layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Appended to the image itself.
    Image,
    /// The next managed layer in `<data>/layers/`.
    Managed,
    /// A standalone layer file; the upper directory stays as it is.
    File(PathBuf),
}

/// Commits the upper directory of `places` to `target`; returns a one-line summary. The
/// locks are the proof that nothing else reads or changes the image and the upper
/// directory meanwhile.
pub fn commit(
    places: &Places,
    (change, _, _): (&ChangeLock, &NoInstances, &DataLock),
    target: &Target,
    excludes: &[Exclude],
) -> anyhow::Result<String> {
    let image = Image::from_file(change.file(), &places.image)?;
    recover(places, &image)?;

    let extras = layer_stack::extra_layers(&places.data)?;
    let stack = layer_stack::open(&image, &extras, BlockCache::new(64 << 20))?;
    // The layer builder reads the kernel's markers: bring every other format to them.
    markers::convert(
        &places.data,
        &places.upper,
        &StackLower(&stack),
        Format::Kernel,
    )?;
    if is_empty(&places.upper)? {
        return Ok("nothing to commit: the upper directory is empty".into());
    }
    let mut exclude = unchanged_copies(&places.upper, &stack)?;
    exclude.extend(excluded(&places.upper, excludes)?);
    // A normal user's session is a user namespace in which the user is root: what they
    // own in the upper directory was root's there, and is root's in the layer. (In a
    // namespace mapped for the commit, `namespaces::enter_for_commit`, the caller is
    // root already and every owner reads as it is inside.)
    let options = BuildOptions {
        whiteouts: WhiteoutFormat::Overlay,
        exclude,
        owner_as_root: layer_stack::own_files_as_root(),
        ..BuildOptions::default()
    };
    let no_space = |e: anyhow::Error| {
        // Every error on the way keeps the io::Error as its source.
        let full = e.chain().any(|c| {
            c.downcast_ref::<io::Error>()
                .is_some_and(|e| e.raw_os_error() == Some(libc::ENOSPC))
        });
        if full {
            e.context("no space left on the device: free some, then commit again (the image and your changes are unchanged)")
        } else {
            e
        }
    };
    match target {
        Target::Image => {
            let mut writer = ImageWriter::extend(&image).map_err(|e| no_space(e.into()))?;
            writer
                .add_layer_from_dir(&places.upper, &options, &NoProgress)
                .map_err(|e| no_space(e.into()))?;
            let sealed = writer.seal().map_err(|e| no_space(e.into()))?;
            let layer = *sealed
                .layers()
                .last()
                .context("the new image has no layers")?;
            crash_point("sealed");
            write_journal(&places.data, &layer.digest).map_err(no_space)?;
            crash_point("journaled");
            sealed.persist()?;
            crash_point("persisted");
            empty_upper(places)?;
            Ok(format!(
                "committed to {} as layer {} ({})",
                places.image.display(),
                image.layer_entries().len(),
                size(layer.size)
            ))
        }
        Target::Managed => {
            let dir = layer_stack::managed_dir(&places.data);
            DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let (temp, stats) =
                layer_stack::write_layer_file(&places.upper, &dir, &options).map_err(no_space)?;
            let (digest, bytes) = (stats.digest, stats.layer_size);
            let name = next_managed_name(&dir)?;
            crash_point("sealed");
            write_journal(&places.data, &digest).map_err(no_space)?;
            crash_point("journaled");
            let path = dir.join(&name);
            temp.persist(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            durable::sync_dir(&dir);
            crash_point("persisted");
            empty_upper(places)?;
            Ok(format!("committed to {} ({})", path.display(), size(bytes)))
        }
        Target::File(path) => {
            let stats =
                layer_stack::create_layer_file(&places.upper, path, &options).map_err(no_space)?;
            Ok(format!(
                "wrote {} ({}); the upper directory is unchanged",
                path.display(),
                size(stats.layer_size)
            ))
        }
    }
}

/// A `--exclude` pattern: an absolute path where `*`, `?` and `[...]` match within one
/// component.
#[derive(Debug, Clone)]
pub struct Exclude(glob::Pattern);

impl Exclude {
    pub fn new(pattern: &str) -> anyhow::Result<Exclude> {
        if !pattern.starts_with('/') {
            anyhow::bail!(
                "fim-layer commit --exclude {pattern}: the pattern must be an absolute path in the image, e.g. '/{}'",
                pattern.trim_start_matches("./")
            );
        }
        let compiled = glob::Pattern::new(pattern.trim_end_matches('/')).map_err(|e| {
            anyhow::anyhow!("fim-layer commit --exclude {pattern}: {e}; write a pattern such as '/var/lib/apt/lists/*'")
        })?;
        Ok(Exclude(compiled))
    }

    fn matches(&self, path: &str) -> bool {
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        self.0.matches_with(path, options)
    }
}

/// `(device, inode)` of the upper directory's entries whose path in the image matches an
/// exclude pattern; the layer builder leaves them out, with all they hold.
fn excluded(upper: &Path, excludes: &[Exclude]) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut found = Vec::new();
    if excludes.is_empty() {
        return Ok(found);
    }
    let mut pending = vec![PathBuf::from("/")];
    while let Some(inside) = pending.pop() {
        let dir = upper.join(inside.strip_prefix("/").unwrap_or(&inside));
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let entry = entry?;
            let path = inside.join(entry.file_name());
            let meta = entry.metadata()?;
            if excludes.iter().any(|e| e.matches(&path.to_string_lossy())) {
                found.push((meta.dev(), meta.ino()));
            } else if meta.is_dir() {
                pending.push(path);
            }
        }
    }
    Ok(found)
}

fn size(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} bytes"),
        1024..1048576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1048576.0),
    }
}

/// `N.layer` for the next number after the managed layers already there.
fn next_managed_name(dir: &Path) -> anyhow::Result<String> {
    let highest = layer_stack::layer_files(dir, true)?
        .iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0);
    Ok(format!("{}.layer", highest + 1))
}

fn is_empty(dir: &Path) -> anyhow::Result<bool> {
    Ok(fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .next()
        .is_none())
}

/// Files of the upper directory that equal the file at the same path in the layers in
/// content and metadata (copied up, then left or put back as they were): the lower
/// layers already hold them, so the new layer need not. Not below a replaced directory
/// (which hides the lower one), and not hard links (the link must be kept).
fn unchanged_copies(upper: &Path, stack: &Stack) -> anyhow::Result<Vec<(u64, u64)>> {
    let owner_matters = nix::unistd::geteuid().is_root();
    let lower = StackLower(stack);
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = upper.join(&relative);
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let entry = entry?;
            let path = relative.join(entry.file_name());
            let meta = entry.metadata()?;
            if meta.is_dir() {
                if !markers::is_opaque(&upper.join(&path)) {
                    pending.push(path);
                }
                continue;
            }
            if !meta.is_file() || meta.nlink() > 1 {
                continue;
            }
            let Some(below) = lower.resolve(&path)? else {
                continue;
            };
            let i = below.inode;
            let same_meta = i.mode == meta.mode()
                && i.size == meta.len()
                && i.mtime_sec == meta.mtime()
                && i64::from(i.mtime_nsec) == meta.mtime_nsec()
                && (!owner_matters || (i.uid == meta.uid() && i.gid == meta.gid()))
                && user_xattrs(&upper.join(&path))? == stack.layers()[below.layer].xattrs(&i)?;
            if same_meta && same_content(&upper.join(&path), stack, &below)? {
                found.push((meta.dev(), meta.ino()));
            }
        }
    }
    Ok(found)
}

/// The xattrs of an upper file that are the user's, not an overlay's bookkeeping (which
/// the layer builder drops too), sorted by name as a layer stores them.
fn user_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use std::os::unix::ffi::OsStrExt;
    let mut found = Vec::new();
    for name in xattr::list(path)? {
        let bytes = name.as_bytes();
        if fim_layers::scan::is_overlay_private_xattr(bytes) {
            continue;
        }
        if let Some(value) = xattr::get(path, &name)? {
            found.push((bytes.to_vec(), value));
        }
    }
    found.sort();
    Ok(found)
}

fn same_content(path: &Path, stack: &Stack, below: &fim_layers::Entry) -> anyhow::Result<bool> {
    let layer = &stack.layers()[below.layer];
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut ours = vec![0u8; 1 << 20];
    let mut theirs = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = read_full(&mut file, &mut ours)?;
        if n == 0 {
            return Ok(offset == below.inode.size);
        }
        let m = layer.read(&below.inode, offset, &mut theirs[..n])?;
        if m != n || ours[..n] != theirs[..n] {
            return Ok(false);
        }
        offset += n as u64;
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read(&mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}
