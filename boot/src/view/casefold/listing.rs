//! A directory's entries as the view below lists them. The server answers the kernel's
//! listings from one; the walker ahead (`ahead`) makes them before the kernel asks, with
//! an `O_PATH` descriptor of each entry already open, which the first listing with
//! attributes takes instead of opening the entry itself.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::DirEntryExt;
use std::path::Path;
use std::sync::Mutex;

use fuser::FileType;

use super::sys::{self, Result, io_errno};

/// One entry: inode number, kind, name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ino: u64,
    pub kind: FileType,
    pub name: Vec<u8>,
}

/// A directory's entries (`.` and `..` left out), and descriptors of some of them.
#[derive(Debug)]
pub struct DirListing {
    pub entries: Vec<Entry>,
    opened: Mutex<Vec<Option<OwnedFd>>>,
}

impl DirListing {
    /// A listing whose entries are not opened.
    pub fn new(entries: Vec<Entry>) -> DirListing {
        DirListing::opened(entries, Vec::new())
    }

    /// A listing with `opened[i]` the descriptor of `entries[i]`, where there is one.
    pub fn opened(entries: Vec<Entry>, opened: Vec<Option<OwnedFd>>) -> DirListing {
        DirListing {
            entries,
            opened: Mutex::new(opened),
        }
    }

    /// The descriptor of entry `index`, once: whoever takes it owns it.
    pub fn take_opened(&self, index: usize) -> Option<OwnedFd> {
        self.opened
            .lock()
            .ok()?
            .get_mut(index)
            .and_then(Option::take)
    }
}

/// The entries of the directory `dir` (any descriptor of it, `O_PATH` included), read
/// through its magic link as the standard library reads any directory.
pub fn read(dir: &impl AsRawFd) -> Result<Vec<Entry>> {
    let path = sys::proc_path(dir);
    let listing =
        std::fs::read_dir(Path::new(OsStr::from_bytes(path.as_bytes()))).map_err(io_errno)?;
    let mut entries = Vec::new();
    for e in listing {
        let e = e.map_err(io_errno)?;
        entries.push(Entry {
            ino: e.ino(),
            kind: kind(e.file_type().ok()),
            name: e.file_name().into_vec(),
        });
    }
    Ok(entries)
}

/// The kind a listing gives; a file system that gives none lists a regular file (the
/// attributes sent with a listing, and any lookup, say what it really is).
fn kind(t: Option<std::fs::FileType>) -> FileType {
    t.and_then(FileType::from_std)
        .unwrap_or(FileType::RegularFile)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;

    fn open(path: &std::path::Path) -> OwnedFd {
        nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .expect("open")
    }

    #[test]
    fn a_listing_gives_each_entry_with_its_kind_and_leaves_out_dots() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("Dir")).expect("mkdir");
        std::fs::write(tmp.path().join("Data.PAK"), b"x").expect("write");
        std::os::unix::fs::symlink("Data.PAK", tmp.path().join("link")).expect("symlink");
        let mut entries = read(&open(tmp.path())).expect("read");
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let seen: Vec<(&[u8], FileType)> = entries
            .iter()
            .map(|e| (e.name.as_slice(), e.kind))
            .collect();
        assert_eq!(
            seen,
            [
                (&b"Data.PAK"[..], FileType::RegularFile),
                (b"Dir", FileType::Directory),
                (b"link", FileType::Symlink)
            ]
        );
        assert!(entries.iter().all(|e| e.ino != 0));
    }

    #[test]
    fn an_opened_entry_is_taken_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let entry = Entry {
            ino: 1,
            kind: FileType::Directory,
            name: b"x".to_vec(),
        };
        let listing = DirListing::opened(vec![entry.clone(), entry], vec![Some(open(tmp.path()))]);
        assert!(listing.take_opened(0).is_some());
        assert!(listing.take_opened(0).is_none());
        assert!(listing.take_opened(1).is_none());
        assert!(DirListing::new(Vec::new()).take_opened(0).is_none());
    }
}
