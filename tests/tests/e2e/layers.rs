//! The layer lifecycle end to end: `fim-layer commit` (to the image, to a managed layer,
//! to a file), `create`, `add`, `list`, `extract`, `FIM_LAYERS`; deletions surviving a
//! commit for every backend; refusal while instances run; and no loss when a commit is
//! killed at any moment or runs out of disk.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fim_tests::fsutil::HostMount;
use fim_tests::sandbox::{App, Who};
use fim_tests::{Rng, checks, is_root, skip, which};

// Each check runs for every backend, as the invoker and as the unprivileged user.
fim_tests::per_backend!(a_commit_keeps_deletions_and_replaced_directories);
fim_tests::for_both!(a_commit_leaves_out_excluded_paths_and_refuses_bad_patterns);

/// `fim verify` of the app's image.
fn verify(app: &App) {
    let out = fim_tests::fim(["verify".as_ref(), app.image.as_os_str()]);
    out.assert_ok();
}

fn sha(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("read");
    blake3::hash(&bytes).as_bytes().to_vec()
}

/// Waits for the app's session (linger included) to end, then removes its data directory.
fn remove_data_dir(app: &App) {
    checks::wait_for_the_session_to_end(app);
    std::fs::remove_dir_all(app.data_dir()).expect("remove the data directory");
}

fn a_commit_keeps_deletions_and_replaced_directories(backend: &'static str, who: Who) {
    let program = match backend {
        "overlayfs" => "fuse-overlayfs",
        "unionfs" => "unionfs",
        _ => "bwrap",
    };
    if which(program).is_none() {
        skip(&format!(
            "commit with {backend}: {program} is not installed"
        ));
        return;
    }
    let Some(app) = App::new("commit_keeps_deletions", who) else {
        return;
    };
    let app = app.with_overlay(backend);
    app.sh(
        "set -e; cd /data; rm gone.txt; rm -rf replaced; mkdir replaced; \
         echo fresh > replaced/fresh.txt; echo new > new.txt",
    )
    .assert_ok();
    let out = app.run(["fim-layer", "commit"]);
    out.assert_ok();
    assert!(out.stdout.starts_with("committed to "), "{}", out.stdout);
    verify(&app);
    // Only the image holds the changes now.
    remove_data_dir(&app);
    let out = app.sh("cd /data && find . | sort | tr '\\n' ' '; cat replaced/fresh.txt new.txt");
    out.assert_ok();
    assert_eq!(
        out.stdout,
        ". ./keep.txt ./mode.txt ./moved ./moved/m.txt ./new.txt ./replaced ./replaced/fresh.txt fresh\nnew\n",
        "{backend}"
    );
}

