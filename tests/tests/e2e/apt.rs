//! Package managers inside an image: a Debian bookworm minbase root (made once by
//! `tools/make-apt-rootfs`, kept under `.build/`), packed by `fim build`, given the network,
//! then real `apt-get install` against the Debian archive over plain http: as root on each
//! backend; as a created user with subordinate ids (mapped by newuidmap, owners kept); as a
//! created user whose single id cannot switch users (set-id calls made no-ops); the accounts
//! packages add; a commit that leaves apt's caches out; an install killed half way and
//! repaired. Skipped, saying why, without root, debootstrap, uidmap or the archive.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use fim_tests::run::SpawnRetrying;
use fim_tests::sandbox::{App, SUBIDS_START, Who, tools_dir};
use fim_tests::{build_with, run, skip};

const ARCHIVE_HOST: &str = "deb.debian.org";

/// The packed bookworm image, or why there is none here.
fn bookworm_image() -> Result<PathBuf, String> {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let rootfs =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.build/rootfs/bookworm-minbase");
            if !rootfs.join("usr/bin/apt-get").exists() {
                let out = run(Command::new(tools_dir().join("make-apt-rootfs")).arg(&rootfs));
                if !out.success() {
                    return Err(format!("no bookworm root: {}", out.stderr.trim()));
                }
            }
            let dir = std::env::temp_dir().join(format!("fim-tests.apt.{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
            // SAFETY: registers a plain function to run at exit.
            unsafe { libc::atexit(remove_image_dir) };
            let image = dir.join("bookworm.flatimage");
            build_with(&[&rootfs], &image, &["--level", "3"]).assert_ok();
            run(Command::new(&image).args(["fim-perms", "add", "network"])).assert_ok();
            Ok(image)
        })
        .clone()
}

