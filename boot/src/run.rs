//! The run path: join (or start) the image's session, enter its namespaces and run the
//! command in bubblewrap over the session's writable view.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use fim_image::Image;
use fim_reserved::{Overlay, Permissions};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

use crate::debug::{self, Step};
use crate::environment::{RunFacts, sandbox_env};
use crate::places::Places;
use crate::sandbox::{SYSTEM_DIRS, Sandbox};
use crate::supervise::{self, Outcome};
use crate::{layer_stack, namespaces, session, shim, tools};

/// One run of a command in the image.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Program and arguments, as given.
    pub command: Vec<OsString>,
    /// Run as uid 0 with the image's system directories writable (`fim-root`).
    pub as_root: bool,
}

pub fn run(image: Image, overlay: Overlay, launch: Launch) -> anyhow::Result<ExitCode> {
    let ignored = shim::ignored_at_start();
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let cwd = std::env::current_dir().ok();
    let host_env: Vec<(OsString, OsString)> = std::env::vars_os().collect();

    let places = {
        let _step = Step::new("prepare the data and runtime directories");
        Places::prepare(image.path(), uid)?
    };
    // Held until this launcher exits: layer changes wait for every running instance.
    let (_running, image) = mark_running(&places, image)?;
    let extras = {
        let _step = Step::new("open the managed and FIM_LAYERS layers");
        layer_stack::extra_layers(&places.data)?
    };
    let membership = session::connect(&image, &extras, &places, (uid, gid), overlay)?;
    {
        let _step = Step::new("join the session's namespaces");
        namespaces::join(membership.daemon)?;
    }
    let bwrap = tools::bwrap(&image)?;
    debug::log(format!(
        "bwrap: {} ({:?})",
        bwrap.path.display(),
        bwrap.origin
    ));

    let root_dir = File::open(&places.root)
        .with_context(|| format!("cannot open {}", places.root.display()))?;
    let read_only = if launch.as_root {
        Vec::new()
    } else {
        SYSTEM_DIRS
            .iter()
            .filter(|d| is_real_dir(&places.root.join(d)))
            .map(|d| d.to_string())
            .collect()
    };
    let cwd = match cwd {
        Some(dir) if dir_inside(&root_dir, &dir) => dir,
        Some(dir) => {
            debug::log(format!(
                "{} is not in the image; starting in /",
                dir.display()
            ));
            PathBuf::from("/")
        }
        None => PathBuf::from("/"),
    };
    let (status_read, status_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    // The shim is this very launcher, run from the image through a descriptor.
    let exe = File::open("/proc/self/exe").context("cannot open /proc/self/exe")?;
    let command = shim::command(
        exe.as_raw_fd(),
        status_write.as_raw_fd(),
        ignored,
        &launch.command,
    );
    let sandbox = Sandbox {
        root: places.root.clone(),
        user: (uid != 0 && !launch.as_root).then_some((uid, gid)),
        network: image
            .reserved()
            .permissions()
            .contains(Permissions::network),
        unshare: image.reserved().unshare(),
        read_only,
        cwd,
        status_fd: status_write.as_raw_fd(),
    };
    let facts = RunFacts {
        image: places.image.clone().into_os_string(),
        image_dir: places
            .image
            .parent()
            .unwrap_or(Path::new("/"))
            .as_os_str()
            .to_owned(),
        data_dir: places.data.clone().into_os_string(),
        overlay: membership.overlay.to_string(),
        as_root: launch.as_root,
    };
    let env = sandbox_env(host_env, &facts);
    let args = sandbox.args(&command);
    debug::log(format!("bwrap {}", shown(&args)));
    let sandbox_step = Step::new("run the sandbox");
    let outcome = supervise::run(
        &bwrap.path,
        &args,
        &env,
        (status_read, status_write),
        &[exe.as_raw_fd()],
    )?;
    drop(sandbox_step);
    if outcome == Outcome::SetupFailed {
        drop(membership);
        bail!("the sandbox could not be set up (bubblewrap's message is above)");
    }
    membership.leave();
    Ok(outcome.into())
}

/// Marks this launcher as a running instance: a shared lock that a layer change
/// (`fim-layer commit`, `add`) takes exclusively. During such a change this waits, then
/// opens the image anew: the change may have replaced it.
fn mark_running(places: &Places, image: Image) -> anyhow::Result<(Flock<File>, Image)> {
    let file = session::lock_file(&places.instances_lock)?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(lock) => Ok((lock, image)),
        Err((file, Errno::EWOULDBLOCK)) => {
            let _step = Step::new("wait for a layer change of the image to end");
            let lock = Flock::lock(file, FlockArg::LockShared)
                .map_err(|(_, e)| e)
                .context("cannot lock the data directory")?;
            Ok((lock, Image::open(&places.image)?))
        }
        Err((_, e)) => Err(e).context("cannot lock the data directory"),
    }
}

/// A directory, not a symlink to one (`/bin -> usr/bin` is covered through `/usr`).
fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// Whether `dir` exists inside the image, resolving symlinks as the sandbox would.
fn dir_inside(root: &File, dir: &Path) -> bool {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .mode(Mode::empty())
        .resolve(ResolveFlag::RESOLVE_IN_ROOT);
    openat2(root, dir, how).is_ok()
}

fn shown(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
