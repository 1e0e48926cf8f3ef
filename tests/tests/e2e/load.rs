//! Load: many instances of one image at once share one view, and many launches one after
//! the other leave nothing behind (no mount, process, descriptor, memfd or runtime
//! directory) and keep the launcher's and the daemon's memory flat, with every overlay
//! backend, as whoever runs the tests and as an unprivileged user. Within the linger the
//! launches share one session; ephemeral launches start a session each, so they also show
//! that many session starts and ends leave nothing behind.
//!
//! `FIM_TEST_LAUNCHES` sets how many sequential launches (default 1000, at least 20),
//! `FIM_TEST_SESSIONS` how many sessions started one after the other (default 100, at least 20).

use std::collections::BTreeMap;
use std::time::Instant;

use fim_tests::checks::{self, session_dirs, wait_for, wait_for_the_session_to_end};
use fim_tests::sandbox::{
    App, Who, app_with_backend as app, host_mounts_mentioning, processes_with,
};

fim_tests::per_backend!(
    fifty_instances_at_once_share_one_view,
    many_sequential_launches_leave_nothing_behind,
    many_sessions_one_after_the_other_leave_nothing_behind,
    casefold_sessions_that_read_through_the_view_end_cleanly,
);

fn fifty_instances_at_once_share_one_view(backend: &'static str, who: Who) {
    let Some(app) = app("fifty_instances", who, backend) else {
        return;
    };
    let started = Instant::now();
    checks::instances_share_one_view(&app, 50);
    eprintln!("fifty_instances {backend} {who:?}: {:?}", started.elapsed());
    wait_for_the_session_to_end(&app);
    assert!(host_mounts_mentioning(&app.runtime_dir()).is_empty());
}

/// How many launches [`many_sequential_launches_leave_nothing_behind`] makes.
fn launches() -> usize {
    count_from("FIM_TEST_LAUNCHES", 1000)
}

/// The number in `variable`, or `default`; at least 20, so that the launch sampled as
/// the baseline (the tenth) comes well before the last.
fn count_from(variable: &str, default: usize) -> usize {
    let count = std::env::var(variable)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    assert!(count >= 20, "{variable} must be at least 20 (got {count})");
    count
}

/// How much a resident size or peak may differ between the tenth launch and the last
/// (KiB): allocator noise, not a leak (a leak of a page a launch over 1,000 launches is
/// 4,000 KiB).
const MEMORY_NOISE_KIB: u64 = 512;

/// What a process holds open: how many descriptors of each kind (`memfd`, `socket`,
/// `pipe`, `anon_inode`, a path...).
fn descriptors(pid: u32) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return kinds;
    };
    for entry in entries.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        let kind = match target.split_once(':') {
            Some((kind, _)) if !target.starts_with('/') => kind.to_string(),
            _ if target.starts_with("/memfd:") => "memfd".to_string(),
            _ => target,
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}

/// A process's resident memory (`VmRSS`), in KiB.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    kib_of(&status, "VmRSS:").unwrap_or_else(|| panic!("no VmRSS for {pid}"))
}

/// The launcher's peak memory at exit, in KiB, from its `FIM_DEBUG` line.
fn launcher_peak_kib(stderr: &str) -> u64 {
    kib_of(stderr, "fim: debug: peak memory at exit:")
        .unwrap_or_else(|| panic!("no peak memory at exit: {stderr}"))
}

/// The number after `prefix` on the first line that starts with it (`NNN kB`).
fn kib_of(text: &str, prefix: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// The lingering session's daemon: the one process running the image between launches.
fn lingering_daemon(app: &App) -> u32 {
    let image = app.image.to_string_lossy().into_owned();
    let pids = processes_with(&image);
    assert_eq!(pids.len(), 1, "one lingering daemon: {pids:?}");
    pids[0]
}

fn many_sequential_launches_leave_nothing_behind(backend: &'static str, who: Who) {
    let Some(app) = app("sequential_launches", who, backend) else {
        return;
    };
    let count = launches();
    let runtime = app.runtime_dir();
    let mut first = None;
    let started = Instant::now();
    // The launcher's own descriptors at exit (`FIM_DEBUG` says), at the launch that
    // started the session, the tenth and the last.
    let mut at_exit = Vec::new();
    // The launcher's peak memory (KiB) at the same launches.
    let mut peaks = Vec::new();
    for i in 0..count {
        let debug = i == 0 || i == 9 || i == count - 1;
        let out = fim_tests::run(
            app.command(["fim-exec", "true"])
                .env("FIM_DEBUG", if debug { "1" } else { "" }),
        );
        out.assert_ok();
        if debug {
            let open = out
                .stderr
                .lines()
                .find_map(|l| {
                    let (count, _) = l
                        .strip_prefix("fim: debug: ")?
                        .split_once(" descriptors open at exit")?;
                    Some(count)
                })
                .unwrap_or_else(|| panic!("no count of descriptors at exit: {}", out.stderr))
                .to_string();
            at_exit.push((i, open));
            peaks.push((i, launcher_peak_kib(&out.stderr)));
        } else {
            assert_eq!(out.stderr, "", "launch {i}");
        }
        if i == 9 {
            let daemon = lingering_daemon(&app);
            // Once it has seen the launcher leave, its one socket is the listening one.
            wait_for(
                || descriptors(daemon).get("socket") == Some(&1),
                "the daemon to see the launcher leave",
            );
            first = Some((daemon, descriptors(daemon), resident_kib(daemon)));
        }
    }
    let took = started.elapsed();
    eprintln!(
        "sequential_launches {backend} {who:?}: {count} launches in {took:?} ({:?} each); \
         the launcher's descriptors at exit: {at_exit:?}; its peak memory (KiB): {peaks:?}",
        took / count as u32
    );
    // The launcher's peak memory is flat: the last launch within noise of the tenth one
    // (the first also starts the session, so it differs).
    let [_, (_, tenth), (_, last)] = peaks[..] else {
        panic!("three launches sampled: {peaks:?}")
    };
    assert!(
        last <= tenth + MEMORY_NOISE_KIB,
        "the launcher's peak memory grew from {tenth} KiB (launch 10) to {last} KiB"
    );
    // The daemon, still lingering, holds what it held after the tenth launch: no
    // descriptor, socket or memfd accumulates (a new daemon, had the linger run out,
    // must hold the same).
    if let Some((daemon, before, resident)) = first {
        let now = lingering_daemon(&app);
        // Given a moment to see the last launcher leave.
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        while descriptors(now) != before && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            descriptors(now),
            before,
            "the daemon's descriptors after launch 10 (pid {daemon}) and after launch {count} (pid {now})"
        );
        // Its memory too: within noise of what it held after launch 10.
        let resident_now = resident_kib(now);
        eprintln!(
            "sequential_launches {backend} {who:?}: the daemon's resident memory {resident} KiB \
             after launch 10, {resident_now} KiB after launch {count}"
        );
        assert!(
            resident_now <= resident + MEMORY_NOISE_KIB,
            "the daemon's resident memory grew from {resident} KiB to {resident_now} KiB"
        );
    }
    assert!(
        at_exit.iter().all(|(_, n)| *n == at_exit[0].1),
        "the launcher's descriptors at exit differ between launches (launch, count): {at_exit:?}"
    );
    // And once the session ended: no process, mount or directory of it.
    wait_for_the_session_to_end(&app);
    assert_eq!(session_dirs(&app), Vec::<String>::new());
    assert!(host_mounts_mentioning(&runtime).is_empty());
    assert!(host_mounts_mentioning(app.dir.path()).is_empty());
    let dir = app.dir.path().to_string_lossy().into_owned();
    wait_for(
        || processes_with(&dir).is_empty(),
        "the session's processes",
    );
}

