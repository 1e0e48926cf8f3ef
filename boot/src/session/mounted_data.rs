//! The data directory a session mounted, held open so the daemon can tell when a user
//! removed or replaced it (`rm -rf .app.flatimage.data` to reset an app, then a relaunch
//! within the linger). Such a session serves deleted files: the kernel overlay shows an
//! empty root, unionfs writes where nobody will look. A joining launcher is checked
//! against it, and a session whose directories are no longer the ones on disk makes way.
//!
//! The directories are held by descriptor, so their inodes cannot be reused while the
//! session lives: a directory at the same path with the same inode number is the same
//! directory. A data directory that is a symlink (to a larger disk, say) is followed, as
//! the mount followed it: pointing the link elsewhere replaces the directory.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::places::Places;

/// The data and upper directories as mounted.
pub struct MountedData {
    dirs: Vec<(PathBuf, File)>,
}

impl MountedData {
    /// Opens the data and upper directories the session is about to mount. `None`, said
    /// under `FIM_DEBUG`, when either cannot be opened (the mount will say why): such a
    /// session cannot tell a reset.
    pub fn hold(places: &Places) -> Option<MountedData> {
        let mut dirs = Vec::with_capacity(2);
        for dir in [&places.data, &places.upper] {
            match open_dir(dir) {
                Ok(file) => dirs.push((dir.clone(), file)),
                Err(e) => {
                    crate::debug::log(format!(
                        "daemon: cannot hold {} ({e}); a removed data directory will not be noticed",
                        dir.display()
                    ));
                    return None;
                }
            }
        }
        Some(MountedData { dirs })
    }

    /// The first directory that was removed, or replaced by another at its path, since
    /// the session mounted it.
    pub fn gone(&self) -> Option<&Path> {
        self.dirs.iter().find_map(|(path, held)| {
            let held = held.metadata().ok()?;
            let now = std::fs::metadata(path).ok();
            let same = now.is_some_and(|now| now.dev() == held.dev() && now.ino() == held.ino());
            // A removed directory has no links left.
            (held.nlink() == 0 || !same).then_some(path.as_path())
        })
    }
}

fn open_dir(dir: &Path) -> std::io::Result<File> {
    File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places_in(data: &Path) -> Places {
        let runtime = data.join("runtime");
        std::fs::create_dir_all(&runtime).expect("runtime");
        Places::at(&data.join("app"), data.join("data"), &runtime, "key".into()).expect("places")
    }

    #[test]
    fn the_same_directories_are_not_gone() {
        let tmp = tempfile::tempdir().expect("tmp");
        let places = places_in(tmp.path());
        std::fs::create_dir_all(&places.upper).expect("upper");
        let held = MountedData::hold(&places).expect("held");
        std::fs::write(places.upper.join("file"), b"x").expect("write");
        assert_eq!(held.gone(), None);
    }

    #[test]
    fn a_removed_data_directory_is_gone() {
        let tmp = tempfile::tempdir().expect("tmp");
        let places = places_in(tmp.path());
        std::fs::create_dir_all(&places.upper).expect("upper");
        let held = MountedData::hold(&places).expect("held");
        std::fs::remove_dir_all(&places.data).expect("rm");
        assert_eq!(held.gone(), Some(places.data.as_path()));
    }

    #[test]
    fn a_data_directory_made_again_at_the_same_path_is_gone() {
        let tmp = tempfile::tempdir().expect("tmp");
        let places = places_in(tmp.path());
        std::fs::create_dir_all(&places.upper).expect("upper");
        let held = MountedData::hold(&places).expect("held");
        std::fs::remove_dir_all(&places.data).expect("rm");
        std::fs::create_dir_all(&places.upper).expect("again");
        assert_eq!(held.gone(), Some(places.data.as_path()));
    }

    #[test]
    fn a_data_directory_behind_a_symlink_is_held_and_gone_once_the_link_points_elsewhere() {
        let tmp = tempfile::tempdir().expect("tmp");
        let disk = tmp.path().join("disk");
        std::fs::create_dir_all(disk.join("one")).expect("one");
        std::fs::create_dir_all(disk.join("two")).expect("two");
        let places = places_in(tmp.path());
        std::os::unix::fs::symlink(disk.join("one"), &places.data).expect("link");
        std::fs::create_dir_all(&places.upper).expect("upper");
        let held = MountedData::hold(&places).expect("held through the link");
        assert_eq!(held.gone(), None);
        std::fs::remove_file(&places.data).expect("unlink");
        std::os::unix::fs::symlink(disk.join("two"), &places.data).expect("relink");
        std::fs::create_dir_all(&places.upper).expect("upper two");
        assert_eq!(held.gone(), Some(places.data.as_path()));
    }

    #[test]
    fn a_replaced_upper_directory_is_gone() {
        let tmp = tempfile::tempdir().expect("tmp");
        let places = places_in(tmp.path());
        std::fs::create_dir_all(&places.upper).expect("upper");
        let held = MountedData::hold(&places).expect("held");
        std::fs::rename(&places.upper, places.data.join("old")).expect("mv");
        std::fs::create_dir(&places.upper).expect("new upper");
        assert_eq!(held.gone(), Some(places.upper.as_path()));
    }
}
