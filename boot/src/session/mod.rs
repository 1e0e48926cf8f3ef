//! A session: one daemon per data directory holds the namespaces, the FUSE server and the
//! writable view; every launcher of the image connects to it and joins its namespaces.
//! The kernel refuses (or corrupts) two overlay mounts sharing an upper directory, so
//! concurrent instances must share one mount. The daemon lives exactly as long as some
//! launcher holds a connection: the last one to exit, or be killed, ends it (after a
//! short linger when it left normally). An ephemeral launch has a session of its own
//! (its writes are its own): nobody joins it, and it ends with its launcher.
//!
//! How it flows: a launcher takes the user's session lock, connects to the socket of the
//! image's runtime directory (`connect`), and reads the daemon's greeting (`greeting`);
//! with no live daemon it forks one (`daemon`), which creates the namespaces
//! (`namespaces`, with the user's subordinate ids where the host gives some: `subids`),
//! recovers an interrupted commit, and mounts the view (`crate::view`).
//! The launcher then joins the daemon's namespaces and builds the sandbox there. A layer
//! change asks a lingering session to make way first (`take_data`), and a session whose
//! data directory was removed or replaced makes way for the launcher that finds it
//! (`mounted_data`).

pub mod daemon;
pub mod greeting;
mod mounted_data;
pub mod namespaces;
pub mod network;
mod subids;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use fim_image::Image;
use fim_reserved::Overlay;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::debug::{self, Step};
use crate::locks::{DataLock, NoInstances, lock_file};
use crate::places::Places;
use crate::view::Writable;
use crate::view::layer_stack::{self, LayerFile};
use greeting::{Greeting, HeldProgram, LEAVING, QUIT};

/// How long a launcher waits for a live daemon to greet it.
const GREETING_TIMEOUT: Duration = Duration::from_secs(30);

/// A launcher's membership in the session: dropping it (or dying) leaves the session.
#[derive(Debug)]
pub struct Membership {
    connection: UnixStream,
    pub daemon: i32,
    pub instances: u32,
    /// The backend the session was started for, and the one serving the view.
    pub wanted: Overlay,
    pub overlay: Overlay,
    /// Whether the session's view is the casefold one.
    pub casefold: bool,
    /// The image's bwrap as the daemon holds it, if it does.
    pub bwrap: Option<HeldProgram>,
    /// The daemon's descriptor of the session's loopback-only network, if it made one.
    pub network: Option<i32>,
}

impl Membership {
    /// Leaves after a normal run, which lets the session linger for a relaunch.
    pub fn leave(mut self) {
        let _ = self.connection.write_all(&[LEAVING]);
    }

    /// Becomes readable when the session ends under this member: its daemon died or sent
    /// why it is ending. The daemon sends nothing else after the greeting.
    pub fn ended(&self) -> BorrowedFd<'_> {
        self.connection.as_fd()
    }

    /// Why the session ended, once [`Membership::ended`] is readable: the daemon's own
    /// words, or that it died.
    pub fn why_it_ended(&self) -> String {
        let mut line = String::new();
        let _ = self
            .connection
            .set_read_timeout(Some(Duration::from_millis(500)));
        let _ = BufReader::new(&self.connection).read_line(&mut line);
        match Greeting::parse(&line) {
            Some(Greeting::Ended(why)) => why,
            _ => format!("its daemon (pid {}) died", self.daemon),
        }
    }

    /// Asks the daemon, of which this is the only member, to end, and waits until it has.
    fn make_way(mut self) -> anyhow::Result<()> {
        self.connection
            .write_all(&[QUIT])
            .context("asking the old session to end")?;
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut self.connection, &mut rest);
        Ok(())
    }
}

