//! Package managers inside an image: a Debian bookworm minbase root (made once by
//! `tools/make-apt-rootfs`, kept under `.build/`), packed by `fim build`, given the network,
//! then real `apt-get install` against the Debian archive over plain http, as root and as a
//! created user whose single id cannot switch users (set-id calls made no-ops); the accounts
//! packages add, and a commit that leaves apt's caches out. Skipped, saying why, without
//! root, debootstrap or the archive.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use fim_tests::sandbox::{App, Who, tools_dir};
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

/// A created user without subordinate ids: apt's _apt sandbox and dpkg's chowns complete
/// because the set-id and chown calls are made no-ops; jq then runs in a normal run.
#[test]
fn user_without_subordinate_ids_installs_through_noop_ids() {
    let test = "user_without_subordinate_ids";
    let Some(app) = app(test, Who::User, true) else {
        return;
    };
    let mut install = app.command([
        "fim-root",
        "sh",
        "-c",
        "apt-get update -q && apt-get install -y -q --no-install-recommends jq",
    ]);
    install.env("FIM_DEBUG", "1");
    let out = run(&mut install);
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
