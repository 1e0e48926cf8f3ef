//! The sandbox's root with the image's system directories read-only, mounted once per
//! session. A default run gets `/usr /etc /bin ...` read-only (only `fim-root` writes
//! them): bubblewrap would bind each over itself and remount it read-only at every launch,
//! reading the mount table again at each step (about 0.9 ms of a 5 ms relaunch, measured
//! with the same arguments and without them). The daemon binds the view once more at
//! `places.sealed`, with each system directory a read-only bind of itself; a launch binds
//! that tree as its root and asks bubblewrap for nothing more.
//!
//! ```text
//! places.sealed       bind of places.root (the view, casefold included)
//!   usr, etc, bin...  read-only binds of themselves (flags of the view kept)
//! ```
//!
//! What the launcher checks before it takes it ([`usable`]): every system directory it
//! would make read-only is read-only there (a directory `fim-root` made since, or one it
//! removed and made again, is not: removing a directory takes the mounts on it down), and
//! every mount point it needs inside one of them already exists (bubblewrap could not make
//! it in a read-only directory). Otherwise it asks bubblewrap as before.

use std::path::{Component, Path};

use anyhow::Context;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::statvfs::{FsFlags, statvfs};

use crate::debug;
use crate::sandbox::bwrap::SYSTEM_DIRS;

/// The [`SYSTEM_DIRS`] that are directories in the tree at `root` (a symlink, as `/bin`
/// to `usr/bin`, is read-only through its target).
pub fn system_dirs(root: &Path) -> Vec<String> {
    SYSTEM_DIRS
        .iter()
        .filter(|d| std::fs::symlink_metadata(root.join(d)).is_ok_and(|m| m.is_dir()))
        .map(|d| d.to_string())
        .collect()
}

/// Mounts the sealed root of the view `root` at `sealed`, with `dirs` (system directories
/// of the image, relative) read-only; on failure nothing stays mounted.
pub fn seal(root: &Path, sealed: &Path, dirs: &[String]) -> anyhow::Result<()> {
    let _step = debug::Step::new("daemon: seal the system directories (read-only binds)");
    crate::places::create_dir(sealed, 0o700)?;
    bind(root, sealed)?;
    let sealing = dirs.iter().try_for_each(|dir| {
        let at = sealed.join(dir);
        bind(&at, &at)?;
        read_only(&at)
    });
    if let Err(e) = sealing {
        unseal(sealed);
        return Err(e);
    }
    Ok(())
}

/// Takes the sealed root down (lazily: a sandbox may still hold it).
pub fn unseal(sealed: &Path) {
    let _ = umount2(sealed, MntFlags::MNT_DETACH);
}

fn bind(from: &Path, to: &Path) -> anyhow::Result<()> {
    mount(Some(from), to, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .with_context(|| format!("cannot bind {} at {}", from.display(), to.display()))
}

/// Remounts the bind at `at` read-only, keeping its other flags (a user namespace may not
/// drop a flag it was given).
fn read_only(at: &Path) -> anyhow::Result<()> {
    let kept = statvfs(at)
        .with_context(|| format!("cannot read the mount flags of {}", at.display()))?
        .flags()
        .bits();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    // Linux's ST_* bits (musl's headers lack ST_RELATIME).
    for (bit, flag) in [
        (0x2, MsFlags::MS_NOSUID),
        (0x4, MsFlags::MS_NODEV),
        (0x8, MsFlags::MS_NOEXEC),
        (0x400, MsFlags::MS_NOATIME),
        (0x800, MsFlags::MS_NODIRATIME),
        (0x1000, MsFlags::MS_RELATIME),
    ] {
        if kept & bit != 0 {
            flags |= flag;
        }
    }
    mount(None::<&str>, at, None::<&str>, flags, None::<&str>)
        .with_context(|| format!("cannot make {} read-only", at.display()))
}

/// Whether a launch may take the sealed root at `sealed` instead of having `dirs` made
/// read-only: each is read-only there, and each of `mount_points` (absolute, in the
/// sandbox) inside one of them exists, as `exists` tells. If not, why not.
pub fn usable<'a>(
    sealed: &Path,
    dirs: &[String],
    mount_points: impl IntoIterator<Item = &'a Path>,
    exists: impl Fn(&Path) -> bool,
) -> Result<(), String> {
    if dirs.is_empty() {
        return Err("no system directory to seal".into());
    }
    if let Some(dir) = dirs
        .iter()
        .find(|d| !statvfs(&sealed.join(d)).is_ok_and(|st| st.flags().contains(FsFlags::ST_RDONLY)))
    {
        return Err(format!("/{dir} is not sealed read-only"));
    }
    match to_make(dirs, mount_points, exists) {
        Some(point) => Err(format!(
            "{} is to be made in a read-only directory",
            point.display()
        )),
        None => Ok(()),
    }
}

/// The first of `mount_points` inside one of `dirs` that does not exist.
fn to_make<'a>(
    dirs: &[String],
    mount_points: impl IntoIterator<Item = &'a Path>,
    exists: impl Fn(&Path) -> bool,
) -> Option<&'a Path> {
    mount_points.into_iter().find(|point| {
        let first = point.components().find_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        });
        first.is_some_and(|first| dirs.iter().any(|d| first == d.as_str())) && !exists(point)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn nothing_to_seal_is_not_taken() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let no: [&Path; 0] = [];
        assert!(usable(tmp.path(), &[], no, |_| true).is_err());
    }

    #[test]
    fn a_directory_that_is_not_read_only_there_is_named() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("usr")).expect("mkdir");
        let no: [&Path; 0] = [];
        assert_eq!(
            usable(tmp.path(), &dirs(&["usr"]), no, |_| true),
            Err("/usr is not sealed read-only".to_string())
        );
        assert_eq!(
            usable(tmp.path(), &dirs(&["boot"]), no, |_| true),
            Err("/boot is not sealed read-only".to_string())
        );
    }

    #[test]
    fn a_missing_mount_point_inside_a_system_directory_is_to_be_made() {
        let sealed = dirs(&["etc", "usr"]);
        let points = [Path::new("/home/u"), Path::new("/etc/resolv.conf")];
        assert_eq!(
            to_make(&sealed, points, |p| p != Path::new("/etc/resolv.conf")),
            Some(Path::new("/etc/resolv.conf"))
        );
        // Already there, or outside the sealed directories: nothing to make.
        assert_eq!(to_make(&sealed, points, |_| true), None);
        let outside = [
            Path::new("/home/u"),
            Path::new("/etcetera/x"),
            Path::new("/"),
        ];
        assert_eq!(to_make(&sealed, outside, |_| false), None);
    }
}
