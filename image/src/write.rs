//! Creating and changing images, crash-safely: every change is written to a new file in the
//! same directory, synced, and renamed over the old one. Killed at any instant, the path
//! holds either the old image or the new one; a running instance keeps its old mapping.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fim_layers::{BuildOptions, BuildStats, Progress, build_layer};
use fim_reserved::Reserved;

use crate::elf::elf_end;
use crate::error::{ImageError, Result};
use crate::image::Image;
use crate::trailer::{ALIGN, Footer, LayerEntry, TableEntry, ToolEntry};

/// Prefix of the temporary files a config change writes next to the image; stale ones
/// are removed under the change lock.
const TEMP_MARK: &str = ".fim-tmp";
/// Prefix of a build's temporary file: distinct, so a change never removes a live build's.
const BUILD_MARK: &str = ".fim-build";
/// zstd level of embedded tools: written once at pack time, decompressed at each use.
const TOOL_LEVEL: i32 = 19;

/// The launcher bytes of `path`: the ELF alone, without any payload already appended.
pub fn read_launcher(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = fs::read(path).map_err(|e| ImageError::io(path, e))?;
    let end = elf_end(&bytes)?;
    bytes.truncate(end as usize);
    Ok(bytes)
}

/// Builds a new image at `out`; nothing appears at `out` until [`ImageWriter::finish`].
pub struct ImageWriter {
    out: PathBuf,
    tmp: tempfile::NamedTempFile,
    footer: Footer,
    layers: Vec<LayerEntry>,
    /// Embedded tools, which come before the layers.
    tools: Vec<ToolEntry>,
    pos: u64,
    /// Mode and owner of the written image: 0755 and the writer for a new image, those of
    /// the old one when an image is extended.
    mode: u32,
    owner: Option<(u32, u32)>,
}

/// The directory holding `path` (`.` for a bare file name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn temp_in(image: &Path, mark: &str) -> Result<tempfile::NamedTempFile> {
    let dir = dir_of(image);
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}{mark}"))
        .tempfile_in(dir)
        .map_err(|e| ImageError::io(dir, e))
}

fn zeros(file: &File, from: u64, to: u64, path: &Path) -> Result<()> {
    if to > from {
        file.write_all_at(&vec![0u8; (to - from) as usize], from)
            .map_err(|e| ImageError::io(path, e))?;
    }
    Ok(())
}

/// A new image or layer file is renamed over `out`: that must not replace a device
/// (`-o /dev/null` would leave a regular file where the device was), a directory, a
/// symlink or a socket.
pub fn refuse_to_replace_a_non_file(out: &Path) -> Result<()> {
    let Ok(meta) = fs::symlink_metadata(out) else {
        return Ok(());
    };
    let kind = meta.file_type();
    let what = if kind.is_file() {
        return Ok(());
    } else if kind.is_symlink() {
        "it is a symlink, which the image would replace"
    } else if kind.is_dir() {
        "it is a directory"
    } else {
        "it is a device, fifo or socket, not a regular file"
    };
    Err(ImageError::NotAFile(what))
}

