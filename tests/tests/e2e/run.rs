//! The run path end to end: real images run through real bubblewrap, the in-process FUSE
//! server and kernel overlayfs, as whoever runs the tests (root in CI) and as an
//! unprivileged user the tests create.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fim_tests::checks;
use fim_tests::run::SpawnRetrying;
use fim_tests::sandbox::{App, Who, host_mounts_mentioning, processes_with};
use fim_tests::{put, tempdir, which};

fim_tests::for_both!(
    runs_a_command_and_prints_its_output,
    passes_the_exit_status_through,
    missing_program_fails_clearly,
    boot_command_runs_with_extra_arguments,
    changes_persist_across_runs,
    root_writes_the_system_the_user_does_not,
    ten_concurrent_instances_share_one_view,
    sigkill_of_the_launcher_leaves_nothing_behind,
    sigterm_and_ctrl_c_reach_the_app,
    stdin_and_a_terminal_work,
    the_app_sees_its_fim_variables_and_not_the_hosts,
    keeps_the_working_directory_when_it_exists_inside,
    launcher_descriptors_do_not_leak_into_the_app,
    debug_output_ends_with_the_app_not_with_the_lingering_session,
    help_on_the_default_shell_points_to_fim_help,
    a_new_session_decompresses_the_program_it_starts_ahead,
    the_app_runs_on_the_cores_the_launcher_was_given,
    the_session_seals_the_system_directories_once_and_a_new_one_falls_back,
);

fn runs_a_command_and_prints_its_output(who: Who) {
    let Some(app) = App::new("runs_a_command", who) else {
        return;
    };
    let out = app.sh("echo ok");
    out.assert_ok();
    assert_eq!(out.stdout, "ok\n");
    let id = app.run(["fim-exec", "id", "-u"]);
    id.assert_ok();
    assert_eq!(
        id.stdout.trim(),
        app.uid.to_string(),
        "the app runs as the user"
    );
}

fn passes_the_exit_status_through(who: Who) {
    let Some(app) = App::new("exit_status", who) else {
        return;
    };
    assert_eq!(app.sh("exit 7").code(), Some(7));
    assert_eq!(app.sh("exit 0").code(), Some(0));
    // Killed by a signal: 128 + N, as a shell reports it.
    assert_eq!(app.sh("kill -TERM $$").code(), Some(128 + 15));
}

fn missing_program_fails_clearly(who: Who) {
    let Some(app) = App::new("missing_program", who) else {
        return;
    };
    let out = app.run(["fim-exec", "no-such-program", "arg"]);
    assert_eq!(out.code(), Some(127), "{out:?}");
    assert_eq!(
        out.stderr.trim(),
        "fim: no-such-program: not found in the image"
    );
    let usage = app.run(["fim-exec"]);
    usage.assert_clean_failure("app.flatimage: usage: fim-exec PROGRAM");
}

fn boot_command_runs_with_extra_arguments(who: Who) {
    let Some(app) = App::new("boot_command", who) else {
        return;
    };
    // No boot command stored: /bin/sh gets the arguments.
    let out = app.run(["-c", "echo default:$0", "zero"]);
    out.assert_ok();
    assert_eq!(out.stdout, "default:zero\n");

    app.run(["fim-boot", "set", "/bin/sh", "-c", "echo boot:$1:$2", "sh"])
        .assert_ok();
    let shown = app.run(["fim-boot", "show"]);
    shown.assert_ok();
    assert_eq!(shown.stdout, "/bin/sh -c 'echo boot:$1:$2' sh\n");
    let out = app.run(["one", "two words"]);
    out.assert_ok();
    assert_eq!(out.stdout, "boot:one:two words\n");

    app.run(["fim-boot", "clear"]).assert_ok();
    assert_eq!(app.run(["fim-boot", "show"]).stdout, "/bin/sh\n");
    app.run(["fim-boot", "frobnicate"])
        .assert_clean_failure("app.flatimage: usage: fim-boot");
}

