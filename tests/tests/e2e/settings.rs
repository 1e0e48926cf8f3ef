//! The sandbox settings stored in an image: `fim-perms`, `fim-env`, `fim-bind`,
//! `fim-unshare`, `fim-notify`, the identity, and `fim-help` for every command. Values
//! are expanded by the launcher alone (never by a shell); every refused command exits 125
//! with one line and leaves the image byte for byte as it was.

use std::time::{Duration, Instant};

use fim_tests::host::unique;
use fim_tests::sandbox::{App, Who};
use fim_tests::{layout, put};

/// Offsets in the reserved block: FlatImage's permission bits and notify byte.
const PERMISSIONS: usize = 0;
const NOTIFY: usize = 8;

fn reserved_u64(app: &App, offset: usize) -> u64 {
    let at = layout(&app.image).reserved_offset as usize + offset;
    let bytes = app.image_bytes();
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

fn listed(app: &App, command: &str) -> String {
    let out = app.run([command, "list"]);
    out.assert_ok();
    out.stdout
}

#[test]
fn perms_store_flatimage_bits_and_list_them() {
    let Some(app) = App::new("perms_bits", Who::Invoker) else {
        return;
    };
    assert_eq!(listed(&app, "fim-perms"), "");
    app.run(["fim-perms", "add", "network,home", "gpu"])
        .assert_ok();
    assert_eq!(
        reserved_u64(&app, PERMISSIONS),
        (1 << 0) | (1 << 10) | (1 << 11)
    );
    assert_eq!(listed(&app, "fim-perms"), "home\ngpu\nnetwork\n");
    app.run(["fim-perms", "del", "gpu"]).assert_ok();
    assert_eq!(listed(&app, "fim-perms"), "home\nnetwork\n");
    app.run(["fim-perms", "set", "xorg"]).assert_ok();
    assert_eq!(reserved_u64(&app, PERMISSIONS), 1 << 4);
    app.run(["fim-perms", "add", "all"]).assert_ok();
    assert_eq!(reserved_u64(&app, PERMISSIONS), 0x7fff);
    assert_eq!(listed(&app, "fim-perms").lines().count(), 15);
    app.run(["fim-perms", "clear"]).assert_ok();
    assert_eq!(reserved_u64(&app, PERMISSIONS), 0);
}

#[test]
fn env_values_are_expanded_by_the_launcher_never_by_a_shell() {
    let Some(app) = App::new("env_expansion", Who::User) else {
        return;
    };
    let marker = app.dir.path().join("pwned");
    let x = format!("X=$(touch {})", marker.display());
    let z = "Z=`touch ".to_string() + &marker.to_string_lossy() + "`";
    app.run(["fim-env", "add", &x, "Y=${HOME}/a", &z, "W=$NOT_SET-end"])
        .assert_ok();
    assert_eq!(
        listed(&app, "fim-env"),
        format!("{x}\nY=${{HOME}}/a\n{z}\nW=$NOT_SET-end\n"),
        "stored as given"
    );
    let home = app.host_dir("home");
    let out = fim_tests::run(
        app.command([
            "fim-exec",
            "sh",
            "-c",
            "printf '%s\\n' \"$X\" \"$Y\" \"$Z\" \"$W\" \"${HOST_SECRET:-unset}\"",
        ])
        .env("HOME", &home)
        .env("HOST_SECRET", "leaked"),
    );
    out.assert_ok();
    assert_eq!(
        out.stdout,
        format!(
            "{}\n{}/a\n{}\n-end\nunset\n",
            &x[2..],
            home.display(),
            &z[2..]
        )
    );
    assert!(!marker.exists(), "a config value ran a command on the host");
}

#[test]
fn env_add_set_del_and_clear() {
    let Some(app) = App::new("env_edit", Who::Invoker) else {
        return;
    };
    app.run(["fim-env", "add", "A=1", "B=2"]).assert_ok();
    app.run(["fim-env", "add", "A=3", "C=x=y"]).assert_ok();
    assert_eq!(listed(&app, "fim-env"), "A=3\nB=2\nC=x=y\n");
    app.run(["fim-env", "del", "B"]).assert_ok();
    assert_eq!(listed(&app, "fim-env"), "A=3\nC=x=y\n");
    let out = app.sh("echo $A $C; env | grep -c '^B='");
    assert_eq!(out.stdout, "3 x=y\n0\n");
    app.run(["fim-env", "set", "D=4"]).assert_ok();
    assert_eq!(listed(&app, "fim-env"), "D=4\n");
    app.run(["fim-env", "clear"]).assert_ok();
    assert_eq!(listed(&app, "fim-env"), "");
}

#[test]
fn identity_settings_give_a_matching_passwd_and_group() {
    let Some(app) = App::new("identity", Who::User) else {
        return;
    };
    let script = "id -u; id -g; id -un; id -gn; whoami; echo ~; cd ~ && pwd; \
                  grep \"^$(whoami):\" /etc/passwd; echo \"$USER $LOGNAME $SHELL\"";
    // By default, the user who runs the image, at home.
    let home = app.host_dir("home");
    let out = fim_tests::run(
        app.command(["fim-exec", "sh", "-c", script])
            .env("HOME", &home),
    );
    out.assert_ok();
    let user = fim_tests::sandbox::TEST_USER;
    let h = home.display();
    let (uid, gid) = (app.uid, app.gid);
    assert_eq!(
        out.stdout,
        format!(
            "{uid}\n{gid}\n{user}\n{user}\n{user}\n{h}\n{h}\n\
             {user}:x:{uid}:{gid}:{user}:{h}:/bin/sh\n{user} {user} /bin/sh\n"
        )
    );
    app.run([
        "fim-env",
        "add",
        "UID=1234",
        "GID=2345",
        "USER=alice",
        "HOME=/home/alice",
        "SHELL=/bin/ash",
    ])
    .assert_ok();
    let out = app.sh(script);
    out.assert_ok();
    assert_eq!(
        out.stdout,
        "1234\n2345\nalice\nalice\nalice\n/home/alice\n/home/alice\n\
         alice:x:1234:2345:alice:/home/alice:/bin/ash\nalice alice /bin/ash\n"
    );
    let root = app.run(["fim-root", "sh", "-c", "id -u; whoami; echo ~"]);
    root.assert_ok();
    assert_eq!(
        root.stdout, "0\nroot\n/root\n",
        "fim-root is root whatever the settings"
    );
}

#[test]
fn binds_of_each_kind_with_spaces_expansion_deletion_and_a_missing_source() {
    let Some(app) = App::new("binds", Who::User) else {
        return;
    };
    let ro = app.host_dir("read only");
    app.own(&put(&ro, "f", b"ro file\n"));
    let rw = app.host_dir("rw");
    let home = app.host_dir("home");
    app.own(&put(&home, "h", b"in home\n"));
    let missing = app.dir.path().join(unique("missing"));
    for bind in [
        ["ro", &ro.to_string_lossy(), "/mnt/ro dir"],
        ["rw", &rw.to_string_lossy(), "/srv/rw"],
        ["dev", "/dev/zero", "/srv/zero-dev"],
        ["ro", "/dev/zero", "/srv/zero-ro"],
        ["ro", "${HOME}/h", "/srv/h"],
        ["rw", &missing.to_string_lossy(), "/srv/missing"],
    ] {
        app.run(["fim-bind", "add", bind[0], bind[1], bind[2]])
            .assert_ok();
    }
    assert_eq!(
        listed(&app, "fim-bind"),
        format!(
            "0 ro '{}' '/mnt/ro dir'\n1 rw {} /srv/rw\n2 dev /dev/zero /srv/zero-dev\n\
             3 ro /dev/zero /srv/zero-ro\n4 ro '${{HOME}}/h' /srv/h\n5 rw {} /srv/missing\n",
            ro.display(),
            rw.display(),
            missing.display()
        )
    );
    let script = "cat '/mnt/ro dir/f'; echo x > '/mnt/ro dir/g' 2>/dev/null || echo ro refused; \
                  echo written > /srv/rw/new; head -c 3 /srv/zero-dev | wc -c; \
                  head -c 3 /srv/zero-ro 2>/dev/null | wc -c; cat /srv/h; \
                  [ -e /srv/missing ] && echo missing there || echo missing skipped";
    let out = fim_tests::run(
        app.command(["fim-exec", "sh", "-c", script])
            .env("HOME", &home)
            .env("FIM_DEBUG", "1"),
    );
    out.assert_ok();
    assert_eq!(
        out.stdout,
        "ro file\nro refused\n3\n0\nin home\nmissing skipped\n"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("new")).ok().as_deref(),
        Some("written\n")
    );
    assert!(
        out.stderr.lines().any(
            |l| l.starts_with("fim: debug: fim-bind 5: source") && l.contains("does not exist")
        ),
        "a debug line names the skipped bind: {}",
        out.stderr
    );

    app.run(["fim-bind", "del", "1"]).assert_ok();
    let after = listed(&app, "fim-bind");
    assert!(
        after.starts_with("0 ro ") && after.contains("\n1 dev /dev/zero"),
        "{after}"
    );
    assert_eq!(after.lines().count(), 5);
    let out = app.sh("[ -e /srv/rw/new ] && echo bound || echo gone");
    assert_eq!(
        out.stdout, "gone\n",
        "the deleted bind is not mounted any more"
    );
}