extern "C" fn remove_image_dir() {
    let dir = std::env::temp_dir().join(format!("fim-tests.apt.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(dir);
}

/// The Debian archive answers a plain http request.
fn archive_reachable() -> Result<(), String> {
    let unreachable = |e: &dyn std::fmt::Display| format!("{ARCHIVE_HOST}:80 unreachable: {e}");
    let addr = (ARCHIVE_HOST, 80)
        .to_socket_addrs()
        .map_err(|e| unreachable(&e))?
        .next()
        .ok_or_else(|| unreachable(&"no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| unreachable(&e))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!(
        "HEAD /debian/dists/bookworm/Release HTTP/1.1\r\nHost: {ARCHIVE_HOST}\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| unreachable(&e))?;
    let mut answer = [0u8; 16];
    let n = stream.read(&mut answer).map_err(|e| unreachable(&e))?;
    let line = String::from_utf8_lossy(&answer[..n]);
    if line.starts_with("HTTP/1.") && line.contains(" 200") {
        Ok(())
    } else {
        Err(unreachable(&format!("answered {line:?}")))
    }
}

/// A fresh copy of the bookworm image run by `who`, or `None` after saying why not;
/// `archive`: the test needs the Debian archive.
fn app(test: &str, who: Who, archive: bool) -> Option<App> {
    if archive && let Err(why) = archive_reachable() {
        skip(&format!("{test}: {why}"));
        return None;
    }
    if !fim_tests::is_root() {
        skip(&format!("{test}: needs root (debootstrap, a created user)"));
        return None;
    }
    match bookworm_image() {
        Ok(image) => App::from_image(test, who, &image),
        Err(why) => {
            skip(&format!("{test}: {why}"));
            None
        }
    }
}

fim_tests::for_both!(accounts_change_under_fim_root);

/// groupadd, useradd, chpasswd under fim-root land in the image's own files (in the upper
/// directory) and show in later normal runs; the normal run still knows the user.
fn accounts_change_under_fim_root(who: Who) {
    let Some(app) = app("accounts_change_under_fim_root", who, false) else {
        return;
    };
    app.run([
        "fim-root",
        "sh",
        "-c",
        "groupadd crew && useradd -m -g crew alice && echo alice:secret | chpasswd && passwd -l alice",
    ])
    .assert_ok();
    let upper = app.data_dir().join("upper/etc");
    for file in ["passwd", "group", "shadow"] {
        let text = std::fs::read_to_string(upper.join(file)).unwrap_or_default();
        assert!(
            text.contains("alice") || text.contains("crew"),
            "{file}: {text}"
        );
    }
    let out = app.run([
        "fim-exec",
        "sh",
        "-c",
        "getent passwd alice; id -gn alice; id -u",
    ]);
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("alice:x:") && lines[0].contains("/home/alice"),
        "{lines:?}"
    );
    assert_eq!(lines[1], "crew");
    assert_eq!(
        lines[2],
        app.uid.to_string(),
        "a normal run is still the user"
    );
    // The user's own line is still merged in.
    let me = app.run(["fim-exec", "sh", "-c", "whoami; echo ~"]);
    me.assert_ok();
    assert_eq!(me.stdout.lines().count(), 2, "{}", me.stdout);
}

/// As root: packages that add system users install; the users exist in a normal run; dpkg
/// is content; then a commit leaving apt's caches out holds no .deb and no list, and the
/// image still runs jq, root's files root's, once the data directory is gone.
#[test]
fn root_installs_packages_then_commits_without_the_caches() {
    let test = "root_installs_packages";
    let Some(app) = app(test, Who::Invoker, true) else {
        return;
    };
    app.run(["fim-root", "apt-get", "update", "-q"]).assert_ok();
    app.run([
        "fim-root",
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "dbus",
        "openssh-server",
        "jq",
    ])
    .assert_ok();
    let users = app.run(["fim-exec", "getent", "passwd", "messagebus", "sshd"]);
    users.assert_ok();
    assert_eq!(users.stdout.lines().count(), 2, "{}", users.stdout);
    let audit = app.run(["fim-exec", "dpkg", "--audit"]);
    audit.assert_ok();
    assert_eq!(audit.stdout.trim(), "", "dpkg --audit");

    let upper = app.data_dir().join("upper");
    assert!(has_match(&upper.join("var/cache/apt/archives"), ".deb"));
    commit_without_apt_caches(&app);
    let extracted = app.dir.path().join("layer");
    app.run(["fim-layer", "extract", "1", &extracted.to_string_lossy()])
        .assert_ok();
    assert!(extracted.join("usr/bin/jq").exists(), "jq is in the layer");
    assert!(!has_match(
        &extracted.join("var/cache/apt/archives"),
        ".deb"
    ));
    let lists = std::fs::read_dir(extracted.join("var/lib/apt/lists"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(lists, 0, "no apt list in the layer");

    std::fs::remove_dir_all(app.data_dir()).expect("remove the data directory");
    let out = app.run([
        "fim-exec",
        "sh",
        "-c",
        "jq --version; stat -c %u:%g /usr/bin/jq",
    ]);
    out.assert_ok();
    assert!(out.stdout.starts_with("jq-1."), "{}", out.stdout);
    assert_eq!(
        out.stdout.lines().nth(1),
        Some("0:0"),
        "root's files are root's"
    );
}

/// As root on the FUSE backends: packages that add system users install, the users exist
/// in a normal run and dpkg is content, as on the default backend.
#[test]
fn root_installs_packages_on_overlayfs() {
    root_installs_packages_on("overlayfs");
}

#[test]
fn root_installs_packages_on_unionfs() {
    root_installs_packages_on("unionfs");
}

fn root_installs_packages_on(backend: &'static str) {
    let test = format!("root_installs_packages_on_{backend}");
    let program = if backend == "unionfs" {
        "unionfs"
    } else {
        "fuse-overlayfs"
    };
    if !fim_tests::dist_dir().join(program).is_file() && fim_tests::which(program).is_none() {
        skip(&format!("{test}: {program} is neither built nor installed"));
        return;
    }
    let Some(app) = app(&test, Who::Invoker, true) else {
        return;
    };
    let app = app.with_overlay(backend);
    let out = update_and_install(&app, "dbus openssh-server");
    out.assert_ok();
    assert!(
        out.stderr.contains(&format!("daemon: {program}: ")),
        "the run was on {backend}: {}",
        out.stderr
    );
    let users = app.run(["fim-exec", "getent", "passwd", "messagebus", "sshd"]);
    users.assert_ok();
    assert_eq!(users.stdout.lines().count(), 2, "{}", users.stdout);
    let audit = app.run(["fim-exec", "dpkg", "--audit"]);
    audit.assert_ok();
    assert_eq!(audit.stdout.trim(), "", "dpkg --audit");
}

/// A created user with subordinate ids: apt's own _apt sandbox works with no apt option,
/// files keep their owners (root's, _apt's, messagebus's) inside, on the host they are the
/// subordinate ids', and a commit records the ids inside, as a later run as root sees them.
#[test]
fn user_with_subordinate_ids_installs_with_owners_kept() {
    let test = "user_with_subordinate_ids";
    let Some(app) = app(test, Who::UserWithSubids, true) else {
        return;
    };
    let out = update_and_install(&app, "jq dbus");
    out.assert_ok();
    assert!(
        out.stderr.contains("subordinate ids exist"),
        "FIM_DEBUG names the mode: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("no-ops"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("APT::Sandbox") && !out.stdout.contains("APT::Sandbox"),
        "apt needed no option"
    );
    let jq = app.run(["fim-exec", "jq", "--version"]);
    jq.assert_ok();
    assert!(jq.stdout.starts_with("jq-1."), "{}", jq.stdout);
    let owners = app.run([
        "fim-root",
        "stat",
        "-c",
        "%U:%G %n",
        "/usr/bin/jq",
        "/var/cache/apt/archives/partial",
        "/usr/lib/dbus-1.0/dbus-daemon-launch-helper",
    ]);
    owners.assert_ok();
    assert_eq!(
        owners.stdout,
        "root:root /usr/bin/jq\n\
         _apt:root /var/cache/apt/archives/partial\n\
         root:messagebus /usr/lib/dbus-1.0/dbus-daemon-launch-helper\n"
    );
    let ids = app.run([
        "fim-root",
        "stat",
        "-c",
        "%u %g",
        "/var/cache/apt/archives/partial",
        "/usr/lib/dbus-1.0/dbus-daemon-launch-helper",
    ]);
    ids.assert_ok();
    let ids: Vec<(u32, u32)> = ids
        .stdout
        .lines()
        .map(|l| {
            let (u, g) = l.split_once(' ').expect("two ids");
            (u.parse().expect("uid"), g.parse().expect("gid"))
        })
        .collect();
    let (apt_uid, bus_gid) = (ids[0].0, ids[1].1);
    // On the host, in the upper directory, they are the subordinate ids.
    let upper = app.data_dir().join("upper");
    let host = |path: &str| {
        let meta = std::fs::symlink_metadata(upper.join(path)).expect("in the upper directory");
        (
            std::os::unix::fs::MetadataExt::uid(&meta),
            std::os::unix::fs::MetadataExt::gid(&meta),
        )
    };
    assert_eq!(
        host("usr/lib/dbus-1.0/dbus-daemon-launch-helper"),
        (app.uid, SUBIDS_START + bus_gid - 1),
        "root is the user, messagebus a subordinate id"
    );
    assert_eq!(host("usr/bin/jq"), (app.uid, app.gid));
    if upper.join("var/cache/apt/archives/partial").exists() {
        assert_eq!(
            host("var/cache/apt/archives/partial").0,
            SUBIDS_START + apt_uid - 1
        );
    }

    commit_without_apt_caches(&app);
    assert_eq!(
        std::fs::read_dir(&upper).map(|d| d.count()).unwrap_or(0),
        0,
        "the committed upper directory is emptied, subordinate ids' files too"
    );
    // The layer holds the ids inside: root sees them so after the user's commit.
    let root_data = app.dir.path().join("root-data");
    let out = run(Command::new(&app.image)
        .args([
            "fim-exec",
            "stat",
            "-c",
            "%U:%G",
            "/usr/bin/jq",
            "/usr/lib/dbus-1.0/dbus-daemon-launch-helper",
        ])
        .env("FIM_DIR_DATA", &root_data)
        .env("TMPDIR", app.tmp_dir()));
    out.assert_ok();
    assert_eq!(
        out.stdout, "root:root\nroot:messagebus\n",
        "as root after the commit"
    );
}

/// An install killed with SIGKILL while dpkg unpacks: apt then says dpkg was interrupted,
/// `dpkg --configure -a` repairs it, and the install completes with dpkg content.
#[test]
fn an_install_killed_half_way_is_repaired_by_dpkg_configure() {
    let test = "install_killed_half_way";
    let Some(app) = app(test, Who::Invoker, true) else {
        return;
    };
    app.run(["fim-root", "apt-get", "update", "-q"]).assert_ok();
    app.run([
        "fim-root",
        "apt-get",
        "install",
        "-y",
        "-q",
        "--download-only",
        "python3",
    ])
    .assert_ok();
    let mut install = app.command(["fim-root", "apt-get", "install", "-y", "-q", "python3"]);
    install
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = install.spawn_retrying();
    // dpkg journals each step in /var/lib/dpkg/updates as a numbered file (written as
    // tmp.i, then renamed): kill once one is there.
    let updates = app.data_dir().join("upper/var/lib/dpkg/updates");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let begun = loop {
        let journaled = std::fs::read_dir(&updates).is_ok_and(|d| {
            d.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
            })
        });
        if journaled || std::time::Instant::now() > deadline {
            break journaled;
        }
        if child.try_wait().ok().flatten().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(begun, "dpkg began before the install ended");
    let again = app.run(["fim-root", "apt-get", "install", "-y", "-q", "python3"]);
    assert!(
        !again.success() && again.stderr.contains("dpkg --configure -a"),
        "apt says dpkg was interrupted: {}",
        again.stderr
    );
    app.run(["fim-root", "dpkg", "--configure", "-a"])
        .assert_ok();
    app.run(["fim-root", "apt-get", "install", "-y", "-q", "python3"])
        .assert_ok();
    let audit = app.run(["fim-exec", "dpkg", "--audit"]);
    audit.assert_ok();
    assert_eq!(audit.stdout.trim(), "", "dpkg --audit");
    let python = app.run(["fim-exec", "python3", "-c", "print(6 * 7)"]);
    python.assert_ok();
    assert_eq!(python.stdout, "42\n");
}

/// A created user without subordinate ids: apt's _apt sandbox and dpkg's chowns complete
/// because the set-id and chown calls are made no-ops; jq then runs in a normal run.
#[test]
fn user_without_subordinate_ids_installs_through_noop_ids() {
    let test = "user_without_subordinate_ids";
    let Some(app) = app(test, Who::User, true) else {
        return;
    };
    let out = update_and_install(&app, "jq");
    out.assert_ok();
    assert!(
        out.stderr.contains("set-id and chown calls are no-ops"),
        "FIM_DEBUG names the mode: {}",
        out.stderr
    );
    let jq = app.run(["fim-exec", "jq", "--version"]);
    jq.assert_ok();
    assert!(jq.stdout.starts_with("jq-1."), "{}", jq.stdout);

    // Committed by the user, the files are root's, as a later run as root expects.
    commit_without_apt_caches(&app);
    let root_data = app.dir.path().join("root-data");
    let out = run(Command::new(&app.image)
        .args(["fim-exec", "stat", "-c", "%u:%g %U", "/usr/bin/jq"])
        .env("FIM_DIR_DATA", &root_data)
        .env("TMPDIR", app.tmp_dir()));
    out.assert_ok();
    assert_eq!(
        out.stdout.trim(),
        "0:0 root",
        "as root after the user's commit"
    );
}

/// The two modes without a package manager or the network, on the base image: a user
/// without subordinate ids on a kernel without seccomp filters is refused in one line that
/// says what to do, with nothing in the upper directory touched; a user with subordinate
/// ids needs no filter there, and a chown to another id is real (a subordinate id's on the
/// host).
#[test]
fn fim_root_modes_on_a_kernel_without_seccomp() {
    let Some(app) = App::new("no_seccomp", Who::User) else {
        return;
    };
    app.run(["fim-exec", "sh", "-c", "echo kept > /data/kept"])
        .assert_ok();
    let out = run(app
        .command(["fim-root", "true"])
        .env("FIM_TEST_NO_SECCOMP", "1"));
    out.assert_clean_failure("app.flatimage: fim-root: only your own id exists");
    assert!(
        out.stderr.contains("usermod --add-subuids"),
        "{}",
        out.stderr
    );
    let kept = std::fs::read_to_string(app.data_dir().join("upper/data/kept"));
    assert_eq!(kept.ok().as_deref(), Some("kept\n"), "nothing lost");

    let Some(app) = App::new("no_seccomp_subids", Who::UserWithSubids) else {
        return;
    };
    let out = run(app
        .command([
            "fim-root",
            "sh",
            "-c",
            "touch /data/f && chown 42:43 /data/f && stat -c %u:%g /data/f && id -u",
        ])
        .env("FIM_TEST_NO_SECCOMP", "1")
        .env("FIM_DEBUG", "1"));
    out.assert_ok();
    assert_eq!(out.stdout, "42:43\n0\n");
    assert!(
        out.stderr.contains("with your subordinate ids"),
        "{}",
        out.stderr
    );
    let meta = std::fs::metadata(app.data_dir().join("upper/data/f")).expect("upper file");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.uid(), meta.gid()),
        (SUBIDS_START + 41, SUBIDS_START + 42)
    );
}

/// `fim-root apt-get update`, then `apt-get install` of `packages` (no recommends), with
/// `FIM_DEBUG=1` so the output names the backend and the id mode.
fn update_and_install(app: &App, packages: &str) -> fim_tests::Output {
    let script =
        format!("apt-get update -q && apt-get install -y -q --no-install-recommends {packages}");
    let mut install = app.command(["fim-root", "sh", "-c", &script]);
    install.env("FIM_DEBUG", "1");
    run(&mut install)
}

/// Whether a directory holds a file whose name ends with `suffix`.
fn has_match(dir: &Path, suffix: &str) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(suffix))
    })
}

/// `fim-layer commit`, leaving out the downloaded packages and package lists, as a
/// packager ships an image.
fn commit_without_apt_caches(app: &App) {
    app.run([
        "fim-layer",
        "commit",
        "--exclude",
        "/var/cache/apt/archives/*.deb",
        "--exclude",
        "/var/lib/apt/lists/*",
    ])
    .assert_ok();
}
