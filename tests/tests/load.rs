//! Load: many instances of one image at once share one view, and many launches one after
//! the other leave nothing behind (no mount, process, descriptor, memfd or runtime
//! directory), with every overlay backend, as whoever runs the tests and as an
//! unprivileged user.
//!
//! `FIM_TEST_LAUNCHES` sets how many sequential launches (default 1000).

use std::collections::BTreeMap;
use std::time::Instant;

use fim_tests::checks::{self, session_dirs, wait_for, wait_for_the_session_to_end};
use fim_tests::sandbox::{
    App, Who, app_with_backend as app, host_mounts_mentioning, processes_with,
};

fim_tests::per_backend!(
    fifty_instances_at_once_share_one_view,
    many_sequential_launches_leave_nothing_behind,
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
    std::env::var("FIM_TEST_LAUNCHES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

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
        } else {
            assert_eq!(out.stderr, "", "launch {i}");
        }
        if i == 9.min(count - 1) {
            let daemon = lingering_daemon(&app);
            // Once it has seen the launcher leave, its one socket is the listening one.
            wait_for(
                || descriptors(daemon).get("socket") == Some(&1),
                "the daemon to see the launcher leave",
            );
            first = Some((daemon, descriptors(daemon)));
        }
    }
    let took = started.elapsed();
    eprintln!(
        "sequential_launches {backend} {who:?}: {count} launches in {took:?} ({:?} each); \
         the launcher's descriptors at exit: {at_exit:?}",
        took / count as u32
    );
    // The daemon, still lingering, holds what it held after the tenth launch: no
    // descriptor, socket or memfd accumulates (a new daemon, had the linger run out,
    // must hold the same).
    if let Some((daemon, before)) = first {
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
