//! The locks that order sessions, running instances and layer changes on one data
//! directory. They are `flock`s on files of the data directory, so a killed holder
//! releases them at once:
//!
//! | file | held shared by | held exclusively by |
//! | --- | --- | --- |
//! | `<data>/lock` | | the session that mounts the upper directory; a commit |
//! | `<data>/instances` | every running instance | a layer change (`commit`, `add`) |
//!
//! Taking them is here; what to tell the user when one is busy depends on the caller
//! (the session daemon, a commit), so the `try_` functions answer `None` for "busy".
//! An ephemeral run creates none of them: it holds `instances` shared only when it is
//! there, opened read-only, so a data directory on read-only media is never written.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::debug::Step;
use crate::places::Places;

/// Opens (creating, mode 0600) a lock file.
pub fn lock_file(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// The data directory, held exclusively: one session (or one commit) mounts or changes
/// its upper directory at a time.
pub struct DataLock(#[allow(dead_code)] Flock<File>);

impl DataLock {
    /// Takes the data directory, or `None` when another holds it.
    pub fn try_take(places: &Places) -> anyhow::Result<Option<DataLock>> {
        exclusive(&places.data_lock).map(|lock| lock.map(DataLock))
    }
}

/// Held for a whole layer change: no instance runs meanwhile, and new ones wait.
pub struct NoInstances(#[allow(dead_code)] Flock<File>);

impl NoInstances {
    /// Takes the instances lock exclusively, or `None` while instances run.
    pub fn try_take(places: &Places) -> anyhow::Result<Option<NoInstances>> {
        exclusive(&places.instances_lock).map(|lock| lock.map(NoInstances))
    }
}

/// A running instance's share of the instances lock: layer changes wait for it.
pub struct Running(#[allow(dead_code)] Flock<File>);

impl Running {
    /// Marks the caller as a running instance. When a layer change holds the lock this
    /// waits for it to end and answers `true`: the change may have replaced the image.
    pub fn mark(places: &Places) -> anyhow::Result<(Running, bool)> {
        Self::share(lock_file(&places.instances_lock)?)
    }

    /// As [`Running::mark`] for an ephemeral run, which changes nothing in the data
    /// directory: the lock is opened read-only, and `None` when it does not exist.
    pub fn mark_if_present(places: &Places) -> anyhow::Result<Option<(Running, bool)>> {
        match File::open(&places.instances_lock) {
            Ok(file) => Self::share(file).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => {
                Err(e).with_context(|| format!("cannot open {}", places.instances_lock.display()))
            }
        }
    }

    fn share(file: File) -> anyhow::Result<(Running, bool)> {
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(lock) => Ok((Running(lock), false)),
            Err((file, Errno::EWOULDBLOCK)) => {
                let _step = Step::new("wait for a layer change of the image to end");
                let lock = Flock::lock(file, FlockArg::LockShared)
                    .map_err(|(_, e)| e)
                    .context("cannot lock the data directory")?;
                Ok((Running(lock), true))
            }
            Err((_, e)) => Err(e).context("cannot lock the data directory"),
        }
    }
}

/// A non-blocking exclusive lock of `path`; `None` when it is held elsewhere.
fn exclusive(path: &Path) -> anyhow::Result<Option<Flock<File>>> {
    match Flock::lock(lock_file(path)?, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e).context("cannot lock the data directory"),
    }
}
