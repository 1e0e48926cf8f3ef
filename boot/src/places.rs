//! Where a run keeps its files. The data directory next to the image holds what must
//! persist (upper and work directories, the session lock); the per-user runtime directory
//! under `TMPDIR` holds what lives only while instances run (mount points, the socket).
//! An ephemeral run only reads the data directory and has a session of its own, named
//! `<key>.e<launcher pid>` in the runtime directory.

use std::ffi::OsString;
use std::fs::DirBuilder;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Longest socket path `sockaddr_un` can carry.
const SUN_PATH_MAX: usize = 107;

/// Every path a run uses.
#[derive(Debug, Clone)]
pub struct Places {
    /// The image file.
    pub image: PathBuf,
    /// `<image dir>/.<image name>.data`, or `FIM_DIR_DATA`.
    pub data: PathBuf,
    /// Persistent changes: the overlay's upper directory.
    pub upper: PathBuf,
    /// Held exclusively by the session that mounts `upper`: one session per data directory.
    pub data_lock: PathBuf,
    /// Every running instance holds it shared; a layer change (`fim-layer commit`, `add`)
    /// takes it exclusively, so it is refused while instances run and they wait for it.
    pub instances_lock: PathBuf,
    /// Serialises starting, joining and stopping sessions: one per user, so no lock file
    /// is left behind per image.
    pub session_lock: PathBuf,
    /// `<runtime>/<key>`: this session's mount points and socket.
    pub instance: PathBuf,
    pub socket: PathBuf,
    /// Mount point of the merged read-only layers (FUSE).
    pub layers: PathBuf,
    /// Mount point of the writable view (overlay) that becomes the sandbox's `/`.
    pub root: PathBuf,
    /// Mount point of the view again, with the system directories read-only
    /// (`view::sealed`): the root of a default run.
    pub sealed: PathBuf,
    /// Mount point of an ephemeral run's tmpfs (its upper and work directories).
    pub scratch: PathBuf,
    /// Mount point of an ephemeral run's read-only bind of the data directory.
    pub read_only_data: PathBuf,
    /// One record per running instance (`fim-instance`).
    pub instances: PathBuf,
}

impl Places {
    /// Resolves the places of `image` for user `uid` and creates the persistent ones.
    pub fn prepare(image: &Path, uid: u32) -> anyhow::Result<Places> {
        let data = data_dir(image)?;
        create_dir(&data.join("upper"), 0o755)?;
        create_dir(&data.join("work"), 0o700)?;
        let runtime = runtime_base().join(format!("fim-{uid}"));
        ensure_private_dir(&runtime, uid)?;
        let key = session_key(&data);
        Self::at(image, data, &runtime, key)
    }

    /// The places of an ephemeral run of `image`, creating only the runtime directory:
    /// its own session (named after the data directory and this launcher), and the data
    /// directory a normal run would use, read-only here, so one beside the image counts
    /// even when it cannot be written. It need not exist.
    pub fn ephemeral(image: &Path, uid: u32) -> anyhow::Result<Places> {
        let data = ephemeral_data_dir(image)?;
        let runtime = runtime_base().join(format!("fim-{uid}"));
        ensure_private_dir(&runtime, uid)?;
        let key = format!(
            "{}{EPHEMERAL_MARK}{}",
            session_key(&data),
            std::process::id()
        );
        Self::at(image, data, &runtime, key)
    }

    /// The instance directories of the running ephemeral sessions of `image`, with the
    /// launcher pid that names each.
    pub fn ephemeral_sessions(image: &Path, uid: u32) -> anyhow::Result<Vec<(u32, PathBuf)>> {
        let prefix = format!(
            "{}{EPHEMERAL_MARK}",
            session_key(&ephemeral_data_dir(image)?)
        );
        let runtime = runtime_base().join(format!("fim-{uid}"));
        let Ok(entries) = std::fs::read_dir(&runtime) else {
            return Ok(Vec::new());
        };
        let mut sessions: Vec<(u32, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let pid = name.to_str()?.strip_prefix(&prefix)?.parse().ok()?;
                Some((pid, e.path().join("instances")))
            })
            .collect();
        sessions.sort();
        Ok(sessions)
    }

    /// The places of `image` if it has run here before, creating nothing: `None` when
    /// its data directory or the user's runtime directory does not exist.
    pub fn existing(image: &Path, uid: u32) -> anyhow::Result<Option<Places>> {
        let data = chosen_data_dir(image)?;
        let runtime = runtime_base().join(format!("fim-{uid}"));
        let (Ok(data), true) = (data.canonicalize(), runtime.is_dir()) else {
            return Ok(None);
        };
        ensure_private_dir(&runtime, uid)?;
        let key = session_key(&data);
        Self::at(image, data, &runtime, key).map(Some)
    }

    pub(crate) fn at(
        image: &Path,
        data: PathBuf,
        runtime: &Path,
        key: String,
    ) -> anyhow::Result<Places> {
        let instance = runtime.join(&key);
        check_mount_path(&instance)?;
        let socket = instance.join("sock");
        if socket.as_os_str().len() > SUN_PATH_MAX {
            bail!(
                "the runtime directory {} is too deep for a socket path: set TMPDIR to a shorter path",
                runtime.display()
            );
        }
        Ok(Places {
            image: image.to_path_buf(),
            data_lock: data.join("lock"),
            instances_lock: data.join("instances"),
            upper: data.join("upper"),
            session_lock: runtime.join("lock"),
            layers: instance.join("layers"),
            root: instance.join("root"),
            sealed: instance.join("sealed"),
            scratch: instance.join("scratch"),
            read_only_data: instance.join("data"),
            instances: instance.join("instances"),
            socket,
            instance,
            data,
        })
    }
}