#[test]
fn a_hundred_and_twenty_commits_stack_in_numeric_order() {
    let Some(app) = App::new("many_commits", Who::Invoker) else {
        return;
    };
    let mut startup = Vec::new();
    for i in 1..=120 {
        app.sh(&format!("echo {i} > /data/n{i}; echo {i} > /data/conflict"))
            .assert_ok();
        app.run(["fim-layer", "commit", "--to", "layer"])
            .assert_ok();
        if [1, 10, 120].contains(&i) {
            startup.push((i, warm_startup(&app)));
        }
    }
    let out = app.sh("cat /data/conflict; ls /data | grep -c '^n'; cat /data/n7 /data/n120");
    out.assert_ok();
    assert_eq!(out.stdout, "120\n120\n7\n120\n", "later layers win");
    let list = app.run(["fim-layer", "list"]);
    list.assert_ok();
    let managed: Vec<String> = list
        .stdout
        .lines()
        .filter(|l| l.contains(" managed "))
        .map(|l| {
            let source = l.split_whitespace().last().expect("source");
            Path::new(source)
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let expected: Vec<String> = (1..=120).map(|i| format!("{i}.layer")).collect();
    assert_eq!(managed, expected, "numeric order, not text order");
    for (layers, time) in &startup {
        eprintln!(
            "startup (warm `fim-exec true`) with 1 embedded + {layers} managed layer(s): {:.1} ms",
            time.as_secs_f64() * 1000.0
        );
    }
}

/// The median of five warm launches of `fim-exec true`.
fn warm_startup(app: &App) -> Duration {
    app.sh("true").assert_ok();
    let mut times: Vec<Duration> = (0..5)
        .map(|_| {
            let start = Instant::now();
            app.sh("true").assert_ok();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[2]
}

/// `fim-layer extract INDEX DIR` into a new directory of the app's; returns it.
fn extract_layer(app: &App, index: usize) -> PathBuf {
    let dir = app.dir.path().join(format!("layer{index}"));
    app.run([
        "fim-layer".as_ref(),
        "extract".as_ref(),
        index.to_string().as_ref(),
        dir.as_os_str(),
    ])
    .assert_ok();
    dir
}

/// A layer file holding `/data/who` = `text`, made with `fim-layer create`.
fn layer_file(app: &App, dir: &Path, name: &str, text: &str) -> PathBuf {
    let tree = dir.join(format!("tree-{name}"));
    std::fs::create_dir_all(tree.join("data")).expect("mkdir");
    std::fs::write(tree.join("data/who"), text).expect("write");
    let out_dir = dir.join("out");
    std::fs::create_dir_all(&out_dir).expect("mkdir");
    let path = out_dir.join(name);
    let out = app.run([
        "fim-layer".as_ref(),
        "create".as_ref(),
        tree.as_os_str(),
        path.as_os_str(),
    ]);
    out.assert_ok();
    assert!(out.stdout.starts_with("created "), "{}", out.stdout);
    std::fs::rename(&path, dir.join(name)).expect("move");
    dir.join(name)
}

#[test]
fn fim_layers_and_managed_layers_stack_in_the_documented_order() {
    let Some(app) = App::new("layer_order", Who::Invoker) else {
        return;
    };
    app.sh("echo managed > /data/who").assert_ok();
    app.run(["fim-layer", "commit", "--to", "layer"])
        .assert_ok();
    assert_eq!(app.sh("cat /data/who").stdout, "managed\n");

    let work = app.dir.path().join("extra");
    let dir = work.join("dir");
    std::fs::create_dir_all(&dir).expect("mkdir");
    // In a directory, 10 sorts after 2.
    layer_file(&app, &dir, "10-top.layer", "dir-10");
    layer_file(&app, &dir, "2-low.layer", "dir-2");
    let single = layer_file(&app, &work, "single.layer", "single");
    let run_with = |layers: String| {
        let out = fim_tests::run(
            app.command(["fim-exec", "cat", "/data/who"])
                .env("FIM_LAYERS", layers),
        );
        out.assert_ok();
        out.stdout
    };
    assert_eq!(
        run_with(format!("{}:{}", dir.display(), single.display())),
        "single"
    );
    assert_eq!(
        run_with(format!("{}:{}", single.display(), dir.display())),
        "dir-10"
    );

    let list = fim_tests::run(app.command(["fim-layer", "list"]).env(
        "FIM_LAYERS",
        format!("{}:{}", single.display(), dir.display()),
    ));
    list.assert_ok();
    let rows: Vec<(String, String)> = list
        .stdout
        .lines()
        .skip(1)
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            (
                words[1].to_string(),
                words[5].rsplit('/').next().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("embedded".into(), "app.flatimage".into()),
            ("managed".into(), "1.layer".into()),
            ("FIM_LAYERS".into(), "single.layer".into()),
            ("FIM_LAYERS".into(), "2-low.layer".into()),
            ("FIM_LAYERS".into(), "10-top.layer".into()),
        ]
    );
    let missing = fim_tests::run(
        app.command(["fim-exec", "true"])
            .env("FIM_LAYERS", work.join("nope")),
    );
    missing.assert_clean_failure("app.flatimage: FIM_LAYERS");

    // `add` puts a layer file into the image itself; `extract` gives one layer back.
    app.run(["fim-layer".as_ref(), "add".as_ref(), single.as_os_str()])
        .assert_ok();
    verify(&app);
    remove_data_dir(&app);
    assert_eq!(app.sh("cat /data/who").stdout, "single");
    let out_dir = extract_layer(&app, 1);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("data/who")).expect("extracted"),
        "single"
    );
}

#[test]
fn changes_are_refused_while_another_instance_runs() {
    let Some(app) = App::new("refused_while_running", Who::Invoker) else {
        return;
    };
    app.sh("echo pending > /data/pending").assert_ok();
    let before = sha(&app.image);
    let mut running = app
        .command(["fim-exec", "sh", "-c", "echo up; sleep 30"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start an instance");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(running.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("read");
    let commit = app.run(["fim-layer", "commit"]);
    let layer = layer_file(&app, app.dir.path(), "extra.layer", "extra");
    let add = app.run(["fim-layer".as_ref(), "add".as_ref(), layer.as_os_str()]);
    let _ = running.kill();
    let _ = running.wait();
    for out in [&commit, &add] {
        out.assert_clean_failure("app.flatimage: 1 instance(s) of ");
        assert!(out.stderr.contains("are running"), "{}", out.stderr);
    }
    assert_eq!(sha(&app.image), before, "the image is unchanged");
    assert!(app.data_dir().join("upper/data/pending").exists());
    // Once it has ended, the commit goes through.
    app.run(["fim-layer", "commit"]).assert_ok();
    assert!(!app.data_dir().join("upper/data/pending").exists());
}

#[test]
fn adding_a_damaged_or_foreign_file_is_refused() {
    let Some(app) = App::new("add_refused", Who::Invoker) else {
        return;
    };
    let before = sha(&app.image);
    let work = app.dir.path();
    let good = layer_file(&app, work, "good.layer", "good");
    let mut bytes = std::fs::read(&good).expect("read");
    let at = bytes.len() - 40;
    bytes[at] ^= 0x55;
    let damaged = work.join("damaged.layer");
    std::fs::write(&damaged, &bytes).expect("write");
    let foreign = work.join("foreign.layer");
    std::fs::write(&foreign, b"not a layer at all").expect("write");
    for file in [&damaged, &foreign, &work.join("missing.layer")] {
        let out = app.run(["fim-layer".as_ref(), "add".as_ref(), file.as_os_str()]);
        out.assert_clean_failure("app.flatimage: ");
    }
    for args in [
        &["fim-layer"][..],
        &["fim-layer", "frobnicate"],
        &["fim-layer", "commit", "--to"],
        &["fim-layer", "commit", "--to", "file"],
        &["fim-layer", "commit", "--to", "nowhere"],
        &["fim-layer", "extract", "x", "/tmp"],
        &["fim-layer", "list", "extra"],
    ] {
        app.run(args).assert_clean_failure("app.flatimage: ");
    }
    assert_eq!(sha(&app.image), before, "the image is unchanged");
}

/// Names of the files `/data/f*` in the view of `app`, with `FIM_DIR_DATA` = `data`
/// when given (an empty one shows the layers alone).
fn files_in_view(app: &App, data: Option<&Path>) -> BTreeSet<String> {
    let mut cmd = app.command(["fim-exec", "sh", "-c", "cd /data && ls | grep '^f' || true"]);
    if let Some(data) = data {
        cmd.env("FIM_DIR_DATA", data);
    }
    let out = fim_tests::run(&mut cmd);
    out.assert_ok();
    out.stdout.lines().map(str::to_string).collect()
}

#[test]
fn a_commit_killed_at_any_moment_loses_nothing_and_commits_nothing_twice() {
    let Some(app) = App::new("killed_commits", Who::Invoker) else {
        return;
    };
    let mut rng = Rng::new(0xc0);
    // How long an undisturbed commit takes here, to spread the kills over it.
    app.sh("echo 0 > /data/f0").assert_ok();
    let start = Instant::now();
    app.run(["fim-layer", "commit"]).assert_ok();
    let span = start.elapsed().as_millis().max(20) as u64;
    let empty = app.dir.path().join("empty-data");
    let (mut landed, mut kept) = (0, 0);
    for i in 1..=50 {
        app.sh(&format!("echo {i} > /data/f{i}")).assert_ok();
        let mut commit = app
            .command(["fim-layer", "commit"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a commit");
        std::thread::sleep(Duration::from_millis(rng.below(span * 3 / 2)));
        let _ = commit.kill();
        let _ = commit.wait();
        verify(&app);
        // The view shows every file once; the next session finished or undid the commit.
        let view = files_in_view(&app, None);
        let expected: BTreeSet<String> = (0..=i).map(|j| format!("f{j}")).collect();
        assert_eq!(view, expected, "after kill {i}");
        // Each file is in the upper directory or in the layers, not both.
        let _ = std::fs::remove_dir_all(&empty);
        let in_layers = files_in_view(&app, Some(&empty));
        if in_layers.contains(&format!("f{i}")) {
            landed += 1;
        } else {
            kept += 1;
        }
        let upper = app.data_dir().join("upper/data");
        for name in &expected {
            let in_upper = upper.join(name).exists();
            assert!(
                in_upper != in_layers.contains(name),
                "after kill {i}: {name} in upper: {in_upper}, in layers: {}",
                in_layers.contains(name)
            );
        }
    }
    eprintln!("killed commits: {landed} had landed, {kept} had not");
    assert!(
        landed > 0 && kept > 0,
        "the kills must fall before and after the commit lands"
    );
    // No temporary is left beside the image once a change has run again.
    app.run(["fim-layer", "commit"]).assert_ok();
    let leftovers: Vec<String> = std::fs::read_dir(app.dir.path())
        .expect("readdir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("fim-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_commit_onto_a_full_disk_fails_cleanly() {
    if !is_root() {
        skip("full disk: mounting a small tmpfs needs root");
        return;
    }
    let Some(app) = App::new("full_disk", Who::Invoker) else {
        return;
    };
    let image_size = std::fs::metadata(&app.image).expect("stat").len();
    let disk = app.dir.path().join("disk");
    std::fs::create_dir(&disk).expect("mkdir");
    // Room for the image and a 3 MiB change, not for a second image holding both.
    let size = image_size + (4 << 20);
    let Some(_disk) = HostMount::new(
        &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
        &disk,
    ) else {
        skip("full disk: cannot mount a tmpfs here");
        return;
    };
    let image = disk.join("app.flatimage");
    std::fs::copy(&app.image, &image).expect("copy");
    let run = |args: &[&str]| fim_tests::run(&mut app.program(&image, args));
    run(&[
        "fim-exec",
        "sh",
        "-c",
        "head -c 3145728 /dev/urandom > /data/big",
    ])
    .assert_ok();
    let upper_file = disk.join(".app.flatimage.data/upper/data/big");
    let (image_before, change_before) = (sha(&image), sha(&upper_file));
    let out = run(&["fim-layer", "commit"]);
    out.assert_clean_failure("app.flatimage: ");
    assert!(out.stderr.contains("no space left"), "{}", out.stderr);
    assert_eq!(sha(&image), image_before, "the image is unchanged");
    assert_eq!(sha(&upper_file), change_before, "the change is still there");
    let leftovers: Vec<String> = std::fs::read_dir(&disk)
        .expect("readdir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "app.flatimage" && n != ".app.flatimage.data")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let out = run(&["fim-exec", "sh", "-c", "wc -c < /data/big"]);
    assert_eq!(out.stdout.trim(), "3145728");
}

/// Each point where a commit can die (the launcher's test-only `FIM_TEST_COMMIT_CRASH`
/// ends it there as SIGKILL would), to the image and to a managed layer: afterwards the
/// image verifies, the change is visible once, and it is in the layers or in the upper
/// directory, never both; a later commit takes what was not committed.
#[test]
fn every_crash_point_of_a_commit_recovers() {
    for target in [
        &["fim-layer", "commit"][..],
        &["fim-layer", "commit", "--to", "layer"],
    ] {
        for (point, lands) in [
            ("sealed", false),
            ("journaled", false),
            ("persisted", true),
            ("moved", true),
        ] {
            let Some(app) = App::new("crash_points", Who::Invoker) else {
                return;
            };
            app.sh("echo c > /data/fc").assert_ok();
            let out = fim_tests::run(app.command(target).env("FIM_TEST_COMMIT_CRASH", point));
            assert_eq!(out.code(), Some(137), "{point}: {out:?}");
            verify(&app);
            // The next session recovers first.
            assert_eq!(app.sh("cat /data/fc").stdout, "c\n", "{point}");
            let in_upper = app.data_dir().join("upper/data/fc").exists();
            let in_layers = if target.len() > 2 {
                // Managed layers live in the data directory.
                app.data_dir().join("layers/1.layer").exists()
            } else {
                let empty = app.dir.path().join("empty-data");
                files_in_view(&app, Some(&empty)).contains("fc")
            };
            assert_eq!((in_layers, in_upper), (lands, !lands), "{target:?} {point}");
            assert!(!app.data_dir().join("commit-journal").exists(), "{point}");
            app.run(target).assert_ok();
            assert!(!app.data_dir().join("upper/data/fc").exists(), "{point}");
            assert_eq!(app.sh("cat /data/fc").stdout, "c\n", "{point}: committed");
        }
    }
}

/// A file copied up but left as it was (opened for writing, nothing written) is not
/// stored again: the new layer holds only what changed.
#[test]
fn a_commit_stores_only_what_changed() {
    let Some(app) = App::new("only_changes", Who::Invoker) else {
        return;
    };
    app.sh(": >> /data/keep.txt; echo changed >> /data/mode.txt")
        .assert_ok();
    assert!(
        app.data_dir().join("upper/data/keep.txt").exists(),
        "opening for writing copied the file up"
    );
    app.run(["fim-layer", "commit"]).assert_ok();
    let out_dir = extract_layer(&app, 1);
    assert!(
        out_dir.join("data/mode.txt").exists(),
        "the change is stored"
    );
    assert!(
        !out_dir.join("data/keep.txt").exists(),
        "the unchanged copy is not stored again"
    );
    assert_eq!(app.sh("cat /data/keep.txt").stdout, "keep\n");
}

fn a_commit_leaves_out_excluded_paths_and_refuses_bad_patterns(who: Who) {
    let Some(app) = App::new("commit_excludes", who) else {
        return;
    };
    app.sh(
        "set -e; mkdir -p /data/cache/sub /data/kept; echo a > /data/cache/a.deb; \
         echo b > /data/cache/b.txt; echo s > /data/cache/sub/c.deb; echo k > /data/kept/k.deb",
    )
    .assert_ok();
    checks::wait_for_the_session_to_end(&app);
    let image = app.image_bytes();
    let upper = fim_tests::snapshot(&app.data_dir().join("upper"));
    let name = app
        .image
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    for (args, says) in [
        (
            &["--exclude"][..],
            "fim-layer commit --exclude needs a PATTERN",
        ),
        (
            &["--exclude", "data/cache/*.deb"],
            "fim-layer commit --exclude data/cache/*.deb: the pattern must be an absolute path",
        ),
        (
            &["--exclude", "/data/[cache"],
            "fim-layer commit --exclude /data/[cache: ",
        ),
    ] {
        let mut words = vec!["fim-layer", "commit"];
        words.extend(args);
        let out = app.run(&words);
        out.assert_clean_failure(&format!("{name}: {says}"));
        // Nothing lost, nothing changed.
        assert!(app.image_bytes() == image, "{args:?} changed the image");
        fim_tests::assert_same_tree(
            &upper,
            &fim_tests::snapshot(&app.data_dir().join("upper")),
            &format!("the upper directory after {args:?}"),
        );
    }

    // `*` matches within one component: /data/cache/sub/c.deb and /data/kept stay.
    let out = app.run(["fim-layer", "commit", "--exclude", "/data/cache/*.deb"]);
    out.assert_ok();
    verify(&app);
    let after = app.sh("cd /data; find cache kept -type f | sort; cat cache/b.txt");
    after.assert_ok();
    assert_eq!(
        after.stdout, "cache/b.txt\ncache/sub/c.deb\nkept/k.deb\nb\n",
        "{}",
        after.stderr
    );
    // The left-out file is gone from the upper directory too, with what was committed:
    // no file is left there.
    checks::wait_for_the_session_to_end(&app);
    let upper = fim_tests::snapshot(&app.data_dir().join("upper"));
    let files: Vec<String> = upper
        .nodes
        .iter()
        .filter(|(_, node)| node.kind != fim_tests::tree::Kind::Dir)
        .map(|(path, _)| fim_tests::tree::show(path))
        .collect();
    assert_eq!(files, Vec::<String>::new(), "left in the upper directory");
    // What was kept lives in the new layer: the same files with no data directory.
    std::fs::remove_dir_all(app.data_dir()).expect("remove the data directory");
    let fresh = app.sh("cd /data; find cache kept -type f | sort");
    fresh.assert_ok();
    assert_eq!(
        fresh.stdout, "cache/b.txt\ncache/sub/c.deb\nkept/k.deb\n",
        "{}",
        fresh.stderr
    );
}

/// A normal user's own files are root's in what they pack, `fim build` and `fim-layer
/// create` alike, as in a rootless container build: the image's sessions make that user
/// root, and a run as root finds root's files. Other owners stay as they are.
#[test]
fn a_normal_users_own_files_are_roots_in_what_they_pack() {
    let Some(app) = App::new("packed_by_a_user", Who::User) else {
        return;
    };
    let tree = app.host_dir("tree");
    std::fs::create_dir(tree.join("data")).expect("mkdir");
    std::fs::write(tree.join("data/mine"), "mine\n").expect("write");
    std::fs::write(tree.join("data/roots"), "root's\n").expect("write");
    std::fs::write(tree.join("data/others"), "another user's\n").expect("write");
    std::os::unix::fs::chown(tree.join("data/others"), Some(4242), Some(4343)).expect("chown");
    app.own(&tree.join("data"));
    app.own(&tree.join("data/mine"));
    let built = app.dir.path().join("built.flatimage");
    let out = fim_tests::run(&mut app.program(
        fim_tests::fim_path(),
        [
            "build".as_ref(),
            tree.as_os_str(),
            "-o".as_ref(),
            built.as_os_str(),
        ],
    ));
    out.assert_ok();
    let layer = app.dir.path().join("tree.layer");
    app.run([
        "fim-layer".as_ref(),
        "create".as_ref(),
        tree.as_os_str(),
        layer.as_os_str(),
    ])
    .assert_ok();
    app.run(["fim-layer".as_ref(), "add".as_ref(), layer.as_os_str()])
        .assert_ok();

    // Read back as root, who keeps owners when extracting.
    let owners = |dir: &Path| -> Vec<(u32, u32)> {
        ["data", "data/mine", "data/roots", "data/others"]
            .iter()
            .map(|p| {
                let meta = std::fs::symlink_metadata(dir.join(p)).expect("extracted");
                use std::os::unix::fs::MetadataExt;
                (meta.uid(), meta.gid())
            })
            .collect()
    };
    let from_build = app.dir.path().join("from-build");
    fim_tests::fim([
        "extract".as_ref(),
        built.as_os_str(),
        from_build.as_os_str(),
    ])
    .assert_ok();
    let from_create = app.dir.path().join("from-create");
    let out = fim_tests::run(
        std::process::Command::new(&app.image)
            .args([
                "fim-layer".as_ref(),
                "extract".as_ref(),
                "1".as_ref(),
                from_create.as_os_str(),
            ])
            .env("TMPDIR", app.tmp_dir()),
    );
    out.assert_ok();
    // The user's are root's; root's file (written by the test, as root) stays root's, and
    // another user's stays theirs.
    for dir in [&from_build, &from_create] {
        assert_eq!(
            owners(dir),
            vec![(0, 0), (0, 0), (0, 0), (4242, 4343)],
            "{}",
            dir.display()
        );
    }
}