/// Joins the running session of `places`, or starts one.
pub fn connect(
    image: &Image,
    extras: &[LayerFile],
    places: &Places,
    (uid, gid): (u32, u32),
    (wanted, casefold, writable): (Overlay, bool, Writable),
    program: Option<&OsStr>,
) -> anyhow::Result<Membership> {
    let identity = layer_stack::identity(image, extras);
    let lock = lock_file(&places.session_lock)?;
    let _lock = {
        let _step = Step::new("wait for the session lock");
        Flock::lock(lock, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("cannot lock {}", places.session_lock.display()))?
    };

    if let Some(stream) = connect_running(&places.socket)? {
        let _step = Step::new("join the running session");
        match greeting(stream)? {
            // Alone in a lingering session that serves other layers, another backend
            // or the other casefold state: replace it.
            Some((member, image))
                if (image != identity
                    || member.wanted != wanted
                    || member.casefold != casefold)
                    && member.instances == 1 =>
            {
                debug::log(
                    "the lingering session serves other layers, another overlay backend or the other casefold state; replacing it",
                );
                member.make_way()?;
            }
            Some(member) => {
                return check_identity(member, &identity, (wanted, casefold), places);
            }
            None => debug::log("the session's daemon died; starting a new one"),
        }
    }
    // What a dead daemon left: its socket and the empty mount points (its mounts died
    // with its namespace, unless it had to mount in the host's, through fusermount3).
    if places.remove_session_files().is_err() {
        for mount_point in [&places.root, &places.layers] {
            crate::view::fusermount_detach(mount_point);
        }
        places
            .remove_session_files()
            .context("cannot clear a stale session")?;
    }
    let _step = Step::new("start the session daemon");
    let stream = daemon::spawn(
        image,
        extras,
        places,
        (uid, gid),
        &identity,
        (wanted, casefold, writable),
        program,
    )?;
    match greeting(stream)? {
        Some(member) => check_identity(member, &identity, (wanted, casefold), places),
        None => {
            bail!("the session daemon exited while starting (run with FIM_DEBUG=1 for details)")
        }
    }
}

fn check_identity(
    (member, image): (Membership, String),
    identity: &str,
    (wanted, casefold): (Overlay, bool),
    places: &Places,
) -> anyhow::Result<Membership> {
    let others = member.instances.saturating_sub(1);
    if image != identity {
        bail!(
            "{} changed its layers while {others} other instance(s) still run the old ones; close them and run again",
            places.image.display(),
        );
    }
    if member.wanted != wanted {
        // One view per upper directory: joining is safe, a second backend is not.
        eprintln!(
            "fim: {others} running instance(s) of this image use the {} overlay; {wanted} applies once they have exited",
            member.overlay
        );
    }
    if member.casefold != casefold {
        // The same for the casefold view: one view per upper directory.
        eprintln!(
            "fim: {others} running instance(s) of this image use casefold {}; casefold {} applies once they have exited",
            on_off(member.casefold),
            on_off(casefold)
        );
    }
    debug::log(format!(
        "session daemon {} serves {} instance(s)",
        member.daemon, member.instances
    ));
    Ok(member)
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// Ends this user's lingering session of `places`, whose mounts hold the upper directory
/// a layer change is about to change. Fails, naming how many, when instances still run.
pub fn end_lingering(places: &Places) -> anyhow::Result<()> {
    let lock = lock_file(&places.session_lock)?;
    let _lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("cannot lock {}", places.session_lock.display()))?;
    let Some(stream) = connect_running(&places.socket)? else {
        return Ok(());
    };
    match greeting(stream)? {
        Some((member, _)) if member.instances == 1 => member.make_way(),
        Some((member, _)) => Err(running_error(places, Some(member.instances - 1))),
        None => Ok(()),
    }
}

/// Takes the data directory for a change of its upper directory: ends this user's
/// lingering session, and refuses while another user's (or another `TMPDIR`'s) holds it.
pub fn take_data(places: &Places) -> anyhow::Result<DataLock> {
    end_lingering(places)?;
    DataLock::try_take(places)?.with_context(|| {
        format!(
            "the data directory {} is in use by a session of another user or TMPDIR; close it, then try again",
            places.data.display()
        )
    })
}

/// Refuses a layer change while instances of the image run on this data directory (each
/// holds a shared lock); once granted, new instances wait until it is dropped.
pub fn refuse_if_running(places: &Places) -> anyhow::Result<NoInstances> {
    match NoInstances::try_take(places)? {
        Some(lock) => Ok(lock),
        None => Err(running_error(places, running_instances(places))),
    }
}

