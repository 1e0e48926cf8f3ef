//! Faults under a running app: the session daemon killed (SIGKILL, as the OOM killer does),
//! or the FUSE overlay backend killed under it. Every launcher of the session must end its
//! app within a second and exit 125 with one line, and the next run must start a fresh
//! session, leaving nothing of the dead one behind.

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fim_tests::checks::{session_dirs, wait_for, wait_for_the_session_to_end};
use fim_tests::fsutil::setuid_bwrap;
use fim_tests::run::{KilledOnDrop, SpawnRetrying};
use fim_tests::sandbox::{
    App, Who, app_with_backend as app, host_mounts_mentioning, processes_with,
};
use fim_tests::{skip, which};

fim_tests::per_backend!(a_killed_daemon_ends_every_app_and_the_next_run_starts_afresh);
fim_tests::per_backend!(a_killed_daemon_serving_the_casefold_view_ends_every_app_too);
fim_tests::per_backend_fuse!(a_killed_fuse_backend_ends_every_app_and_the_next_run_starts_afresh);

/// The one line every launcher of a session that died under it prints (after the image's
/// name).
const ENDED: &str = "app.flatimage: the image's session ended unexpectedly: ";

/// How long a launcher may take to notice (the brief gives the app a second; this leaves
/// room for a loaded machine).
const NOTICE: Duration = Duration::from_secs(2);

/// Two instances of `app` running `sleep MARKER`, each started and printing `up`.
fn two_sleeping_instances(app: &App, marker: &str) -> Vec<KilledOnDrop> {
    two_sleeping_instances_holding(app, marker, "")
}

/// As [`two_sleeping_instances`], each `sleep` started with the shell redirection
/// `holding` (a file it keeps open while it sleeps).
fn two_sleeping_instances_holding(app: &App, marker: &str, holding: &str) -> Vec<KilledOnDrop> {
    (0..2)
        .map(|_| {
            let child = app
                .command([
                    "fim-exec",
                    "sh",
                    "-c",
                    &format!("echo up; exec sleep {marker} {holding}"),
                ])
                .stderr(Stdio::piped())
                .spawn_until_up();
            KilledOnDrop(child)
        })
        .collect()
}

/// A marker for the apps' command lines, unique to this test process, test and run.
fn marker(app: &App, test: u32) -> String {
    format!(
        "{}.{test}{}{}",
        5000 + std::process::id() % 1000,
        app.who as u8,
        app.overlay.map_or(0, str::len)
    )
}

/// The apps: processes running `sleep MARKER` (not the launchers, whose command lines
/// hold it too).
fn apps(marker: &str) -> Vec<u32> {
    processes_with(&format!("sleep {marker}"))
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c == format!("sleep\0{marker}\0").as_bytes())
        })
        .collect()
}

/// The session daemon: the first launcher's child that is not bubblewrap (it is a fork of
/// the launcher, with its command line).
fn daemon_of(launcher: u32) -> u32 {
    let cmdline = |pid: u32| std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let children = std::fs::read_to_string(format!("/proc/{launcher}/task/{launcher}/children"))
        .expect("read the launcher's children");
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|pid| cmdline(*pid) == cmdline(launcher))
        .expect("the first launcher forked the session daemon")
}

fn sigkill(pid: u32) {
    // SAFETY: kill has no memory preconditions.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
}

/// Waits for each launcher to exit and checks it did so within [`NOTICE`] of `killed`,
/// with status 125 and one line starting with [`ENDED`] that mentions `cause`; returns the
/// slowest launcher's time.
fn each_launcher_ends_with_one_line(
    children: Vec<KilledOnDrop>,
    killed: Instant,
    cause: &str,
) -> Duration {
    let mut slowest = Duration::ZERO;
    for mut launcher in children {
        let child = &mut launcher.0;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                killed.elapsed() < NOTICE + Duration::from_secs(3),
                "a launcher still runs {:?} after its session died",
                killed.elapsed()
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let took = killed.elapsed();
        slowest = slowest.max(took);
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("read stderr");
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(
            status.code() == Some(125)
                && lines.len() == 1
                && lines[0].starts_with(ENDED)
                && lines[0].contains(cause),
            "the launcher should exit 125 with one line {ENDED:?}... naming {cause:?}; got {status}: {stderr}"
        );
        assert!(took < NOTICE, "a launcher took {took:?} to end");
    }
    slowest
}