fn changes_persist_across_runs(who: Who) {
    let Some(app) = App::new("changes_persist", who) else {
        return;
    };
    app.sh("echo written > /data/new.txt && rm /data/gone.txt")
        .assert_ok();
    let out = app.sh("cat /data/new.txt /data/keep.txt; ls /data");
    out.assert_ok();
    assert_eq!(
        out.stdout,
        "written\nkeep\nkeep.txt\nmode.txt\nmoved\nnew.txt\nreplaced\n"
    );
    let out = app.sh("test -e /data/gone.txt && echo present || echo absent");
    assert_eq!(out.stdout, "absent\n", "a deleted layer file stays deleted");

    use std::os::unix::fs::MetadataExt;
    let upper = app.data_dir().join("upper");
    for path in [
        upper.clone(),
        upper.join("data"),
        upper.join("data/new.txt"),
    ] {
        let meta = std::fs::symlink_metadata(&path).expect("stat upper entry");
        assert_eq!(
            (meta.uid(), meta.gid()),
            (app.uid, app.gid),
            "{} is owned by the invoking user on the host",
            path.display()
        );
    }
}

fn root_writes_the_system_the_user_does_not(who: Who) {
    let Some(app) = App::new("root_and_user", who) else {
        return;
    };
    let out = app.run(["fim-root", "sh", "-c", "id -u && echo pkg > /usr/installed"]);
    out.assert_ok();
    assert_eq!(out.stdout, "0\n");
    let out = app.sh("cat /usr/installed; echo x > /usr/other");
    assert!(
        !out.success(),
        "the default run must not write /usr: {out:?}"
    );
    assert_eq!(
        out.stdout, "pkg\n",
        "the default run sees what root installed"
    );
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
}

fn ten_concurrent_instances_share_one_view(who: Who) {
    let Some(app) = App::new("concurrent", who) else {
        return;
    };
    checks::ten_instances_share_one_view(&app);
}

fn sigkill_of_the_launcher_leaves_nothing_behind(who: Who) {
    let Some(app) = App::new("sigkill", who) else {
        return;
    };
    checks::sigkill_of_the_launcher_leaves_nothing_behind(&app);
}

fn sigterm_and_ctrl_c_reach_the_app(who: Who) {
    let Some(app) = App::new("signals", who) else {
        return;
    };
    for (signal, name, code) in [(libc::SIGTERM, "TERM", 3), (libc::SIGINT, "INT", 4)] {
        // The handler takes a while: the app must not be killed while it runs.
        let script = format!(
            "trap 'sleep 0.3; echo handled {name}; exit {code}' {name}; echo up; \
             while true; do sleep 0.05; done"
        );
        let mut cmd = app.command(["fim-exec", "sh", "-c", &script]);
        cmd.stdout(Stdio::piped());
        // SIGINT as a terminal sends it: to the whole foreground process group.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn_retrying();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read");
        assert_eq!(line, "up\n");
        let target = if signal == libc::SIGINT {
            -(child.id() as i32)
        } else {
            child.id() as i32
        };
        // SAFETY: sending a signal has no memory-safety preconditions.
        unsafe { libc::kill(target, signal) };
        let status = child.wait().expect("wait");
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).expect("read");
        assert_eq!(rest, format!("handled {name}\n"), "SIG{name}");
        assert_eq!(status.code(), Some(code), "SIG{name}");
    }
}

