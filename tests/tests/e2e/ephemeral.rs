//! Ephemeral runs (`FIM_EPHEMERAL=1`, `fim-ephemeral on`) end to end, for every overlay
//! backend, as whoever runs the tests and as an unprivileged user: a run sees what normal
//! runs kept (deletions included) and writes anywhere, its writes vanish with it, and
//! nothing in the data directory changes, not even a time; each launch has a layer of its
//! own; the image and its data directory may be read-only; the setting, its override, its
//! size and its refusals.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fim_tests::image::layout;
use fim_tests::run::SpawnRetrying;
use fim_tests::sandbox::{App, Who, app_with_backend};
use fim_tests::{Tree, assert_same_tree, is_root, skip, snapshot};

fim_tests::per_backend!(
    a_run_sees_kept_changes_and_forgets_its_own,
    two_ephemeral_runs_at_once_keep_apart,
    a_read_only_image_and_data_directory_run_ephemeral,
    sigkill_of_an_ephemeral_launcher_leaves_nothing_behind,
);

fim_tests::for_both!(
    the_setting_its_override_and_its_refusals,
    the_size_caps_the_runs_writes,
);

#[test]
fn markers_another_backend_wrote_are_read_by_one_that_can() {
    let Some(app) = app_with_backend("ephemeral_markers", Who::Invoker, "unionfs") else {
        return;
    };
    app.sh(KEEP).assert_ok();
    let mut command = ephemeral(&app, &["fim-exec", "sh", "-c", LISTING], &[]);
    command.env("FIM_OVERLAY", "bwrap");
    let out = fim_tests::run(&mut command);
    out.assert_ok();
    assert_eq!(out.stdout, KEPT, "unionfs's deletions, read by unionfs");
    assert!(
        out.stderr.contains("this ephemeral run uses unionfs"),
        "one line says why: {}",
        out.stderr
    );
}

/// What a normal run keeps in `/data` of the base image: two new files, a deleted layer
/// file and a layer directory replaced by a new one (markers in the upper directory).
const KEEP: &str = "set -e; cd /data; echo p > p; echo q > q; rm gone.txt; \
    rm -rf replaced; mkdir replaced; echo fresh > replaced/fresh.txt";

/// What the run then sees in `/data`, one line per entry with the content of files.
const LISTING: &str = r#"cd /data && find . | sort | while read -r p; do
    if [ -d "$p" ]; then echo "$p/"; else echo "$p $(tr '\n' '|' < "$p")"; fi; done"#;

/// [`LISTING`] after [`KEEP`].
const KEPT: &str = "./
./keep.txt keep|
./mode.txt mode|
./moved/
./moved/m.txt m|
./p p|
./q q|
./replaced/
./replaced/fresh.txt fresh|
";

/// An ephemeral run's changes: a new file, a kept file appended to, a kept file and a
/// layer file deleted, the replaced directory replaced again; then, in the same run, the
/// listing and a probe of the old entry of the directory it replaced.
const CHANGE: &str = r#"set -e; cd /data; echo e > e; echo more >> p; rm q keep.txt;
    rm -rf replaced; mkdir replaced; ls replaced; echo new > replaced/new.txt;
    cat replaced/fresh.txt 2>/dev/null && echo "fresh.txt came back"; echo ---"#;

/// [`LISTING`] inside the run after [`CHANGE`].
const CHANGED: &str = "./
./e e|
./mode.txt mode|
./moved/
./moved/m.txt m|
./p p|more|
./replaced/
./replaced/new.txt new|
";

/// `app` run with `FIM_EPHEMERAL=1` and `extra` variables.
fn ephemeral(app: &App, args: &[&str], extra: &[(&str, &str)]) -> Command {
    let mut command = app.command(args);
    command.env("FIM_EPHEMERAL", "1");
    for (key, value) in extra {
        command.env(key, value);
    }
    command
}

