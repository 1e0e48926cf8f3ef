//! The three overlay backends end to end: the kernel overlay (`bwrap`), `fuse-overlayfs`
//! (`overlayfs`) and `unionfs -o cow` (`unionfs`), each run for real over the image's
//! FUSE layers, as whoever runs the tests and as an unprivileged user; switching between
//! them on one upper directory; how one is chosen; and the fallback when the kernel
//! refuses its overlay.

use std::path::{Path, PathBuf};

use fim_tests::checks;
use fim_tests::sandbox::{App, Who, base_image_without_tools};
use fim_tests::{skip, tempdir, which};

/// What the test apps change in `/data` of the base image: a new file, a copy-up, a
/// deleted layer file, a layer directory deleted and made anew, a renamed directory, a
/// chmod, a symlink and a hard link.
const CHANGES: &str = "set -e; cd /data; echo new > new.txt; echo more >> keep.txt; \
    rm gone.txt; rm -rf replaced; mkdir replaced; echo fresh > replaced/fresh.txt; \
    mv moved renamed; chmod 600 mode.txt; ln -s keep.txt link; ln new.txt hard";

/// Prints `/data` as one line per entry: path, then `/` for a directory, the target of a
/// symlink, or mode, link count and content (newlines as `|`) of a file.
const MANIFEST: &str = r#"cd /data && find . | sort | while read -r p; do
    if [ -L "$p" ]; then echo "$p -> $(readlink "$p")";
    elif [ -d "$p" ]; then echo "$p/";
    else echo "$p $(stat -c %a:%h "$p") $(tr '\n' '|' < "$p")"; fi; done"#;

/// The manifest after [`CHANGES`], whatever the backend.
const EXPECTED: &str = "./
./hard 644:2 new|
./keep.txt 644:1 keep|more|
./link -> keep.txt
./mode.txt 600:1 mode|
./new.txt 644:2 new|
./renamed/
./renamed/m.txt 644:1 m|
./replaced/
./replaced/fresh.txt 644:1 fresh|
";

// Each check runs for every backend, as the invoker and as the unprivileged user.
fim_tests::per_backend!(
    every_kind_of_change_persists,
    every_kind_of_change_persists_through_the_casefold_view,
    ten_concurrent_instances_share_one_view,
    sigkill_of_the_launcher_leaves_nothing_behind,
    layer_xattrs_reach_the_app_and_an_image_without_any_declines_them,
);

/// Changes made under the first backend, read under the second, for every ordered pair.
macro_rules! per_pair {
    ($($name:ident: $a:literal then $b:literal),* $(,)?) => {
        mod changes_made_under_one_backend_appear_under_another {$(
            mod $name {
                use fim_tests::sandbox::Who;
                #[test]
                fn as_invoker() { super::super::switch($a, $b, Who::Invoker) }
                #[test]
                fn as_unprivileged_user() { super::super::switch($a, $b, Who::User) }
            }
        )*}
    };
}

per_pair!(
    bwrap_then_overlayfs: "bwrap" then "overlayfs",
    bwrap_then_unionfs: "bwrap" then "unionfs",
    overlayfs_then_bwrap: "overlayfs" then "bwrap",
    overlayfs_then_unionfs: "overlayfs" then "unionfs",
    unionfs_then_bwrap: "unionfs" then "bwrap",
    unionfs_then_overlayfs: "unionfs" then "overlayfs",
);

/// The host program a backend needs, when it is not installed.
fn missing_tool(backend: &str) -> Option<&'static str> {
    let program = match backend {
        "overlayfs" => "fuse-overlayfs",
        "unionfs" => "unionfs",
        _ => return None,
    };
    which(program).is_none().then_some(program)
}

/// A fresh app run with `backend`; `None` (after saying why) when it cannot run here.
fn app(test: &str, who: Who, backend: &'static str) -> Option<App> {
    if let Some(program) = missing_tool(backend) {
        skip(&format!(
            "{test} with {backend}: {program} is not installed"
        ));
        return None;
    }
    Some(App::new(test, who)?.with_overlay(backend))
}

/// The base image with an xattr on `/data/keep.txt`, built once.
fn image_with_an_xattr() -> PathBuf {
    static IMAGE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            fim_tests::sandbox::base_image_with(
                "xattr.flatimage",
                &fim_tests::sandbox::Extra {
                    xattrs: &[("data/keep.txt", "user.fim", "stored")],
                    ..Default::default()
                },
            )
        })
        .clone()
}

