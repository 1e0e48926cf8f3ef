//! The session daemon, forked from the first launcher of an image. It creates the
//! namespaces, serves the merged layers over FUSE, mounts the writable view on top with
//! the chosen backend (see `overlay`) and then waits: every launcher holds a connection,
//! and when the last one closes (exit or SIGKILL alike) the daemon unmounts, removes its
//! directories and exits. No polling while instances run; the daemon sleeps in `poll`
//! until a launcher comes or goes.

use std::fs::{DirBuilder, File};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fim_image::Image;
use fim_layers::fuse::{MountSettings, session as fuse_session};
use fim_layers::{BlockCache, DEFAULT_CACHE_BYTES};
use fim_reserved::Overlay;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::mount::{MntFlags, umount2};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{ForkResult, fork, setsid};

use crate::debug;
use crate::extracted;
use crate::layer_stack::{self, LayerFile};
use crate::namespaces;
use crate::overlay::{self, Helper};
use crate::places::Places;
use crate::session::{Greeting, LEAVING, QUIT, lock_file, send};

/// How long a session outlives its last launcher when that one ended normally: a
/// relaunch within it finds the layers mounted and their caches warm. A launcher that was
/// killed ends the session at once.
const LINGER: Duration = Duration::from_secs(2);

/// Retry period while a launcher holds the session lock as the last instance left: it is
/// about to connect, or it died and the kernel is releasing its lock.
const LOCK_RETRY_MS: u16 = 20;

/// Forks the daemon and returns the launcher's end of its first connection.
pub fn spawn(
    image: &Image,
    extras: &[LayerFile],
    places: &Places,
    (uid, gid): (u32, u32),
    identity: &str,
    wanted: Overlay,
) -> anyhow::Result<UnixStream> {
    let (ours, theirs) = UnixStream::pair().context("cannot create a socket pair")?;
    // Buffered output would otherwise be written twice, once by each process.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: the launcher is single-threaded here, so the child may run any code.
    match unsafe { fork() }.context("cannot fork the session daemon")? {
        ForkResult::Parent { .. } => Ok(ours),
        ForkResult::Child => {
            drop(ours);
            let stack = Stack { image, extras };
            let code = daemon_main(&stack, places, (uid, gid), identity, wanted, theirs);
            // Nothing of the launcher's (locks, buffers) may run its destructors here.
            // SAFETY: ends this process without unwinding.
            unsafe { libc::_exit(code) }
        }
    }
}

/// The layers the daemon serves.
struct Stack<'a> {
    image: &'a Image,
    extras: &'a [LayerFile],
}

fn daemon_main(
    stack: &Stack,
    places: &Places,
    (uid, gid): (u32, u32),
    identity: &str,
    wanted: Overlay,
    mut first: UnixStream,
) -> i32 {
    let _ = setsid();
    detach(&first);
    match Daemon::set_up(stack, places, (uid, gid), identity, wanted) {
        Ok(daemon) => daemon.serve(first, identity),
        Err(e) => {
            remove_session_files(places);
            send(&mut first, &Greeting::Failed(format!("{e:#}")));
            1
        }
    }
}

/// Leaves the terminal and the launcher's files: stdio goes to /dev/null (stderr stays
/// under `FIM_DEBUG`) and every inherited descriptor but `keep` is closed, above all the
/// launcher's session lock, which would otherwise stay held by this process.
fn detach(keep: &UnixStream) {
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        if !debug::enabled() {
            let _ = nix::unistd::dup2_stderr(&null);
        }
    }
    let keep = keep.as_raw_fd() as libc::c_uint;
    // SAFETY: close_range only closes descriptors; nothing below uses the closed ones.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, keep - 1, 0);
        libc::syscall(libc::SYS_close_range, keep + 1, libc::c_uint::MAX, 0);
    }
}

