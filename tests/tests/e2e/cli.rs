//! The command lines of `fim` and of the image itself: help, refusals with one clear
//! line, nothing left behind by a failed build.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use fim_tests::{
    Mount, Output, build, fim, fim_boot_path, layout, put, require_fuse, run, snapshot, tempdir,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A source tree and its image in a fresh directory.
fn small_image() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let work = tempdir();
    let src = work.path().join("src");
    put(&src, "etc/motd", b"hello\n");
    put(&src, "bin/tool", b"#!/bin/sh\n");
    let image = work.path().join("img");
    build(&[&src], &image);
    (work, src, image)
}

fn entries(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    names.sort();
    names
}

/// `fim build SOURCE -o OUT` at the default level, whatever its outcome (the library's
/// `build` must succeed).
fn try_build(source: &Path, out: &Path) -> Output {
    fim([
        OsStr::new("build"),
        source.as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
    ])
}

fn image_run(image: &Path, args: &[&str]) -> Output {
    run(Command::new(image).args(args).env_remove("FIM_OVERLAY"))
}

/// `fim build ARGS...` expected to fail as clap refuses it: non-zero, a message on
/// stderr naming `mention`, no panic.
#[track_caller]
fn refused(args: &[&OsStr], mention: &str) {
    let out = fim(args);
    assert!(
        !out.success() && out.stderr.contains(mention) && !out.stderr.contains("panicked"),
        "{args:?} should be refused with a message about {mention:?}: {out:?}"
    );
}

#[test]
fn help_and_version_exit_zero() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["help"],
        &["build", "--help"],
        &["inspect", "--help"],
        &["verify", "--help"],
        &["extract", "--help"],
        &["mount", "--help"],
        &["help", "build"],
    ] {
        let out = fim(args);
        out.assert_ok();
        assert!(out.stdout.contains("Usage"), "{args:?}: {}", out.stdout);
    }
    let build_help = fim(["build", "--help"]).stdout;
    for flag in [
        "--output",
        "--level",
        "--block-size",
        "--whiteouts",
        "--order",
        "--launcher",
        "--boot",
    ] {
        assert!(build_help.contains(flag), "build --help lacks {flag}");
    }
    let version = fim(["--version"]);
    version.assert_ok();
    assert!(version.stdout.contains(VERSION), "{}", version.stdout);
}

#[test]
fn wrong_flags_and_commands_are_refused_with_a_message() {
    let work = tempdir();
    let out = work.path().join("out");
    let o = out.as_os_str();
    let src = work.path().as_os_str();
    let s = OsStr::new;
    refused(&[s("--bogus")], "--bogus");
    refused(&[s("frobnicate")], "frobnicate");
    refused(&[], "Usage");
    refused(&[s("build"), src, s("-o"), o, s("--bogus")], "--bogus");
    refused(&[s("build"), s("-o"), o], "ROOTFS");
    refused(&[s("build"), src], "--output");
    refused(&[s("build"), src, s("-o"), o, s("--level"), s("99")], "99");
    refused(
        &[s("build"), src, s("-o"), o, s("--level"), s("0")],
        "--level",
    );
    refused(
        &[s("build"), src, s("-o"), o, s("--level"), s("x")],
        "--level",
    );
    refused(
        &[s("build"), src, s("-o"), o, s("--block-size"), s("3M")],
        "3M",
    );
    refused(
        &[s("build"), src, s("-o"), o, s("--block-size"), s("1K")],
        "1K",
    );
    refused(
        &[s("build"), src, s("-o"), o, s("--block-size"), s("128M")],
        "128M",
    );
    refused(
        &[s("build"), src, s("-o"), o, s("--whiteouts"), s("aufs")],
        "aufs",
    );
    refused(
        &[s("build"), src, s("-o"), o, s("--order"), s("random")],
        "random",
    );
    refused(&[s("build"), src, s("-o"), o, s("--boot")], "--boot");
    refused(&[s("extract"), s("only-one-arg")], "DIR");
    refused(&[s("extract"), o, o, s("--layer"), s("-1")], "-1");
    refused(&[s("extract"), o, o, s("--layer"), s("one")], "one");
    assert_eq!(
        entries(work.path()),
        Vec::<OsString>::new(),
        "nothing written"
    );
}

