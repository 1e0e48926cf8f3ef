//! Hostile neighbours and hostile images. Another local user who plants a symlink or a
//! directory at our runtime path in `TMPDIR`, or owns it, is refused in one line, and
//! nothing is made in what they planted. A crafted layer whose names are not one path
//! component, or whose symlinks point out of the root, cannot make the launcher (served
//! by FUSE, or extracted without it) or `fim extract` touch anything outside their target.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};

use fim_image::{Image, ImageWriter};
use fim_layers::scan::{self, WhiteoutFormat};
use fim_layers::writer::{self, BuildOptions, NoProgress};
use fim_tests::checks::wait_for_the_session_to_end;
use fim_tests::fim;
use fim_tests::sandbox::{App, Who, other_user};

fim_tests::for_both!(
    a_runtime_directory_planted_by_another_user_is_refused,
    a_crafted_layer_name_reaches_nothing_outside,
    symlinks_out_of_the_root_lead_nowhere_outside
);

/// What another user can leave at our runtime path in a shared, sticky `TMPDIR`.
#[derive(Debug, Clone, Copy)]
enum Planted {
    /// A symlink to a directory of theirs that anyone may write.
    SymlinkToTheirs,
    /// A directory of theirs that anyone may write.
    OpenDirectory,
    /// A directory of theirs, closed to others.
    ClosedDirectory,
}

fn a_runtime_directory_planted_by_another_user_is_refused(who: Who) {
    let Some((other, other_gid)) = other_user() else {
        return;
    };
    for planted in [
        Planted::SymlinkToTheirs,
        Planted::OpenDirectory,
        Planted::ClosedDirectory,
    ] {
        let Some(app) = App::new("planted_runtime", who) else {
            return;
        };
        // TMPDIR as /tmp is: anyone may create there, nobody may remove another's entry.
        let tmp = app.tmp_dir();
        std::fs::create_dir_all(&tmp).expect("TMPDIR");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let theirs = tmp.join("theirs");
        std::fs::create_dir(&theirs).expect("their directory");
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        lchown(&theirs, Some(other), Some(other_gid)).expect("chown");
        let runtime = app.runtime_dir();
        let (watched, reason) = match planted {
            Planted::SymlinkToTheirs => {
                symlink(&theirs, &runtime).expect("plant a symlink");
                (theirs.clone(), "it is not a directory")
            }
            Planted::OpenDirectory | Planted::ClosedDirectory => {
                std::fs::create_dir(&runtime).expect("plant a directory");
                let mode = match planted {
                    Planted::OpenDirectory => 0o777,
                    _ => 0o700,
                };
                std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(mode))
                    .expect("chmod");
                (runtime.clone(), "it is owned by uid")
            }
        };
        lchown(&runtime, Some(other), Some(other_gid)).expect("give it to the other user");

        let out = app.sh("echo ran");
        out.assert_clean_failure(&format!(
            "{}: refusing to use {}: {reason}",
            app.image.file_name().expect("name").to_string_lossy(),
            runtime.display()
        ));
        assert_eq!(out.stdout, "", "{planted:?}");
        assert_eq!(entries(&watched), Vec::<String>::new(), "{planted:?}");
        assert_eq!(entries(&theirs), Vec::<String>::new(), "{planted:?}");
    }
}

/// The names in `dir`.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every regular file under `dir` whose bytes are `content`.
fn files_holding(dir: &Path, content: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => found.extend(files_holding(&path, content)),
            Ok(t) if t.is_file() && std::fs::read(&path).is_ok_and(|b| b == content) => {
                found.push(path);
            }
            _ => {}
        }
    }
    found
}

/// Writes a layer file holding `crafted/`, with a file in it renamed to `name` after the
/// scan, as a crafted file would hold it (the writer takes the names it is given); returns
/// its path and digest.
fn crafted_layer(dir: &Path, name: &[u8]) -> (PathBuf, [u8; 32]) {
    let src = dir.join("crafted-src");
    std::fs::create_dir_all(src.join("crafted")).expect("source");
    std::fs::write(src.join("crafted/file"), b"crafted\n").expect("file");
    let mut tree = scan::scan(&src, WhiteoutFormat::None, &[]).expect("scan");
    for node in &mut tree.nodes {
        for child in &mut node.children {
            if child.0 == "file" {
                child.0 = OsStr::from_bytes(name).to_os_string();
            }
        }
        node.children.sort();
    }
    let path = dir.join("crafted.layer");
    let out = std::fs::File::create(&path).expect("layer file");
    let stats =
        writer::write_tree(&tree, &out, 0, &BuildOptions::default(), &NoProgress).expect("write");
    std::fs::remove_dir_all(&src).expect("remove the source");
    (path, stats.digest)
}

/// Appends a layer to the image as a crafted image would hold it, past the checks of
/// `fim-layer add`.
fn append_layer(image: &Path, layer: &Path, digest: [u8; 32]) {
    let bytes = std::fs::read(layer).expect("read the layer");
    let opened = Image::open(image).expect("open the image");
    let mut writer = ImageWriter::extend(&opened).expect("extend");
    writer.add_layer_bytes(&bytes, digest).expect("append");
    writer.finish().expect("finish");
}

/// The names a crafted directory entry may hold that no real directory can.
const HOSTILE_NAMES: [&[u8]; 5] = [b"../../../escape", b"a/b", b"..", b"x\0y", &[b'n'; 300]];

