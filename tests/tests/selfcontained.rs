//! Self-contained images: the static bwrap an image embeds runs the app when the host has
//! none, `FIM_BWRAP` overrides it, and both it and the launcher are static executables.

use std::path::Path;
use std::process::Command;

use fim_tests::image::inspect_json;
use fim_tests::sandbox::{App, Who, base_image};
use fim_tests::{build_with, run, skip, tempdir, which};

/// A directory holding nothing: a `PATH` without bwrap or any other host program.
fn empty_path(app: &App) -> std::path::PathBuf {
    let dir = app.dir.path().join("empty-bin");
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

#[test]
fn with_no_bwrap_in_path_the_embedded_one_runs_the_app_and_fim_bwrap_overrides_it() {
    let Some(app) = App::new("embedded_bwrap", Who::Invoker) else {
        return;
    };
    let bin = empty_path(&app);
    let out = run(app
        .command(["fim-exec", "echo", "ok"])
        .env("PATH", &bin)
        .env("FIM_DEBUG", "1"));
    out.assert_ok();
    assert_eq!(out.stdout, "ok\n");
    assert!(out.stderr.contains("(Embedded)"), "{}", out.stderr);

    let Some(host) = which("bwrap") else {
        skip("FIM_BWRAP override: the host has no bwrap");
        return;
    };
    let out = run(app
        .command(["fim-exec", "echo", "ok"])
        .env("FIM_BWRAP", &host)
        .env("FIM_DEBUG", "1"));
    out.assert_ok();
    assert!(
        out.stderr
            .contains(&format!("bwrap: {} (Environment)", host.display())),
        "{}",
        out.stderr
    );
    let out = run(app
        .command(["fim-exec", "true"])
        .env("FIM_BWRAP", app.dir.path().join("no-such-bwrap")));
    assert_eq!(out.code(), Some(125), "{out:?}");
}

#[test]
fn the_user_runs_through_the_embedded_bwrap_too() {
    let Some(app) = App::new("embedded_bwrap_user", Who::User) else {
        return;
    };
    let bin = empty_path(&app);
    let out = run(app.command(["fim-exec", "id", "-u"]).env("PATH", &bin));
    out.assert_ok();
    assert_eq!(out.stdout.trim(), app.uid.to_string());
}

/// `readelf` finds neither a program interpreter nor a dynamic section in `file`.
fn assert_static(file: &Path, what: &str) {
    let headers = run(Command::new("readelf").arg("-lW").arg(file));
    headers.assert_ok();
    assert!(
        !headers.stdout.contains("INTERP"),
        "{what} asks for an interpreter"
    );
    let dynamic = run(Command::new("readelf").arg("-d").arg(file));
    assert!(
        dynamic.stdout.contains("There is no dynamic section"),
        "{what} has a dynamic section: {}",
        dynamic.stdout
    );
}

#[test]
fn the_launcher_and_the_embedded_bwrap_are_static() {
    if which("readelf").is_none() {
        skip("static check: readelf (binutils) is not installed");
        return;
    }
    let image = base_image();
    let json = inspect_json(&image);
    let bytes = std::fs::read(&image).expect("read image");
    let dir = tempdir();
    let number = |v: &serde_json::Value, key: &str| {
        v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}")) as usize
    };
    let launcher = &bytes[..number(&json["launcher"], "size")];
    std::fs::write(dir.path().join("launcher"), launcher).expect("write");
    assert_static(&dir.path().join("launcher"), "the launcher");

    let tools = json["tools"]
        .as_array()
        .expect("tools in fim inspect --json");
    let bwrap = tools
        .iter()
        .find(|t| t["name"] == "bwrap")
        .expect("an embedded bwrap");
    let (offset, size) = (number(bwrap, "offset"), number(bwrap, "size"));
    let path = dir.path().join("bwrap");
    std::fs::write(&path, &bytes[offset..offset + size]).expect("write");
    assert_static(&path, "the embedded bwrap");

    let deps = run(Command::new(&image).args(["fim-version", "deps"]));
    deps.assert_ok();
    assert!(
        deps.stdout.starts_with("bwrap: bubblewrap 0.") && deps.stdout.contains("(embedded"),
        "{}",
        deps.stdout
    );
}

#[test]
fn an_image_without_tools_needs_the_hosts_bwrap_and_says_so() {
    let Some(app) = App::new("no_tools", Who::Invoker) else {
        return;
    };
    let rootfs = app.dir.path().join("rootfs");
    run(Command::new(fim_tests::sandbox::tools_dir().join("make-test-rootfs")).arg(&rootfs))
        .assert_ok();
    build_with(
        &[&rootfs],
        &app.image,
        &["--level", "3", "--no-embed-tools"],
    );
    let deps = app.run(["fim-version", "deps"]);
    assert_eq!(
        deps.stdout,
        "embedded tools: none (the host's bwrap is used)\n"
    );
    app.sh("true").assert_ok();
    let bin = empty_path(&app);
    let out = run(app.command(["fim-exec", "true"]).env("PATH", &bin));
    out.assert_clean_failure("app.flatimage: bubblewrap is not available");
}

#[test]
fn a_damaged_embedded_bwrap_is_refused() {
    let Some(app) = App::new("damaged_bwrap", Who::Invoker) else {
        return;
    };
    let json = inspect_json(&app.image);
    let bwrap = json["tools"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "bwrap"))
        .expect("an embedded bwrap")
        .clone();
    let at = bwrap["offset"].as_u64().expect("offset") as usize + 1000;
    let mut bytes = std::fs::read(&app.image).expect("read");
    bytes[at] ^= 0x40;
    std::fs::write(&app.image, &bytes).expect("write");
    let out = app.sh("true");
    out.assert_clean_failure("app.flatimage: ");
    assert!(out.stderr.contains("embedded bwrap"), "{}", out.stderr);
    let verify = fim_tests::fim(["verify".as_ref(), app.image.as_os_str()]);
    assert!(!verify.success(), "fim verify must fail");
}