fn stdin_and_a_terminal_work(who: Who) {
    let Some(app) = App::new("stdin_tty", who) else {
        return;
    };
    let mut child = app
        .command(["fim-exec", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn_retrying();
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"through stdin\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");

    let Some(script) = which("script") else {
        fim_tests::skip("stdin_and_a_terminal_work: no script(1) for a pseudo-terminal");
        return;
    };
    // An interactive shell on a pseudo-terminal: it reads commands and answers.
    let image = app.image.to_string_lossy().into_owned();
    let mut child = app
        .program(
            &script,
            ["-qec", &format!("{image} fim-exec sh -i"), "/dev/null"],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn_retrying();
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"test -t 0 && echo on-a-tty; echo $((6*7)); exit 5\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("on-a-tty"), "{text}");
    assert!(text.contains("42"), "{text}");
}

fn the_app_sees_its_fim_variables_and_not_the_hosts(who: Who) {
    let Some(app) = App::new("fim_variables", who) else {
        return;
    };
    let out = fim_tests::run(
        app.command([
            "fim-exec",
            "sh",
            "-c",
            "echo $FIM_IMAGE; echo $FIM_DIR_DATA; echo $FIM_OVERLAY; echo ${HOST_SECRET:-unset}",
        ])
        .env("HOST_SECRET", "leaked"),
    );
    out.assert_ok();
    let data = app.data_dir().canonicalize().expect("data dir");
    let image = app.image.canonicalize().expect("image");
    assert_eq!(
        out.stdout,
        format!("{}\n{}\nbwrap\nunset\n", image.display(), data.display())
    );
    let debug = fim_tests::run(app.command(["fim-exec", "true"]).env("FIM_DEBUG", "1"));
    debug.assert_ok();
    assert!(
        debug
            .stderr
            .lines()
            .any(|l| l.starts_with("fim: debug: join the session") && l.ends_with(" ms)")),
        "FIM_DEBUG=1 logs each step with its duration: {}",
        debug.stderr
    );
}

fn keeps_the_working_directory_when_it_exists_inside(who: Who) {
    let Some(app) = App::new("cwd", who) else {
        return;
    };
    let inside = fim_tests::run(app.command(["fim-exec", "pwd"]).current_dir("/usr"));
    assert_eq!(inside.stdout, "/usr\n");
    let outside = app.run(["fim-exec", "pwd"]);
    assert_eq!(
        outside.stdout, "/\n",
        "the image's directory is not in the image"
    );
}

fn launcher_descriptors_do_not_leak_into_the_app(who: Who) {
    let Some(app) = App::new("descriptors", who) else {
        return;
    };
    // The launcher gets only stdin, stdout and stderr; the shell lists its own
    // descriptors with builtins (the glob's directory descriptor is closed by the time
    // `[ -e ]` looks).
    let mut cmd = app.command([
        "fim-exec",
        "sh",
        "-c",
        "for f in /proc/$$/fd/*; do [ -e $f ] && echo ${f##*/}; done; true",
    ]);
    // SAFETY: close_range only closes descriptors.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let out = fim_tests::run(&mut cmd);
    out.assert_ok();
    let fds: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(fds, ["0", "1", "2"], "open descriptors in the app");
}

/// Waits up to 5 s for `ready`.
#[test]
fn unknown_overlay_backend_is_refused() {
    let Some(app) = App::new("overlay_refused", Who::Invoker) else {
        return;
    };
    let out = fim_tests::run(
        app.command(["fim-exec", "true"])
            .env("FIM_OVERLAY", "nonsense"),
    );
    out.assert_clean_failure("app.flatimage: FIM_OVERLAY");
}

#[test]
fn a_bare_launcher_refuses_to_run() {
    let dir = tempdir();
    let launcher = put(dir.path(), "bare", b"");
    std::fs::copy(fim_tests::fim_boot_path(), &launcher).expect("copy launcher");
    let out = fim_tests::run(&mut std::process::Command::new(&launcher));
    out.assert_clean_failure("bare:");
    assert!(out.stderr.contains("carries no image"), "{}", out.stderr);
}

fn debug_output_ends_with_the_app_not_with_the_lingering_session(who: Who) {
    let Some(app) = App::new("debug_pipe", who) else {
        return;
    };
    // `output()` reads stdout and stderr to their end, as `2>&1 | tail` does: the session
    // daemon, which lingers 2 s, must not hold them open.
    let started = Instant::now();
    let out = fim_tests::run(app.command(["fim-exec", "true"]).env("FIM_DEBUG", "1"));
    let took = started.elapsed();
    out.assert_ok();
    assert!(
        took < Duration::from_millis(1500),
        "the output ended {took:?} after the start, not with the app: {}",
        out.stderr
    );
    assert_eq!(
        checks::session_dirs(&app).len(),
        1,
        "the session still lingers after the output ended"
    );
    let log = app.data_dir().join("session.log");
    assert!(
        out.stderr
            .contains(&format!("further lines go to {}", log.display())),
        "{}",
        out.stderr
    );
    // The session's later lines are in its log: its end among them.
    checks::wait_for_the_session_to_end(&app);
    let text = std::fs::read_to_string(&log).expect("session.log");
    assert!(text.contains("fim: debug: daemon:"), "{text}");
}

/// The daemon finds the command's program in the layers and decompresses its blocks while
/// the session starts, after the account files every launch reads; its debug lines say so
/// (on stderr, or in the session's log once the first launcher has its answer). A command
/// the image lacks is decompressed nowhere.
fn a_new_session_decompresses_the_program_it_starts_ahead(who: Who) {
    let Some(app) = App::new("prefetch", who) else {
        return;
    };
    let lines = |command: &str| {
        let out = fim_tests::run(app.command(["fim-exec", command]).env("FIM_DEBUG", "1"));
        checks::wait_for_the_session_to_end(&app);
        let log = std::fs::read_to_string(app.data_dir().join("session.log")).unwrap_or_default();
        let text = format!("{}{log}", out.stderr);
        (out, text)
    };
    let (out, text) = lines("true");
    out.assert_ok();
    let ahead: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" decompressed ahead: "))
        .map(|l| l.split("daemon: ").last().unwrap_or(l))
        .collect();
    assert_eq!(ahead.len(), 3, "{text}");
    assert!(ahead[0].starts_with("/etc/passwd "), "{ahead:?}");
    assert!(ahead[1].starts_with("/etc/group "), "{ahead:?}");
    assert!(ahead[2].starts_with("/bin/true "), "{ahead:?}");
    assert!(ahead.iter().all(|l| !l.ends_with(": 0 KiB")), "{ahead:?}");
    // Stored in the page cache of the layers' mount too: the app's page faults find them.
    assert!(
        text.contains("daemon: 3 of 3 files stored in the page cache"),
        "{text}"
    );
    let (out, text) = lines("no-such-program");
    assert_eq!(out.code(), Some(127), "{}", out.stderr);
    assert!(!text.contains("no-such-program decompressed"), "{text}");
}