impl Places {
    /// Removes the session's socket and its mount points, which are empty once nothing is
    /// mounted on them; what is already gone is fine. Tries every one, reports the first
    /// failure.
    pub fn remove_session_files(&self) -> anyhow::Result<()> {
        let first = self.remove_mount_points();
        let socket = remove(&self.socket, std::fs::remove_file(&self.socket));
        let instance = remove(&self.instance, std::fs::remove_dir(&self.instance));
        first.and(socket).and(instance)
    }

    /// Removes the instance records and the mount points, but not the socket nor the
    /// directory holding it.
    pub fn remove_mount_points(&self) -> anyhow::Result<()> {
        let mut first = Ok(());
        // Records of instances that were killed before they could remove their own.
        if let Ok(records) = std::fs::read_dir(&self.instances) {
            for record in records.flatten() {
                let removed = remove(&record.path(), std::fs::remove_file(record.path()));
                first = first.and(removed);
            }
        }
        for dir in [
            &self.instances,
            &self.layers,
            &self.root,
            &self.sealed,
            &self.scratch,
            &self.read_only_data,
        ] {
            first = first.and(remove(dir, std::fs::remove_dir(dir)));
        }
        first
    }
}

/// The outcome of removing `path`: already gone is fine.
fn remove(path: &Path, removed: std::io::Result<()>) -> anyhow::Result<()> {
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Finds executable `program` in the host's `PATH` (the launcher's own environment).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
}

/// The chosen data directory, created, then made canonical so every way of naming it
/// leads to the same session.
fn data_dir(image: &Path) -> anyhow::Result<PathBuf> {
    let dir = chosen_data_dir(image)?;
    create_dir(&dir, 0o700)?;
    dir.canonicalize()
        .with_context(|| format!("cannot resolve the data directory {}", dir.display()))
}

/// `FIM_DIR_DATA`, else `.<name>.data` beside the image, else (the image's directory
/// cannot be written) the per-user fallback; as named, nothing created.
fn chosen_data_dir(image: &Path) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FIM_DIR_DATA").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let beside = default_data_dir(image)?;
    let usable = if beside.is_dir() {
        writable(&beside)
    } else {
        beside.parent().is_some_and(writable)
    };
    if usable {
        return Ok(beside);
    }
    let fallback = fallback_data_dir(image)?;
    crate::debug::log(format!(
        "{} cannot be written; keeping changes in {}",
        beside.display(),
        fallback.display()
    ));
    Ok(fallback)
}

/// What follows the data directory's key in an ephemeral session's name, before the pid.
const EPHEMERAL_MARK: &str = ".e";

/// The data directory an ephemeral run reads: `FIM_DIR_DATA`, else `.<name>.data` beside
/// the image when it exists (writable or not), else the one a normal run would use;
/// canonical when it exists, as named when it does not.
fn ephemeral_data_dir(image: &Path) -> anyhow::Result<PathBuf> {
    let beside = default_data_dir(image)?;
    let chosen = if std::env::var_os("FIM_DIR_DATA").is_none_or(|v| v.is_empty()) && beside.is_dir()
    {
        beside
    } else {
        chosen_data_dir(image)?
    };
    Ok(chosen.canonicalize().unwrap_or(chosen))
}

/// Whether this user can create files in `dir` (a read-only mount says no).
fn writable(dir: &Path) -> bool {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// `$VARIABLE` when it names an absolute path, else `$HOME/home_relative` (the XDG base
/// directory rule); `None` without either.
pub fn xdg_base(variable: &str, home_relative: &str) -> Option<PathBuf> {
    match std::env::var_os(variable).map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => Some(dir),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|h| h.is_absolute())
            .map(|h| h.join(home_relative)),
    }
}

/// `$XDG_DATA_HOME/fim/<name>-<hash of the image's path>` (`XDG_DATA_HOME` defaults to
/// `~/.local/share`): where an image in a read-only place keeps its changes.
pub fn fallback_data_dir(image: &Path) -> anyhow::Result<PathBuf> {
    let base = xdg_base("XDG_DATA_HOME", ".local/share").with_context(|| {
        format!(
            "the directory of {} is read-only and neither XDG_DATA_HOME nor HOME is set: set FIM_DIR_DATA",
            image.display()
        )
    })?;
    let canonical = image.canonicalize().unwrap_or_else(|_| image.to_path_buf());
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let key = xxhash_rust::xxh3::xxh3_64(canonical.as_os_str().as_bytes());
    Ok(base.join("fim").join(format!("{name}-{key:016x}")))
}

