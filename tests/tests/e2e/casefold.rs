//! The casefold view end to end: names found whatever their case and kept as written, on
//! every overlay backend, as whoever runs the tests and as an unprivileged user; turned
//! off, every file keeps its real name; `fim-casefold` and `FIM_CASEFOLD`; a launcher
//! asking for the other state while an instance runs joins it; no FUSE, no casefold.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;

use fim_tests::checks::{wait_for, wait_for_the_session_to_end};
use fim_tests::fsutil::setuid_bwrap;
use fim_tests::run::SpawnRetrying;
use fim_tests::sandbox::{App, Extra, Who, app_with_backend, base_image_with};
use fim_tests::{layout, run, skip};

/// Offset of the casefold byte in the reserved block (FlatImage's offset).
const CASEFOLD_BYTE: u64 = 10;

/// The host's Python and the part of its library that starts it (it runs with `-I -S`).
const PYTHON: &str = "/usr/bin/python3.11";
const PYTHON_LIB: [&str; 2] = ["/usr/lib/python3.11/encodings", "/usr/lib/python3.11/os.py"];

/// Files opened by the Python check, `many/File0000.Dat` ... `many/File0999.Dat`.
const MANY: usize = 1000;

/// Opens every file of `many/` by a randomly cased path and checks what it reads.
const PYTHON_SCRIPT: &str = r#"
import sys
seed = 12345
def coin():
    global seed
    seed = (seed * 1103515245 + 12345) % 2147483648
    return seed >> 16 & 1
def scramble(text):
    return "".join(c.upper() if coin() else c.lower() for c in text)
ok = 0
for i in range(int(sys.argv[1])):
    path = scramble("/many/file%04d.dat" % i)
    with open(path) as f:
        if f.read() == "%d\n" % i:
            ok += 1
print("opened", ok)
"#;

/// The base image plus a game's files, names that differ only by case, a non-ASCII
/// name, [`MANY`] files and the host's Python (when installed), built once.
fn casefold_image() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let many: Vec<(String, String)> = (0..MANY)
                .map(|i| (format!("many/File{i:04}.Dat"), format!("{i}\n")))
                .collect();
            let mut files: Vec<(&str, &str)> = vec![
                ("Program Files/Game/Data.PAK", "pak\n"),
                ("coll/readme.txt", "lower\n"),
                ("coll/README.TXT", "upper\n"),
                ("coll/ReadMe.txt", "mixed\n"),
                ("Ä.txt", "umlaut\n"),
                ("opener.py", PYTHON_SCRIPT),
            ];
            files.extend(many.iter().map(|(p, t)| (p.as_str(), t.as_str())));
            base_image_with(
                "casefold.flatimage",
                &Extra {
                    files: &files,
                    programs: &[PYTHON],
                    host_paths: &PYTHON_LIB,
                    open_dirs: &["Program Files/Game"],
                    xattrs: &[],
                },
            )
        })
        .clone()
}

fn casefold_app(test: &str, who: Who, backend: &'static str) -> Option<App> {
    let app = app_with_backend(test, who, backend)?;
    std::fs::copy(casefold_image(), &app.image).expect("copy the casefold image");
    Some(app)
}

/// The soft limit on open descriptors each launch starts with: far fewer than the nodes a
/// walk of the casefold image makes the server hold, so a session daemon that kept it
/// would fail the walk (or hide entries) instead of taking its hard limit.
const LOW_DESCRIPTOR_LIMIT: libc::rlim_t = 256;

