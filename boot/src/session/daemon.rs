//! The session daemon, forked from the first launcher of an image. It takes the data
//! directory, finishes an interrupted commit, creates the namespaces, mounts the view
//! (`crate::view`) and then waits: every launcher holds a connection, and when the last
//! one closes (exit or SIGKILL alike) the daemon takes the view down, removes its
//! directories and exits. After a normal exit of the last launcher it lingers a moment
//! for a relaunch. No polling while instances run; the daemon sleeps in `poll` until a
//! launcher comes or goes. If the view fails under the launchers (the FUSE server or the
//! overlay backend stopped) or the daemon is told to stop, it tells each launcher why and
//! hangs up, and they end their apps; a daemon that is killed just hangs up.
//!
//! It keeps nothing of the launcher's: not its terminal, not its descriptors, and not its
//! standard error once the first launcher is served (under `FIM_DEBUG` its later lines go
//! to `<data>/session.log`), so a pipe from a launcher closes when the launcher exits.

use std::ffi::OsStr;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fim_image::Image;
use fim_layers::{BlockCache, DEFAULT_CACHE_BYTES};
use fim_reserved::Overlay;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{ForkResult, fork, setsid};

use super::greeting::{Greeting, HeldProgram, LEAVING, QUIT, send};
use super::mounted_data::MountedData;
use super::{namespaces, network};
use crate::commit::journal;
use crate::cores::Split;
use crate::debug;
use crate::locks::DataLock;
use crate::places::Places;
use crate::tools;
use crate::view::extracted::Report;
use crate::view::fuse_backend::millis;
use crate::view::layer_stack::{self, LayerFile};
use crate::view::{Isolation, Layers, View, Writable, prefetch};

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
    wanted: (Overlay, bool, Writable),
    program: Option<&OsStr>,
) -> anyhow::Result<UnixStream> {
    let (ours, theirs) = UnixStream::pair().context("cannot create a socket pair")?;
    // Buffered output would otherwise be written twice, once by each process.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // While the new session reads the program ahead, the launcher and what it starts keep
    // off the core the read-ahead takes (the shim gives the app the launcher's cores back).
    let read_ahead = program.map(|program| (program, Split::start()));
    // SAFETY: the launcher is single-threaded here, so the child may run any code.
    match unsafe { fork() }.context("cannot fork the session daemon")? {
        ForkResult::Parent { .. } => Ok(ours),
        ForkResult::Child => {
            drop(ours);
            let stack = Stack { image, extras };
            let code = daemon_main(
                &stack,
                places,
                (uid, gid),
                identity,
                wanted,
                read_ahead,
                theirs,
            );
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
    want: (Overlay, bool, Writable),
    read_ahead: Option<(&OsStr, Option<Split>)>,
    mut first: UnixStream,
) -> i32 {
    let _ = setsid();
    detach(&first);
    match Daemon::set_up(
        stack,
        places,
        (uid, gid),
        identity,
        want,
        read_ahead,
        &mut first,
    ) {
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
    /// The layers and the writable view over them.
    view: View,
    /// Held for the daemon's life: one session per data directory. An ephemeral session
    /// only reads it, and takes nothing there.
    data_lock: Option<DataLock>,
    /// The data and upper directories as mounted (a persistent session's).
    mounted_data: Option<MountedData>,
    /// The backend asked for (the view's may differ after a fallback).
    wanted: Overlay,
    /// Whether the casefold view is on.
    casefold: bool,
    /// The image's bwrap in a sealed memfd, with its digest: its launchers run it from
    /// here (`tools::open_held_bwrap`) instead of each decompressing its own.
    bwrap: Option<(File, [u8; 32])>,
    /// The session's loopback-only network namespace, for launches without the network
    /// permission (`network`).
    network: Option<OwnedFd>,
    /// Why the view's backend is not `wanted`, for the launcher that started the session.
    notice: Option<String>,
    /// How long the session outlives its last launcher: an ephemeral one not at all, as
    /// no other launch may join it.
    linger: Duration,
}

impl<'a> Daemon<'a> {
    fn set_up(
        layers: &Stack,
        places: &'a Places,
        (uid, gid): (u32, u32),
        identity: &str,
        (wanted, casefold, writable): (Overlay, bool, Writable),
        read_ahead: Option<(&OsStr, Option<Split>)>,
        first: &mut UnixStream,
    ) -> anyhow::Result<Self> {
        let data_lock = match writable {
            Writable::Persistent => {
                let Some(data_lock) = DataLock::try_take(places)? else {
                    bail!(
                        "the data directory {} is in use by another session of this image (another user, or another TMPDIR); close it first",
                        places.data.display()
                    );
                };
                Some(data_lock)
            }
            Writable::Ephemeral(_) => None,
        };
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

        let bwrap = tools::held_bwrap(layers.image);
        let cache = BlockCache::new(DEFAULT_CACHE_BYTES);
        let stack = {
            let _step = debug::Step::new("daemon: open the layers");
            layer_stack::open(layers.image, layers.extras, cache.clone())?
        };
        // Read ahead once the namespaces are made.
        let mut prefetch =
            read_ahead.map(|(program, split)| (prefetch::prepare(&stack, program), split));
        // Without FUSE, the layers are extracted now: as the user, before the namespaces.
        let served = Layers::prepare(
            stack,
            identity,
            &places.image,
            (wanted, casefold),
            &mut ToLauncher(first),
        )?;
        if let (Some((program, _)), Layers::Fuse(_)) = (&mut prefetch, &served) {
            program.mounted_at = Some(places.layers.clone());
        }
        let mounted_data = match writable {
            Writable::Persistent => MountedData::hold(places),
            Writable::Ephemeral(_) => None,
        };
        let isolation = namespaces::create(uid, gid)?;
        // With a core of its own (`cores`) the read-ahead starts as soon as this process
        // may have threads: it takes nothing from the mounts below.
        if let Some((program, split)) = prefetch.take_if(|(_, split)| split.is_some()) {
            prefetch::start(program, split);
        }
        // Made while the view is mounted; waited for before the first launcher is told.
        let network = match isolation {
            Isolation::Namespaces => Some(network::make()),
            Isolation::Host => None,
        };
        // No user namespace is made after this one: the layer server may use a thread to
        // decompress ahead of its readers.
        cache.allow_decompress_ahead();
        if data_lock.is_some() {
            // A commit killed half way is finished (or forgotten) before the upper
            // directory is mounted again; in the namespace, where files of subordinate
            // ids can be removed. (Read as it is, either state shows the same files: an
            // ephemeral view leaves it to the next normal run.)
            journal::recover(places, layers.image)?;
        }
        // Without a core of its own, the program is read ahead once the layer server runs:
        // on the core the kernel gives the server's new threads, the overlay's mount would
        // wait for their first answer (measured: 1.7-3.9 ms).
        let read_ahead = || {
            if let Some((program, split)) = prefetch {
                prefetch::start(program, split);
            }
        };
        let mut view = View::mount(
            layers.image,
            served,
            places,
            (uid, gid),
            isolation,
            (wanted, casefold, &writable),
            read_ahead,
        )?;

        let network = network.and_then(|making| {
            making
                .and_then(network::Making::finish)
                .inspect_err(|e| {
                    debug::log(format!(
                        "daemon: no network namespace for the session ({e:#}); each launch's bwrap makes one"
                    ));
                })
                .ok()
        });
        let listener = match UnixListener::bind(&places.socket)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
        {
            Ok(listener) => listener,
            Err(e) => {
                view.detach();
                return Err(e)
                    .with_context(|| format!("cannot listen on {}", places.socket.display()));
            }
        };
        Ok(Daemon {
            places,
            listener,
            signals,
            data_lock,
            mounted_data,
            wanted,
            casefold,
            bwrap,
            network,
            notice: view.notice.take(),
            view,
            linger: match writable {
                Writable::Persistent => LINGER,
                Writable::Ephemeral(_) => Duration::ZERO,
            },
        })
    }

    /// Serves launchers until the last one leaves; returns the exit status.
    fn serve(mut self, mut first: UnixStream, identity: &str) -> i32 {
        let mut clients = Vec::new();
        if let Some(notice) = self.notice.take() {
            send(&mut first, &Greeting::Note(notice));
        }
        self.admit(first, &mut clients, identity);
        // The first launcher has its answer: from now on, nothing of its stays open here.
        log_elsewhere(self.places, self.data_lock.is_some());
        // Set while lingering after the last launcher left cleanly.
        let mut linger_until: Option<Instant> = None;
        loop {
            let mut timeout = PollTimeout::NONE;
            if clients.is_empty() {
                if let Some(deadline) = linger_until {
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
                                Ok((mut stream, _)) => {
                                    if self.gone_under(&mut stream, &clients) {
                                        self.shut_down();
                                        drop(guard);
                                        return 0;
                                    }
                                    self.admit(stream, &mut clients, identity);
                                    continue;
                                }
                                Err(_) => {
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

            let (listener_ready, signalled, fuse_gone, helper_gone, casefold_gone, readable) = {
                let fuse = self.view.layers_stopped().unwrap_or(self.signals.as_fd());
                let helper = self.view.backend_exited().unwrap_or(self.signals.as_fd());
                let casefold = self.view.casefold_stopped().unwrap_or(self.signals.as_fd());
                let mut fds = vec![
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                    PollFd::new(fuse, PollFlags::POLLIN),
                    PollFd::new(helper, PollFlags::POLLIN),
                    PollFd::new(casefold, PollFlags::POLLIN),
                ];
                fds.extend(
                    clients
                        .iter()
                        .map(|c: &UnixStream| PollFd::new(c.as_fd(), PollFlags::POLLIN)),
                );
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => {
                        return self.stop(clients, format!("its daemon's poll failed ({e})"));
                    }
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                let readable: Vec<usize> = fds[5..]
                    .iter()
                    .enumerate()
                    .filter(|(_, fd)| ready(fd))
                    .map(|(i, _)| i)
                    .collect();
                (
                    ready(&fds[0]),
                    ready(&fds[1]),
                    ready(&fds[2]) && self.view.layers_stopped().is_some(),
                    ready(&fds[3]) && self.view.backend_exited().is_some(),
                    ready(&fds[4]) && self.view.casefold_stopped().is_some(),
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
                            linger_until = Some(Instant::now() + self.linger);
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
            if signalled {
                let signal = self
                    .signals
                    .read_signal()
                    .ok()
                    .flatten()
                    .and_then(|info| Signal::try_from(info.ssi_signo as i32).ok());
                let signal = signal.map_or_else(|| "a signal".to_string(), |s| s.to_string());
                return self.stop(clients, format!("its daemon was stopped by {signal}"));
            }
            if fuse_gone {
                return self.stop(clients, "the FUSE server of its layers stopped".into());
            }
            if casefold_gone {
                return self.stop(
                    clients,
                    "the FUSE server of its casefold view stopped".into(),
                );
            }
            if helper_gone {
                let how = self.view.how_the_backend_ended();
                return self.stop(clients, how);
            }
            if listener_ready {
                while let Ok((mut stream, _)) = self.listener.accept() {
                    linger_until = None;
                    if self.gone_under(&mut stream, &clients) {
                        if clients.is_empty() {
                            // Lingering: make way; `stream` is never answered, and its
                            // launcher starts a new session once this process is gone.
                            self.shut_down();
                            return 0;
                        }
                        continue;
                    }
                    self.admit(stream, &mut clients, identity);
                }
            }
        }
    }

    /// Whether the data directory this session mounted was removed or replaced, checked
    /// for a launcher that connects: while instances run it is refused in one line (they
    /// still use the old directories); otherwise the caller makes way for a new session.
    fn gone_under(&self, stream: &mut UnixStream, clients: &[UnixStream]) -> bool {
        let Some(gone) = self.mounted_data.as_ref().and_then(MountedData::gone) else {
            return false;
        };
        debug::log(format!(
            "daemon: {} was removed or replaced since the session mounted it",
            gone.display()
        ));
        if !clients.is_empty() {
            send(
                stream,
                &Greeting::Failed(format!(
                    "{} was removed or replaced while {} of this image {} on the old one; close {}, then try again",
                    gone.display(),
                    match clients.len() {
                        1 => "an instance".to_string(),
                        n => format!("{n} instances"),
                    },
                    if clients.len() == 1 { "runs" } else { "run" },
                    if clients.len() == 1 { "it" } else { "them" },
                )),
            );
        }
        true
    }

    fn admit(&self, mut stream: UnixStream, clients: &mut Vec<UnixStream>, identity: &str) {
        let greeting = Greeting::Ready {
            pid: nix::unistd::getpid().as_raw(),
            image: identity.to_string(),
            instances: clients.len() as u32 + 1,
            wanted: self.wanted,
            used: self.view.overlay,
            casefold: self.casefold,
            bwrap: self.bwrap.as_ref().map(|(file, digest)| HeldProgram {
                fd: file.as_raw_fd(),
                digest: tools::short_digest(digest),
            }),
            network: self.network.as_ref().map(AsRawFd::as_raw_fd),
        };
        if stream.write_all(greeting.encode().as_bytes()).is_ok() {
            clients.push(stream);
        }
    }

    /// Ends a session that failed under its launchers, or that was told to stop: tells
    /// each launcher why (they end their apps), takes the view down, and removes the
    /// mount points. The socket goes too unless a launcher is on its way in (it holds the
    /// session lock from connecting until it is greeted): that one is never answered, sees
    /// the connection reset when this process exits, and starts a new session.
    fn stop(self, clients: Vec<UnixStream>, why: String) -> i32 {
        debug::log(format!(
            "daemon: the session ends under its launchers: {why}"
        ));
        for mut client in clients {
            send(&mut client, &Greeting::Ended(why.clone()));
        }
        let Daemon {
            places,
            listener,
            view,
            data_lock,
            ..
        } = self;
        view.detach();
        if let Err(e) = places.remove_mount_points() {
            debug::log(format!("daemon: {e:#}"));
        }
        drop(data_lock);
        if let Ok(file) = File::options().write(true).open(&places.session_lock)
            && let Ok(_guard) = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        {
            remove_session_files(places);
        }
        drop(listener);
        1
    }

    /// Takes the view down, removes the socket and the mount points, and releases the
    /// data directory.
    fn shut_down(self) {
        debug::log("daemon: taking the view down; the session ends");
        self.view.detach();
        remove_session_files(self.places);
        drop(self.data_lock);
    }
}

/// Under `FIM_DEBUG`, sends the daemon's further lines to `<data>/session.log` (made anew
/// by each session, 0600) instead of the first launcher's standard error, which would
/// otherwise stay open as long as the session lives. An ephemeral session writes nothing
/// in the data directory: its lines go to `ephemeral-session.log` in the runtime directory.
fn log_elsewhere(places: &Places, persistent: bool) {
    if !debug::enabled() {
        return;
    }
    let path = match (persistent, places.instance.parent()) {
        (false, Some(runtime)) => runtime.join("ephemeral-session.log"),
        _ => places.data.join("session.log"),
    };
    debug::log(format!("daemon: further lines go to {}", path.display()));
    let opened = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .or_else(|_| File::options().write(true).open("/dev/null"));
    if let Ok(log) = opened {
        let _ = nix::unistd::dup2_stderr(&log);
    }
}

/// Removes the session's files, logging (under `FIM_DEBUG`) what could not be removed.
fn remove_session_files(places: &Places) {
    if let Err(e) = places.remove_session_files() {
        debug::log(format!("daemon: {e:#}"));
    }
}

/// What the set-up tells the launcher that started the session, before it is greeted.
struct ToLauncher<'a>(&'a mut UnixStream);

impl Report for ToLauncher<'_> {
    fn note(&mut self, line: String) {
        send(self.0, &Greeting::Note(line));
    }

    fn progress(&mut self, done: u64, total: u64) {
        send(self.0, &Greeting::Progress { done, total });
    }
}