/// Every entry's path with its access and change times (seconds, nanoseconds).
type Times = Vec<(PathBuf, (i64, i64), (i64, i64))>;

/// Every path under `root`, found by reading the directories (which moves their access
/// times: the caller takes times after this).
fn paths(root: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        if std::fs::symlink_metadata(&path).expect("lstat").is_dir() {
            for entry in std::fs::read_dir(&path).expect("read_dir") {
                stack.push(entry.expect("entry").path());
            }
        }
        all.push(path);
    }
    all.sort();
    all
}

/// The access and change times of `paths`, read without reading any directory: an
/// ephemeral run must not move either. (A change time moves with any write, chmod, xattr
/// or rename.)
fn times(paths: &[PathBuf]) -> Times {
    paths
        .iter()
        .map(|path| {
            let meta = std::fs::symlink_metadata(path).expect("lstat");
            (
                path.clone(),
                (meta.atime(), meta.atime_nsec()),
                (meta.ctime(), meta.ctime_nsec()),
            )
        })
        .collect()
}

/// Sets the access time of each of `paths` to a minute before its modification time, so
/// any read by the next run (relatime: an access time not after the modification time is
/// updated) would show.
fn age_access_times(paths: &[PathBuf]) {
    for path in paths {
        let meta = std::fs::symlink_metadata(path).expect("lstat");
        let stamps = [
            libc::timespec {
                tv_sec: meta.mtime() - 60,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        ];
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid C string and two timespecs.
        let rc = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                stamps.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        assert_eq!(rc, 0, "utimensat {}", path.display());
    }
}

/// The data directory as it is now: its tree (names, sizes, mtimes, contents, xattrs)
/// and every entry's access and change times, aged first so reads would show.
fn freeze(data: &Path) -> (Tree, Times) {
    let tree = snapshot(data);
    let all = paths(data);
    age_access_times(&all);
    (tree, times(&all))
}

/// Panics unless the data directory is exactly as `before` was taken: times first (the
/// tree's snapshot reads it).
fn assert_untouched(data: &Path, before: &(Tree, Times)) {
    let same: Vec<PathBuf> = before.1.iter().map(|(p, _, _)| p.clone()).collect();
    let now = times(&same);
    for (was, is) in before.1.iter().zip(&now) {
        assert_eq!(was, is, "access or change time moved in {}", data.display());
    }
    assert_same_tree(&before.0, &snapshot(data), "the data directory");
}

/// One ephemeral run of [`CHANGE`], checked from inside.
fn change_ephemerally(app: &App, backend: &str) {
    let script = format!("{CHANGE}\n{LISTING}");
    let out = fim_tests::run(&mut ephemeral(app, &["fim-exec", "sh", "-c", &script], &[]));
    out.assert_ok();
    assert_eq!(
        out.stdout,
        format!("---\n{CHANGED}"),
        "{backend}: the ephemeral run's own view (the replaced directory starts empty)"
    );
}

/// A normal instance that runs until a normal run creates `/data/.stop` (and removes it
/// then), and its ID.
fn holder(app: &App) -> (Child, String) {
    let script = "n=0; while [ ! -e /data/.stop ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done; \
        rm -f /data/.stop";
    let mut command = app.command(["fim-exec", "sh", "-c", script]);
    let child = command
        .env("FIM_EPHEMERAL", "0")
        .stdout(Stdio::null())
        .spawn_retrying();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut child = child;
    loop {
        let out = app.run(["fim-instance", "list"]);
        if let Some(id) = out.stdout.split_whitespace().next() {
            return (child, id.to_string());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the holder did not start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn a_run_sees_kept_changes_and_forgets_its_own(backend: &'static str, who: Who) {
    let Some(app) = app_with_backend("ephemeral_view", who, backend) else {
        return;
    };
    app.sh(KEEP).assert_ok();
    let data = app.data_dir();

    // Within one session: a normal instance runs over the upper directory meanwhile.
    let (mut held, id) = holder(&app);
    let before = freeze(&data);
    let seen = fim_tests::run(&mut ephemeral(
        &app,
        &["fim-exec", "sh", "-c", LISTING],
        &[],
    ));
    seen.assert_ok();
    assert_eq!(seen.stdout, KEPT, "{backend}: kept changes and deletions");
    change_ephemerally(&app, backend);
    assert_untouched(&data, &before);
    let next = app.sh(LISTING);
    next.assert_ok();
    assert_eq!(
        next.stdout, KEPT,
        "{backend}: the next normal run (same session)"
    );
    app.sh("touch /data/.stop").assert_ok();
    assert!(held.wait().expect("wait").success(), "holder {id}");

    // Across sessions: the normal one has ended.
    std::thread::sleep(Duration::from_millis(2500));
    let before = freeze(&data);
    change_ephemerally(&app, backend);
    assert_untouched(&data, &before);
    std::thread::sleep(Duration::from_millis(2500));
    let next = app.sh(LISTING);
    next.assert_ok();
    assert_eq!(
        next.stdout, KEPT,
        "{backend}: the next normal run (new session)"
    );
}

/// `fim-instance list`'s IDs of ephemeral runs, waiting up to 20 s for `count` of them.
fn ephemeral_ids(app: &App, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = app.run(["fim-instance", "list"]);
        out.assert_ok();
        let ids: Vec<String> = out
            .stdout
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|id| id.starts_with('e'))
            .map(str::to_string)
            .collect();
        if ids.len() >= count || Instant::now() > deadline {
            return ids;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn two_ephemeral_runs_at_once_keep_apart(backend: &'static str, who: Who) {
    let Some(app) = app_with_backend("ephemeral_apart", who, backend) else {
        return;
    };
    app.sh("echo kept > /data/kept").assert_ok();
    let data = app.data_dir();
    // fim-instance exec cannot enter an instance of a FUSE backend run by a user: the
    // kernel refuses /proc/PID/root of its sandbox (for normal instances as well).
    let exec_works = who == Who::Invoker || backend == "bwrap";
    // Each writes its own /data/x, waits (for its stop file in /tmp, private to it, when
    // exec can make it), then says what it sees.
    let wait = if exec_works {
        "n=0; while [ ! -e /tmp/stop ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); done"
    } else {
        "sleep 4"
    };
    let script = format!(
        "echo $0 > /data/x; touch /data/only-$0; {wait}; \
        cat /data/x; ls /data | grep only- ; cat /data/kept"
    );
    let script = script.as_str();
    let spawn = |name: &str| -> Child {
        ephemeral(&app, &["fim-exec", "sh", "-c", script, name], &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn_retrying()
    };
    let a = spawn("a");
    assert_eq!(ephemeral_ids(&app, 1).len(), 1, "{backend}: a is listed");
    let b = spawn("b");
    let ids = ephemeral_ids(&app, 2);
    assert_eq!(ids.len(), 2, "{backend}: both are listed: {ids:?}");
    // A normal run at the same time neither sees their writes nor is seen by them.
    let normal = app.sh("ls /data; echo n > /data/n");
    normal.assert_ok();
    assert!(!normal.stdout.contains("only-"), "{}", normal.stdout);
    // exec into each sees that run's layer, then stops it.
    let mut seen = Vec::new();
    if !exec_works {
        skip(&format!(
            "fim-instance exec into ephemeral runs with {backend} as {who:?}: the kernel refuses /proc/PID/root of such a sandbox"
        ));
        seen = vec!["a".to_string(), "b".to_string()];
    }
    for id in ids.iter().filter(|_| exec_works) {
        let out = app.run([
            "fim-instance",
            "exec",
            id,
            "sh",
            "-c",
            "cat /data/x; touch /tmp/stop",
        ]);
        out.assert_ok();
        seen.push(out.stdout.trim().to_string());
    }
    seen.sort();
    assert_eq!(
        seen,
        ["a", "b"],
        "{backend}: exec sees each run's own writes"
    );
    for (child, name) in [(a, "a"), (b, "b")] {
        let out = child.wait_with_output().expect("wait");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{backend} {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout, format!("{name}\nonly-{name}\nkept\n"), "{backend}");
    }
    // The normal run's write is kept; nothing of the ephemeral runs is, in the view or
    // in the upper directory.
    let after = app.sh("ls /data");
    after.assert_ok();
    let names: Vec<&str> = after.stdout.lines().collect();
    assert!(names.contains(&"n") && names.contains(&"kept"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("only-") || *n == "x"));
    let upper = std::fs::read_dir(data.join("upper/data")).expect("read the upper directory");
    let kept: Vec<String> = upper
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("only-") || n == "x")
        .collect();
    assert!(kept.is_empty(), "{backend}: {kept:?}");
}

/// Binds `dir` read-only at a new path (as root, on the host), unmounted when dropped.
struct ReadOnlyBind(PathBuf);

impl ReadOnlyBind {
    fn new(dir: &Path) -> Option<ReadOnlyBind> {
        let target = dir.with_extension("ro");
        std::fs::create_dir_all(&target).expect("mkdir");
        let bind = fim_tests::run(Command::new("mount").arg("--bind").arg(dir).arg(&target));
        if !bind.success() {
            skip(&format!("a read-only bind: mount failed: {}", bind.stderr));
            return None;
        }
        let me = ReadOnlyBind(target);
        fim_tests::run(
            Command::new("mount")
                .args(["-o", "remount,bind,ro"])
                .arg(&me.0),
        )
        .assert_ok();
        Some(me)
    }
}

impl Drop for ReadOnlyBind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn a_read_only_image_and_data_directory_run_ephemeral(backend: &'static str, who: Who) {
    if !is_root() {
        skip("ephemeral from read-only media: binding a directory read-only needs root");
        return;
    }
    let Some(app) = app_with_backend("ephemeral_ro", who, backend) else {
        return;
    };
    app.sh(KEEP).assert_ok();
    // Once its session has ended: the image and its data directory, seen read-only
    // elsewhere; TMPDIR stays writable.
    std::thread::sleep(Duration::from_millis(2500));
    let image_dir = app.dir.path().join("media");
    std::fs::create_dir(&image_dir).expect("mkdir");
    std::fs::rename(&app.image, image_dir.join("app.flatimage")).expect("move image");
    std::fs::rename(app.data_dir(), image_dir.join(".app.flatimage.data")).expect("move data");
    let Some(ro) = ReadOnlyBind::new(&image_dir) else {
        return;
    };
    let before = freeze(&image_dir);
    let mut command = app.program(ro.0.join("app.flatimage"), ["fim-exec", "sh", "-c"]);
    command
        .arg(format!("{CHANGE}\n{LISTING}"))
        .env("FIM_EPHEMERAL", "1");
    let out = fim_tests::run(&mut command);
    out.assert_ok();
    assert_eq!(
        out.stdout,
        format!("---\n{CHANGED}"),
        "{backend}: read-only"
    );
    assert_untouched(&image_dir, &before);
}

/// The reserved block's byte 11, read raw where `fim inspect --json` says the block is.
fn byte_11(image: &Path) -> u8 {
    let at = layout(image).reserved_offset as usize + 11;
    std::fs::read(image).expect("read image")[at]
}

fn the_setting_its_override_and_its_refusals(who: Who) {
    let Some(app) = App::new("ephemeral_setting", who) else {
        return;
    };
    let show = |env: Option<&str>| {
        let mut command = app.command(["fim-ephemeral", "show"]);
        if let Some(value) = env {
            command.env("FIM_EPHEMERAL", value);
        }
        let out = fim_tests::run(&mut command);
        out.assert_ok();
        out.stdout
    };
    assert_eq!(show(None), "off (default)\n");
    assert_eq!(byte_11(&app.image), 0);

    // Without a data directory, an ephemeral run sees the layers and creates nothing.
    let out = fim_tests::run(&mut ephemeral(
        &app,
        &["fim-exec", "sh", "-c", "echo x > /data/x; cat /data/x"],
        &[],
    ));
    out.assert_ok();
    assert_eq!(out.stdout, "x\n");
    assert!(!app.data_dir().exists(), "no data directory was made");

    app.run(["fim-ephemeral", "on"]).assert_ok();
    assert_eq!(byte_11(&app.image), 1);
    let json = fim_tests::image::inspect_json(&app.image);
    assert_eq!(json["reserved"]["fields"]["ephemeral"], true, "{json}");
    assert_eq!(json["reserved"]["fields"]["layout_version"], 3, "{json}");
    assert_eq!(show(None), "on (image)\n");
    assert_eq!(show(Some("0")), "off (FIM_EPHEMERAL)\n");
    app.sh("echo gone > /data/w").assert_ok();
    let normal = |script: &str| {
        let mut command = app.command(["fim-exec", "sh", "-c", script]);
        command.env("FIM_EPHEMERAL", "0");
        fim_tests::run(&mut command)
    };
    let out = normal("ls /data; echo kept > /data/k");
    out.assert_ok();
    assert!(
        !out.stdout.lines().any(|l| l == "w"),
        "the stored setting forgot: {}",
        out.stdout
    );
    let out = app.sh("cat /data/k");
    out.assert_ok();
    assert_eq!(out.stdout, "kept\n", "FIM_EPHEMERAL=0 kept it");

    // Refusals: one line, status 125.
    app.run(["fim-layer", "commit"])
        .assert_clean_failure("app.flatimage: fim-layer commit: ");
    let mut command = app.command(["fim-layer", "commit"]);
    command.env("FIM_EPHEMERAL", "1");
    fim_tests::run(&mut command).assert_clean_failure("app.flatimage: fim-layer commit: ");
    for bad in ["yes", "2", "on"] {
        let mut command = app.command(["fim-exec", "true"]);
        command.env("FIM_EPHEMERAL", bad);
        fim_tests::run(&mut command).assert_clean_failure("app.flatimage: FIM_EPHEMERAL=");
    }
    for bad in ["0", "lots", "-1", "12Q"] {
        let mut command = app.command(["fim-exec", "true"]);
        command.env("FIM_EPHEMERAL_SIZE", bad);
        fim_tests::run(&mut command).assert_clean_failure("app.flatimage: FIM_EPHEMERAL_SIZE=");
    }
    app.run(["fim-ephemeral", "maybe"])
        .assert_clean_failure("app.flatimage: usage: fim-ephemeral");

    // While an ephemeral run goes on, a commit is refused as while any instance runs.
    let mut running = app
        .command(["fim-exec", "sh", "-c", "echo up; sleep 30"])
        .spawn_until_up();
    let mut command = app.command(["fim-layer", "commit"]);
    command.env("FIM_EPHEMERAL", "0");
    let refused = fim_tests::run(&mut command);
    let _ = running.kill();
    let _ = running.wait();
    refused.assert_clean_failure("app.flatimage: 1 instance(s) of ");
    fim_tests::checks::wait_for_the_session_to_end(&app);

    app.run(["fim-ephemeral", "off"]).assert_ok();
    assert_eq!(byte_11(&app.image), 0);
    assert_eq!(show(None), "off (default)\n");
    let mut command = app.command(["fim-layer", "commit"]);
    command.env("FIM_EPHEMERAL", "0");
    fim_tests::run(&mut command).assert_ok();
}

fn the_size_caps_the_runs_writes(who: Who) {
    let Some(app) = App::new("ephemeral_size", who) else {
        return;
    };
    app.sh("echo p > /data/p").assert_ok();
    let data = app.data_dir();
    let before = freeze(&data);
    let script = "dd if=/dev/zero of=/data/big bs=1M count=16 2>&1; echo status $?; \
        rm -f /data/big; echo small > /data/s && cat /data/s /data/p";
    let out = fim_tests::run(&mut ephemeral(
        &app,
        &["fim-exec", "sh", "-c", script],
        &[("FIM_EPHEMERAL_SIZE", "4M")],
    ));
    out.assert_ok();
    assert!(
        out.stdout.contains("No space left on device") && out.stdout.contains("status 1"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.ends_with("small\np\n"), "{}", out.stdout);
    assert_untouched(&data, &before);
}

#[test]
fn without_fuse_the_extracted_layers_run_ephemeral() {
    let Some(app) = App::new("ephemeral_extracted", Who::User) else {
        return;
    };
    let cache = app.dir.path().join("cache");
    app.sh("echo p > /data/p; rm /data/gone.txt").assert_ok();
    fim_tests::checks::wait_for_the_session_to_end(&app);
    let data = app.data_dir();
    let before = freeze(&data);
    let script = "cat /data/p; ls /data/gone.txt 2>/dev/null; echo e > /data/e; cat /data/e";
    let out = fim_tests::run(&mut ephemeral(
        &app,
        &["fim-exec", "sh", "-c", script],
        &[
            ("FIM_EXTRACT", "1"),
            ("XDG_CACHE_HOME", &cache.to_string_lossy()),
        ],
    ));
    out.assert_ok();
    assert_eq!(out.stdout, "p\ne\n");
    assert_untouched(&data, &before);
}

#[test]
fn without_user_namespaces_an_ephemeral_run_is_refused_in_one_line() {
    if !is_root() {
        skip("ephemeral without user namespaces: making a setuid bwrap needs root");
        return;
    }
    let Some(app) = App::new("ephemeral_no_userns", Who::User) else {
        return;
    };
    if fim_tests::which("fusermount3").is_none() {
        skip("ephemeral without user namespaces: fusermount3 is not installed");
        return;
    }
    let Some(bwrap) = fim_tests::fsutil::setuid_bwrap(app.dir.path()) else {
        skip("ephemeral without user namespaces: a setuid bwrap cannot be made here");
        return;
    };
    let bwrap = bwrap.to_string_lossy().into_owned();
    let out = fim_tests::run(&mut ephemeral(
        &app,
        &["fim-exec", "true"],
        &[("FIM_TEST_REFUSE_USERNS", "1"), ("FIM_BWRAP", &bwrap)],
    ));
    out.assert_clean_failure("app.flatimage: an ephemeral run needs a user namespace");
}

fn sigkill_of_an_ephemeral_launcher_leaves_nothing_behind(backend: &'static str, who: Who) {
    let Some(app) = app_with_backend("ephemeral_sigkill", who, backend) else {
        return;
    };
    app.run(["fim-ephemeral", "on"]).assert_ok();
    fim_tests::checks::sigkill_of_the_launcher_leaves_nothing_behind(&app);
    assert!(
        !app.data_dir().exists(),
        "{backend}: no data directory was made"
    );
}

#[test]
fn a_refused_kernel_overlay_falls_back_to_a_backend_that_reads_the_markers() {
    let Some(app) = app_with_backend("ephemeral_fallback", Who::User, "bwrap") else {
        return;
    };
    app.sh(KEEP).assert_ok();
    let out = fim_tests::run(&mut ephemeral(
        &app,
        &["fim-exec", "sh", "-c", LISTING],
        &[("FIM_TEST_REFUSE_KERNEL_OVERLAY", "1")],
    ));
    out.assert_ok();
    assert_eq!(
        out.stdout, KEPT,
        "the kernel's markers, read by fuse-overlayfs"
    );
    assert!(
        out.stderr.contains("using fuse-overlayfs"),
        "one line says so: {}",
        out.stderr
    );
}