struct Daemon<'a> {
    places: &'a Places,
    listener: UnixListener,
    signals: SignalFd,
    /// The FUSE server of the layers and what becomes readable (hang-up) when it stops;
    /// none when the layers are served from the extraction cache.
    fuse: Option<(fuser::SessionUnmounter, OwnedFd)>,
    /// Held for the daemon's life: one session per data directory.
    data_lock: Flock<File>,
    /// Whether the mounts are in namespaces of the session's own or the host's.
    isolation: namespaces::Isolation,
    /// The backend asked for, and the one that mounted the view.
    wanted: Overlay,
    used: Overlay,
    /// Why `used` is not `wanted`, for the launcher that started the session.
    notice: Option<String>,
    /// The FUSE backend's process, if the view is not the kernel overlay.
    helper: Option<Helper>,
}

impl<'a> Daemon<'a> {
    fn set_up(
        layers: &Stack,
        places: &'a Places,
        (uid, gid): (u32, u32),
        identity: &str,
        wanted: Overlay,
    ) -> anyhow::Result<Self> {
        let data_lock = Flock::lock(
            lock_file(&places.data_lock)?,
            FlockArg::LockExclusiveNonblock,
        )
        .map_err(|(_, e)| e);
        let data_lock = match data_lock {
            Ok(lock) => lock,
            Err(Errno::EWOULDBLOCK) => bail!(
                "the data directory {} is in use by another session of this image (another user, or another TMPDIR); close it first",
                places.data.display()
            ),
            Err(e) => return Err(e).context("cannot lock the data directory"),
        };
        // A commit killed half way is finished (or forgotten) before the upper directory
        // is mounted again.
        crate::commit::recover(places, layers.image)?;
        for dir in [
            &places.instance,
            &places.layers,
            &places.root,
            &places.instances,
        ] {
            DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut stop = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            stop.add(s);
        }
        stop.thread_block().context("cannot block signals")?;
        let signals = SignalFd::with_flags(&stop, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .context("cannot create a signalfd")?;

        let stack = {
            let _step = debug::Step::new("daemon: open the layers");
            layer_stack::open(
                layers.image,
                layers.extras,
                BlockCache::new(DEFAULT_CACHE_BYTES),
            )?
        };
        // Without FUSE, the layers are extracted (as the user, before the namespaces) and
        // the overlay sits on the extracted tree.
        let extracted = match extracted::needed() {
            Some(why) => {
                extracted::refuse_fuse_backend(wanted, &why)?;
                debug::log(format!(
                    "daemon: {why}: serving the layers from the extraction cache"
                ));
                Some(extracted::tree(&stack, identity)?)
            }
            None => None,
        };

        let isolation = namespaces::create(uid, gid)?;

        let (lower, mut fuse) = match extracted {
            Some(tree) => (tree, None),
            None => {
                let (unmounter, stopped) = serve_fuse(stack, places, (uid, gid), isolation)?;
                (places.layers.clone(), Some((unmounter, stopped)))
            }
        };
        let unmount_fuse = |fuse: &mut Option<(fuser::SessionUnmounter, OwnedFd)>| {
            if let Some((unmounter, _)) = fuse {
                let _ = unmounter.unmount();
            }
        };

        let view = match overlay::mount_view(places, &lower, (uid, gid), isolation, wanted) {
            Ok(view) => view,
            Err(e) => {
                unmount_fuse(&mut fuse);
                return Err(e);
            }
        };

        let listener = match UnixListener::bind(&places.socket)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
        {
            Ok(listener) => listener,
            Err(e) => {
                detach_view(places, isolation);
                if let Some(helper) = view.helper {
                    helper.stop();
                }
                unmount_fuse(&mut fuse);
                return Err(e)
                    .with_context(|| format!("cannot listen on {}", places.socket.display()));
            }
        };
        Ok(Daemon {
            places,
            listener,
            signals,
            fuse,
            data_lock,
            isolation,
            wanted,
            used: view.overlay,
            notice: view.notice,
            helper: view.helper,
        })
    }

    /// Serves launchers until the last one leaves; returns the exit status.
    fn serve(mut self, mut first: UnixStream, identity: &str) -> i32 {
        let mut clients = Vec::new();
        if let Some(notice) = self.notice.take() {
            send(&mut first, &Greeting::Note(notice));
        }
        self.admit(first, &mut clients, identity);
        let mut stopping = false;
        // Set while lingering after the last launcher left cleanly.
        let mut linger_until: Option<Instant> = None;
        loop {
            let mut timeout = PollTimeout::NONE;
            if clients.is_empty() {
                if let Some(deadline) = linger_until.filter(|_| !stopping) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if !left.is_zero() {
                        timeout = millis(left);
                    } else {
                        linger_until = None;
                    }
                }
                if timeout == PollTimeout::NONE {
                    // Never created here: a missing lock means the directory was removed.
                    let Ok(file) = File::options().write(true).open(&self.places.session_lock)
                    else {
                        // The runtime directory is gone: no launcher can find this session.
                        debug::log("daemon: the runtime directory is gone; ending");
                        self.shut_down();
                        return 0;
                    };
                    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).ok();
                    match lock {
                        Some(guard) => {
                            // Holding the lock, no launcher can be on its way in, except
                            // one already queued on the socket.
                            match self.listener.accept() {
                                Ok((stream, _)) if !stopping => {
                                    self.admit(stream, &mut clients, identity);
                                    continue;
                                }
                                _ => {
                                    self.shut_down();
                                    drop(guard);
                                    return 0;
                                }
                            }
                        }
                        None => timeout = PollTimeout::from(LOCK_RETRY_MS),
                    }
                }
            }

            let (listener_ready, signalled, fuse_gone, helper_gone, readable) = {
                // Once the FUSE server or the backend stopped, their descriptors stay
                // readable: watch them no more.
                let fuse = match &self.fuse {
                    Some((_, stopped)) if !stopping => stopped.as_fd(),
                    _ => self.signals.as_fd(),
                };
                let helper = match &self.helper {
                    Some(helper) if !stopping => helper.exited(),
                    _ => self.signals.as_fd(),
                };
                let mut fds = vec![
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                    PollFd::new(fuse, PollFlags::POLLIN),
                    PollFd::new(helper, PollFlags::POLLIN),
                ];
                fds.extend(
                    clients
                        .iter()
                        .map(|c: &UnixStream| PollFd::new(c.as_fd(), PollFlags::POLLIN)),
                );
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => {
                        debug::log(format!("daemon: poll failed ({e}); ending"));
                        return self.fail_all(clients);
                    }
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                let readable: Vec<usize> = fds[4..]
                    .iter()
                    .enumerate()
                    .filter(|(_, fd)| ready(fd))
                    .map(|(i, _)| i)
                    .collect();
                (
                    ready(&fds[0]),
                    ready(&fds[1]),
                    ready(&fds[2]) && self.fuse.is_some(),
                    ready(&fds[3]) && self.helper.is_some(),
                    readable,
                )
            };

            for i in readable.into_iter().rev() {
                let mut byte = [0u8; 1];
                match clients[i].read(&mut byte) {
                    Ok(0) | Err(_) => {
                        debug::log("daemon: a launcher went away without leaving");
                        clients.swap_remove(i);
                    }
                    Ok(_) if byte[0] == LEAVING => {
                        // A launcher whose app ended normally: keep the session warm for
                        // the next launch if it was the last one.
                        clients.swap_remove(i);
                        if clients.is_empty() {
                            linger_until = Some(Instant::now() + LINGER);
                        }
                    }
                    Ok(_) if byte[0] == QUIT && clients.len() == 1 => {
                        // The only launcher, which holds the session lock, wants a new
                        // session (the image's layers changed).
                        debug::log("daemon: asked to make way for a new session");
                        self.shut_down();
                        return 0;
                    }
                    Ok(_) => {}
                }
            }
            if signalled || ((fuse_gone || helper_gone) && !stopping) {
                if signalled {
                    let _ = self.signals.read_signal();
                    debug::log("daemon: stopped by a signal");
                } else if fuse_gone {
                    debug::log("daemon: the FUSE server stopped");
                } else {
                    debug::log("daemon: the overlay backend stopped");
                }
                stopping = true;
                clients.clear();
            }
            if listener_ready {
                while let Ok((stream, _)) = self.listener.accept() {
                    if stopping {
                        let mut stream = stream;
                        send(
                            &mut stream,
                            &Greeting::Failed("the session is stopping; run again".into()),
                        );
                    } else {
                        linger_until = None;
                        self.admit(stream, &mut clients, identity);
                    }
                }
            }
        }
    }

    fn admit(&self, mut stream: UnixStream, clients: &mut Vec<UnixStream>, identity: &str) {
        let greeting = Greeting::Ready {
            pid: nix::unistd::getpid().as_raw(),
            image: identity.to_string(),
            instances: clients.len() as u32 + 1,
            wanted: self.wanted,
            used: self.used,
        };
        if stream.write_all(greeting.encode().as_bytes()).is_ok() {
            clients.push(stream);
        }
    }

    fn fail_all(self, clients: Vec<UnixStream>) -> i32 {
        drop(clients);
        self.shut_down();
        1
    }

    /// Unmounts (lazily: a dying sandbox may still hold them), removes the socket and the
    /// mount points, and releases the data directory. A FUSE backend is waited for before
    /// the layers below it are unmounted: it holds them open until it exits.
    fn shut_down(mut self) {
        detach_view(self.places, self.isolation);
        if let Some(helper) = self.helper.take() {
            debug::log(format!("daemon: waiting for {} to exit", helper.name()));
            helper.stop();
        }
        if let Some((unmounter, _)) = &mut self.fuse {
            let _ = unmounter.unmount();
        }
        // The kernel overlay leaves its empty work directory with mode 000, which a
        // user's `rm -rf` of the data directory cannot get through; it is made anew.
        let _ = std::fs::remove_dir(self.places.data.join("work").join("work"));
        remove_session_files(self.places);
        drop(self.data_lock);
    }
}