impl ImageWriter {
    /// Starts an image at `out` with `launcher` (ELF bytes) and `reserved` as its config.
    /// The launcher gets the image mark (`FI\x01` at byte 8) on the way.
    pub fn create(out: &Path, launcher: &[u8], reserved: &Reserved) -> Result<Self> {
        let launcher = &crate::elf::marked(launcher)?[..];
        let launcher_size = elf_end(launcher)?;
        if launcher_size != launcher.len() as u64 {
            return Err(ImageError::Launcher(
                "launcher has bytes past its ELF end; pass the ELF alone".into(),
            ));
        }
        refuse_to_replace_a_non_file(out)?;
        let tmp = temp_in(out, BUILD_MARK)?;
        let reserved_offset = launcher_size.next_multiple_of(ALIGN);
        let file = tmp.as_file();
        let p = tmp.path().to_owned();
        file.write_all_at(launcher, 0)
            .map_err(|e| ImageError::io(&p, e))?;
        zeros(file, launcher_size, reserved_offset, &p)?;
        file.write_all_at(&reserved.to_bytes(), reserved_offset)
            .map_err(|e| ImageError::io(&p, e))?;
        let pos = reserved_offset + fim_reserved::BLOCK_SIZE as u64;
        Ok(ImageWriter {
            out: out.to_owned(),
            tmp,
            footer: Footer {
                layer_count: 0,
                launcher_size,
                launcher_checksum: xxhash_rust::xxh3::xxh3_64(launcher),
                reserved_offset,
                table_offset: 0,
                table_checksum: 0,
            },
            layers: Vec::new(),
            tools: Vec::new(),
            pos,
            mode: 0o755,
            owner: None,
        })
    }

    /// Starts a new version of `image`, whose change lock the caller holds: the same
    /// launcher, config and layers, to which layers can then be appended. The old file
    /// is not touched until [`SealedImage::persist`] renames the new one over it.
    pub fn extend(image: &Image) -> Result<Self> {
        let path = image.path();
        let meta = fs::metadata(path).map_err(|e| ImageError::io(path, e))?;
        let tmp = temp_in(path, TEMP_MARK)?;
        let footer = *image.footer();
        let end = footer.table_offset;
        let bytes = image
            .bytes()
            .get(..end as usize)
            .ok_or_else(|| ImageError::corrupt("layer table past the end of the image"))?;
        let tmp_path = tmp.path().to_owned();
        let mut file = tmp.as_file();
        file.write_all(bytes)
            .map_err(|e| ImageError::io(&tmp_path, e))?;
        Ok(ImageWriter {
            out: path.to_owned(),
            tmp,
            footer,
            layers: image.layer_entries().to_vec(),
            tools: image.tool_entries().to_vec(),
            pos: end,
            mode: meta.mode() & 0o7777,
            owner: Some((meta.uid(), meta.gid())),
        })
    }

    /// Embeds the program `name`, stored as one zstd frame (level 19: tools are written
    /// once and read at each start); all tools come before the first layer.
    pub fn add_tool(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        if !crate::trailer::valid_tool_name(name) {
            return Err(ImageError::corrupt(format!(
                "{name:?} cannot name an embedded tool (1-15 of a-z 0-9 . _ -)"
            )));
        }
        if !self.layers.is_empty() || self.tools.iter().any(|t| t.name == name) {
            return Err(ImageError::corrupt(format!(
                "the tool {name} must be embedded once, before the layers"
            )));
        }
        if bytes.len() as u64 > crate::image::TOOL_SIZE_MAX {
            return Err(ImageError::corrupt(format!(
                "the tool {name} is larger than {} bytes",
                crate::image::TOOL_SIZE_MAX
            )));
        }
        let stored = zstd::bulk::compress(bytes, TOOL_LEVEL).map_err(|source| ImageError::Io {
            path: self.tmp.path().to_owned(),
            source,
        })?;
        let offset = self.append(&stored)?;
        self.tools.push(ToolEntry {
            offset,
            size: stored.len() as u64,
            digest: *blake3::hash(bytes).as_bytes(),
            name: name.to_string(),
            compressed: true,
        });
        Ok(())
    }

    /// Writes `bytes` at the next aligned offset (zeros before it); returns that offset.
    fn append(&mut self, bytes: &[u8]) -> Result<u64> {
        let start = self.pos.next_multiple_of(ALIGN);
        let path = self.tmp.path().to_owned();
        zeros(self.tmp.as_file(), self.pos, start, &path)?;
        self.tmp
            .as_file()
            .write_all_at(bytes, start)
            .map_err(|e| ImageError::io(&path, e))?;
        self.pos = start + bytes.len() as u64;
        Ok(start)
    }