/// An xattr stored in a layer reaches the app through the writable view. An image
/// without any xattr declines xattr requests for good (the kernel overlay would otherwise
/// ask the layers for one on every lookup): listing an image file's xattrs says "not
/// supported", and copying with `cp -a` and setting an xattr (on the copy-up) still work.
fn layer_xattrs_reach_the_app_and_an_image_without_any_declines_them(
    backend: &'static str,
    who: Who,
) {
    let Some(app) = app("xattrs_without", who, backend) else {
        return;
    };
    if app.sh("command -v setfattr && command -v getfattr").code() != Some(0) {
        skip(&format!(
            "xattrs with {backend}: attr is not installed on the host"
        ));
        return;
    }
    let out =
        app.sh("getfattr -d /data/keep.txt; cp -a /data/keep.txt /data/copy && cat /data/copy");
    assert_eq!(out.stdout, "keep\n", "{backend}: {}", out.stderr);
    assert!(
        out.stderr.contains("not supported"),
        "{backend}: {}",
        out.stderr
    );
    let unionfs_without_xattrs = backend == "unionfs"
        && app
            .sh("setfattr -n user.x -v 1 /data/copy")
            .stderr
            .contains("not supported");

    let Some(app) = App::from_image("xattrs_with", who, &image_with_an_xattr()) else {
        return;
    };
    let app = app.with_overlay(backend);
    let get = app.sh("getfattr -n user.fim --only-values /data/keep.txt");
    if unionfs_without_xattrs {
        // Debian's unionfs-fuse 1.0 is built without xattr support (see changes_persist).
        assert!(get.stderr.contains("not supported"), "{}", get.stderr);
        return;
    }
    get.assert_ok();
    assert_eq!(get.stdout, "stored", "{backend}: the layer's xattr");
}

fn manifest(app: &App) -> String {
    let out = app.sh(MANIFEST);
    out.assert_ok();
    out.stdout
}

fn every_kind_of_change_persists(backend: &'static str, who: Who) {
    if let Some(app) = app("every_change", who, backend) {
        changes_persist(&app, backend);
    }
}

/// The same changes made and read through the casefold view (by their real names): it
/// passes every kind of change through.
fn every_kind_of_change_persists_through_the_casefold_view(backend: &'static str, who: Who) {
    if let Some(app) = app("every_change_casefold", who, backend) {
        changes_persist(&app.with_env("FIM_CASEFOLD", "1"), backend);
    }
}

