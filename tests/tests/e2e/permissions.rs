//! Permissions that really deny: for each permission this machine can exercise, the
//! host resource is unreachable inside while the permission is off, and reachable once
//! `fim-perms add` turns it on. Stand-ins are used where a desktop would have the real
//! thing: a unix socket for the X11 display, the session bus and the sound server, a TCP
//! server on 127.0.0.1 for the network. Sockets are shown to be the host's own by their
//! inode numbers, which a bind mount keeps.

use std::path::Path;

use fim_tests::host::{HostPath, PongServer, unique};
use fim_tests::sandbox::{App, Who};
use fim_tests::{Output, skip};

fim_tests::for_both!(
    home_is_the_hosts_only_with_the_permission,
    network_reaches_a_host_server_only_with_the_permission,
    without_the_network_launches_share_the_sessions_loopback_only,
);

/// Runs `script` in the app with the extra host variables `env`, with `permission` off,
/// then on; returns both outputs, each checked to have succeeded.
fn off_then_on(app: &App, permission: &str, script: &str, env: &[(&str, &str)]) -> [Output; 2] {
    let run = || {
        let mut command = app.command(["fim-exec", "sh", "-c", script]);
        command.envs(env.iter().copied());
        let out = fim_tests::run(&mut command);
        out.assert_ok();
        out
    };
    let off = run();
    app.run(["fim-perms", "add", permission]).assert_ok();
    let on = run();
    [off, on]
}

/// `script` that prints `absent` unless `path` exists, in which case it prints the
/// output of `then`.
fn if_there(path: &Path, then: &str) -> String {
    format!(
        "if [ -e '{}' ]; then {then}; else echo absent; fi",
        path.display()
    )
}

fn home_is_the_hosts_only_with_the_permission(who: Who) {
    let Some(app) = App::new("perm_home", who) else {
        return;
    };
    let home = app.host_dir("home");
    app.own(&fim_tests::put(&home, "mine", b"my file\n"));
    let script = format!(
        "{}; echo \"$HOME\"; echo from-app >> \"$HOME/new\"",
        if_there(&home.join("mine"), "cat ~/mine")
    );
    let home_text = home.to_string_lossy().into_owned();
    let [off, on] = off_then_on(&app, "home", &script, &[("HOME", &home_text)]);
    assert_eq!(off.stdout, format!("absent\n{home_text}\n"));
    assert_eq!(on.stdout, format!("my file\n{home_text}\n"));
    // Both runs appended a line; only the one with the permission reached the host.
    assert_eq!(
        std::fs::read_to_string(home.join("new")).ok().as_deref(),
        Some("from-app\n"),
        "the app writes the host's home with the permission only"
    );
}

fn network_reaches_a_host_server_only_with_the_permission(who: Who) {
    let Some(app) = App::new("perm_network", who) else {
        return;
    };
    let server = PongServer::start();
    let script = format!(
        "nc 127.0.0.1 {} </dev/null 2>/dev/null || echo unreachable",
        server.port
    );
    let [off, on] = off_then_on(&app, "network", &script, &[]);
    assert_eq!(
        off.stdout, "unreachable\n",
        "no network without the permission"
    );
    assert_eq!(on.stdout, "pong\n");
    assert_eq!(
        server.served(),
        1,
        "only the run with the permission connected"
    );
}

/// Without the network permission every launch of a session joins the network namespace
/// the session's daemon made once: not the host's, its loopback up (127.0.0.1 is there)
/// and nothing else.
fn without_the_network_launches_share_the_sessions_loopback_only(who: Who) {
    let Some(app) = App::new("perm_loopback", who) else {
        return;
    };
    let script = "readlink /proc/self/ns/net; grep -c 127.0.0.1 /proc/net/fib_trie; \
                  tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '";
    let launch = || {
        let out = fim_tests::run(
            app.command(["fim-exec", "sh", "-c", script])
                .env("FIM_DEBUG", "1"),
        );
        out.assert_ok();
        assert!(
            out.stderr
                .contains("network: the session's own, loopback only"),
            "{}",
            out.stderr
        );
        out.stdout
    };
    let first = launch();
    let again = launch();
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines.len(), 3, "{first}");
    assert_eq!(first, again, "one network for the session's launches");
    let host = std::fs::read_link("/proc/self/ns/net").expect("the host's network namespace");
    assert_ne!(lines[0], host.to_string_lossy(), "not the host's network");
    assert_ne!(lines[1], "0", "the loopback is up: {first}");
    assert_eq!(lines[2], "lo", "the loopback only: {first}");
}

#[test]
fn media_shows_the_hosts_mnt_only_with_the_permission() {
    if !Path::new("/mnt").is_dir() {
        skip("media_shows_the_hosts_mnt_only_with_the_permission: this machine has no /mnt");
        return;
    }
    let Some(app) = App::new("perm_media", Who::User) else {
        return;
    };
    let file = HostPath::file(Path::new("/mnt").join(unique("media")), "on a disk\n");
    let script = if_there(file.path(), &format!("cat '{}'", file.path().display()));
    let [off, on] = off_then_on(&app, "media", &script, &[]);
    assert_eq!(off.stdout, "absent\n");
    assert_eq!(on.stdout, "on a disk\n");
}

