//! One run of a command: join (or start) the image's session, enter its namespaces, work
//! out who the app is and what it may reach, and run it in bubblewrap over the session's
//! writable view until it exits.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use fim_image::Image;
use fim_reserved::Overlay;
use nix::fcntl::OFlag;
use nix::sys::memfd::{MFdFlags, memfd_create};

use super::bwrap::{Mount, Sandbox};
use super::environment::{self, Env, RunFacts};
use super::identity::{self, Identity};
use super::inside::{mountable, mountable_at, open_inside, read_inside};
use super::perms::{self, RealHost};
use super::supervise::{self, Outcome};
use super::{binds, instance, noop_ids, notify, shim, start};
use crate::debug::{self, Step};
use crate::locks::Running;
use crate::places::Places;
use crate::session::{self, namespaces};
use crate::tools;
use crate::view::{Isolation, Writable, layer_stack, sealed};

/// One run of a command in the image.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Program and arguments, as given.
    pub command: Vec<OsString>,
    /// Run as uid 0 with the image's system directories writable (`fim-root`).
    pub as_root: bool,
    /// Where its writes go: the data directory, or memory (an ephemeral run).
    pub writable: Writable,
}

pub fn run(image: Image, wanted: (Overlay, bool), launch: Launch) -> anyhow::Result<ExitCode> {
    let ignored = shim::ignored_at_start();
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let cwd = std::env::current_dir().ok();
    let host = Env(std::env::vars_os().collect());
    let config = image.reserved_shared();
    if config.notify() {
        // Before any namespace: the session bus checks who connects.
        notify::announce(image.path(), &host);
    }
    // As the user, before any namespace: the files are the user's.
    crate::desktop::keep_current(image.path(), &config);

    let ephemeral = matches!(launch.writable, Writable::Ephemeral(_));
    let places = {
        let _step = Step::new("prepare the data and runtime directories");
        if ephemeral {
            Places::ephemeral(image.path(), uid)?
        } else {
            Places::prepare(image.path(), uid)?
        }
    };
    // Held until this launcher exits: layer changes wait for every running instance.
    let running = if ephemeral {
        Running::mark_if_present(&places)?
    } else {
        Some(Running::mark(&places)?)
    };
    let waited = running.as_ref().is_some_and(|(_, waited)| *waited);
    debug::log(format!(
        "data directory {}{}",
        places.data.display(),
        if ephemeral {
            " (ephemeral: read-only, writes in memory)"
        } else {
            ""
        }
    ));
    // A layer change may have replaced the image meanwhile.
    let image = if waited {
        Image::open(&places.image)?
    } else {
        image
    };
    let extras = {
        let _step = Step::new("open the managed and FIM_LAYERS layers");
        layer_stack::extra_layers(&places.data)?
    };
    let membership = session::connect(
        &image,
        &extras,
        &places,
        (uid, gid),
        (wanted.0, wanted.1, launch.writable),
        launch.command.first().map(OsString::as_os_str),
    )?;
    // Through the host's /proc: before joining the session's namespaces.
    let held_bwrap = membership.bwrap.as_ref().and_then(|held| {
        let tools_held = tools::Held {
            pid: membership.daemon,
            fd: held.fd,
            digest: &held.digest,
        };
        tools::open_held_bwrap(&image, tools_held)
    });
    let network = membership.network.and_then(|fd| {
        session::network::open(membership.daemon, fd)
            .inspect_err(|e| debug::log(format!("network: {e:#}; bwrap makes one")))
            .ok()
    });
    let isolation = {
        let _step = Step::new("join the session's namespaces");
        namespaces::join(membership.daemon)?
    };
    // Without a user namespace, only a setuid bwrap can build the sandbox.
    let host_mounts = isolation == Isolation::Host;
    let bwrap = match held_bwrap {
        _ if host_mounts => tools::setuid_bwrap()?,
        Some(held) => held,
        None => tools::bwrap(&image)?,
    };
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
        sealed::system_dirs(&places.root)
    };
    let workdir = config.boot().and_then(|b| b.workdir);
    let cwd = start::start_dir(cwd, workdir.as_deref(), |dir| {
        open_inside(&root_dir, dir, OFlag::O_PATH | OFlag::O_DIRECTORY).is_some()
    });
    debug::log(format!("starting in {}", cwd.display()));

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
    let own = environment::own_vars(&facts);
    let configured = environment::configured(&config.env(), &own, &host);
    let identity = identity::resolve(&identity::Sources {
        as_root: launch.as_root,
        host_ids: (uid, gid),
        host_user: host.get("USER"),
        host_home: host.get("HOME"),
        setting: &|key| configured.get(key).map(OsStr::to_owned),
    })?;
    let grants = perms::grants(config.permissions(), &RealHost(&host.0));
    // Without the network permission: the session's loopback-only network, joined now that
    // this process is in the user namespace that owns it, rather than one made by bwrap.
    let network_joined = !grants.network
        && isolation == Isolation::Namespaces
        && network.as_ref().is_some_and(|ns| {
            session::network::join(ns)
                .inspect_err(|e| debug::log(format!("network: {e:#}; bwrap makes one")))
                .is_ok()
        });
    if network_joined {
        debug::log("network: the session's own, loopback only");
    }
    let mut env = environment::sandbox_env(&host, &own, &identity, &grants.env, &configured);
    let mut mounts = grants.mounts;
    mounts.extend(binds::mounts(
        &config.binds(),
        &host,
        &Env(env.clone()),
        |p| p.exists(),
    ));
    mounts.retain(|m| mountable(&root_dir, m));
    let passwd = data_file(&identity.passwd(&read_inside(&root_dir, "etc/passwd")))?;
    let group = data_file(&identity.group(&read_inside(&root_dir, "etc/group")))?;
    // Under fim-root the image's own account files are used, writable: adduser, groupadd
    // and passwd change them in the upper directory, and later runs build on them.
    let identity_files = (!launch.as_root
        && mountable_at(&root_dir, Path::new("/etc/passwd"))
        && mountable_at(&root_dir, Path::new("/etc/group")))
    .then(|| (passwd.as_raw_fd(), group.as_raw_fd()));
    // fim-root for a normal user whose session's user namespace maps one id (no
    // subordinate ids): set-id and chown calls are made no-ops rather than failures.
    let one_id = namespaces::mapped_uids() == 1;
    let needs_noop_ids = launch.as_root && uid != 0 && !host_mounts && one_id;
    if needs_noop_ids && !noop_ids::supported() {
        let user = nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |u| u.name);
        bail!(noop_ids::refusal(&user));
    }
    let noop_ids = needs_noop_ids.then(noop_ids::filter_file).transpose()?;
    // apt cannot switch to _apt there: its settings for that, unless APT_CONFIG is set.
    let apt_config = match &noop_ids {
        Some(_) if !env.iter().any(|(k, _)| k == "APT_CONFIG") => {
            let has_main = open_inside(&root_dir, Path::new("/etc/apt/apt.conf"), OFlag::O_PATH);
            env.push(("APT_CONFIG".into(), noop_ids::APT_CONFIG.into()));
            Some(data_file(&noop_ids::apt_config(has_main.is_some()))?)
        }
        _ => None,
    };
    debug::log(match (&noop_ids, launch.as_root) {
        (Some(_), _) => {
            "identity: fim-root with one id mapped: set-id and chown calls are no-ops (seccomp); apt without its _apt sandbox (APT_CONFIG)"
        }
        (None, true) if uid != 0 && !one_id => {
            "identity: fim-root as the session's root, with your subordinate ids; the image's account files as they are"
        }
        (None, true) => {
            "identity: fim-root as the session's root, the image's account files as they are"
        }
        (None, false) => {
            "identity: the user's line merged into the image's /etc/passwd and /etc/group"
        }
    });
    let home_mounted = mounts.iter().any(|m| match m {
        Mount::Bind { dst, .. } | Mount::Private { dst } => identity.home.starts_with(dst),
    });
    let make_home = (!home_mounted
        && open_inside(&root_dir, &identity.home, OFlag::O_PATH).is_none())
    .then(|| identity.home.clone());

    let tmp_files: Vec<(RawFd, PathBuf)> = apt_config
        .iter()
        .map(|f| (f.as_raw_fd(), noop_ids::APT_CONFIG.into()))
        .collect();
    // The session's sealed root where it serves this launch: bwrap then binds and remounts
    // nothing for the system directories.
    let (root, read_only) = if read_only.is_empty() {
        (places.root.clone(), read_only)
    } else {
        let identity_points = [Path::new("/etc/passwd"), Path::new("/etc/group")];
        let mount_points = mounts
            .iter()
            .map(|m| match m {
                Mount::Bind { dst, .. } | Mount::Private { dst } => dst.as_path(),
            })
            .chain(identity_files.iter().flat_map(|_| identity_points))
            .chain(tmp_files.iter().map(|(_, dst)| dst.as_path()))
            .chain(make_home.as_deref());
        let inside =
            |p: &Path| open_inside(&root_dir, p, OFlag::O_PATH | OFlag::O_NOFOLLOW).is_some();
        match sealed::usable(&places.sealed, &read_only, mount_points, inside) {
            Ok(()) => {
                debug::log("sandbox: system directories read-only in the session's sealed root");
                (places.sealed.clone(), Vec::new())
            }
            Err(why) => {
                debug::log(format!(
                    "sandbox: bwrap makes the system directories read-only ({why})"
                ));
                (places.root.clone(), read_only)
            }
        }
    };

    let (status_read, status_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    // The shim is this very launcher, run from the image through a descriptor.
    let exe = File::open("/proc/self/exe").context("cannot open /proc/self/exe")?;
    let command = shim::command(
        exe.as_raw_fd(),
        status_write.as_raw_fd(),
        ignored,
        crate::cores::original(),
        &launch.command,
    );
    let sandbox = Sandbox {
        root,
        user: sandbox_user(&launch, uid, &identity).filter(|_| !host_mounts),
        network: grants.network,
        network_joined,
        unshare: config.unshare(),
        host_dev: grants.host_dev,
        host_shm: grants.host_shm,
        read_only,
        identity_files,
        tmp_files,
        seccomp_fd: noop_ids.as_ref().map(|f| f.as_raw_fd()),
        make_home,
        mounts,
        cwd,
        status_fd: status_write.as_raw_fd(),
    };
    let args = sandbox.args(&command);
    debug::log(format!("bwrap {}", shown(&args)));
    let sandbox_step = Step::new("run the sandbox");
    let mut registration = None;
    let mut inherited = vec![exe.as_raw_fd(), passwd.as_raw_fd(), group.as_raw_fd()];
    inherited.extend(noop_ids.iter().chain(&apt_config).map(|f| f.as_raw_fd()));
    let outcome = supervise::run(
        &bwrap.path,
        &args,
        &env,
        (status_read, status_write),
        &inherited,
        membership.ended(),
        |bwrap_pid| match instance::register(
            &places.instances,
            bwrap_pid,
            &launch.command,
            noop_ids.is_some(),
        ) {
            Ok(r) => registration = Some(r),
            Err(e) => eprintln!("fim: fim-instance will not list this instance: {e:#}"),
        },
    )?;
    drop(registration);
    drop(sandbox_step);
    if outcome == Outcome::SessionEnded {
        bail!(
            "the image's session ended unexpectedly: {}; run it again",
            membership.why_it_ended()
        );
    }
    if outcome == Outcome::SetupFailed {
        drop(membership);
        bail!("the sandbox could not be set up (bubblewrap's message is above)");
    }
    membership.leave();
    Ok(outcome.into())
}

/// The uid and gid of a user namespace of the sandbox's own; `None` keeps the session's
/// root, which `fim-root` is, and which root starting the image is by default.
fn sandbox_user(launch: &Launch, host_uid: u32, identity: &Identity) -> Option<(u32, u32)> {
    let ids = (identity.uid, identity.gid);
    let session_root = launch.as_root || (host_uid == 0 && ids == (0, 0));
    (!session_root).then_some(ids)
}

/// A file in memory holding `text`, read from the start by bubblewrap.
fn data_file(text: &str) -> anyhow::Result<File> {
    let fd = memfd_create(c"fim-data", MFdFlags::MFD_CLOEXEC).context("cannot create a memfd")?;
    let mut file = File::from(fd);
    file.write_all(text.as_bytes())
        .and_then(|()| file.seek(SeekFrom::Start(0)).map(drop))
        .context("cannot write a memfd")?;
    Ok(file)
}

fn shown(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