    /// Appends a layer already built and verified (a layer file's bytes).
    pub fn add_layer_bytes(&mut self, layer: &[u8], digest: [u8; 32]) -> Result<()> {
        let offset = self.append(layer)?;
        self.layers.push(LayerEntry {
            offset,
            size: layer.len() as u64,
            digest,
        });
        Ok(())
    }

    /// Builds a layer from directory `source` and appends it.
    pub fn add_layer_from_dir(
        &mut self,
        source: &Path,
        options: &BuildOptions,
        progress: &dyn Progress,
    ) -> Result<BuildStats> {
        let start = self.pos.next_multiple_of(ALIGN);
        let path = self.tmp.path().to_owned();
        zeros(self.tmp.as_file(), self.pos, start, &path)?;
        // The output may lie inside the input: never pack the image into itself.
        let mut options = options.clone();
        for path in [self.tmp.path(), self.out.as_path()] {
            if let Ok(meta) = fs::metadata(path) {
                options.exclude.push((meta.dev(), meta.ino()));
            }
        }
        let stats = build_layer(source, self.tmp.as_file(), start, &options, progress)
            .map_err(|e| ImageError::layer(self.layers.len(), e))?;
        self.layers.push(LayerEntry {
            offset: start,
            size: stats.layer_size,
            digest: stats.digest,
        });
        self.pos = start + stats.layer_size;
        Ok(stats)
    }

    /// Writes the trailer, syncs, and atomically puts the image at its path.
    pub fn finish(self) -> Result<()> {
        self.seal()?.persist()
    }

    /// Writes the trailer and syncs; the image is complete but not yet at its path, so
    /// the caller can record what it is about to do before [`SealedImage::persist`].
    pub fn seal(mut self) -> Result<SealedImage> {
        if self.layers.is_empty() {
            return Err(ImageError::corrupt("an image needs at least one layer"));
        }
        let path = self.tmp.path().to_owned();
        let mut table = Vec::new();
        let entries = self
            .tools
            .iter()
            .cloned()
            .map(TableEntry::Tool)
            .chain(self.layers.iter().copied().map(TableEntry::Layer));
        for entry in entries {
            table.extend_from_slice(&entry.encode());
        }
        self.footer.layer_count = u32::try_from(self.layers.len() + self.tools.len())
            .map_err(|_| ImageError::corrupt("too many layers"))?;
        self.footer.table_offset = self.pos;
        self.footer.table_checksum = xxhash_rust::xxh3::xxh3_64(&table);
        let file = self.tmp.as_file_mut();
        if let Some((uid, gid)) = self.owner {
            // Keep the owner when we may (root changing a user's image). Before chmod,
            // since chown clears set-id bits.
            let _ = std::os::unix::fs::fchown(&*file, Some(uid), Some(gid));
        }
        file.seek(SeekFrom::Start(self.pos))
            .and_then(|_| file.write_all(&table))
            .and_then(|_| file.write_all(&self.footer.encode()))
            .and_then(|_| file.set_permissions(fs::Permissions::from_mode(self.mode)))
            .and_then(|_| file.sync_all())
            .map_err(|e| ImageError::io(&path, e))?;
        Ok(SealedImage {
            out: self.out,
            // Closed before the rename: an executable with an open writer cannot be run
            // ("text file busy"), and the image may be started the moment it appears.
            tmp: self.tmp.into_temp_path(),
            layers: self.layers,
        })
    }
}

/// A complete, synced new image waiting to be renamed over its path; dropped, it is removed.
pub struct SealedImage {
    out: PathBuf,
    tmp: tempfile::TempPath,
    layers: Vec<LayerEntry>,
}

impl SealedImage {
    /// The layers of the new image.
    pub fn layers(&self) -> &[LayerEntry] {
        &self.layers
    }