/// Runs `sh -c script` in `app` with `FIM_CASEFOLD=state` and the extra environment,
/// started under [`LOW_DESCRIPTOR_LIMIT`].
fn sh_with(app: &App, state: &str, env: &[(&str, &str)], script: &str) -> fim_tests::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = app.command(["fim-exec", "sh", "-c", script]);
    cmd.env("FIM_CASEFOLD", state);
    // SAFETY: getrlimit/setrlimit are async-signal-safe and touch only the child.
    unsafe {
        cmd.pre_exec(|| {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur = limit.rlim_max.min(LOW_DESCRIPTOR_LIMIT);
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
            Ok(())
        });
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// Everything an app does by another case, in one session: read, write, list, overwrite,
/// rename, `mkdir -p`, unlink, a symlink, collisions, a non-ASCII name.
const BY_ANOTHER_CASE: &str = r#"set -e
cat "/program files/game/data.pak"
echo s >"/PROGRAM FILES/GAME/Save.DAT"
cat "/program files/game/save.dat"
echo $(ls "/Program Files/Game")
echo t >"/program files/game/save.dat"
cat "/Program Files/Game/Save.DAT"
echo $(ls "/Program Files/Game")
mv "/program files/game/SAVE.dat" "/PROGRAM FILES/game/Renamed.Dat"
echo $(ls "/Program Files/Game")
mkdir -p /data/New/Sub /DATA/new/SUB/deeper /data/NEW/sub/Deeper/x
echo $(find /data/New | sort)
echo v >/data/New/Victim.txt
rm /data/new/VICTIM.TXT
cat /data/NEW/victim.txt 2>/dev/null || echo unlinked
echo $(ls /data/New)
ln -s "/PROGRAM FILES/game/data.pak" /data/Link
cat /data/LINK
cat /coll/readme.txt /coll/Readme.TXT /COLL/ReadMe.txt
cat /ä.txt
"#;

const BY_ANOTHER_CASE_OUT: &str = "pak
s
Data.PAK Save.DAT
t
Data.PAK Save.DAT
Data.PAK Renamed.Dat
/data/New /data/New/Sub /data/New/Sub/deeper /data/New/Sub/deeper/x
unlinked
Sub
pak
lower
upper
mixed
umlaut
";

/// After [`BY_ANOTHER_CASE`], with casefold off: real names only, nothing lost.
const EXACT_ONLY: &str = r#"cat "/Program Files/Game/Renamed.Dat" "/Program Files/Game/Data.PAK"
cat "/program files/game/data.pak" 2>/dev/null || echo no-fold
echo $(ls /data/New/Sub) $(readlink /data/Link)
cat /Ä.txt; cat /ä.txt 2>/dev/null || echo no-fold"#;

const EXACT_ONLY_OUT: &str = "t
pak
no-fold
deeper /PROGRAM FILES/game/data.pak
umlaut
no-fold
";

fim_tests::per_backend!(names_are_found_whatever_their_case_and_kept_as_written);

fn names_are_found_whatever_their_case_and_kept_as_written(backend: &'static str, who: Who) {
    let test = "casefold";
    let Some(app) = casefold_app(test, who, backend) else {
        return;
    };
    // One session: every probe sees the changes made before it through the same mounts.
    let out = sh_with(&app, "1", &[("FIM_DEBUG", "1")], BY_ANOTHER_CASE);
    out.assert_ok();
    assert_eq!(out.stdout, BY_ANOTHER_CASE_OUT, "{backend}: {}", out.stderr);
    // The collision is named (once) in the session's log.
    let log = std::fs::read_to_string(app.data_dir().join("session.log")).unwrap_or_default();
    assert!(
        log.contains("casefold: /coll holds")
            && log.contains("\"Readme.TXT\" opens \"README.TXT\""),
        "{backend}: the collision is not named:\n{log}"
    );
    // A relaunch inside the linger reuses the session; a Python app opens many files by
    // randomly cased paths; a long listing and a walk see every entry though the server
    // then holds far more nodes than the launcher's descriptor limit.
    let python = if std::path::Path::new(PYTHON).is_file() {
        format!("python3.11 -I -S /opener.py {MANY}")
    } else {
        skip(&format!(
            "{test}: {PYTHON} is not installed; no Python check"
        ));
        format!("echo opened {MANY}")
    };
    let out = sh_with(
        &app,
        "1",
        &[],
        &format!(
            "cat '/program files/GAME/renamed.dat'; {python}; ls -l /MANY | grep -c Dat; \
             find / -xdev | wc -l"
        ),
    );
    out.assert_ok();
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    let walked = lines.pop().unwrap_or_default();
    assert_eq!(
        lines.join("\n"),
        format!("t\nopened {MANY}\n{MANY}"),
        "{backend}: {}",
        out.stderr
    );
    // Off again, in a new session: exact names only, nothing lost, nothing renamed; the
    // walk finds as many entries as it did through the casefold view.
    let out = sh_with(&app, "0", &[], EXACT_ONLY);
    out.assert_ok();
    assert_eq!(out.stdout, EXACT_ONLY_OUT, "{backend}: {}", out.stderr);
    let out = sh_with(&app, "0", &[], "find / -xdev | wc -l");
    out.assert_ok();
    assert_eq!(
        walked.trim(),
        out.stdout.trim(),
        "{backend}: the walks differ"
    );
    let entries: usize = walked.trim().parse().unwrap_or(0);
    assert!(
        entries > 4 * LOW_DESCRIPTOR_LIMIT as usize,
        "{backend}: the walk saw only {entries} entries"
    );
    // On again across sessions.
    wait_for_the_session_to_end(&app);
    let out = sh_with(&app, "1", &[], "cat '/PROGRAM FILES/GAME/renamed.dat'");
    out.assert_ok();
    assert_eq!(out.stdout, "t\n");
}

/// File contents through the casefold view, in one session: two opens of one file at
/// once, appends, an overwrite in the middle, truncation, a program copied in and run, and
/// 8 MiB of random bytes; then, with casefold off in a new session, the same bytes.
// `echo "$(cat F)"`, not `cat F`: cat splices the file's pages into the pipe to the test,
// and a write to the file made before the test reads the pipe shows through them.
const CONTENTS: &str = r#"set -e
mkdir -p /data
echo one >/data/Notes.txt
exec 3>>/data/NOTES.TXT
echo two >&3
echo "$(cat /data/notes.txt)"
echo three >>/DATA/notes.TXT
exec 3>&-
printf XY | dd of=/data/Notes.txt bs=1 seek=1 conv=notrunc 2>/dev/null
echo "$(cat /data/NOTES.txt)"
: >/data/notes.TXT
wc -c </data/Notes.txt
mkdir /data/Bin
cp /bin/busybox /data/Bin/busybox
/data/BIN/busybox echo ran
dd if=/dev/urandom of=/data/Big.bin bs=1M count=8 2>/dev/null
md5sum </data/BIG.BIN
sync /DATA/BIG.BIN
sync -d /data/big.bin
echo synced
"#;

fim_tests::per_backend!(file_contents_pass_through_for_the_hosts_root_and_are_served_otherwise);

fn file_contents_pass_through_for_the_hosts_root_and_are_served_otherwise(
    backend: &'static str,
    who: Who,
) {
    let Some(app) = casefold_app("casefold contents", who, backend) else {
        return;
    };
    let out = sh_with(&app, "1", &[("FIM_DEBUG", "1")], CONTENTS);
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[..5],
        ["one", "two", "oXY", "two", "three"],
        "{backend}: {}",
        out.stderr
    );
    assert_eq!(lines[5..7], ["0", "ran"], "{backend}: {}", out.stderr);
    let sum = lines.get(7).copied().unwrap_or_default();
    // Synced through an open for reading (passed through by path where contents are).
    assert_eq!(lines.get(8), Some(&"synced"), "{backend}: {}", out.stderr);
    // Passed through only where the kernel lets the server register backing files: the
    // host's root (the tests' invoker when they run as root). Said while the daemon
    // still writes to the launcher's error output.
    let log = &out.stderr;
    // SAFETY: geteuid cannot fail.
    let host_root = who == Who::Invoker && unsafe { libc::geteuid() } == 0;
    let said = if host_root {
        "casefold: file contents pass through to the view below"
    } else {
        "casefold: file contents go through the server"
    };
    assert!(
        log.contains(said),
        "{backend} {who:?}: not said: {said}\n{log}"
    );
    wait_for_the_session_to_end(&app);
    let out = sh_with(
        &app,
        "0",
        &[],
        "md5sum </data/Big.bin; wc -c </data/Notes.txt",
    );
    out.assert_ok();
    assert_eq!(
        out.stdout,
        format!("{sum}\n0\n"),
        "{backend}: {}",
        out.stderr
    );
}

