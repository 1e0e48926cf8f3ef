//! Checks shared by several end-to-end test files, run against an [`App`].

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::run::SpawnRetrying;
use crate::sandbox::{App, host_mounts_mentioning, processes_with};

/// Ten instances started at once each write a file and see all ten: they share one view.
pub fn ten_instances_share_one_view(app: &App) {
    instances_share_one_view(app, 10);
}

/// `count` instances started at once each write a file and see all of them (waiting up
/// to 30 s for the others): they share one view.
pub fn instances_share_one_view(app: &App, count: usize) {
    // Each writes its file, then waits until it sees them all.
    let script = format!(
        "echo $0 > /data/i$0; n=0; while [ $n -lt 600 ]; do \
         [ $(ls /data | grep -c '^i') -ge {count} ] && break; sleep 0.05; n=$((n+1)); done; \
         ls /data | grep -c '^i'"
    );
    let children: Vec<Child> = (0..count)
        .map(|i| {
            app.command(["fim-exec", "sh", "-c", &script, &i.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn_retrying()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait instance");
        assert!(
            out.status.success(),
            "instance failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{count}\n"));
    }
}

/// SIGKILL of a launcher ends its app within a second and leaves no session directory,
/// no process mentioning the runtime directory (a FUSE backend) and no host mount.
pub fn sigkill_of_the_launcher_leaves_nothing_behind(app: &App) {
    let marker = format!(
        "{}.{}{}",
        4000 + std::process::id() % 1000,
        app.who as u8,
        app.overlay.map_or(0, str::len)
    );
    let mut child = app
        .command([
            "fim-exec",
            "sh",
            "-c",
            &format!("echo up; exec sleep {marker}"),
        ])
        .spawn_until_up();
    wait_for(
        || !processes_with(&format!("sleep {marker}")).is_empty(),
        "the app",
    );
    child.kill().expect("SIGKILL the launcher");
    let killed = Instant::now();
    child.wait().expect("reap");
    let gone = || {
        processes_with(&format!("sleep {marker}")).is_empty()
            && std::fs::read_dir(app.runtime_dir())
                .map(|d| d.flatten().all(|e| e.file_name() == "lock"))
                .unwrap_or(true)
    };
    while !gone() && killed.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        processes_with(&format!("sleep {marker}")).is_empty(),
        "the app survived its launcher by more than a second"
    );
    assert!(
        gone(),
        "the instance directory remains in {}",
        app.runtime_dir().display()
    );
    assert!(
        host_mounts_mentioning(&app.runtime_dir()).is_empty(),
        "a mount of the instance is visible on the host"
    );
    let runtime = app.runtime_dir().to_string_lossy().into_owned();
    wait_for(
        || processes_with(&runtime).is_empty(),
        "the overlay backend's exit",
    );
    // And the image still runs.
    app.sh("true").assert_ok();
}

/// Waits up to 5 s for `ready`.
pub fn wait_for(ready: impl Fn() -> bool, what: &str) {
    wait_or_say(ready, || format!("timed out waiting for {what}"));
}

/// Waits up to 5 s for `ready`; on time-out, fails with the message `why` gives then.
fn wait_or_say(ready: impl Fn() -> bool, why: impl FnOnce() -> String) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(5), "{}", why());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What the sessions of `app` run with `FIM_DEBUG` logged once their launcher stopped
/// writing to its error output.
pub fn session_log(app: &App) -> String {
    [
        app.data_dir().join("session.log"),
        app.runtime_dir().join("ephemeral-session.log"),
    ]
    .iter()
    .filter_map(|log| std::fs::read_to_string(log).ok())
    .collect()
}

/// Waits up to 5 s for the session of `app` (its linger included) to end; on time-out,
/// says what the session left behind and what a debug session logged.
pub fn wait_for_the_session_to_end(app: &App) {
    wait_or_say(
        || session_dirs(app).is_empty(),
        || {
            let runtime = app.runtime_dir();
            let left: Vec<String> = session_dirs(app)
                .into_iter()
                .map(|dir| {
                    let inside: Vec<String> = std::fs::read_dir(runtime.join(&dir))
                        .map(|d| {
                            d.flatten()
                                .map(|e| e.file_name().to_string_lossy().into_owned())
                                .collect()
                        })
                        .unwrap_or_default();
                    format!("{dir}: {inside:?}")
                })
                .collect();
            let log = session_log(app);
            let processes = processes_with(&app.dir.path().to_string_lossy())
                .into_iter()
                .map(what_a_process_waits_on)
                .collect::<Vec<_>>()
                .join("\n");
            let mounts = host_mounts_mentioning(&runtime).join("\n");
            format!(
                "timed out waiting for the session's end; left in {}: {left:?}\n\
                 processes:\n{processes}\nmounts:\n{mounts}\nsession.log:\n{log}",
                runtime.display()
            )
        },
    );
}

/// A process's command line, then each of its threads' name, state and kernel wait
/// channel: what a time-out report needs to say where a session is stuck.
fn what_a_process_waits_on(pid: u32) -> String {
    let read = |path: String| std::fs::read_to_string(path).unwrap_or_default();
    let cmdline = read(format!("/proc/{pid}/cmdline")).replace('\0', " ");
    let mut lines = vec![format!("{pid}: {}", cmdline.trim_end())];
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        .unwrap_or_default();
    for task in tasks {
        let task = task.to_string_lossy();
        let base = format!("/proc/{pid}/task/{task}");
        let status = read(format!("{base}/status"));
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or("?")
                .to_string()
        };
        let stack = read(format!("{base}/stack"))
            .lines()
            .take(6)
            .map(|l| l.split_whitespace().nth(1).unwrap_or(l).to_string())
            .collect::<Vec<_>>()
            .join(" < ");
        lines.push(format!(
            "  {task} {} {} wchan={} {stack}",
            field("Name:"),
            field("State:"),
            read(format!("{base}/wchan")),
        ));
    }
    lines.join("\n")
}

/// The sessions' directories in the app's runtime directory (all but the lock file and
/// the debug log of ephemeral sessions).
pub fn session_dirs(app: &App) -> Vec<String> {
    std::fs::read_dir(app.runtime_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lock" && n != "ephemeral-session.log")
                .collect()
        })
        .unwrap_or_default()
}