fn many_sessions_one_after_the_other_leave_nothing_behind(backend: &'static str, who: Who) {
    let Some(app) = app("sequential_sessions", who, backend) else {
        return;
    };
    let app = app.with_env("FIM_EPHEMERAL", "1");
    let count = count_from("FIM_TEST_SESSIONS", 100);
    let runtime = app.runtime_dir();
    let dir = app.dir.path().to_string_lossy().into_owned();
    let started = Instant::now();
    let mut peaks = Vec::new();
    for i in 0..count {
        let debug = i == 9 || i == count - 1;
        let out = fim_tests::run(
            app.command(["fim-exec", "true"])
                .env("FIM_DEBUG", if debug { "1" } else { "" }),
        );
        out.assert_ok();
        if debug {
            peaks.push(launcher_peak_kib(&out.stderr));
        }
        // Each session ends with its launcher (its daemon takes the view down just
        // after): nothing of it is left for the next.
        // (`FIM_DEBUG` leaves the log of the ephemeral sessions there.)
        wait_for(
            || {
                session_dirs(&app)
                    .iter()
                    .all(|n| n == "ephemeral-session.log")
            },
            "the session to end",
        );
    }
    let took = started.elapsed();
    eprintln!(
        "sequential_sessions {backend} {who:?}: {count} sessions in {took:?} ({:?} each); \
         the launcher's peak memory (KiB) at sessions 10 and {count}: {peaks:?}",
        took / count as u32
    );
    let [tenth, last] = peaks[..] else {
        panic!("two sessions sampled: {peaks:?}")
    };
    assert!(
        last <= tenth + MEMORY_NOISE_KIB,
        "the launcher's peak memory grew from {tenth} KiB to {last} KiB"
    );
    assert!(host_mounts_mentioning(&runtime).is_empty());
    assert!(host_mounts_mentioning(app.dir.path()).is_empty());
    wait_for(
        || processes_with(&dir).is_empty(),
        "the sessions' processes",
    );
}

/// The casefold view's server opens the app's files on the overlay, which stands on the
/// daemon's own layer mount: a daemon holding files open on its own FUSE mount at exit
/// would wait for an answer from server threads already gone. Ephemeral sessions, each
/// reading files through the view by other cases of their names, must all end. Each leaves
/// a process holding a file open, killed with the sandbox: the kernel's release of that
/// file comes after the view is taken down, so the server must close what it still holds
/// itself, or the descriptor keeps a FUSE backend below serving and the daemon waits for
/// it (it failed this way on both FUSE backends, every run, before the server did).
fn casefold_sessions_that_read_through_the_view_end_cleanly(backend: &'static str, who: Who) {
    let Some(app) = app("casefold_sessions", who, backend) else {
        return;
    };
    let app = app
        .with_env("FIM_EPHEMERAL", "1")
        .with_env("FIM_CASEFOLD", "1")
        .with_env("FIM_DEBUG", "1");
    let dir = app.dir.path().to_string_lossy().into_owned();
    for _ in 0..20 {
        let out = fim_tests::run(&mut app.command([
            "fim-exec",
            "sh",
            "-c",
            "cat /ETC/PASSWD /Bin/BusyBox >/dev/null && { sleep 5 </Bin/BusyBox & } && echo read",
        ]));
        out.assert_ok();
        assert_eq!(out.stdout, "read\n");
        wait_for_the_session_to_end(&app);
    }
    assert!(host_mounts_mentioning(&app.runtime_dir()).is_empty());
    assert!(host_mounts_mentioning(app.dir.path()).is_empty());
    wait_for(
        || processes_with(&dir).is_empty(),
        "the sessions' processes",
    );
}
