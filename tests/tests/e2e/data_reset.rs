//! The data directory removed or replaced under a session: a user resets an app with
//! `rm -rf .app.flatimage.data` (or moves it aside) and starts it again within the linger.
//! The lingering session still has the old directories mounted; it must make way, and the
//! relaunch must see the image as shipped and write where the next run will look. While
//! instances still run on the old directories, a new launch is refused in one line and
//! the running ones are left alone.

use std::io::Write;
use std::process::Stdio;

use fim_tests::checks::{session_dirs, wait_for_the_session_to_end};
use fim_tests::run::SpawnRetrying;
use fim_tests::sandbox::{Who, app_with_backend as app};

fim_tests::per_backend!(
    a_removed_data_directory_gets_a_fresh_session_within_the_linger,
    a_replaced_upper_directory_gets_a_fresh_session_within_the_linger,
    a_removed_data_directory_under_a_running_instance_is_refused_in_one_line
);

/// Writes `/data/old` in one run, so the session lingers with the data directory mounted.
const WRITE_OLD: &str = "echo old > /data/old";

/// What a fresh view must show: the image's own file, nothing of the removed upper
/// directory, and a write that lands in the new data directory.
const LOOK_AND_WRITE: &str = "cat /data/old 2>/dev/null && echo GHOST; \
     test -d /etc && echo etc; echo new > /data/new && cat /data/new";

fn a_removed_data_directory_gets_a_fresh_session_within_the_linger(
    backend: &'static str,
    who: Who,
) {
    let Some(app) = app("reset_data", who, backend) else {
        return;
    };
    app.sh(WRITE_OLD).assert_ok();
    assert_eq!(session_dirs(&app).len(), 1, "the session lingers");
    std::fs::remove_dir_all(app.data_dir()).expect("remove the data directory");

    let out = app.sh(LOOK_AND_WRITE);
    out.assert_ok();
    assert_eq!(out.stdout, "etc\nnew\n", "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(app.data_dir().join("upper/data/new")).expect("the new write"),
        "new\n"
    );
    // Within the new session's linger, the next run sees the same.
    let again = app.sh("cat /data/new; ls /data");
    again.assert_ok();
    assert!(!again.stdout.contains("old"), "{}", again.stdout);
}

fn a_replaced_upper_directory_gets_a_fresh_session_within_the_linger(
    backend: &'static str,
    who: Who,
) {
    let Some(app) = app("reset_upper", who, backend) else {
        return;
    };
    app.sh(WRITE_OLD).assert_ok();
    let upper = app.data_dir().join("upper");
    let aside = app.data_dir().join("upper.old");
    std::fs::rename(&upper, &aside).expect("move the upper directory aside");
    std::fs::create_dir(&upper).expect("a new upper directory");
    app.own(&upper);

    let out = app.sh(LOOK_AND_WRITE);
    out.assert_ok();
    assert_eq!(out.stdout, "etc\nnew\n", "{}", out.stderr);
    assert!(upper.join("data/new").exists(), "written to the new upper");
    // The old one is the user's, untouched.
    assert_eq!(
        std::fs::read_to_string(aside.join("data/old")).expect("the old upper"),
        "old\n"
    );
    assert!(!aside.join("data/new").exists());
}

fn a_removed_data_directory_under_a_running_instance_is_refused_in_one_line(
    backend: &'static str,
    who: Who,
) {
    let Some(app) = app("reset_running", who, backend) else {
        return;
    };
    app.sh(WRITE_OLD).assert_ok();
    let mut running = app
        .command(["fim-exec", "sh", "-c", "echo up; read line; echo \"$line\""])
        .stdin(Stdio::piped())
        .spawn_until_up();
    std::fs::remove_dir_all(app.data_dir()).expect("remove the data directory");

    let refused = app.sh("true");
    refused.assert_clean_failure(&format!(
        "{}: {} was removed or replaced while an instance of this image runs on the old one",
        app.image.file_name().expect("name").to_string_lossy(),
        app.data_dir().display()
    ));

    // The running app is left alone: it still answers, and ends normally.
    running
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"still here\n")
        .expect("write to the app");
    let ended = running.wait_with_output().expect("wait for the app");
    assert!(ended.status.success(), "{ended:?}");
    assert_eq!(String::from_utf8_lossy(&ended.stdout), "still here\n");

    // Once it is gone, the image runs on a fresh data directory: at once, while the old
    // session lingers (it makes way), and in a session of its own.
    let out = app.sh(LOOK_AND_WRITE);
    out.assert_ok();
    assert_eq!(out.stdout, "etc\nnew\n", "{}", out.stderr);
    wait_for_the_session_to_end(&app);
    let out = app.sh(LOOK_AND_WRITE);
    out.assert_ok();
    assert_eq!(out.stdout, "etc\nnew\n", "{}", out.stderr);
}