/// Detaches the writable view (lazily: a dying sandbox may still hold it). In the host's
/// mount namespace only `fusermount3` may unmount a user's FUSE mount.
fn detach_view(places: &Places, isolation: namespaces::Isolation) {
    match isolation {
        namespaces::Isolation::Namespaces => {
            let _ = umount2(&places.root, MntFlags::MNT_DETACH);
        }
        namespaces::Isolation::Host => fusermount_detach(&places.root),
    }
}

/// `fusermount3 -u -z PATH`, quietly.
pub fn fusermount_detach(path: &std::path::Path) {
    if let Some(fusermount) = namespaces::setuid_fusermount() {
        let _ = std::process::Command::new(fusermount)
            .args(["-u", "-z", "--"])
            .arg(path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Mounts the layers at `places.layers` with the in-process FUSE server, run on a thread
/// of its own; returns its unmounter and a descriptor that hangs up when it stops.
fn serve_fuse(
    stack: fim_layers::Stack,
    places: &Places,
    (uid, gid): (u32, u32),
    isolation: namespaces::Isolation,
) -> anyhow::Result<(fuser::SessionUnmounter, OwnedFd)> {
    let settings = match isolation {
        namespaces::Isolation::Namespaces => MountSettings {
            // The sandbox runs in a nested user namespace, not as the mounter.
            allow_other: true,
            threads: 0,
            owner: (uid != 0).then_some((0, 0)),
        },
        // Through fusermount3, which allows `allow_other` only if the host says so; the
        // app runs as the user who mounts, and sees the tree as theirs.
        namespaces::Isolation::Host => MountSettings {
            allow_other: false,
            threads: 0,
            owner: Some((uid, gid)),
        },
    };
    let mut session = {
        let _step = debug::Step::new("daemon: mount the layers (FUSE)");
        fuse_session(Arc::new(stack), &places.layers, &settings).map_err(|e| {
            anyhow::anyhow!(
                "cannot mount the image's layers with FUSE: {e} (is /dev/fuse present and open to you?)"
            )
        })?
    };
    let unmounter = session.unmount_callable();
    let (stopped, stopped_writer) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    std::thread::Builder::new()
        .name("fuse".into())
        .spawn(move || {
            let _ = session.run();
            drop(stopped_writer);
        })
        .context("cannot start the FUSE server")?;
    Ok((unmounter, stopped))
}

/// Removes the session's files, logging (under `FIM_DEBUG`) what could not be removed.
fn remove_session_files(places: &Places) {
    if let Err(e) = places.remove_session_files() {
        debug::log(format!("daemon: {e:#}"));
    }
}

/// A poll timeout of at least one millisecond.
pub fn millis(d: Duration) -> PollTimeout {
    let ms = d.as_millis().clamp(1, u128::from(u16::MAX)) as u16;
    PollTimeout::from(ms)
}