#[test]
fn build_of_a_missing_path_fails_cleanly_and_leaves_nothing() {
    let work = tempdir();
    let good = work.path().join("good");
    put(&good, "file", b"content");
    let outdir = work.path().join("out");
    fs::create_dir(&outdir).expect("mkdir out");
    let image = outdir.join("image");
    let missing = work.path().join("does-not-exist");

    let out = try_build(&missing, &image);
    out.assert_clean_failure("fim: ");
    assert!(out.stderr.contains("does-not-exist"), "{}", out.stderr);
    assert_eq!(entries(&outdir), Vec::<OsString>::new());

    // Failing on the second input, after layer 0 was built (and reported on stderr):
    // still nothing left, and an existing image at the output path is kept as it was.
    fs::write(&image, b"previous image").expect("write");
    let out = fim([
        OsStr::new("build"),
        good.as_os_str(),
        missing.as_os_str(),
        OsStr::new("-o"),
        image.as_os_str(),
    ]);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        out.code() == Some(125)
            && last.starts_with("fim: ")
            && last.contains("does-not-exist")
            && !out.stderr.contains("panicked"),
        "{out:?}"
    );
    assert_eq!(entries(&outdir), vec![OsString::from("image")]);
    assert_eq!(
        fs::read(&image).ok().as_deref(),
        Some(&b"previous image"[..])
    );
}

#[test]
fn build_refuses_bad_inputs_with_one_line() {
    let work = tempdir();
    let good = work.path().join("good");
    put(&good, "file", b"content");
    let outdir = work.path().join("out");
    fs::create_dir(&outdir).expect("mkdir out");
    let image = outdir.join("image");
    let inputs = work.path().join("inputs");
    let not_tar = put(&inputs, "rootfs.tar.gz", b"this is not a tarball at all");
    let gz_garbage = put(&inputs, "garbage.tar.gz", b"\x1f\x8b\x08\x00garbage");
    let empty = put(&inputs, "empty.tar", b"");
    let fifo = inputs.join("fifo");
    fim_tests::fsutil::mknod(&fifo, libc::S_IFIFO, 0o644, 0, 0);
    let text_launcher = put(&inputs, "launcher", b"#!/bin/sh\n");

    for bad in [&not_tar, &gz_garbage, &empty, &fifo] {
        try_build(bad, &image).assert_clean_failure("fim: ");
        assert_eq!(entries(&outdir), Vec::<OsString>::new(), "after {bad:?}");
    }
    // -o naming a directory, and a launcher that is not an ELF.
    try_build(&good, &outdir).assert_clean_failure("fim: ");
    fim([
        OsStr::new("build"),
        good.as_os_str(),
        OsStr::new("-o"),
        image.as_os_str(),
        OsStr::new("--launcher"),
        text_launcher.as_os_str(),
    ])
    .assert_clean_failure("fim: ");
    assert_eq!(entries(&outdir), Vec::<OsString>::new());
    // An embedded tool must be static: a dynamically linked one is named and refused.
    let dynamic = std::env::current_exe().expect("this test binary");
    for option in ["--bwrap", "--fuse-overlayfs", "--unionfs"] {
        let out = fim([
            OsStr::new("build"),
            good.as_os_str(),
            OsStr::new("-o"),
            image.as_os_str(),
            OsStr::new(option),
            dynamic.as_os_str(),
        ]);
        out.assert_clean_failure("fim: ");
        assert!(
            out.stderr.contains("dynamically linked"),
            "{option}: {out:?}"
        );
        assert_eq!(entries(&outdir), Vec::<OsString>::new(), "after {option}");
    }
    assert_eq!(entries(&inputs).len(), 5, "inputs untouched");
}

