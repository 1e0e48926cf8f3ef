//! The FUSE backends an image carries (static fuse-overlayfs and unionfs, built by
//! `tools/build-fuse-overlayfs` and `tools/build-unionfs`), run with nothing on the host:
//! an empty environment and a `PATH` that holds nothing. Also the fix the embedded
//! fuse-overlayfs carries for upstream issue #324 (a removed and recreated directory still
//! found its lower entries by name), a damaged embedded backend, and their static linking.

use std::process::Command;

use fim_tests::image::inspect_json;
use fim_tests::sandbox::{App, Who, base_image};
use fim_tests::{checks, run, skip, tempdir, which};

/// The image's embedded tool `name`: offset, stored size.
fn embedded(image: &std::path::Path, name: &str) -> Option<(usize, usize)> {
    let json = inspect_json(image);
    let tool = json["tools"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == name)?;
    Some((
        tool["offset"].as_u64()? as usize,
        tool["size"].as_u64()? as usize,
    ))
}

/// The program a backend runs.
fn program(backend: &str) -> &'static str {
    match backend {
        "overlayfs" => "fuse-overlayfs",
        _ => "unionfs",
    }
}

/// A fresh app whose image embeds the program of `backend`; `None` (after saying why) when
/// the build made none.
fn app_embedding(test: &str, who: Who, backend: &'static str) -> Option<App> {
    let name = program(backend);
    if embedded(&base_image(), name).is_none() {
        skip(&format!(
            "{test} with {backend}: the image embeds no {name} (tools/build did not build dist/{name})"
        ));
        return None;
    }
    Some(App::new(test, who)?.with_overlay(backend))
}

/// `IMAGE fim-exec sh -c SCRIPT` with an empty environment but `PATH=/nonexistent` (and
/// the app's own TMPDIR, HOME and USER): nothing of the host's can be found.
fn bare(app: &App, script: &str) -> fim_tests::Output {
    let mut command = app.command(["fim-exec", "sh", "-c", script]);
    command.env_clear().env("PATH", "/nonexistent");
    command.env("TMPDIR", app.tmp_dir()).env("FIM_DEBUG", "1");
    if let Some(overlay) = app.overlay {
        command.env("FIM_OVERLAY", overlay);
    }
    if app.who == Who::User {
        command.env("HOME", "/");
    }
    run(&mut command)
}

fim_tests::per_backend_fuse!(with_nothing_on_the_host_writes_and_deletions_persist);

fn with_nothing_on_the_host_writes_and_deletions_persist(backend: &'static str, who: Who) {
    let Some(app) = app_embedding("bare_host", who, backend) else {
        return;
    };
    let first = bare(
        &app,
        "echo written > /data/new; rm /data/gone.txt; cat /data/keep.txt",
    );
    first.assert_ok();
    assert_eq!(first.stdout, "keep\n");
    let name = program(backend);
    assert!(
        first.stderr.lines().any(|l| l
            .starts_with(&format!("fim: debug: daemon: {name}: /proc/self/fd/"))
            && l.ends_with("(Embedded)")),
        "{backend}: the embedded {name} runs, not the host's: {}",
        first.stderr
    );
    assert!(
        first.stderr.contains("(Embedded)") && !first.stderr.contains("(Host)"),
        "{}",
        first.stderr
    );
    checks::wait_for_the_session_to_end(&app);
    let second = bare(
        &app,
        "cat /data/new; test -e /data/gone.txt && echo gone-is-back || echo gone-stays-gone",
    );
    second.assert_ok();
    assert_eq!(second.stdout, "written\ngone-stays-gone\n", "{backend}");
}

fim_tests::for_both!(every_launcher_of_a_session_runs_the_bwrap_its_daemon_holds);

