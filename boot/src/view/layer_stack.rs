//! The layers a run stacks, bottom first: the image's own (embedded), then the managed
//! layers in the data directory's `layers/`, then the files and directories named by
//! `FIM_LAYERS` (colon-separated) in the order given. Within a directory, layer files are
//! ordered by the number their name starts with (`2.layer` before `10.layer`), then by
//! name; names starting with `.` are skipped (temporaries).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use fim_image::Image;
use fim_layers::{
    BlockCache, BuildOptions, BuildStats, Entry, Layer, NoProgress, ROOT, Stack, build_layer,
};
use memmap2::Mmap;

use super::markers::{Lower, LowerEntry};
use crate::durable;

/// Where a layer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Embedded,
    Managed,
    Environment,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Embedded => "embedded",
            Origin::Managed => "managed",
            Origin::Environment => "FIM_LAYERS",
        })
    }
}

/// A layer outside the image: a mapped layer file.
pub struct LayerFile {
    pub origin: Origin,
    pub path: PathBuf,
    pub map: Arc<Mmap>,
    pub digest: [u8; 32],
    pub entries: u32,
}

impl LayerFile {
    /// Maps `path` and checks its layer header and tables (not its data: see `verify`).
    pub fn open(path: &Path, origin: Origin) -> anyhow::Result<(LayerFile, Layer)> {
        let file =
            open_noatime(path, false).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: layer files are written whole and renamed into place, never changed.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        let map = Arc::new(map);
        let layer = Layer::open(map.clone(), 0, map.len() as u64, BlockCache::new(1 << 20))
            .with_context(|| format!("{} is not a valid layer", path.display()))?;
        if layer.superblock().layer_size != map.len() as u64 {
            bail!(
                "{} is not a valid layer: it holds {} bytes after the layer",
                path.display(),
                map.len() as u64 - layer.superblock().layer_size
            );
        }
        let me = LayerFile {
            origin,
            path: path.to_path_buf(),
            map,
            digest: layer.digest(),
            entries: layer.inode_count(),
        };
        Ok((me, layer))
    }
}

/// Prefix of a layer file being written (skipped by [`layer_files`] as a dotfile; the
/// managed directory's leftovers are removed by the next commit).
pub const TEMP_PREFIX: &str = ".new-layer-";

/// Builds a layer from `source` into a synced temporary file in `dir` (mode 0644), to be
/// renamed into place by the caller; the temporary itself is never packed.
pub fn write_layer_file(
    source: &Path,
    dir: &Path,
    options: &BuildOptions,
) -> anyhow::Result<(tempfile::TempPath, BuildStats)> {
    let temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let mut options = options.clone();
    let meta = temp.as_file().metadata()?;
    options.exclude.push((meta.dev(), meta.ino()));
    let stats = build_layer(source, temp.as_file(), 0, &options, &NoProgress)?;
    let file = temp.as_file();
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temp.path().display()))?;
    Ok((temp.into_temp_path(), stats))
}