#[test]
fn unshare_gives_the_app_namespaces_of_its_own() {
    let Some(app) = App::new("unshare", Who::Invoker) else {
        return;
    };
    let kinds = ["ipc", "uts", "cgroup", "net", "user"];
    let host = kinds.map(|k| {
        std::fs::read_link(format!("/proc/self/ns/{k}"))
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let inside = || -> Vec<String> {
        let out = app.sh("for k in ipc uts cgroup net user; do readlink /proc/self/ns/$k; done");
        out.assert_ok();
        out.stdout.lines().map(str::to_string).collect()
    };
    // The network permission shares the host's network namespace; the invoker (root in
    // CI) needs no user namespace. So by default only pid is the sandbox's own.
    app.run(["fim-perms", "add", "network"]).assert_ok();
    let shared = inside();
    if fim_tests::is_root() {
        assert_eq!(shared, host, "nothing unshared but pid");
    }
    app.run(["fim-unshare", "add", "ipc,uts", "cgroup", "net", "user"])
        .assert_ok();
    assert_eq!(listed(&app, "fim-unshare"), "user\nipc\nnet\nuts\ncgroup\n");
    let own = inside();
    for (i, kind) in kinds.iter().enumerate() {
        assert_ne!(own[i], host[i], "{kind} is unshared");
    }
    app.run(["fim-unshare", "del", "net"]).assert_ok();
    app.run(["fim-unshare", "clear"]).assert_ok();
    assert_eq!(listed(&app, "fim-unshare"), "");
}

#[test]
fn notify_runs_notify_send_only_when_on_and_a_bus_is_there() {
    let Some(app) = App::new("notify", Who::Invoker) else {
        return;
    };
    let bin = app.host_dir("bin");
    let note = app.dir.path().join("notified");
    let fake = put(
        &bin,
        "notify-send",
        format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n", note.display()).as_bytes(),
    );
    fim_tests::fsutil::chmod(&fake, 0o755);
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let run = |bus: bool| {
        let mut command = app.command(["fim-exec", "true"]);
        command
            .env("PATH", &path)
            .env_remove("DBUS_SESSION_BUS_ADDRESS");
        command.env("XDG_RUNTIME_DIR", app.dir.path());
        if bus {
            command.env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent");
        }
        let out = fim_tests::run(&mut command);
        out.assert_ok();
        assert_eq!(out.stderr, "", "notifications never print");
    };
    run(true);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!note.exists(), "off by default");

    app.run(["fim-notify", "on"]).assert_ok();
    assert_eq!(reserved_u64(&app, NOTIFY) & 0xff, 1);
    run(false);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!note.exists(), "no session bus, no notification");
    run(true);
    // notify-send runs detached: wait for it to have written all it got.
    let start = Instant::now();
    let mut text = String::new();
    while !text.contains("app.flatimage") && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
        text = std::fs::read_to_string(&note).unwrap_or_default();
    }
    assert!(text.contains("app.flatimage"), "notify-send got {text:?}");

    app.run(["fim-notify", "off"]).assert_ok();
    assert_eq!(reserved_u64(&app, NOTIFY) & 0xff, 0);
    // A missing notify-send is silent too.
    std::fs::remove_file(&fake).expect("remove the fake notify-send");
    app.run(["fim-notify", "on"]).assert_ok();
    run(true);
}