#[test]
fn extract_into_a_non_empty_dir_is_refused() {
    let (work, src, image) = small_image();
    let dest = work.path().join("dest");
    put(&dest, "already-here", b"keep me");
    let before = snapshot(&dest);
    fim([OsStr::new("extract"), image.as_os_str(), dest.as_os_str()]).assert_clean_failure("fim: ");
    fim_tests::assert_same_tree(&before, &snapshot(&dest), "refused extract");
    // An existing empty directory is fine.
    let empty = work.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    fim([OsStr::new("extract"), image.as_os_str(), empty.as_os_str()]).assert_ok();
    assert_eq!(
        fs::read(empty.join("etc/motd")).ok(),
        fs::read(src.join("etc/motd")).ok()
    );
}

#[test]
fn image_commands_version_help_and_unknown() {
    let (_work, _src, image) = small_image();
    let v = image_run(&image, &["fim-version"]);
    v.assert_ok();
    assert_eq!(v.stdout.trim(), VERSION);
    let full = image_run(&image, &["fim-version", "full"]);
    full.assert_ok();
    assert!(full.stdout.contains("image format 3"), "{}", full.stdout);
    let help = image_run(&image, &["fim-help"]);
    help.assert_ok();
    for cmd in ["fim-overlay", "fim-version", "fim-help"] {
        assert!(
            help.stdout.contains(cmd),
            "fim-help lacks {cmd}: {}",
            help.stdout
        );
    }
    for topic in ["overlay", "fim-overlay"] {
        let t = image_run(&image, &["fim-help", topic]);
        t.assert_ok();
        assert!(t.stdout.contains("FIM_OVERLAY"), "{}", t.stdout);
    }
    image_run(&image, &["fim-help", "nope"]).assert_clean_failure("img: ");
    image_run(&image, &["fim-version", "bogus"]).assert_clean_failure("img: ");
    let unknown = image_run(&image, &["fim-unknown"]);
    unknown.assert_clean_failure("img: ");
    assert!(unknown.stderr.contains("fim-unknown"), "{}", unknown.stderr);
    // A FlatImage command of a later version says so.
    let planned = image_run(&image, &["fim-remote", "show"]);
    planned.assert_clean_failure("img: ");
    assert!(
        planned.stderr.contains("not available"),
        "{}",
        planned.stderr
    );
    // The launcher itself, without payload, answers fim-version too.
    let bare = run(Command::new(fim_boot_path()).arg("fim-version"));
    assert_eq!(bare.stdout.trim(), VERSION);
}

#[test]
fn boot_command_is_stored_in_the_reserved_block() {
    let work = tempdir();
    let src = work.path().join("src");
    put(&src, "bin/app", b"#!/bin/sh\n");
    let image = work.path().join("img");
    fim_tests::build_with(
        &[&src],
        &image,
        &[
            "--level",
            "3",
            "--boot",
            "/bin/app",
            "--flag",
            "two words",
            "-x",
        ],
    );
    let json = fim_tests::image::inspect_json(&image);
    assert_eq!(
        json.pointer("/reserved/fields/boot"),
        Some(&serde_json::json!({"program": "/bin/app", "args": ["--flag", "two words", "-x"]})),
        "{json}"
    );
    fim([OsStr::new("verify"), image.as_os_str()]).assert_ok();
}