    /// Atomically puts the image at its path.
    pub fn persist(self) -> Result<()> {
        let out = self.out;
        self.tmp
            .persist(&out)
            .map_err(|e| ImageError::io(&out, e.error))?;
        sync_dir(&out);
        Ok(())
    }
}

/// The exclusive change lock of an image: config changes and layer changes take it in
/// turn. Stale temporaries of killed changes are removed once it is held.
pub struct ChangeLock {
    file: File,
}

impl ChangeLock {
    pub fn acquire(path: &Path) -> Result<ChangeLock> {
        let file = lock_image(path)?;
        remove_stale_temps(path);
        Ok(ChangeLock { file })
    }

    /// The locked image file (the inode the path names).
    pub fn file(&self) -> &File {
        &self.file
    }
}

fn sync_dir(path: &Path) {
    // Best effort: some file systems refuse fsync on directories.
    if let Ok(d) = File::open(dir_of(path)) {
        let _ = d.sync_all();
    }
}

/// Takes the exclusive change lock of the image at `path`, returning the locked file.
/// The lock lives on the image inode; after a rename the path holds a new inode, so a
/// waiter re-checks that it locked what the path now names.
fn lock_image(path: &Path) -> Result<File> {
    loop {
        let file = File::open(path).map_err(|e| ImageError::io(path, e))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(ImageError::io(path, std::io::Error::last_os_error()));
        }
        let locked = file.metadata().map_err(|e| ImageError::io(path, e))?;
        let current = fs::metadata(path).map_err(|e| ImageError::io(path, e))?;
        if locked.ino() == current.ino() && locked.dev() == current.dev() {
            return Ok(file);
        }
    }
}

/// Removes temporaries left by a change that was killed. Called under the change lock,
/// so no live change owns them.
fn remove_stale_temps(path: &Path) {
    let Some(name) = path.file_name() else {
        return;
    };
    let dir = dir_of(path);
    let prefix = format!(".{}{TEMP_MARK}", name.to_string_lossy());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Whether [`update_reserved`] wrote a new image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updated {
    Changed,
    Unchanged,
}

/// Applies `change` to the reserved block of the image at `path`, crash-safely.
/// `change` returns an error to abort (the image stays byte-identical).
pub fn update_reserved<E>(
    path: &Path,
    change: impl FnOnce(&mut Reserved) -> std::result::Result<(), E>,
) -> std::result::Result<Updated, E>
where
    E: From<ImageError>,
{
    let lock = ChangeLock::acquire(path)?;
    let locked = lock.file();
    let image = Image::from_file(locked, path)?;
    let mut reserved = image.reserved().clone();
    change(&mut reserved)?;
    if &reserved == image.reserved() {
        return Ok(Updated::Unchanged);
    }
    let offset = image.footer().reserved_offset;
    drop(image);

    let mut tmp = temp_in(path, TEMP_MARK)?;
    let tmp_path = tmp.path().to_owned();
    let meta = locked.metadata().map_err(|e| ImageError::io(path, e))?;
    let mut src = locked;
    src.seek(SeekFrom::Start(0))
        .and_then(|_| std::io::copy(&mut src, tmp.as_file_mut()))
        .map_err(|e| ImageError::io(&tmp_path, e))?;
    let file = tmp.as_file();
    // Keep the owner when we may (root editing a user's image); otherwise we are the owner.
    // Before chmod, since chown clears set-id bits.
    let _ = std::os::unix::fs::fchown(file, Some(meta.uid()), Some(meta.gid()));
    file.write_all_at(&reserved.to_bytes(), offset)
        .and_then(|_| file.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777)))
        .and_then(|_| file.sync_all())
        .map_err(|e| ImageError::io(&tmp_path, e))?;
    // Closed before the rename, so no instance started right after can hit "text file busy".
    tmp.into_temp_path()
        .persist(path)
        .map_err(|e| ImageError::io(path, e.error))?;
    sync_dir(path);
    Ok(Updated::Changed)
}