#[test]
fn refused_commands_exit_125_with_one_line_and_leave_the_image_unchanged() {
    let Some(app) = App::new("refusals", Who::Invoker) else {
        return;
    };
    app.run(["fim-env", "add", "KEEP=1"]).assert_ok();
    app.run(["fim-bind", "add", "ro", "/etc", "/host-etc"])
        .assert_ok();
    let before = app.image_bytes();
    for args in [
        &["fim-perms", "add", "camera"][..],
        &["fim-perms", "add", "home,camera"],
        &["fim-perms", "add"],
        &["fim-perms", "list", "extra"],
        &["fim-perms", "clear", "extra"],
        &["fim-perms", "frobnicate", "home"],
        &["fim-perms"],
        &["fim-env", "add", "NOEQUALS"],
        &["fim-env", "add", "OK=1", "1BAD=x"],
        &["fim-env", "add", "UID=abc"],
        &["fim-env", "add", "USER=a:b"],
        &["fim-env", "set"],
        &["fim-env", "del", "NOT_SET"],
        &["fim-env", "list", "extra"],
        &["fim-bind", "add", "rx", "/a", "/b"],
        &["fim-bind", "add", "ro", "/a"],
        &["fim-bind", "add", "ro", "/a", "relative"],
        &["fim-bind", "add", "ro", "/a", "/b", "extra"],
        &["fim-bind", "del", "7"],
        &["fim-bind", "del", "x"],
        &["fim-bind", "list", "extra"],
        &["fim-unshare", "add", "mnt"],
        &["fim-unshare", "set", "all"],
        &["fim-unshare", "clear", "extra"],
        &["fim-notify", "maybe"],
        &["fim-notify", "on", "off"],
        &["fim-notify"],
        &["fim-instance", "exec", "9", "true"],
        &["fim-instance", "exec", "0"],
        &["fim-instance", "list", "extra"],
        &["fim-instance"],
        &["fim-help", "fim-perms", "extra"],
    ] {
        let out = app.run(args);
        out.assert_clean_failure("app.flatimage: ");
        assert!(
            out.stderr.contains(args[0]) || args[0] == "fim-help",
            "{args:?}: the line names the command: {}",
            out.stderr
        );
        assert!(app.image_bytes() == before, "{args:?} changed the image");
    }
}