/// How many instances this user's sessions of `places` serve, if they can be reached: the
/// shared one's, and the ephemeral runs (a session each).
fn running_instances(places: &Places) -> Option<u32> {
    let uid = nix::unistd::geteuid().as_raw();
    let ephemeral =
        Places::ephemeral_sessions(&places.image, uid).map_or(0, |sessions| sessions.len() as u32);
    let shared = connect_running(&places.socket)
        .ok()
        .flatten()
        // Leaving at once is safe: other members keep the session alive.
        .and_then(|stream| greeting(stream).ok().flatten())
        .map(|(member, _)| member.instances.saturating_sub(1));
    match (shared, ephemeral) {
        (None, 0) => None,
        (shared, ephemeral) => Some(shared.unwrap_or(0) + ephemeral),
    }
}

/// The refusal of a change while instances run.
fn running_error(places: &Places, count: Option<u32>) -> anyhow::Error {
    let image = places.image.display();
    match count {
        Some(n) if n > 0 => {
            anyhow::anyhow!("{n} instance(s) of {image} are running; close them, then try again")
        }
        _ => anyhow::anyhow!(
            "instances of {image} are running (another user's, or with another TMPDIR); close them, then try again"
        ),
    }
}

/// Connects to a live daemon's socket; `None` when there is none.
fn connect_running(socket: &Path) -> anyhow::Result<Option<UnixStream>> {
    match UnixStream::connect(socket) {
        Ok(stream) => {
            let peer = getsockopt(&stream, PeerCredentials)
                .context("reading the peer of the session socket")?;
            if peer.uid() != nix::unistd::geteuid().as_raw() {
                bail!(
                    "{} is served by uid {}, not by you; remove it",
                    socket.display(),
                    peer.uid()
                );
            }
            Ok(Some(stream))
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ECONNREFUSED)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("cannot connect to {}", socket.display())),
    }
}

/// Reads the daemon's greeting: the membership, or `None` if the daemon hung up. Notes
/// before it are shown to the user.
fn greeting(stream: UnixStream) -> anyhow::Result<Option<(Membership, String)>> {
    stream.set_read_timeout(Some(GREETING_TIMEOUT))?;
    // The daemon sends nothing after `Ready`, so the reader holds nothing beyond it.
    let mut reader = BufReader::new(&stream);
    let mut bar = ProgressLine::default();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(_) => {}
            // Queued on a daemon that ended without answering: as good as a hang-up.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => line.clear(),
            Err(e) => return Err(e).context("no answer from the session daemon"),
        }
        if line.is_empty() {
            bar.clear();
            return Ok(None);
        }
        let greeting = Greeting::parse(&line);
        if !matches!(greeting, Some(Greeting::Progress { .. })) {
            bar.clear();
        }
        match greeting {
            Some(Greeting::Note(what)) => eprintln!("fim: {what}"),
            Some(Greeting::Progress { done, total }) => bar.show(done, total),
            Some(Greeting::Ready {
                pid,
                image,
                instances,
                wanted,
                used,
                casefold,
                bwrap,
                network,
            }) => {
                drop(reader);
                return Ok(Some((
                    Membership {
                        connection: stream,
                        daemon: pid,
                        instances,
                        wanted,
                        overlay: used,
                        casefold,
                        bwrap,
                        network,
                    },
                    image,
                )));
            }
            Some(Greeting::Failed(why)) | Some(Greeting::Ended(why)) => bail!("{why}"),
            None => bail!("the session daemon sent a garbled greeting: {line:?}"),
        }
    }
}

/// A progress bar on the launcher's standard error, drawn only on a terminal.
#[derive(Default)]
struct ProgressLine {
    shown: bool,
}

impl ProgressLine {
    fn show(&mut self, done: u64, total: u64) {
        if !std::io::stderr().is_terminal() || total == 0 {
            return;
        }
        let fraction = (done as f64 / total as f64).clamp(0.0, 1.0);
        let width = 30;
        let filled = (fraction * width as f64) as usize;
        eprint!(
            "\rfim: [{}{}] {:3.0}% {} / {} MiB",
            "#".repeat(filled),
            " ".repeat(width - filled),
            fraction * 100.0,
            done >> 20,
            total >> 20
        );
        self.shown = true;
    }

    /// Ends the bar's line, so what follows starts on a line of its own.
    fn clear(&mut self) {
        if std::mem::take(&mut self.shown) {
            eprintln!();
        }
    }
}