fn a_crafted_layer_name_reaches_nothing_outside(who: Who) {
    for name in HOSTILE_NAMES {
        let Some(app) = App::new("crafted_name", who) else {
            return;
        };
        let shown = String::from_utf8_lossy(&name[..name.len().min(20)]).into_owned();
        let (layer, digest) = crafted_layer(app.dir.path(), name);
        app.own(&layer);
        // `fim-layer add` reads every entry first, and refuses it.
        let unchanged = app.image_bytes();
        let added = app.run([OsStr::new("fim-layer"), "add".as_ref(), layer.as_os_str()]);
        added.assert_clean_failure(&format!(
            "{}: {} is not a valid layer: corrupt layer: directory entry name is",
            app.image.file_name().expect("name").to_string_lossy(),
            layer.display()
        ));
        assert!(app.image_bytes() == unchanged, "{shown}: the image changed");
        append_layer(&app.image, &layer, digest);
        let before = entries(app.dir.path());

        // Served by FUSE: the directory's listing fails (EIO), so no name is shown, not
        // even `.` and `..` (busybox's ls stops at a failed read of a directory without a
        // word or a status), a lookup in it fails with EIO, and the rest of the image runs.
        let out = app.sh(
            "ls -a /crafted; echo \"ls $?\"; cat /crafted/file /crafted/*; echo \"cat $?\"; \
             cat /etc/hostname >/dev/null && echo rest",
        );
        out.assert_ok();
        assert_eq!(out.stdout, "ls 0\ncat 1\nrest\n", "{shown}: {}", out.stderr);
        assert_eq!(
            out.stderr,
            "cat: can't open '/crafted/file': Input/output error\n\
             cat: can't open '/crafted/*': Input/output error\n",
            "{shown}"
        );
        wait_for_the_session_to_end(&app);

        // Extracted (no FUSE): one line, nothing extracted beside the cache.
        let cache = app.host_dir("cache");
        let out = fim_tests::run(
            app.command(["fim-exec", "true"])
                .env("FIM_EXTRACT", "1")
                .env("XDG_CACHE_HOME", &cache),
        );
        // After the note that it extracts, one line says why it cannot.
        let last = out.stderr.lines().last().unwrap_or_default();
        assert!(
            out.code() == Some(125)
                && last.starts_with(&format!(
                    "{}: cannot extract the layers: corrupt layer: directory entry name is",
                    app.image.file_name().expect("name").to_string_lossy()
                ))
                && !out.stderr.contains("panicked"),
            "{shown}: {}",
            out.stderr
        );
        assert_eq!(
            files_holding(app.dir.path(), b"crafted\n"),
            Vec::<PathBuf>::new()
        );
        wait_for_the_session_to_end(&app);

        // `fim extract`: one line, nothing beside the destination.
        let dest = app.dir.path().join("out");
        let out = fim([
            OsStr::new("extract"),
            app.image.as_os_str(),
            dest.as_os_str(),
        ]);
        out.assert_clean_failure("fim: ");
        let mut now = entries(app.dir.path());
        now.retain(|n| n != "out" && n != "cache");
        assert_eq!(now, before, "{shown}");
        assert_eq!(
            files_holding(app.dir.path(), b"crafted\n"),
            Vec::<PathBuf>::new()
        );
        assert!(
            !app.dir
                .path()
                .parent()
                .expect("parent")
                .join("escape")
                .exists()
        );
    }
}

fn symlinks_out_of_the_root_lead_nowhere_outside(who: Who) {
    let Some(app) = App::new("symlinks_out", who) else {
        return;
    };
    // Outside the image: a directory anyone may write, that the links point at.
    let outside = app.host_dir("outside");
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let depth = outside.components().count();
    let up = format!("{}{}", "../".repeat(depth + 3), outside.display());
    // Layer 1: the links. Layer 2: a directory where one of them was, with a file in it.
    let links = app.host_dir("links");
    symlink(&outside, links.join("absolute")).expect("link");
    symlink(&up, links.join("relative")).expect("link");
    symlink(&outside, links.join("shadowed")).expect("link");
    let over = app.host_dir("over");
    std::fs::create_dir(over.join("shadowed")).expect("dir");
    std::fs::write(over.join("shadowed/planted"), b"inside\n").expect("file");
    for (dir, name) in [(&links, "links.layer"), (&over, "over.layer")] {
        let layer = app.dir.path().join(name);
        let made = app.run([
            OsStr::new("fim-layer"),
            "create".as_ref(),
            dir.as_os_str(),
            layer.as_os_str(),
        ]);
        made.assert_ok();
        app.run([OsStr::new("fim-layer"), "add".as_ref(), layer.as_os_str()])
            .assert_ok();
    }

    let script = "cat /shadowed/planted; \
         echo x > /absolute/written 2>/dev/null; echo x > /relative/written 2>/dev/null; \
         mkdir -p /absolute/d /relative/d 2>/dev/null; echo done";
    let out = app.sh(script);
    out.assert_ok();
    assert_eq!(out.stdout, "inside\ndone\n", "{}", out.stderr);
    wait_for_the_session_to_end(&app);
    let cache = app.host_dir("cache");
    let out = fim_tests::run(
        app.command(["fim-exec", "sh", "-c", script])
            .env("FIM_EXTRACT", "1")
            .env("XDG_CACHE_HOME", &cache),
    );
    out.assert_ok();
    assert_eq!(out.stdout, "inside\ndone\n", "{}", out.stderr);
    wait_for_the_session_to_end(&app);

    let dest = app.dir.path().join("extracted");
    fim([
        OsStr::new("extract"),
        app.image.as_os_str(),
        dest.as_os_str(),
    ])
    .assert_ok();
    assert!(dest.join("shadowed").is_dir() && !dest.join("shadowed").is_symlink());
    assert_eq!(
        std::fs::read_link(dest.join("relative")).expect("a link"),
        PathBuf::from(&up)
    );
    assert_eq!(entries(&outside), Vec::<String>::new());
}