/// After a session died: no app is left, the next run works, and once its session ended
/// nothing is left: no directory, host mount or process of the image's runtime directory.
fn the_next_run_starts_afresh(app: &App, marker: &str) {
    assert_eq!(
        apps(marker),
        Vec::<u32>::new(),
        "an app survived the end of its session"
    );
    let out = app.sh("cat /data/keep.txt");
    out.assert_ok();
    assert_eq!(out.stdout, "keep\n");
    wait_for_the_session_to_end(app);
    nothing_left(app, &app.runtime_dir());
}

fn nothing_left(app: &App, runtime: &Path) {
    assert_eq!(
        session_dirs(app),
        Vec::<String>::new(),
        "session files remain"
    );
    assert!(
        host_mounts_mentioning(runtime).is_empty(),
        "a mount of the session is visible on the host"
    );
    let runtime = runtime.to_string_lossy().into_owned();
    wait_for(
        || processes_with(&runtime).is_empty(),
        "the session's processes",
    );
}

/// Kills the session daemon of the two instances `children`: each launcher ends with one
/// line naming it, and the next run starts afresh. `shown` labels the timing printed.
fn killing_the_daemon_ends_both(app: &App, marker: &str, children: Vec<KilledOnDrop>, shown: &str) {
    let daemon = daemon_of(children[0].0.id());
    sigkill(daemon);
    let killed = Instant::now();
    let slowest =
        each_launcher_ends_with_one_line(children, killed, &format!("daemon (pid {daemon}) died"));
    eprintln!("killed_daemon {shown}: the launchers ended {slowest:?} after the kill");
    the_next_run_starts_afresh(app, marker);
}

fn a_killed_daemon_ends_every_app_and_the_next_run_starts_afresh(backend: &'static str, who: Who) {
    let Some(app) = app("killed_daemon", who, backend) else {
        return;
    };
    let marker = marker(&app, 1);
    let children = two_sleeping_instances(&app, &marker);
    wait_for(|| apps(&marker).len() == 2, "the apps");
    killing_the_daemon_ends_both(&app, &marker, children, &format!("{backend} {who:?}"));
}

/// The daemon killed while its casefold view has files open for the apps (each `sleep`
/// holds a file opened by another case of its name, and its program): the view's server,
/// the layer server under the overlay and the daemon die together, and nothing of the
/// session may wait on another part of it that is gone. Before the kill: what the daemon
/// holds of that file.
fn a_killed_daemon_serving_the_casefold_view_ends_every_app_too(backend: &'static str, who: Who) {
    let Some(app) = app("killed_casefold_daemon", who, backend) else {
        return;
    };
    let app = app.with_env("FIM_CASEFOLD", "1");
    let marker = marker(&app, 3);
    let children = two_sleeping_instances_holding(&app, &marker, "</DATA/Keep.TXT");
    wait_for(|| apps(&marker).len() == 2, "the apps");
    for pid in apps(&marker) {
        let stdin = std::fs::read_link(format!("/proc/{pid}/fd/0")).expect("the app's stdin");
        assert!(
            stdin
                .to_string_lossy()
                .to_lowercase()
                .ends_with("/data/keep.txt"),
            "the app should hold /data/keep.txt open; its stdin is {}",
            stdin.display()
        );
    }
    the_daemon_opens_the_held_file_only_without_passthrough(&app, &children, who);
    killing_the_daemon_ends_both(
        &app,
        &marker,
        children,
        &format!("casefold {backend} {who:?}"),
    );
}