#[test]
fn inspect_describes_a_consistent_layout() {
    let (work, src, image) = small_image();
    let two = work.path().join("two");
    build(&[&src, &src], &two);
    for img in [&image, &two] {
        let l = layout(img);
        let size = fs::metadata(img).map(|m| m.len()).unwrap_or(0);
        assert_eq!(l.size, size);
        assert_eq!(l.reserved_offset % 4096, 0);
        assert!(l.reserved_offset >= l.launcher_size);
        assert!(l.reserved_offset - l.launcher_size < 4096);
        assert_eq!(l.reserved_size, 524_288);
        let mut end = l.reserved_offset + l.reserved_size;
        for &(offset, len) in &l.layers {
            assert_eq!(offset % 4096, 0, "layer offset {offset}");
            assert!(offset >= end, "layers overlap");
            end = offset + len;
        }
        assert!(l.table_offset >= end);
        // One table entry per layer, and one per embedded tool: each static tool that
        // tools/build made beside fim.
        let tools = fim_tests::image::inspect_json(img)["tools"]
            .as_array()
            .map_or(0, Vec::len) as u64;
        let built = ["bwrap", "fuse-overlayfs", "unionfs"]
            .iter()
            .filter(|t| fim_tests::dist_dir().join(t).is_file())
            .count() as u64;
        assert_eq!(tools, built, "the embedded tools");
        assert_eq!(
            l.table_offset + 64 * (l.layers.len() as u64 + tools),
            l.footer_offset
        );
        assert_eq!(l.footer_offset + 64, size);
        let text = fim([OsStr::new("inspect"), img.as_os_str()]);
        text.assert_ok();
        for word in ["launcher", "reserved", "layer 0", "trailer"] {
            assert!(
                text.stdout.contains(word),
                "inspect lacks {word}: {}",
                text.stdout
            );
        }
    }
    assert_eq!(layout(&two).layers.len(), 2);
}

#[test]
fn mount_stops_on_sigint_and_refuses_bad_arguments() {
    if !require_fuse("mount_stops_on_sigint_and_refuses_bad_arguments") {
        return;
    }
    let (work, src, image) = small_image();
    let mnt = work.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir mnt");
    let mount = Mount::start(&image, &mnt);
    assert_eq!(
        fs::read(mnt.join("etc/motd")).ok(),
        fs::read(src.join("etc/motd")).ok()
    );
    mount.stop_with(libc::SIGINT);
    let mount = Mount::start(&image, &mnt);
    mount.stop_with(libc::SIGHUP);
    let file = src.join("etc/motd");
    for (img, dir) in [
        (image.as_path(), file.as_path()),
        (image.as_path(), &work.path().join("missing")),
        (&work.path().join("no-image"), mnt.as_path()),
        (file.as_path(), mnt.as_path()),
    ] {
        fim([OsStr::new("mount"), img.as_os_str(), dir.as_os_str()]).assert_clean_failure("fim: ");
    }
}

/// Messages name each thing once: no path or cause repeated along the error chain.
#[test]
fn error_messages_do_not_repeat_themselves() {
    let (work, _src, image) = small_image();
    let mut bytes = fs::read(&image).expect("read image");
    let l = layout(&image);
    bytes[(l.layers[0].0 + 100) as usize] ^= 1; // inside the layer superblock
    let damaged = work.path().join("damaged");
    fs::write(&damaged, &bytes).expect("write");
    let missing = work.path().join("missing-image");
    for path in [&damaged, &missing] {
        let out = fim([OsStr::new("verify"), path.as_os_str()]);
        out.assert_clean_failure("fim: ");
        let line = out.stderr.trim();
        let parts: Vec<&str> = line.split(": ").filter(|p| p.len() >= 8).collect();
        for (i, p) in parts.iter().enumerate() {
            assert!(
                !parts[i + 1..].contains(p),
                "`{p}` appears twice in: {line}"
            );
        }
    }
}