/// The daemon makes the embedded bwrap's sealed memfd once; the launcher that started the
/// session and one that joins it while it lingers both run that one, and `FIM_BWRAP` still
/// beats it.
fn every_launcher_of_a_session_runs_the_bwrap_its_daemon_holds(who: Who) {
    const HELD: &str = "fim: debug: bwrap: the one the session's daemon holds";
    if embedded(&base_image(), "bwrap").is_none() {
        skip("held bwrap: the image embeds no bwrap (tools/build did not build dist/bwrap)");
        return;
    }
    let Some(app) = App::new("held_bwrap", who) else {
        return;
    };
    let first = bare(&app, "cat /data/keep.txt");
    first.assert_ok();
    assert_eq!(first.stdout, "keep\n");
    assert!(first.stderr.contains(HELD), "{}", first.stderr);
    // Inside the linger: the same session, its daemon's memfd.
    let second = bare(&app, "echo joined");
    second.assert_ok();
    assert_eq!(second.stdout, "joined\n");
    assert!(second.stderr.contains(HELD), "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains("fim: debug: join the running session ("),
        "the second launch started a session of its own:\n{}\nthe first launch:\n{}\nits session's log:\n{}",
        second.stderr,
        first.stderr,
        checks::session_log(&app)
    );
    let Some(host_bwrap) = which("bwrap") else {
        skip("held bwrap: FIM_BWRAP case: no bwrap on this host");
        return;
    };
    let named = run(app
        .command(["fim-exec", "true"])
        .env("FIM_DEBUG", "1")
        .env("FIM_BWRAP", &host_bwrap));
    named.assert_ok();
    assert!(!named.stderr.contains(HELD), "{}", named.stderr);
    assert!(named.stderr.contains("(Environment)"), "{}", named.stderr);
}

/// Inside one run: a directory of the image removed and made anew, then its old names
/// (a file, a nested file, a nested directory) looked up; prints what is still found.
const RECREATE: &str = "rm -rf /data/replaced; mkdir /data/replaced; \
    echo fresh > /data/replaced/fresh.txt; ls /data/replaced; \
    cat /data/replaced/old.txt 2>/dev/null && echo GHOST-old; \
    cat /data/replaced/sub/deep.txt 2>/dev/null && echo GHOST-deep; \
    test -d /data/replaced/sub && echo GHOST-sub; true";

/// The old names looked up again, from a later run.
const LOOK_AGAIN: &str = "ls /data/replaced; \
    cat /data/replaced/old.txt 2>/dev/null && echo GHOST-old; \
    cat /data/replaced/sub/deep.txt 2>/dev/null && echo GHOST-deep; \
    test -d /data/replaced/sub && echo GHOST-sub; true";

fim_tests::for_both!(a_recreated_directory_shows_none_of_its_old_entries);

fn a_recreated_directory_shows_none_of_its_old_entries(who: Who) {
    let Some(app) = app_embedding("issue_324", who, "overlayfs") else {
        return;
    };
    // Within one session, in one process and then from a relaunch inside the linger
    // (the same mount), and after the session ended (a new mount).
    let same = app.sh(RECREATE);
    same.assert_ok();
    assert_eq!(same.stdout, "fresh.txt\n", "within one run");
    let relaunch = app.sh(LOOK_AGAIN);
    relaunch.assert_ok();
    assert_eq!(checks::session_dirs(&app).len(), 1, "the relaunch joined");
    assert_eq!(
        relaunch.stdout, "fresh.txt\n",
        "a relaunch inside the linger"
    );
    checks::wait_for_the_session_to_end(&app);
    let later = app.sh(LOOK_AGAIN);
    assert_eq!(later.stdout, "fresh.txt\n", "a new session");

    // The same probe against the host's unpatched fuse-overlayfs shows what the fix is for.
    if let Some(host) = which("fuse-overlayfs") {
        let control = App::new("issue_324_host", who).map(|a| a.with_overlay("overlayfs"));
        if let Some(control) = control {
            let out = run(control
                .command(["fim-exec", "sh", "-c", RECREATE])
                .env("FIM_FUSE_OVERLAYFS", &host));
            eprintln!(
                "issue_324: the host's {} {}",
                host.display(),
                if out.stdout.contains("GHOST") {
                    format!("still finds old entries: {:?}", out.stdout)
                } else {
                    "finds no old entries".into()
                }
            );
        }
    }
}

#[test]
fn a_damaged_embedded_fuse_backend_is_refused_by_the_run_and_by_verify() {
    for backend in ["overlayfs", "unionfs"] {
        let Some(app) = app_embedding("damaged_backend", Who::Invoker, backend) else {
            continue;
        };
        let name = program(backend);
        let (offset, size) = embedded(&app.image, name).expect("embedded");
        let mut bytes = std::fs::read(&app.image).expect("read");
        bytes[offset + size / 2] ^= 0x10;
        std::fs::write(&app.image, &bytes).expect("write");
        let out = app.sh("true");
        out.assert_clean_failure("app.flatimage: ");
        assert!(
            out.stderr.contains(&format!("embedded {name}")),
            "{backend}: {}",
            out.stderr
        );
        let verify = fim_tests::fim(["verify".as_ref(), app.image.as_os_str()]);
        assert!(!verify.success(), "fim verify must fail: {verify:?}");
        // The default backend does not need it, but the image is damaged: verify says so.
        assert!(verify.stderr.contains(name), "{}", verify.stderr);
    }
}

#[test]
fn every_embedded_tool_cut_out_of_an_image_is_static() {
    if which("readelf").is_none() {
        skip("static check: readelf (binutils) is not installed");
        return;
    }
    let image = base_image();
    let bytes = std::fs::read(&image).expect("read image");
    let dir = tempdir();
    let json = inspect_json(&image);
    let tools = json["tools"].as_array().expect("tools").clone();
    assert!(!tools.is_empty(), "the image embeds its bwrap at least");
    for tool in tools {
        let name = tool["name"].as_str().expect("name");
        let (offset, size) = embedded(&image, name).expect("listed");
        let program = zstd::decode_all(&bytes[offset..offset + size]).expect("a zstd frame");
        let path = dir.path().join(name);
        std::fs::write(&path, &program).expect("write");
        let headers = run(Command::new("readelf").arg("-lW").arg(&path));
        headers.assert_ok();
        assert!(
            !headers.stdout.contains("INTERP"),
            "{name} asks for an interpreter"
        );
        let dynamic = run(Command::new("readelf").arg("-d").arg(&path));
        assert!(
            dynamic.stdout.contains("There is no dynamic section"),
            "{name} has a dynamic section"
        );
        eprintln!("{name}: static, {} bytes, {size} stored", program.len());
    }
}