/// `<dir>/.<name>.data` for image `<dir>/<name>`.
pub fn default_data_dir(image: &Path) -> anyhow::Result<PathBuf> {
    let name = image
        .file_name()
        .with_context(|| format!("{} has no file name", image.display()))?;
    let mut hidden = OsString::from(".");
    hidden.push(name);
    hidden.push(".data");
    Ok(image.parent().unwrap_or(Path::new(".")).join(hidden))
}

pub(crate) fn create_dir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// `TMPDIR` when it names an absolute path, else `/tmp`.
fn runtime_base() -> PathBuf {
    std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// Creates `dir` 0700 or accepts an existing one only if it is a real directory owned by
/// `uid` that nobody else can enter: another user must not be able to plant mount points
/// or a socket where ours go.
pub fn ensure_private_dir(dir: &Path, uid: u32) -> anyhow::Result<()> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("cannot inspect {}", dir.display()))?;
    if !meta.is_dir() {
        bail!(
            "refusing to use {}: it is not a directory; remove it",
            dir.display()
        );
    }
    if meta.uid() != uid {
        bail!(
            "refusing to use {}: it is owned by uid {}, not by you (uid {uid}); remove it or set TMPDIR",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        bail!(
            "refusing to use {}: its mode {:o} lets other users in; run chmod 700 on it",
            dir.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// The kernel's overlay options separate paths with `,` and `:`; a mount point path with
/// either (or a backslash) cannot be passed.
fn check_mount_path(path: &Path) -> anyhow::Result<()> {
    if path
        .as_os_str()
        .as_bytes()
        .iter()
        .any(|b| matches!(b, b',' | b':' | b'\\'))
    {
        bail!(
            "the runtime directory {} contains ',', ':' or '\\', which overlay mount options cannot carry: set TMPDIR to a plain path",
            path.display()
        );
    }
    Ok(())
}

/// Names the session of a data directory: a hash of its canonical path.
fn session_key(data: &Path) -> String {
    let hash = xxhash_rust::xxh3::xxh3_64(data.as_os_str().as_bytes());
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_fallback_data_dir_is_per_user_and_per_image_path() {
        let a = fallback_data_dir(Path::new("/ro/one/app.flatimage")).unwrap();
        let b = fallback_data_dir(Path::new("/ro/two/app.flatimage")).unwrap();
        assert_ne!(a, b, "two images of one name keep apart");
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("app.flatimage-") && name.len() == 14 + 16,
            "{name}"
        );
        assert_eq!(a.parent().unwrap().file_name().unwrap(), "fim");
    }

    #[test]
    fn an_ephemeral_run_reads_the_data_dir_beside_the_image_when_it_exists() {
        if std::env::var_os("FIM_DIR_DATA").is_some() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("app.flatimage");
        let beside = tmp.path().join(".app.flatimage.data");
        std::fs::create_dir(&beside).unwrap();
        // Read-only or not: it is only read.
        std::fs::set_permissions(&beside, std::fs::Permissions::from_mode(0o500)).unwrap();
        assert_eq!(
            ephemeral_data_dir(&image).unwrap(),
            beside.canonicalize().unwrap()
        );
    }

    #[test]
    fn default_data_dir_is_hidden_beside_the_image() {
        let dir = default_data_dir(Path::new("/opt/apps/app.flatimage")).unwrap();
        assert_eq!(dir, Path::new("/opt/apps/.app.flatimage.data"));
    }

    #[test]
    fn session_key_depends_only_on_the_path() {
        assert_eq!(
            session_key(Path::new("/a/b")),
            session_key(Path::new("/a/b"))
        );
        assert_ne!(
            session_key(Path::new("/a/b")),
            session_key(Path::new("/a/c"))
        );
        assert_eq!(session_key(Path::new("/a/b")).len(), 16);
    }

    #[test]
    fn mount_paths_with_option_separators_are_refused() {
        assert!(check_mount_path(Path::new("/tmp/fim-1/abc")).is_ok());
        for bad in ["/tmp/a,b/x", "/tmp/a:b/x", "/tmp/a\\b/x"] {
            assert!(check_mount_path(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn private_dir_is_created_0700_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fim-x");
        let uid = nix::unistd::getuid().as_raw();
        ensure_private_dir(&dir, uid).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        ensure_private_dir(&dir, uid).unwrap();
    }

    #[test]
    fn private_dir_open_to_others_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fim-x");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let err = ensure_private_dir(&dir, uid).unwrap_err().to_string();
        assert!(err.contains("lets other users in"), "{err}");
    }

    #[test]
    fn private_dir_owned_by_someone_else_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fim-x");
        let uid = nix::unistd::getuid().as_raw();
        ensure_private_dir(&dir, uid).unwrap();
        let err = ensure_private_dir(&dir, uid + 1).unwrap_err().to_string();
        assert!(err.contains("not by you"), "{err}");
    }

    #[test]
    fn a_symlink_is_not_a_private_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let link = tmp.path().join("fim-x");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let uid = nix::unistd::getuid().as_raw();
        assert!(ensure_private_dir(&link, uid).is_err());
    }
}