fn changes_persist(app: &App, backend: &str) {
    app.sh(CHANGES).assert_ok();
    if backend == "unionfs" {
        // unionfs-fuse (libfuse 2, one inode per path) shows the other names of a new hard
        // link with the old link count until the kernel's attribute cache expires (1 s).
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(manifest(app), EXPECTED, "{backend}: the next run's view");

    if app.sh("command -v setfattr && command -v getfattr").code() != Some(0) {
        skip(&format!(
            "xattrs with {backend}: attr is not installed on the host"
        ));
        return;
    }
    let set = app.sh("setfattr -n user.fim -v yes /data/new.txt");
    if backend == "unionfs" && set.code() != Some(0) {
        // Debian's unionfs-fuse 1.0 is built without xattr support: it says so rather than
        // losing them. The embedded build (tools/build-unionfs) has it.
        assert!(set.stderr.contains("not supported"), "{}", set.stderr);
        return;
    }
    set.assert_ok();
    let get = app.sh("getfattr -n user.fim --only-values /data/hard");
    get.assert_ok();
    assert_eq!(get.stdout, "yes", "{backend}: the xattr persists");
}

fn ten_concurrent_instances_share_one_view(backend: &'static str, who: Who) {
    if let Some(app) = app("concurrent", who, backend) {
        checks::ten_instances_share_one_view(&app);
    }
}

fn sigkill_of_the_launcher_leaves_nothing_behind(backend: &'static str, who: Who) {
    if let Some(app) = app("sigkill", who, backend) {
        checks::sigkill_of_the_launcher_leaves_nothing_behind(&app);
    }
}

fn switch(first: &'static str, second: &'static str, who: Who) {
    let Some(mut app) = app("switch", who, first) else {
        return;
    };
    if let Some(program) = missing_tool(second) {
        skip(&format!("switch to {second}: {program} is not installed"));
        return;
    }
    app.sh(CHANGES).assert_ok();
    // At once: the first backend's session is still lingering and must make way.
    app.overlay = Some(second);
    let out = app.sh(&format!("echo $FIM_OVERLAY; {MANIFEST}"));
    out.assert_ok();
    assert_eq!(
        out.stdout,
        format!("{second}\n{EXPECTED}"),
        "{first} then {second}"
    );
    // And back: nothing was lost on the way.
    app.overlay = Some(first);
    assert_eq!(manifest(&app), EXPECTED, "{first}, {second}, then {first}");
}

/// `FIM_OVERLAY` inside and the file system type of `/`.
fn backend_in_use(app: &App) -> String {
    let out = app.sh("echo $FIM_OVERLAY $(awk '$2 == \"/\" { print $3 }' /proc/mounts)");
    out.assert_ok();
    out.stdout.trim().to_string()
}

#[test]
fn the_environment_beats_the_stored_byte_which_beats_the_default() {
    let Some(mut app) = App::new("selection", Who::Invoker) else {
        return;
    };
    if let Some(program) = missing_tool("unionfs").or(missing_tool("overlayfs")) {
        skip(&format!("selection: {program} is not installed"));
        return;
    }
    assert_eq!(backend_in_use(&app), "bwrap overlay", "the default");
    app.run(["fim-overlay", "set", "unionfs"]).assert_ok();
    assert_eq!(
        backend_in_use(&app),
        "unionfs fuse.unionfs",
        "the stored byte"
    );
    app.overlay = Some("overlayfs");
    assert_eq!(
        backend_in_use(&app),
        "overlayfs fuse.fuse-overlayfs",
        "FIM_OVERLAY"
    );
}

/// A directory holding only a link to the host's `bwrap` (and `extra` tools): a `PATH`
/// without the FUSE backends.
fn path_with_only(dir: &Path, extra: &[&str]) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    for tool in ["bwrap"].iter().chain(extra) {
        let host = which(tool).unwrap_or_else(|| panic!("{tool} is installed"));
        std::os::unix::fs::symlink(host, bin.join(tool)).expect("symlink");
    }
    bin
}

#[test]
fn a_missing_backend_program_is_named_with_its_package() {
    let Some(app) = App::from_image("missing_backend", Who::Invoker, &base_image_without_tools())
    else {
        return;
    };
    let dir = tempdir();
    let bin = path_with_only(dir.path(), &[]);
    for (backend, package) in [("overlayfs", "fuse-overlayfs"), ("unionfs", "unionfs-fuse")] {
        let out = fim_tests::run(
            app.command(["fim-exec", "true"])
                .env("PATH", &bin)
                .env("FIM_OVERLAY", backend),
        );
        out.assert_clean_failure("app.flatimage: ");
        assert!(
            out.stderr
                .contains(&format!("install the {package} package")),
            "{backend}: {}",
            out.stderr
        );
    }
    // The default needs neither.
    let out = fim_tests::run(app.command(["fim-exec", "echo", "ok"]).env("PATH", &bin));
    out.assert_ok();
    assert_eq!(out.stdout, "ok\n");
}