/// A tarball that plants a symlink to a directory outside the root and then puts a fifo
/// "inside" it is refused, and nothing is created outside.
#[test]
fn tarball_cannot_write_through_a_planted_symlink() {
    let work = tempfile::tempdir().expect("tempdir");
    let outside = work.path().join("outside");
    fs::create_dir(&outside).expect("mkdir outside");
    let tarball = work.path().join("evil.tar");
    {
        let file = fs::File::create(&tarball).expect("create tarball");
        let mut builder = tar::Builder::new(file);
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_mode(0o777);
        link.set_uid(0);
        link.set_gid(0);
        link.set_mtime(0);
        builder
            .append_link(&mut link, "escape", &outside)
            .expect("append symlink");
        let mut fifo = tar::Header::new_gnu();
        fifo.set_entry_type(tar::EntryType::Fifo);
        fifo.set_size(0);
        fifo.set_mode(0o644);
        fifo.set_uid(0);
        fifo.set_gid(0);
        fifo.set_mtime(0);
        builder
            .append_data(&mut fifo, "escape/planted", std::io::empty())
            .expect("append fifo");
        builder.finish().expect("finish tarball");
    }
    let out = work.path().join("image");
    let result = try_build(&tarball, &out);
    assert!(!result.success(), "an escaping archive was accepted");
    assert!(
        result.stderr.contains("outside the root"),
        "unclear refusal: {}",
        result.stderr
    );
    assert!(
        !outside.join("planted").exists(),
        "a fifo was planted outside"
    );
    assert!(!out.exists(), "a half-built image was left behind");
}

/// `fim build DIR -o DIR/app`: the image being written is not packed into itself.
#[test]
fn output_inside_the_input_is_not_packed_into_itself() {
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src");
    put(&src, "etc/hostname", b"fim\n");
    let image = src.join("app");
    for _ in 0..2 {
        // The second build also finds the first image at the output path.
        try_build(&src, &image).assert_ok();
    }
    let out = work.path().join("out");
    fim([OsStr::new("extract"), image.as_os_str(), out.as_os_str()]).assert_ok();
    let names: Vec<OsString> = fs::read_dir(&out)
        .expect("read extracted root")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, [OsString::from("etc")], "extracted root: {names:?}");
}

#[test]
fn an_output_that_is_a_device_fifo_or_symlink_is_never_replaced() {
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src");
    put(&src, "etc/hostname", b"fim\n");
    // What `-o /dev/null` would be, without risking the machine's /dev/null: a fifo. And a
    // symlink, which a rename would replace instead of writing where it points.
    let fifo = work.path().join("fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success());
    let link = work.path().join("link");
    std::os::unix::fs::symlink(work.path().join("target"), &link).expect("symlink");
    for out in [&fifo, &link] {
        let before = fs::symlink_metadata(out).expect("stat").file_type();
        let built = try_build(&src, out);
        built.assert_clean_failure(&format!("fim: creating {}: it is a", out.display()));
        assert_eq!(fs::symlink_metadata(out).expect("stat").file_type(), before);
    }
    // A layer file written by an image: `fim-layer create` the same.
    let image = work.path().join("app");
    try_build(&src, &image).assert_ok();
    let created = run(Command::new(&image)
        .args([
            OsStr::new("fim-layer"),
            "create".as_ref(),
            src.as_os_str(),
            fifo.as_os_str(),
        ])
        .env_remove("FIM_OVERLAY"));
    created.assert_clean_failure(&format!("app: cannot create {}: it is a", fifo.display()));
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::symlink_metadata(&fifo).expect("stat").file_type()
    ));
    // Nothing was left beside them: src, fifo, link, app.
    assert_eq!(entries(work.path()).len(), 4, "{:?}", entries(work.path()));
}

/// A reader that stops early ends `fim` quietly, as it ends any Unix tool: no panic
/// about a broken pipe.
#[test]
fn a_reader_that_stops_early_ends_fim_quietly() {
    let (_dir, _src, image) = small_image();
    // The reading end is closed before fim starts: its first print meets a broken pipe.
    // (Closed after the spawn, it would race with fim, which may have written by then.)
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = Command::new(fim_tests::fim_path())
        .args([OsStr::new("inspect"), image.as_os_str()])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run fim inspect");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGPIPE),
        "{stderr}"
    );
}