/// What the daemon holds of the file both apps read through the casefold view. Where
/// contents pass through (the host's root), the kernel opens the file below for each app
/// from the path of the view's `O_PATH` descriptor: the daemon has no descriptor of it open
/// for reading, so nothing in the view below (a FUSE backend's open) is done twice.
/// Otherwise the server reads for the apps, through a descriptor for each of their opens.
fn the_daemon_opens_the_held_file_only_without_passthrough(
    app: &App,
    children: &[KilledOnDrop],
    who: Who,
) {
    let daemon = daemon_of(children[0].0.id());
    let opened_for_reading: Vec<String> = std::fs::read_dir(format!("/proc/{daemon}/fd"))
        .expect("list the daemon's descriptors")
        .filter_map(|fd| {
            let fd = fd.ok()?.path();
            let target = std::fs::read_link(&fd).ok()?;
            let target = target.to_string_lossy().to_lowercase();
            let info =
                std::fs::read_to_string(fd.to_string_lossy().replacen("/fd/", "/fdinfo/", 1))
                    .ok()?;
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| i32::from_str_radix(f.trim(), 8).ok())?;
            (target.ends_with("/data/keep.txt") && flags & libc::O_PATH == 0)
                .then(|| format!("{} (flags {flags:o})", fd.display()))
        })
        .collect();
    // SAFETY: geteuid cannot fail.
    let passed_through = who == Who::Invoker && unsafe { libc::geteuid() } == 0;
    if passed_through {
        assert!(
            opened_for_reading.is_empty(),
            "{:?} {who:?}: the daemon opened the file below itself: {opened_for_reading:?}",
            app.overlay
        );
    } else {
        assert_eq!(
            opened_for_reading.len(),
            2,
            "{:?} {who:?}: one descriptor for each app's open: {opened_for_reading:?}",
            app.overlay
        );
    }
}

fn a_killed_fuse_backend_ends_every_app_and_the_next_run_starts_afresh(
    backend: &'static str,
    who: Who,
) {
    let Some(app) = app("killed_backend", who, backend) else {
        return;
    };
    let marker = marker(&app, 2);
    let children = two_sleeping_instances(&app, &marker);
    wait_for(|| apps(&marker).len() == 2, "the apps");
    let name = if backend == "overlayfs" {
        "fuse-overlayfs"
    } else {
        "unionfs"
    };
    // The backend runs under its own name and names the session's mount point.
    let root = app.runtime_dir().to_string_lossy().into_owned();
    let backends: Vec<u32> = processes_with(&root)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with(format!("{name}\0").as_bytes()))
        })
        .collect();
    assert_eq!(backends.len(), 1, "one FUSE backend: {backends:?}");
    sigkill(backends[0]);
    let killed = Instant::now();
    let cause = format!("{name} (pid {}) was killed by SIGKILL", backends[0]);
    let slowest = each_launcher_ends_with_one_line(children, killed, &cause);
    eprintln!("killed_backend {backend} {who:?}: the launchers ended {slowest:?} after the kill");
    the_next_run_starts_afresh(&app, &marker);
}

/// Without user namespaces (a setuid bwrap, FUSE mounts made by fusermount3 in the host's
/// mount namespace), a killed daemon leaves its mounts on the host, where the session
/// cannot take them down: its apps must still end, and the next run must clear them.
#[test]
fn without_user_namespaces_a_killed_daemon_leaves_no_host_mount() {
    if !fim_tests::is_root() {
        skip("a killed daemon without user namespaces: making a setuid bwrap needs root");
        return;
    }
    if which("fusermount3").is_none() {
        skip("a killed daemon without user namespaces: fusermount3 is not installed");
        return;
    }
    let Some(app) = app("killed_daemon_host_mounts", Who::User, "overlayfs") else {
        return;
    };
    let Some(bwrap) = setuid_bwrap(app.dir.path()) else {
        skip("a killed daemon without user namespaces: a setuid bwrap cannot be made here");
        return;
    };
    let app = app
        .with_env("FIM_TEST_REFUSE_USERNS", "1")
        .with_env("FIM_BWRAP", &bwrap);
    let marker = marker(&app, 3);
    let children = two_sleeping_instances(&app, &marker);
    wait_for(|| apps(&marker).len() == 2, "the apps");
    let runtime = app.runtime_dir();
    assert!(
        !host_mounts_mentioning(&runtime).is_empty(),
        "the session's mounts are the host's"
    );
    killing_the_daemon_ends_both(&app, &marker, children, "without userns");
}
