//! The image as the sandbox will see it: paths looked up inside the session's writable
//! view, symlinks resolved within it (never out to the host), before bubblewrap runs.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

use super::bwrap::Mount;
use crate::debug;

/// Opens `path` inside the image, resolving symlinks as the sandbox would.
pub fn open_inside(root: &File, path: &Path, flags: OFlag) -> Option<File> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(Mode::empty())
        .resolve(ResolveFlag::RESOLVE_IN_ROOT);
    openat2(root, path, how).ok().map(File::from)
}

/// A text file of the image, empty when it has none.
pub fn read_inside(root: &File, path: &str) -> String {
    let mut text = Vec::new();
    if let Some(mut file) = open_inside(root, Path::new(path), OFlag::O_RDONLY) {
        let _ = file.read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// Whether something can be mounted at `dst`: not onto a symlink of the image, which
/// bubblewrap resolves against its own scratch root rather than the image, so the mount
/// would not land where the link leads (a debug line says so).
pub fn mountable_at(root: &File, dst: &Path) -> bool {
    let link = open_inside(root, dst, OFlag::O_PATH | OFlag::O_NOFOLLOW)
        .and_then(|f| f.metadata().ok())
        .is_some_and(|m| m.file_type().is_symlink());
    if link {
        debug::log(format!(
            "{} is a symlink in the image; nothing is mounted there",
            dst.display()
        ));
    }
    !link
}

/// [`mountable_at`] the destination of `mount`.
pub fn mountable(root: &File, mount: &Mount) -> bool {
    let (Mount::Bind { dst, .. } | Mount::Private { dst }) = mount;
    mountable_at(root, dst)
}
