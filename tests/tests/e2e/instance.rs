//! `fim-instance`: the running instances of an image are listed, and `exec` runs a
//! program inside one of them, in its namespaces: it sees the file that instance wrote
//! in its private /tmp, which no other run sees.

use std::process::Child;

use fim_tests::checks::wait_for;
use fim_tests::run::SpawnRetrying;
use fim_tests::sandbox::{App, Who};

fim_tests::for_both!(exec_enters_a_running_instance_and_sees_its_private_tmp);

/// Starts `IMAGE fim-exec sh -c SCRIPT` and waits for its first line, `up`.
fn start(app: &App, script: &str) -> Child {
    app.command(["fim-exec", "sh", "-c", script])
        .spawn_until_up()
}

/// `fim-instance list`, one `[id, pid, started, command]` per instance.
fn instances(app: &App) -> Vec<[String; 4]> {
    let out = app.run(["fim-instance", "list"]);
    out.assert_ok();
    out.stdout
        .lines()
        .map(|line| {
            let mut words = line.splitn(4, ' ').map(str::to_string);
            [(); 4].map(|()| words.next().unwrap_or_default())
        })
        .collect()
}

fn exec_enters_a_running_instance_and_sees_its_private_tmp(who: Who) {
    let Some(app) = App::new("instance_exec", who) else {
        return;
    };
    let script = "echo secret > /tmp/mark; echo up; exec sleep 60";
    let mut first = start(&app, script);
    wait_for(|| instances(&app).len() == 1, "the instance's record");
    let listed = instances(&app);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let [id, pid, started, command] = &listed[0];
    assert_eq!(id, "0");
    assert_eq!(pid, &first.id().to_string(), "the launcher's pid");
    assert!(started.len() == 20 && started.ends_with('Z'), "{started}");
    assert_eq!(command, &format!("sh -c '{script}'"));

    let image = app.image.canonicalize().expect("image path");
    let out = app.run([
        "fim-instance",
        "exec",
        "0",
        "sh",
        "-c",
        "cat /tmp/mark; id -u; echo $FIM_IMAGE; ps -o comm | grep -c sleep",
    ]);
    out.assert_ok();
    assert_eq!(
        out.stdout,
        format!("secret\n{}\n{}\n1\n", app.uid, image.display()),
        "the instance's /tmp, identity, environment and processes"
    );
    assert_eq!(
        app.run(["fim-instance", "exec", "0", "sh", "-c", "exit 3"])
            .code(),
        Some(3)
    );
    let missing = app.run(["fim-instance", "exec", "0", "no-such-program"]);
    assert_eq!(missing.code(), Some(127), "{missing:?}");
    let other = app.sh("cat /tmp/mark 2>/dev/null || echo private");
    assert_eq!(
        other.stdout, "private\n",
        "another run has a /tmp of its own"
    );

    // A second instance takes the next id; one killed outright drops from the list.
    let mut second = start(&app, "echo up; exec sleep 60");
    // The launcher records its instance once bubblewrap reports the sandbox's pid, which
    // can come after the app's first line.
    wait_for(
        || instances(&app).len() == 2,
        "the second instance's record",
    );
    let ids: Vec<String> = instances(&app).into_iter().map(|[id, ..]| id).collect();
    assert_eq!(ids, ["0", "1"]);
    second.kill().expect("SIGKILL the second launcher");
    second.wait().expect("reap");
    wait_for(
        || instances(&app).len() == 1,
        "the killed instance to leave the list",
    );
    first.kill().expect("SIGKILL the first launcher");
    first.wait().expect("reap");
    wait_for(|| instances(&app).is_empty(), "an empty list");
}

/// A program entering a `fim-root` instance of a user with one id gets that instance's
/// seccomp filter: a chown to another id succeeds without effect there, as it does in the
/// instance, and apt's settings for that mode are in its environment. One entering a
/// normal run's instance gets no filter: the same chown fails.
#[test]
fn exec_into_a_fim_root_instance_with_one_id_gets_its_filter() {
    let Some(app) = App::new("instance_exec_noop_ids", Who::User) else {
        return;
    };
    let chown = "touch /tmp/f && chown 42:42 /tmp/f && echo chowned; echo ${APT_CONFIG:-none}";
    let mut root = app
        .command(["fim-root", "sh", "-c", "echo up; exec sleep 60"])
        .spawn_until_up();
    wait_for(|| instances(&app).len() == 1, "the instance's record");
    let out = app.run(["fim-instance", "exec", "0", "sh", "-c", chown]);
    out.assert_ok();
    assert_eq!(
        out.stdout, "chowned\n/tmp/.fim-apt.conf\n",
        "{}",
        out.stderr
    );
    root.kill().expect("SIGKILL the launcher");
    root.wait().expect("reap");
    wait_for(|| instances(&app).is_empty(), "an empty list");

    let mut user = start(&app, "echo up; exec sleep 60");
    wait_for(|| instances(&app).len() == 1, "the instance's record");
    let out = app.run(["fim-instance", "exec", "0", "sh", "-c", chown]);
    assert_eq!(out.stdout, "none\n", "{}", out.stderr);
    // The kernel refuses an id the namespace does not map (EINVAL).
    assert!(out.stderr.contains("chown: /tmp/f: "), "{}", out.stderr);
    user.kill().expect("SIGKILL the launcher");
    user.wait().expect("reap");
}