/// A new session keeps one core for its read-ahead, and the launcher and bwrap off it; the
/// app still runs on every core the launcher was started with, and on no other.
fn the_app_runs_on_the_cores_the_launcher_was_given(who: Who) {
    let Some(app) = App::new("cores", who) else {
        return;
    };
    const SCRIPT: &str = "awk '/^Cpus_allowed_list/ { print $2 }' /proc/self/status";
    let cores_of_a_new_session = |cmd: &mut std::process::Command| {
        let out = fim_tests::run(cmd);
        out.assert_ok();
        checks::wait_for_the_session_to_end(&app);
        out.stdout.trim().to_owned()
    };
    let ours = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|l| l.trim().to_owned())
        .unwrap_or_default();
    if !ours.contains([',', '-']) {
        println!("skipped in part: one core ({ours}), so no session keeps one for its read-ahead");
    }
    let seen = cores_of_a_new_session(&mut app.command(["fim-exec", "sh", "-c", SCRIPT]));
    assert_eq!(seen, ours);
    if which("taskset").is_none() {
        println!("skipped in part: taskset (util-linux) is not installed");
        return;
    }
    // Started on fewer cores, the app gets those, not the machine's.
    let first = ours.split([',', '-']).next().unwrap_or("0").to_owned();
    let image = app.image.clone();
    let mut on_one = app.program(
        "taskset",
        ["-c".as_ref(), first.as_ref(), image.as_os_str()],
    );
    on_one.args(["fim-exec", "sh", "-c", SCRIPT]);
    assert_eq!(cores_of_a_new_session(&mut on_one), first);
}

fn help_on_the_default_shell_points_to_fim_help(who: Who) {
    let Some(app) = App::new("help_hint", who) else {
        return;
    };
    // No boot command stored: /bin/sh would answer "Illegal option --".
    for flag in ["--help", "-h"] {
        let out = app.run([flag]);
        out.assert_ok();
        assert!(
            out.stdout.contains("fim-help") && !out.stderr.contains("Illegal option"),
            "{flag}: {out:?}"
        );
    }
    // A boot command of the image's own gets its arguments as they are.
    app.run(["fim-boot", "set", "/bin/echo"]).assert_ok();
    assert_eq!(app.run(["--help"]).stdout, "--help\n");
}

/// Entries of the app's runtime directory other than lock files: a live session's.
#[test]
fn a_clean_exit_keeps_the_session_briefly_for_a_relaunch() {
    let Some(app) = App::new("linger", Who::Invoker) else {
        return;
    };
    app.sh("true").assert_ok();
    assert_eq!(
        checks::session_dirs(&app).len(),
        1,
        "the session lingers after a clean exit"
    );
    // A relaunch joins it: the file written through the lingering mounts is there.
    app.sh("echo again > /data/again").assert_ok();
    // The daemon removes its directories, then exits: wait for both.
    let image = app.image.to_string_lossy().into_owned();
    let start = Instant::now();
    while !checks::session_dirs(&app).is_empty() || !processes_with(&image).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the session outlived its linger time (directories {:?}, processes {:?})",
            checks::session_dirs(&app),
            processes_with(&image)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(host_mounts_mentioning(&app.runtime_dir()).is_empty());
    assert_eq!(app.sh("cat /data/again").stdout, "again\n");
}