#[test]
fn help_lists_and_explains_every_command() {
    let Some(app) = App::new("help", Who::Invoker) else {
        return;
    };
    let all = app.run(["fim-help"]);
    all.assert_ok();
    let commands = [
        "fim-exec",
        "fim-root",
        "fim-boot",
        "fim-help",
        "fim-version",
        "fim-overlay",
        "fim-perms",
        "fim-env",
        "fim-bind",
        "fim-unshare",
        "fim-instance",
        "fim-notify",
        "fim-casefold",
        "fim-layer",
        "fim-desktop",
        "fim-remote",
        "fim-recipe",
    ];
    for command in commands {
        assert!(all.stdout.contains(command), "fim-help lacks {command}");
        let topic = app.run(["fim-help", command]);
        topic.assert_ok();
        assert!(
            topic.stdout.contains(command),
            "{command}: {}",
            topic.stdout
        );
    }
    // Every command of the list has a topic, and every summary is a whole sentence.
    let listed = help_summaries(&all.stdout);
    assert!(listed.len() >= commands.len(), "{}", all.stdout);
    for (synopsis, summary) in &listed {
        assert!(
            summary.ends_with('.') && summary.starts_with(|c: char| c.is_ascii_uppercase()),
            "{synopsis}: the summary is not a whole sentence: {summary:?}"
        );
        let name = synopsis.split(' ').next().unwrap_or_default();
        let topic = app.run(["fim-help", name]);
        topic.assert_ok();
        assert!(
            topic
                .stdout
                .starts_with(&format!("Usage: IMAGE {synopsis}\n")),
            "{name}: {}",
            topic.stdout
        );
    }
    let perms = app.run(["fim-help", "perms"]);
    for permission in ["home", "dbus_system", "optical", "all"] {
        assert!(perms.stdout.contains(permission), "{}", perms.stdout);
    }
}

/// The `(synopsis, summary)` pairs of `fim-help`'s list: a synopsis is a line indented by
/// two spaces, its summary the lines indented by six below it, joined.
fn help_summaries(text: &str) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(summary) = line.strip_prefix("      ") {
            let (_, last) = pairs.last_mut().expect("a summary under a synopsis");
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(summary.trim());
        } else if let Some(synopsis) = line.strip_prefix("  ") {
            pairs.push((synopsis.to_string(), String::new()));
        }
    }
    pairs
}