#[test]
fn a_refused_kernel_overlay_falls_back_to_the_installed_fuse_backend() {
    if let Some(program) = missing_tool("unionfs").or(missing_tool("overlayfs")) {
        skip(&format!("fallback: {program} is not installed"));
        return;
    }
    let dir = tempdir();
    let only_unionfs = path_with_only(&dir.path().join("u"), &["unionfs"]);
    let nothing = path_with_only(&dir.path().join("n"), &[]);
    let host_path = std::env::var_os("PATH").unwrap_or_default();
    for (path, used, package) in [
        (host_path.as_os_str(), "overlayfs", "fuse-overlayfs"),
        (only_unionfs.as_os_str(), "unionfs", "unionfs-fuse"),
    ] {
        let Some(app) = App::from_image("fallback", Who::Invoker, &base_image_without_tools())
        else {
            return;
        };
        // Written through the kernel overlay, read through the fallback.
        app.sh("echo kept > /data/before; rm /data/gone.txt")
            .assert_ok();
        checks::wait_for_the_session_to_end(&app);
        let out = fim_tests::run(
            app.command([
                "fim-exec",
                "sh",
                "-c",
                "echo $FIM_OVERLAY; cat /data/before /data/gone.txt",
            ])
            .env("PATH", path)
            .env("FIM_TEST_REFUSE_KERNEL_OVERLAY", "1"),
        );
        assert_eq!(out.stdout, format!("{used}\nkept\n"));
        assert_eq!(
            out.stderr,
            format!(
                "fim: overlayfs mount refused (EPERM), using {package}\n\
                 cat: can't open '/data/gone.txt': No such file or directory\n"
            )
        );
    }
    let Some(app) = App::from_image("fallback", Who::Invoker, &base_image_without_tools()) else {
        return;
    };
    let out = fim_tests::run(
        app.command(["fim-exec", "true"])
            .env("PATH", &nothing)
            .env("FIM_TEST_REFUSE_KERNEL_OVERLAY", "1"),
    );
    out.assert_clean_failure("app.flatimage: ");
    assert!(
        out.stderr.contains("refused the overlay mount (EPERM)")
            && out
                .stderr
                .contains("install fuse-overlayfs or unionfs-fuse"),
        "{}",
        out.stderr
    );
    // An image that embeds fuse-overlayfs falls back to it with nothing installed.
    if !fim_tests::dist_dir().join("fuse-overlayfs").is_file() {
        skip("fallback to the embedded fuse-overlayfs: tools/build made none");
        return;
    }
    let Some(app) = App::new("fallback_embedded", Who::Invoker) else {
        return;
    };
    let out = fim_tests::run(
        app.command(["fim-exec", "sh", "-c", "echo $FIM_OVERLAY"])
            .env("PATH", &nothing)
            .env("FIM_TEST_REFUSE_KERNEL_OVERLAY", "1"),
    );
    out.assert_ok();
    assert_eq!(out.stdout, "overlayfs\n");
    assert!(
        out.stderr.contains("using fuse-overlayfs"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_second_backend_joins_the_running_one_and_says_so() {
    let Some(app) = app("join_running", Who::Invoker, "overlayfs") else {
        return;
    };
    if let Some(program) = missing_tool("unionfs") {
        skip(&format!("join_running: {program} is not installed"));
        return;
    }
    let mut running = app.command(["fim-exec", "sh", "-c", "touch /data/up; sleep 30"]);
    let mut running = fim_tests::run::SpawnRetrying::spawn_retrying(&mut running);
    checks::wait_for(
        || app.data_dir().join("upper/data/up").exists(),
        "the first instance",
    );
    let out = fim_tests::run(
        app.command(["fim-exec", "sh", "-c", "echo $FIM_OVERLAY"])
            .env("FIM_OVERLAY", "unionfs"),
    );
    let _ = running.kill();
    let _ = running.wait();
    out.assert_ok();
    assert_eq!(out.stdout, "overlayfs\n", "one backend per upper directory");
    assert_eq!(
        out.stderr,
        "fim: 1 running instance(s) of this image use the overlayfs overlay; unionfs applies once they have exited\n"
    );
}

#[test]
fn a_fuse_backend_named_by_its_variable_beats_path_and_is_logged() {
    for (backend, program, variable) in [
        ("overlayfs", "fuse-overlayfs", "FIM_FUSE_OVERLAYFS"),
        ("unionfs", "unionfs", "FIM_UNIONFS"),
    ] {
        let Some(host) = which(program) else {
            skip(&format!("{variable}: {program} is not installed"));
            continue;
        };
        let Some(app) = App::new("backend_variable", Who::Invoker) else {
            return;
        };
        // PATH holds bwrap only: the variable is the one place the backend can come from.
        let dir = tempdir();
        let bin = path_with_only(dir.path(), &[]);
        let out = fim_tests::run(
            app.command(["fim-exec", "sh", "-c", "echo kept > /data/v; cat /data/v"])
                .env("PATH", &bin)
                .env("FIM_OVERLAY", backend)
                .env(variable, &host)
                .env("FIM_DEBUG", "1"),
        );
        out.assert_ok();
        assert_eq!(out.stdout, "kept\n", "{backend}");
        let named = format!("daemon: {program}: {} (Environment)", host.display());
        assert!(out.stderr.contains(&named), "{backend}: {}", out.stderr);
        // A variable naming nothing is an error naming the program, not a silent fallback.
        checks::wait_for_the_session_to_end(&app);
        let missing = fim_tests::run(
            app.command(["fim-exec", "true"])
                .env("FIM_OVERLAY", backend)
                .env(variable, dir.path().join("no-such-program")),
        );
        missing.assert_clean_failure("app.flatimage: ");
        assert!(
            missing.stderr.contains("no-such-program"),
            "{}",
            missing.stderr
        );
    }
}
