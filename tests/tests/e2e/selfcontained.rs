//! Self-contained images: the static bwrap an image embeds runs the app when the host has
//! none, `FIM_BWRAP` overrides it, and both it and the launcher are static executables.

use std::path::Path;
use std::process::Command;

use fim_tests::fsutil::HostMount;
use fim_tests::image::inspect_json;
use fim_tests::run::SpawnRetrying;
use fim_tests::sandbox::{App, Who, base_image};
use fim_tests::{build_with, checks, run, skip, tempdir, which};

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
    let stored = &bytes[offset..offset + size];
    // Stored as one zstd frame; the digest is the program's own.
    assert_eq!(bwrap["compressed"], true, "{bwrap}");
    let program = zstd::decode_all(stored).expect("a zstd frame");
    assert!(program.len() > size, "compression saved nothing");
    assert_eq!(bwrap["digest"], blake3::hash(&program).to_hex().as_str());
    let path = dir.path().join("bwrap");
    std::fs::write(&path, &program).expect("write");
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
    deps.assert_ok();
    assert!(
        !deps.stdout.contains("embedded")
            && deps
                .stdout
                .lines()
                .any(|l| l.starts_with("bwrap: ") && l.ends_with(" from PATH)")),
        "{}",
        deps.stdout
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

#[test]
fn from_a_read_only_directory_changes_go_to_the_per_user_data_directory() {
    if !fim_tests::is_root() {
        skip("read-only directory: a read-only bind mount needs root");
        return;
    }
    let Some(app) = App::new("read_only_dir", Who::Invoker) else {
        return;
    };
    let ro = app.dir.path().join("ro");
    std::fs::create_dir(&ro).expect("mkdir");
    let image = ro.join("app.flatimage");
    std::fs::copy(&app.image, &image).expect("copy");
    let Some(_bind) = HostMount::new(&["--bind", &ro.to_string_lossy()], &ro) else {
        skip("read-only directory: bind mounts are not possible here");
        return;
    };
    let remounted = Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(&ro)
        .status()
        .is_ok_and(|s| s.success());
    if !remounted {
        skip("read-only directory: cannot remount read-only");
        return;
    }
    let xdg = app.dir.path().join("xdg");
    let run_in_ro = |script: &str| {
        run(app
            .program(&image, ["fim-exec", "sh", "-c", script])
            .env("XDG_DATA_HOME", &xdg))
    };
    run_in_ro("echo kept > /data/x").assert_ok();
    assert_eq!(run_in_ro("cat /data/x").stdout, "kept\n");
    let kept: Vec<_> = std::fs::read_dir(xdg.join("fim"))
        .expect("the fallback data directory")
        .flatten()
        .map(|e| e.path().join("upper/data/x"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(
        kept.len(),
        1,
        "one fallback data directory holds the change"
    );
    assert!(!ro.join(".app.flatimage.data").exists());
}

#[test]
fn a_user_runs_an_image_from_a_directory_it_cannot_write() {
    let Some(app) = App::new("unwritable_dir", Who::User) else {
        return;
    };
    // The app's directory belongs to the user; the image goes into one that does not.
    let shared = app.dir.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::os::unix::fs::chown(&shared, Some(0), Some(0)).expect("chown");
    let image = shared.join("app.flatimage");
    std::fs::copy(&app.image, &image).expect("copy");
    std::fs::set_permissions(&image, std::os::unix::fs::PermissionsExt::from_mode(0o555))
        .expect("chmod");
    let xdg = app.dir.path().join("xdg");
    let out = run(app
        .program(
            &image,
            ["fim-exec", "sh", "-c", "echo mine > /data/y; cat /data/y"],
        )
        .env("XDG_DATA_HOME", &xdg));
    out.assert_ok();
    assert_eq!(out.stdout, "mine\n");
    assert!(xdg.join("fim").is_dir());
}

#[test]
fn a_noexec_tmp_does_not_break_a_run() {
    if !fim_tests::is_root() {
        skip("noexec TMPDIR: mounting a tmpfs needs root");
        return;
    }
    let Some(app) = App::new("noexec_tmp", Who::Invoker) else {
        return;
    };
    let tmp = app.dir.path().join("noexec");
    std::fs::create_dir(&tmp).expect("mkdir");
    let Some(_tmpfs) = HostMount::new(&["-t", "tmpfs", "-o", "noexec,nosuid,nodev", "tmpfs"], &tmp)
    else {
        skip("noexec TMPDIR: cannot mount a tmpfs here");
        return;
    };
    let out = run(app.command(["fim-exec", "echo", "ok"]).env("TMPDIR", &tmp));
    out.assert_ok();
    assert_eq!(out.stdout, "ok\n");
}

#[test]
fn without_fuse_the_layers_run_from_an_extraction_cache_that_is_checked() {
    let Some(app) = App::new("extraction", Who::User) else {
        return;
    };
    let cache = app.dir.path().join("cache");
    let timed = |script: &str| {
        let start = std::time::Instant::now();
        let out = run(app
            .command(["fim-exec", "sh", "-c", script])
            .env("FIM_EXTRACT", "1")
            .env("XDG_CACHE_HOME", &cache));
        out.assert_ok();
        (out.stdout, start.elapsed())
    };
    let (first, cold) = timed("echo new > /data/new; id -u; cat /data/keep.txt");
    assert_eq!(first, format!("{}\nkeep\n", app.uid));
    checks::wait_for_the_session_to_end(&app);
    let (second, warm) = timed("cat /data/new /data/keep.txt");
    assert_eq!(second, "new\nkeep\n");
    eprintln!(
        "extraction: first run {:.1} ms (extracts), second {:.1} ms (reuses the cache)",
        cold.as_secs_f64() * 1000.0,
        warm.as_secs_f64() * 1000.0
    );
    // Tampering with an extracted file is seen at the next start: the cache is rebuilt.
    let trees: Vec<_> = std::fs::read_dir(cache.join("fim/extract"))
        .expect("the cache")
        .flatten()
        .map(|e| e.path().join("tree"))
        .collect();
    assert_eq!(trees.len(), 1);
    let keep = trees[0].join("data/keep.txt");
    std::fs::write(&keep, "tampered\n").expect("tamper");
    checks::wait_for_the_session_to_end(&app);
    let (third, _) = timed("cat /data/keep.txt");
    assert_eq!(third, "keep\n", "the tampered entry was rebuilt");
    assert_eq!(std::fs::read_to_string(&keep).expect("read"), "keep\n");
    // FUSE backends need FUSE.
    let out = run(app
        .command(["fim-exec", "true"])
        .env("FIM_EXTRACT", "1")
        .env("FIM_OVERLAY", "unionfs")
        .env("XDG_CACHE_HOME", &cache));
    out.assert_clean_failure("app.flatimage: the unionfs overlay needs FUSE");
}

/// The trees in an extraction cache, by directory name.
fn extracted_trees(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache.join("fim/extract"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_first_extraction_says_so_and_a_commit_leaves_one_tree() {
    let Some(app) = App::new("extraction_once", Who::User) else {
        return;
    };
    let cache = app.dir.path().join("cache");
    let extracting = |script: &str| {
        let out = run(app
            .command(["fim-exec", "sh", "-c", script])
            .env("FIM_EXTRACT", "1")
            .env("XDG_CACHE_HOME", &cache));
        out.assert_ok();
        checks::wait_for_the_session_to_end(&app);
        out
    };
    let first = extracting("echo committed > /data/committed");
    let line = format!("into {}", cache.join("fim/extract").display());
    assert!(
        first
            .stderr
            .contains("extracting the image's layers (about ")
            && first.stderr.contains(&line),
        "the first extraction says so, with its size and place: {}",
        first.stderr
    );
    let again = extracting("true");
    assert!(!again.stderr.contains("extracting"), "{}", again.stderr);
    assert_eq!(extracted_trees(&cache).len(), 1);
    let old = extracted_trees(&cache);

    app.run(["fim-layer", "commit", "--to", "layer"])
        .assert_ok();
    let after = extracting("cat /data/committed");
    assert_eq!(after.stdout, "committed\n");
    assert!(after.stderr.contains("extracting"), "{}", after.stderr);
    let now = extracted_trees(&cache);
    assert_eq!(now.len(), 1, "the older state's tree is removed: {now:?}");
    assert_ne!(now, old);
}

#[test]
fn the_extraction_cache_keeps_to_its_bound_but_never_removes_a_tree_in_use() {
    let (Some(one), Some(two)) = (
        App::new("extraction_bound_one", Who::Invoker),
        App::new("extraction_bound_two", Who::Invoker),
    ) else {
        return;
    };
    // Other layers for the second image: a commit.
    two.sh("echo other > /data/other").assert_ok();
    checks::wait_for_the_session_to_end(&two);
    two.run(["fim-layer", "commit"]).assert_ok();
    let cache = tempdir();
    let extracting = |app: &App| {
        let mut command = app.command(["fim-exec", "sleep", "2"]);
        command
            .env("FIM_EXTRACT", "1")
            .env("FIM_EXTRACT_MAX", "1")
            .env("XDG_CACHE_HOME", cache.path());
        command
    };
    // While the first image runs from its tree, the second's extraction leaves it alone.
    let mut running = extracting(&one).spawn_retrying();
    checks::wait_for(
        || extracted_trees(cache.path()).len() == 1,
        "the first extraction",
    );
    run(&mut extracting(&two)).assert_ok();
    assert_eq!(
        extracted_trees(cache.path()).len(),
        2,
        "a tree in use is kept"
    );
    assert!(running.wait().expect("wait").success());
    checks::wait_for_the_session_to_end(&one);
    checks::wait_for_the_session_to_end(&two);
    // Once unused, the next extraction over the bound removes the least recently used.
    let kept = extracted_trees(cache.path());
    one.sh("echo changed > /data/changed").assert_ok();
    checks::wait_for_the_session_to_end(&one);
    one.run(["fim-layer", "commit"]).assert_ok();
    run(&mut extracting(&one)).assert_ok();
    let now = extracted_trees(cache.path());
    assert_eq!(
        now.len(),
        1,
        "over FIM_EXTRACT_MAX, unused trees go: {kept:?} -> {now:?}"
    );
    // A bad bound is one line, from the next session that extracts.
    checks::wait_for_the_session_to_end(&one);
    let out = run(one
        .command(["fim-exec", "true"])
        .env("FIM_EXTRACT", "1")
        .env("FIM_EXTRACT_MAX", "lots")
        .env("XDG_CACHE_HOME", cache.path()));
    out.assert_clean_failure("app.flatimage: FIM_EXTRACT_MAX=");
}

#[test]
fn refused_user_namespaces_are_named_with_the_fix() {
    let Some(app) = App::new("no_userns", Who::User) else {
        return;
    };
    let out = run(app
        .command(["fim-exec", "true"])
        .env("FIM_TEST_REFUSE_USERNS", "1"));
    out.assert_clean_failure("app.flatimage: cannot create a user namespace (EPERM");
    assert!(
        out.stderr
            .contains("unprivileged user namespaces are disabled")
            && (out.stderr.contains("sysctl -w") || out.stderr.contains("administrator")),
        "{}",
        out.stderr
    );
}

#[test]
fn without_user_namespaces_fusermount3_and_a_setuid_bwrap_run_the_app() {
    if !fim_tests::is_root() {
        skip("no user namespaces: making a setuid bwrap needs root");
        return;
    }
    let Some(app) = App::new("fusermount_path", Who::User) else {
        return;
    };
    if which("fuse-overlayfs").is_none() || which("fusermount3").is_none() {
        skip("no user namespaces: fuse-overlayfs or fusermount3 is not installed");
        return;
    }
    let Some(bwrap) = fim_tests::fsutil::setuid_bwrap(app.dir.path()) else {
        skip("no user namespaces: a setuid bwrap cannot be made here");
        return;
    };
    let refused = |args: &[&str]| {
        run(app
            .command(args)
            .env("FIM_TEST_REFUSE_USERNS", "1")
            .env("FIM_BWRAP", &bwrap))
    };
    let out = refused(&["fim-exec", "sh", "-c", "echo up > /data/up; id -u"]);
    out.assert_ok();
    assert_eq!(out.stdout.trim(), app.uid.to_string());
    assert!(
        out.stderr.contains("using fuse-overlayfs"),
        "{}",
        out.stderr
    );
    let out = refused(&["fim-exec", "cat", "/data/up"]);
    out.assert_ok();
    assert_eq!(out.stdout, "up\n");
    // While the session lingers, another process makes a mount namespace: a copy of the
    // session's mounts that our detach does not reach (unshare makes its copy private, as
    // a host whose mounts do not propagate does). The FUSE backend serving that copy is
    // told to exit, not waited out.
    let holder = fim_tests::run::KilledOnDrop(
        Command::new("unshare")
            .args(["--mount", "sleep", "60"])
            .spawn()
            .expect("unshare --mount"),
    );
    let ours = std::fs::read_link("/proc/self/ns/mnt").expect("our mount namespace");
    checks::wait_for(
        || std::fs::read_link(format!("/proc/{}/ns/mnt", holder.0.id())).is_ok_and(|ns| ns != ours),
        "a mount namespace of another process",
    );
    // The session's mounts are the host's while it runs, and gone when it ends.
    checks::wait_for_the_session_to_end(&app);
    drop(holder);
    assert!(
        fim_tests::sandbox::host_mounts_mentioning(&app.runtime_dir()).is_empty(),
        "the session's fusermount3 mounts outlived it"
    );
    // Without a setuid bwrap there is no sandbox: one line says why and what to do.
    let out = run(app
        .command(["fim-exec", "true"])
        .env("FIM_TEST_REFUSE_USERNS", "1")
        .env("FIM_BWRAP", which("bwrap").expect("bwrap")));
    out.assert_clean_failure("app.flatimage: cannot create a user namespace (EPERM");
}
