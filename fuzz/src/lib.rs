//! What the fuzz targets share: fuzz bytes as the read-only memory map every reader of
//! images takes, the fixed head that image-tail inputs are appended to, and the sandbox
//! an import unpacks into and must not reach out of.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Mmap, MmapMut};

/// `bytes` in an anonymous read-only map (a zero-length input gets one zero byte: a map
/// cannot be empty).
pub fn map(bytes: &[u8]) -> Arc<Mmap> {
    let mut map = MmapMut::map_anon(bytes.len().max(1)).expect("anonymous map");
    map[..bytes.len()].copy_from_slice(bytes);
    Arc::new(map.make_read_only().expect("read-only map"))
}

/// The smallest launcher the packer accepts: a 120-byte x86_64 ELF, its header and one
/// loadable segment (`fuzz/tiny-launcher.hex`). `tools/fuzz` builds the seed images with the
/// same file (`fim build --launcher`), so their offsets match [`image_head`].
pub fn tiny_launcher() -> Vec<u8> {
    let hex = include_str!("../tiny-launcher.hex").trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("tiny-launcher.hex is hex"))
        .collect()
}

/// What every image built with [`tiny_launcher`] starts with: the launcher with the mark
/// the packer writes (`FI\x01` at byte 8), zero padding to 4096, and a default reserved block. Image-tail inputs
/// (layers, tools, layer table, footer) follow it.
pub fn image_head() -> &'static [u8] {
    static HEAD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    HEAD.get_or_init(|| {
        let mut head = tiny_launcher();
        let mark = fim_image::IMAGE_MARK_OFFSET..fim_image::IMAGE_MARK_OFFSET + 3;
        head[mark].copy_from_slice(&fim_image::IMAGE_MARK);
        head.resize(4096, 0);
        head.extend_from_slice(&fim_reserved::Reserved::new().to_bytes());
        head
    })
}

/// A temporary tree for one import: a staging directory two levels down, with canaries
/// beside it and above it (an empty directory, a file), so that an archive reaching out
/// of the staging directory through `..`, a symlink or a hardlink shows as a change.
/// Removed on drop, read-only directories included.
pub struct Sandbox {
    root: tempfile::TempDir,
    staging: PathBuf,
    /// Every path outside the staging directory, relative to the root, with what
    /// [`Sandbox::assert_untouched`] compares: kind, mode and, for files, contents.
    expected: BTreeMap<PathBuf, Snapshot>,
}

/// What must not change about a path outside the staging directory.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    file_type: std::fs::FileType,
    mode: u32,
    mtime: Option<(i64, i64)>,
    contents: Option<Vec<u8>>,
}

const CANARY_TEXT: &[u8] = b"an archive must not reach this file\n";

impl Sandbox {
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("fim-fuzz-import")
            .tempdir()
            .expect("temporary directory");
        let staging = root.path().join("outer/inner/staging");
        std::fs::create_dir_all(&staging).expect("staging directory");
        std::fs::create_dir(root.path().join("outer/canary")).expect("canary directory");
        std::fs::write(root.path().join("canary.txt"), CANARY_TEXT).expect("canary file");
        std::fs::write(root.path().join("outer/inner/canary.txt"), CANARY_TEXT)
            .expect("canary file");
        let mut sandbox = Sandbox {
            root,
            staging,
            expected: BTreeMap::new(),
        };
        sandbox.expected = sandbox.outside();
        sandbox
    }

    /// The directory an import may write into (it exists, empty).
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// A directory beside the staging directory for files the importer makes next to its
    /// output (temporary files it must remove itself).
    pub fn beside(&self) -> &Path {
        self.staging
            .parent()
            .expect("the staging directory has a parent")
    }

    /// Writes `bytes` to a file outside the staging directory and returns its path; it
    /// joins what must stay as it is.
    pub fn input(&mut self, bytes: &[u8]) -> PathBuf {
        let path = self.root.path().join("input");
        std::fs::write(&path, bytes).expect("input file");
        self.expected = self.outside();
        path
    }

    /// Panics if anything outside the staging directory appeared, vanished or changed.
    pub fn assert_untouched(&self) {
        let now = self.outside();
        if now != self.expected {
            let appeared: Vec<_> = now
                .keys()
                .filter(|p| !self.expected.contains_key(*p))
                .collect();
            let changed: Vec<_> = self
                .expected
                .iter()
                .filter(|(p, s)| now.get(*p) != Some(s))
                .map(|(p, _)| p)
                .collect();
            panic!(
                "the import reached outside its staging directory: appeared {appeared:?}, changed or gone {changed:?}"
            );
        }
    }

    /// Every path under the root but the staging directory and its contents. Directories'
    /// mtimes are left out: temporary files made and removed beside the staging directory
    /// change them, and what they would show (an entry added or removed) shows anyway.
    fn outside(&self) -> BTreeMap<PathBuf, Snapshot> {
        use std::os::unix::fs::MetadataExt;
        let mut found = BTreeMap::new();
        let mut pending = vec![self.root.path().to_owned()];
        while let Some(path) = pending.pop() {
            if path == self.staging {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).expect("metadata of a sandbox path");
            let contents = meta
                .is_file()
                .then(|| std::fs::read(&path).expect("sandbox file"));
            let relative = path.strip_prefix(self.root.path()).expect("under the root");
            found.insert(
                relative.to_owned(),
                Snapshot {
                    file_type: meta.file_type(),
                    mode: meta.mode(),
                    mtime: if meta.is_dir() {
                        None
                    } else {
                        Some((meta.mtime(), meta.mtime_nsec()))
                    },
                    contents,
                },
            );
            if meta.is_dir() {
                for entry in std::fs::read_dir(&path).expect("sandbox directory") {
                    pending.push(entry.expect("sandbox entry").path());
                }
            }
        }
        found
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        fim_packer::tarball::make_removable(self.root.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panics(f: impl FnOnce()) -> bool {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err()
    }

    #[test]
    fn writes_inside_the_staging_directory_are_allowed() {
        let mut sandbox = Sandbox::new();
        sandbox.input(b"archive");
        std::fs::create_dir(sandbox.staging().join("dir")).unwrap();
        std::fs::write(sandbox.staging().join("dir/file"), b"x").unwrap();
        std::fs::write(sandbox.beside().join("temporary"), b"x").unwrap();
        std::fs::remove_file(sandbox.beside().join("temporary")).unwrap();
        sandbox.assert_untouched();
    }

    #[test]
    fn a_file_beside_or_above_the_staging_directory_is_an_escape() {
        let sandbox = Sandbox::new();
        std::fs::write(sandbox.beside().join("escaped"), b"x").unwrap();
        assert!(panics(|| sandbox.assert_untouched()));
        let sandbox = Sandbox::new();
        std::fs::create_dir(sandbox.staging().join("../../../up")).unwrap();
        assert!(panics(|| sandbox.assert_untouched()));
    }

    #[test]
    fn a_changed_canary_or_mode_is_an_escape() {
        let sandbox = Sandbox::new();
        std::fs::write(sandbox.staging().join("../../../canary.txt"), b"changed").unwrap();
        assert!(panics(|| sandbox.assert_untouched()));
        let sandbox = Sandbox::new();
        use std::os::unix::fs::PermissionsExt;
        let canary = sandbox.staging().join("../../canary");
        std::fs::set_permissions(&canary, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(panics(|| sandbox.assert_untouched()));
    }
}