#[test]
fn dev_shows_the_hosts_devices_only_with_the_permission() {
    let Some(app) = App::new("perm_dev", Who::User) else {
        return;
    };
    // /dev/fuse exists wherever images run; the sandbox's own /dev has no such device.
    let script = "if [ -c /dev/fuse ]; then echo present; else echo absent; fi; \
                  [ -c /dev/null ] && echo null";
    let [off, on] = off_then_on(&app, "dev", script, &[]);
    assert_eq!(off.stdout, "absent\nnull\n");
    assert_eq!(on.stdout, "present\nnull\n");
}

#[test]
fn shm_is_private_without_the_permission() {
    let Some(app) = App::new("perm_shm", Who::User) else {
        return;
    };
    let file = HostPath::file(Path::new("/dev/shm").join(unique("shm")), "shared\n");
    let script = format!(
        "{}; echo private > /dev/shm/mine && echo writable",
        if_there(file.path(), &format!("cat '{}'", file.path().display()))
    );
    let [off, on] = off_then_on(&app, "shm", &script, &[]);
    assert_eq!(
        off.stdout, "absent\nwritable\n",
        "a private, writable /dev/shm"
    );
    assert_eq!(on.stdout, "shared\nwritable\n");
    let _ = std::fs::remove_file("/dev/shm/mine");
}

#[test]
fn input_and_usb_devices_only_with_their_permissions() {
    for (permission, device) in [("input", "/dev/input"), ("usb", "/dev/bus/usb")] {
        let test = format!("input_and_usb_devices_only_with_their_permissions: {permission}");
        if !Path::new(device).exists() {
            skip(&format!("{test}: this machine has no {device}"));
            continue;
        }
        let Some(app) = App::new(&test, Who::User) else {
            return;
        };
        let script = if_there(Path::new(device), "echo present");
        let [off, on] = off_then_on(&app, permission, &script, &[]);
        assert_eq!(off.stdout, "absent\n", "{device} without {permission}");
        assert_eq!(on.stdout, "present\n", "{device} with {permission}");
    }
}

#[test]
fn xorg_binds_the_display_socket_into_a_private_tmp() {
    let Some(app) = App::new("perm_xorg", Who::User) else {
        return;
    };
    let sockets = Path::new("/tmp/.X11-unix");
    let made_dir = !sockets.exists();
    if made_dir {
        std::fs::create_dir(sockets).expect("create /tmp/.X11-unix");
        fim_tests::fsutil::chmod(sockets, 0o1777);
    }
    let number = 5000 + std::process::id() % 1000;
    let (socket, _listener) = HostPath::socket(sockets.join(format!("X{number}")));
    let other = HostPath::file(Path::new("/tmp").join(unique("tmp")), "host tmp\n");
    let script = format!(
        "{}; echo \"${{DISPLAY:-unset}}\"; {}",
        if_there(
            socket.path(),
            &format!("stat -c %i '{}'", socket.path().display())
        ),
        if_there(other.path(), "echo host tmp visible"),
    );
    let display = format!(":{number}");
    let [off, on] = off_then_on(&app, "xorg", &script, &[("DISPLAY", &display)]);
    assert_eq!(off.stdout, "absent\nunset\nabsent\n");
    assert_eq!(
        on.stdout,
        format!("{}\n{display}\nabsent\n", socket.inode()),
        "the host's socket and DISPLAY; the rest of /tmp stays private"
    );
    drop(socket);
    if made_dir {
        let _ = std::fs::remove_dir(sockets);
    }
}

#[test]
fn dbus_user_binds_the_session_bus_socket() {
    let Some(app) = App::new("perm_dbus_user", Who::User) else {
        return;
    };
    let (socket, _listener) = HostPath::socket(app.host_dir("bus").join("socket"));
    let address = format!("unix:path={},guid=0123", socket.path().display());
    let script = format!(
        "{}; echo \"${{DBUS_SESSION_BUS_ADDRESS:-unset}}\"",
        if_there(
            socket.path(),
            &format!("stat -c %i '{}'", socket.path().display())
        )
    );
    let [off, on] = off_then_on(
        &app,
        "dbus_user",
        &script,
        &[("DBUS_SESSION_BUS_ADDRESS", &address)],
    );
    assert_eq!(off.stdout, "absent\nunset\n");
    assert_eq!(on.stdout, format!("{}\n{address}\n", socket.inode()));
}

#[test]
fn audio_binds_the_sound_server_socket_alone_from_the_runtime_directory() {
    let Some(app) = App::new("perm_audio", Who::User) else {
        return;
    };
    let runtime = app.host_dir("run");
    fim_tests::fsutil::chmod(&runtime, 0o700);
    let pulse_dir = app.host_dir("run/pulse");
    let (socket, _listener) = HostPath::socket(pulse_dir.join("native"));
    fim_tests::put(&runtime, "other-secret", b"not for the app\n");
    let script = format!(
        "{}; echo \"${{PULSE_SERVER:-unset}}\"; ls '{}' 2>/dev/null | tr '\\n' ' '; echo",
        if_there(
            socket.path(),
            &format!("stat -c %i '{}'", socket.path().display())
        ),
        runtime.display()
    );
    let runtime_text = runtime.to_string_lossy().into_owned();
    let [off, on] = off_then_on(
        &app,
        "audio",
        &script,
        &[("XDG_RUNTIME_DIR", &runtime_text)],
    );
    assert_eq!(off.stdout, "absent\nunset\n\n");
    assert_eq!(
        on.stdout,
        format!(
            "{}\nunix:{}\npulse \n",
            socket.inode(),
            socket.path().display()
        ),
        "the socket, PULSE_SERVER, and nothing else of the runtime directory"
    );
}