#[test]
fn fim_casefold_writes_byte_10_and_show_says_where_the_state_comes_from() {
    let Some(app) = casefold_app("fim-casefold", Who::Invoker, "bwrap") else {
        return;
    };
    let r = layout(&app.image).reserved_offset;
    let byte = |app: &App| app.image_bytes()[(r + CASEFOLD_BYTE) as usize];
    let show = |env: Option<&str>| {
        let mut cmd = app.command(["fim-casefold", "show"]);
        if let Some(v) = env {
            cmd.env("FIM_CASEFOLD", v);
        }
        let out = run(&mut cmd);
        out.assert_ok();
        out.stdout
    };
    assert_eq!(byte(&app), 0);
    assert_eq!(show(None), "off (from the default)\n");
    app.run(["fim-casefold", "on"]).assert_ok();
    assert_eq!(byte(&app), 1);
    assert_eq!(show(None), "on (from the image)\n");
    assert_eq!(show(Some("0")), "off (from FIM_CASEFOLD)\n");
    // The stored state applies to a run.
    let out = app.sh("cat '/program files/game/data.pak'");
    out.assert_ok();
    assert_eq!(out.stdout, "pak\n");
    wait_for_the_session_to_end(&app);
    app.run(["fim-casefold", "off"]).assert_ok();
    assert_eq!(byte(&app), 0);
    assert_eq!(show(Some("1")), "on (from FIM_CASEFOLD)\n");
    app.run(["fim-casefold", "maybe"])
        .assert_clean_failure("app.flatimage: usage: fim-casefold");
    sh_with(&app, "yes", &[], "true")
        .assert_clean_failure("app.flatimage: FIM_CASEFOLD must be 1 or 0");
}