#[test]
fn a_lingering_session_of_other_layers_makes_way() {
    let Some(app) = App::new("linger_replaced", Who::Invoker) else {
        return;
    };
    app.sh("echo first > /data/mark").assert_ok();
    // Replace the image by one with other layers while the session lingers.
    let tree = tempdir();
    std::fs::create_dir_all(tree.path().join("bin")).expect("mkdir");
    std::fs::copy("/bin/busybox", tree.path().join("bin/busybox")).expect("copy busybox");
    std::os::unix::fs::symlink("busybox", tree.path().join("bin/sh")).expect("symlink");
    put(tree.path(), "etc/flavour", b"second\n");
    let second = tree.path().join("second.flatimage");
    fim_tests::build(&[tree.path()], &second);
    // As an update would: a new file renamed over the running one.
    let staged = app.dir.path().join(".staged");
    std::fs::copy(&second, &staged).expect("stage image");
    std::fs::rename(&staged, &app.image).expect("replace image");
    let out = app.sh("cat /etc/flavour /data/mark");
    out.assert_ok();
    assert_eq!(
        out.stdout, "second\nfirst\n",
        "the new layers under the same changes"
    );
}

#[test]
fn a_session_whose_directories_are_removed_ends() {
    let Some(app) = App::new("dirs_removed", Who::Invoker) else {
        return;
    };
    app.sh("true").assert_ok();
    assert_eq!(checks::session_dirs(&app).len(), 1, "the session lingers");
    // What a test harness or a tmp cleaner does: remove the runtime and data directories.
    std::fs::remove_dir_all(app.tmp_dir()).expect("remove TMPDIR");
    std::fs::remove_dir_all(app.data_dir()).expect("remove the data directory");
    let image = app.image.to_string_lossy().into_owned();
    checks::wait_for(
        || processes_with(&image).is_empty(),
        "the session daemon to end",
    );
}

#[test]
fn runs_when_started_with_stdin_closed() {
    let Some(app) = App::new("closed_stdin", Who::Invoker) else {
        return;
    };
    let mut cmd = app.command(["fim-exec", "sh", "-c", "echo ran"]);
    // SAFETY: close only closes a descriptor.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::close(0);
            Ok(())
        });
    }
    let out = fim_tests::run(&mut cmd);
    out.assert_ok();
    assert_eq!(out.stdout, "ran\n");
}

/// The daemon makes the system directories read-only once per session (a tree of its own
/// the launches bind as their root); a system directory `fim-root` makes while the session
/// runs is not in that tree, so the next launch has bwrap make them all read-only, and the
/// next session seals it too. Read-only in every case.
fn the_session_seals_the_system_directories_once_and_a_new_one_falls_back(who: Who) {
    const SEALED: &str = "sandbox: system directories read-only in the session's sealed root";
    const FALLBACK: &str =
        "sandbox: bwrap makes the system directories read-only (/boot is not sealed read-only)";
    let Some(app) = App::new("sealed", who) else {
        return;
    };
    let debug_sh = |script: &str| {
        fim_tests::run(
            app.command(["fim-exec", "sh", "-c", script])
                .env("FIM_DEBUG", "1"),
        )
    };
    let denied = "echo x >/usr/new || echo denied";
    let out = debug_sh(denied);
    out.assert_ok();
    assert_eq!(out.stdout, "denied\n");
    assert!(out.stderr.contains(SEALED), "{}", out.stderr);
    assert!(
        out.stderr.contains("Read-only file system"),
        "{}",
        out.stderr
    );
    // Inside the linger: the same session.
    app.run(["fim-root", "mkdir", "-p", "/boot"]).assert_ok();
    let out = debug_sh("echo x >/boot/new || echo denied");
    out.assert_ok();
    assert_eq!(out.stdout, "denied\n");
    assert!(out.stderr.contains(FALLBACK), "{}", out.stderr);
    checks::wait_for_the_session_to_end(&app);
    let out = debug_sh("echo x >/boot/new || echo denied");
    out.assert_ok();
    assert_eq!(out.stdout, "denied\n");
    assert!(out.stderr.contains(SEALED), "{}", out.stderr);
}