/// Writes the layer of `source` to the file `out`, whole or not at all: never renamed over
/// a device, fifo, directory or symlink, and durable in its directory once it returns.
pub fn create_layer_file(
    source: &Path,
    out: &Path,
    options: &BuildOptions,
) -> anyhow::Result<BuildStats> {
    fim_image::refuse_to_replace_a_non_file(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    let dir = durable::dir_of(out);
    let (temp, stats) = write_layer_file(source, dir, options)?;
    temp.persist(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    durable::sync_dir(dir);
    Ok(stats)
}

/// The caller's uid and gid, recorded as root's in the layers it writes, unless it is
/// root: the user is root in the image's sessions, and a package manager run there under
/// `fim-root` installs files a later run as root expects to be root's.
pub fn own_files_as_root() -> Option<(u32, u32)> {
    let euid = nix::unistd::geteuid();
    (!euid.is_root()).then(|| (euid.as_raw(), nix::unistd::getegid().as_raw()))
}

/// The managed layers directory of a data directory.
pub fn managed_dir(data: &Path) -> PathBuf {
    data.join("layers")
}

/// The extra layers of a run: managed, then `FIM_LAYERS`; each checked as it is opened.
pub fn extra_layers(data: &Path) -> anyhow::Result<Vec<LayerFile>> {
    let mut files = Vec::new();
    for path in layer_files(&managed_dir(data), true)? {
        files.push(LayerFile::open(&path, Origin::Managed)?.0);
    }
    if let Some(list) = std::env::var_os("FIM_LAYERS").filter(|v| !v.is_empty()) {
        for item in std::env::split_paths(&list) {
            let meta = std::fs::metadata(&item).with_context(|| {
                format!("FIM_LAYERS names {}, which cannot be read", item.display())
            })?;
            let paths = if meta.is_dir() {
                layer_files(&item, false)?
            } else {
                vec![item]
            };
            for path in paths {
                files.push(LayerFile::open(&path, Origin::Environment)?.0);
            }
        }
    }
    Ok(files)
}

/// The layer files of `dir` in stacking order; a missing directory has none when
/// `optional`.
pub fn layer_files(dir: &Path, optional: bool) -> anyhow::Result<Vec<PathBuf>> {
    let names = match names_noatime(dir) {
        Ok(names) => names,
        Err(e) if optional && e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut files = Vec::new();
    for name in names {
        let path = dir.join(&name);
        if name.as_bytes().starts_with(b".")
            || !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file())
        {
            continue;
        }
        files.push(path);
    }
    files.sort_by_key(|p| order_key(p.file_name()));
    Ok(files)
}

/// Opens `path` (a directory when `dir`) without updating its access time where this user
/// may ask that (`O_NOATIME`: the owner): reading the layers of an ephemeral run changes
/// nothing in the data directory, not even times.
fn open_noatime(path: &Path, dir: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |extra: i32| {
        let directory = if dir { libc::O_DIRECTORY } else { 0 };
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(extra | directory)
            .open(path)
    };
    match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        other => other,
    }
}

/// The names in directory `dir`, read as [`open_noatime`] opens.
fn names_noatime(dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    let file = open_noatime(dir, true)?;
    let mut listing = nix::dir::Dir::from_fd(file.into()).map_err(io::Error::from)?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(io::Error::from)?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Numeric order first (a name without a leading number sorts after all numbered ones),
/// then the name itself.
fn order_key(name: Option<&OsStr>) -> (u128, Vec<u8>) {
    let name = name.map(|n| n.as_bytes().to_vec()).unwrap_or_default();
    let digits: Vec<u8> = name
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    let number = std::str::from_utf8(&digits)
        .ok()
        .and_then(|d| d.parse::<u128>().ok())
        .unwrap_or(u128::MAX);
    (number, name)
}

/// Opens the whole stack: the image's layers, then `extras`.
pub fn open(image: &Image, extras: &[LayerFile], cache: Arc<BlockCache>) -> anyhow::Result<Stack> {
    let mut layers = image.open_layers(cache.clone())?;
    for extra in extras {
        let layer = Layer::open(extra.map.clone(), 0, extra.map.len() as u64, cache.clone())
            .with_context(|| format!("{} is not a valid layer", extra.path.display()))?;
        layers.push(layer);
    }
    Ok(Stack::new(layers)?)
}

/// Identity of a stack: instances may share a session only if they serve the same layers.
pub fn identity(image: &Image, extras: &[LayerFile]) -> String {
    let mut digests = Vec::new();
    for layer in image.layer_entries() {
        digests.extend_from_slice(&layer.digest);
    }
    for extra in extras {
        digests.extend_from_slice(&extra.digest);
    }
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&digests))
}

/// A stack looked up by path, standing for the lower layers when nothing is mounted.
pub struct StackLower<'a>(pub &'a Stack);

impl StackLower<'_> {
    /// The entry at `path` (relative to the root), if any.
    pub fn resolve(&self, path: &Path) -> io::Result<Option<Entry>> {
        let mut entry = self.0.entry(ROOT).map_err(io::Error::other)?;
        for part in path.iter() {
            if !entry.inode.is_dir() {
                return Ok(None);
            }
            match self
                .0
                .lookup(entry.id, part.as_bytes())
                .map_err(io::Error::other)?
            {
                Some(next) => entry = next,
                None => return Ok(None),
            }
        }
        Ok(Some(entry))
    }
}

impl Lower for StackLower<'_> {
    fn entry(&self, path: &Path) -> io::Result<Option<LowerEntry>> {
        Ok(self.resolve(path)?.map(|e| {
            let i = e.inode;
            let mtime = if i.mtime_sec >= 0 {
                UNIX_EPOCH + Duration::new(i.mtime_sec as u64, i.mtime_nsec)
            } else {
                UNIX_EPOCH
            };
            LowerEntry {
                is_dir: i.is_dir(),
                mode: i.mode,
                uid: i.uid,
                gid: i.gid,
                mtime,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_files_sort_by_number_not_as_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "10.layer",
            "2.layer",
            "1.layer",
            "notes",
            ".5.layer.tmp",
            "011.layer",
        ] {
            std::fs::write(dir.path().join(name), "").expect("write");
        }
        std::fs::create_dir(dir.path().join("3.layer")).expect("mkdir");
        let names: Vec<String> = layer_files(dir.path(), false)
            .expect("list")
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["1.layer", "2.layer", "10.layer", "011.layer", "notes"]
        );
    }

    #[test]
    fn a_missing_managed_directory_holds_no_layers() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            layer_files(&dir.path().join("layers"), true)
                .expect("list")
                .is_empty()
        );
        assert!(layer_files(&dir.path().join("layers"), false).is_err());
    }
}