#[test]
fn a_launcher_asking_for_the_other_state_joins_the_running_instances_and_says_so() {
    let Some(app) = casefold_app("casefold join", Who::Invoker, "bwrap") else {
        return;
    };
    let started = app.data_dir().join("upper").join("data").join("started");
    let mut running = app.command(["fim-exec", "sh", "-c", "touch /data/started; sleep 30"]);
    running
        .env("FIM_CASEFOLD", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = running.spawn_retrying();
    wait_for(|| started.exists(), "the first instance");
    let out = sh_with(&app, "0", &[], "cat '/program files/game/data.pak'");
    let _ = child.kill();
    let _ = child.wait();
    out.assert_ok();
    assert_eq!(out.stdout, "pak\n");
    let notes: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        notes,
        [
            "fim: 1 running instance(s) of this image use casefold on; casefold off applies once they have exited"
        ]
    );
}

#[test]
fn without_fuse_casefold_is_refused_in_one_line() {
    let Some(app) = casefold_app("casefold without FUSE", Who::Invoker, "bwrap") else {
        return;
    };
    sh_with(&app, "1", &[("FIM_EXTRACT", "1")], "true")
        .assert_clean_failure("app.flatimage: casefold needs FUSE");
    // Off, the extraction runs.
    let out = sh_with(
        &app,
        "0",
        &[("FIM_EXTRACT", "1")],
        "cat '/Program Files/Game/Data.PAK'",
    );
    out.assert_ok();
    assert_eq!(out.stdout, "pak\n");
}

#[test]
fn without_user_namespaces_casefold_is_refused_in_one_line() {
    if !fim_tests::is_root() {
        skip("casefold without user namespaces: making a setuid bwrap needs root");
        return;
    }
    let Some(app) = casefold_app("casefold through fusermount3", Who::User, "overlayfs") else {
        return;
    };
    if fim_tests::which("fusermount3").is_none() {
        skip("casefold without user namespaces: fusermount3 is not installed");
        return;
    }
    let Some(bwrap) = setuid_bwrap(app.dir.path()) else {
        skip("casefold without user namespaces: a setuid bwrap cannot be made here");
        return;
    };
    let bwrap = bwrap.to_str().expect("a UTF-8 path");
    let no_userns = [("FIM_TEST_REFUSE_USERNS", "1"), ("FIM_BWRAP", bwrap)];
    sh_with(&app, "1", &no_userns, "true")
        .assert_clean_failure("app.flatimage: casefold needs user namespaces");
    // Nothing stays mounted on the host, and off, the app runs.
    wait_for_the_session_to_end(&app);
    assert!(
        fim_tests::sandbox::host_mounts_mentioning(&app.runtime_dir()).is_empty(),
        "the refused session's fusermount3 mounts outlived it"
    );
    let out = sh_with(&app, "0", &no_userns, "cat '/Program Files/Game/Data.PAK'");
    out.assert_ok();
    assert_eq!(out.stdout, "pak\n");
}

/// Directories changed, by another case, after the walker listed them ahead of the
/// kernel (it does as soon as the kernel lists their parent), then walked: the walk sees
/// them as they are, and the session's log says the listings made ahead were stale.
const CHANGED_AFTER_LISTED_AHEAD: &str = r#"set -e
mkdir -p /walk/A/x /walk/B/y /walk/C
echo 1 >/walk/A/one; echo 2 >/walk/B/two
ls /walk >/dev/null
sleep 1
echo 3 >/walk/a/Three
rm /walk/b/TWO
echo $(find /walk | sort)
"#;

fim_tests::for_both!(a_walk_sees_directories_changed_after_they_were_listed_ahead);

fn a_walk_sees_directories_changed_after_they_were_listed_ahead(who: Who) {
    let Some(app) = casefold_app("casefold walk ahead", who, "bwrap") else {
        return;
    };
    let out = sh_with(&app, "1", &[("FIM_DEBUG", "1")], CHANGED_AFTER_LISTED_AHEAD);
    out.assert_ok();
    assert_eq!(
        out.stdout, "/walk /walk/A /walk/A/Three /walk/A/one /walk/A/x /walk/B /walk/B/y /walk/C\n",
        "{}",
        out.stderr
    );
    wait_for_the_session_to_end(&app);
    let log = std::fs::read_to_string(app.data_dir().join("session.log")).unwrap_or_default();
    assert!(
        log.contains("casefold: a listing made ahead is stale"),
        "no listing made ahead was found stale:\n{log}"
    );
}
