//! `fim build` of Docker and OCI images made by a real tool (buildah, offline, from a
//! busybox root filesystem): each archive kind keeps its layers, deletions, boot command
//! and environment; compressed layers, hard links and xattrs come through; a damaged or
//! incomplete archive is refused before anything is written; a tar that is neither
//! format is still packed as a root filesystem.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use fim_tests::image::inspect_json;
use fim_tests::sandbox::{App, Who, tools_dir};
use fim_tests::{build_with, fim, is_root, run, skip, tempdir, which};

/// The images of this file, made once per test process by buildah.
struct Images {
    /// Kept for the paths below; removed at exit.
    dir: PathBuf,
    /// `app`: a busybox layer, then one that deletes /etc/marker and replaces
    /// /srv/replace; Entrypoint ["/bin/echo","hi"], Cmd ["x"], Env FOO=bar.
    docker_archive: PathBuf,
    oci_archive: PathBuf,
    /// `oci:` with buildah's default gzip layers.
    oci_layout: PathBuf,
    /// The same image with zstd layers, pushed first: buildah 1.28 reuses the gzip blobs
    /// of an earlier push (and ignores `-D` for `oci:`; the docker archive's layers are
    /// the uncompressed ones).
    zstd_layout: PathBuf,
    /// `app` plus a layer with a hard link and an xattr, User 4242:4343, WorkingDir /srv.
    linked_layout: PathBuf,
    /// One layout holding `app` as `one` and `linked` as `two`.
    tagged_layout: PathBuf,
    /// Layers of `app` as buildah counts them, and its image ID.
    app_layers: usize,
    app_id: String,
}

static IMAGES: OnceLock<Option<Images>> = OnceLock::new();

extern "C" fn remove_images() {
    if let Some(Some(images)) = IMAGES.get() {
        let _ = std::fs::remove_dir_all(&images.dir);
    }
}

/// The images, or `None` after printing why they cannot be made here.
fn images(test: &str) -> Option<&'static Images> {
    let images = IMAGES.get_or_init(|| {
        which("buildah")?;
        is_root().then(make_images)
    });
    if images.is_none() {
        skip(&format!(
            "{test}: needs buildah (apt-get install buildah) and root for its storage"
        ));
    }
    images.as_ref()
}

/// buildah with storage of its own in `dir`, so tests share nothing with the host's.
fn buildah(dir: &Path, args: &[&str]) -> String {
    let out = run(Command::new("buildah")
        .arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("runroot"))
        .args(["--storage-driver", "vfs"])
        .args(args)
        .env("BUILDAH_ISOLATION", "chroot"));
    out.assert_ok();
    out.stdout.trim().to_string()
}

fn make_images() -> Images {
    let dir = tempdir().keep();
    // SAFETY: registers a plain function to run at exit.
    unsafe { libc::atexit(remove_images) };
    let rootfs = dir.join("rootfs");
    run(Command::new(tools_dir().join("make-test-rootfs")).arg(&rootfs)).assert_ok();
    for (path, text) in [
        ("etc/marker", "marker\n"),
        ("srv/replace/old.txt", "old\n"),
        ("srv/replace/sub/deep.txt", "deep\n"),
    ] {
        let path = rootfs.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
    let linked = dir.join("linked");
    std::fs::create_dir_all(&linked).expect("mkdir");
    std::fs::write(linked.join("a"), "same\n").expect("write");
    std::fs::hard_link(linked.join("a"), linked.join("b")).expect("link");
    xattr::set(linked.join("a"), "user.fim", b"kept").expect("xattr");

    let b = |args: &[&str]| buildah(&dir, args);
    let rootfs_text = rootfs.to_string_lossy().into_owned();
    let base = b(&["from", "scratch"]);
    b(&["copy", &base, &format!("{rootfs_text}/"), "/"]);
    b(&["commit", "-q", &base, "base"]);
    let app = b(&["from", "base"]);
    b(&[
        "run",
        "--isolation",
        "chroot",
        &app,
        "--",
        "sh",
        "-c",
        "rm /etc/marker; rm -rf /srv/replace; mkdir /srv/replace; echo new > /srv/replace/new.txt",
    ]);
    b(&[
        "config",
        "--entrypoint",
        r#"["/bin/echo","hi"]"#,
        "--cmd",
        "x",
        "--env",
        "FOO=bar",
        &app,
    ]);
    b(&["commit", "-q", &app, "app"]);
    let two = b(&["from", "app"]);
    b(&["copy", &two, &linked.to_string_lossy(), "/linked"]);
    b(&[
        "config",
        "--user",
        "4242:4343",
        "--workingdir",
        "/srv",
        &two,
    ]);
    b(&["commit", "-q", &two, "linked"]);

    let path = |name: &str| dir.join(name);
    let at = |p: &PathBuf| p.to_string_lossy().into_owned();
    let images = Images {
        docker_archive: path("app-docker.tar"),
        oci_archive: path("app-oci.tar"),
        oci_layout: path("app-layout"),
        zstd_layout: path("app-zstd"),
        linked_layout: path("linked-layout"),
        tagged_layout: path("tagged-layout"),
        app_layers: b(&[
            "inspect",
            "--type",
            "image",
            "--format",
            "{{len .OCIv1.RootFS.DiffIDs}}",
            "app",
        ])
        .parse()
        .expect("a layer count"),
        app_id: b(&[
            "inspect",
            "--type",
            "image",
            "--format",
            "{{.FromImageID}}",
            "app",
        ]),
        dir: dir.clone(),
    };
    let ref_ = "localhost/app:latest";
    b(&[
        "push",
        "-q",
        "--compression-format",
        "zstd",
        "app",
        &format!("oci:{}:latest", at(&images.zstd_layout)),
    ]);
    b(&[
        "push",
        "-q",
        "app",
        &format!("docker-archive:{}:{ref_}", at(&images.docker_archive)),
    ]);
    b(&[
        "push",
        "-q",
        "app",
        &format!("oci-archive:{}:{ref_}", at(&images.oci_archive)),
    ]);
    b(&[
        "push",
        "-q",
        "app",
        &format!("oci:{}:latest", at(&images.oci_layout)),
    ]);
    b(&[
        "push",
        "-q",
        "linked",
        &format!("oci:{}:latest", at(&images.linked_layout)),
    ]);
    b(&[
        "push",
        "-q",
        "app",
        &format!("oci:{}:one", at(&images.tagged_layout)),
    ]);
    b(&[
        "push",
        "-q",
        "linked",
        &format!("oci:{}:two", at(&images.tagged_layout)),
    ]);
    images
}

/// `fim build INPUT -o DIR/NAME EXTRA...`, which must succeed.
fn import(input: &Path, dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    build_with(&[input], &out, &[&["--level", "3"][..], extra].concat());
    out
}

fn layer_count(image: &Path) -> usize {
    inspect_json(image)["layers"].as_array().map_or(0, Vec::len)
}

/// stdout of `IMAGE ARGS...`, which must succeed.
fn output(app: &App, args: &[&str]) -> String {
    let out = run(&mut app.command(args));
    out.assert_ok();
    out.stdout
}

/// Everything an import of `app` must show, whatever the archive kind.
fn imports_app_with_layers_deletions_boot_and_env(test: &str, pick: fn(&Images) -> &PathBuf) {
    let Some(images) = images(test) else { return };
    let dir = tempdir();
    let image = import(pick(images), dir.path(), "app.flatimage", &[]);
    assert_eq!(
        layer_count(&image),
        images.app_layers,
        "one fim layer per image layer"
    );
    assert!(images.app_layers >= 2);
    let origin = &inspect_json(&image)["reserved"]["fields"]["origin"];
    assert_eq!(
        origin["config"]
            .as_str()
            .map(|c| c.trim_start_matches("sha256:")),
        Some(images.app_id.trim_start_matches("sha256:")),
        "{origin}"
    );
    let Some(app) = App::from_image(test, Who::Invoker, &image) else {
        return;
    };
    assert_eq!(output(&app, &[]), "hi x\n", "Entrypoint + Cmd");
    assert_eq!(output(&app, &["y"]), "hi y\n", "arguments replace Cmd");
    assert_eq!(
        output(&app, &["fim-exec", "sh", "-c", "echo $FOO"]),
        "bar\n"
    );
    assert!(
        output(&app, &["fim-env", "list"])
            .lines()
            .any(|l| l == "FOO=bar")
    );
    // One session, so a lower file found by name after its directory was replaced
    // would show here (fuse-overlayfs's trap): the replaced directory holds only its
    // new entries.
    let probe = "test -e /etc/marker && echo marker; ls -A /srv/replace; \
                 cat /srv/replace/old.txt 2>/dev/null; cat /srv/replace/sub/deep.txt 2>/dev/null; true";
    assert_eq!(output(&app, &["fim-exec", "sh", "-c", probe]), "new.txt\n");
}

#[test]
fn a_docker_archive_keeps_its_layers_deletions_boot_command_and_env() {
    imports_app_with_layers_deletions_boot_and_env("docker_archive", |i| &i.docker_archive);
    // Its layers are plain (uncompressed) tars: the third media type fim reads.
    let Some(images) = images("docker_archive") else {
        return;
    };
    let member = |name: &str| {
        let out = std::process::Command::new("tar")
            .arg("-xOf")
            .arg(&images.docker_archive)
            .arg(name)
            .output()
            .expect("tar");
        assert!(out.status.success(), "tar -xOf {name}");
        out.stdout
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&member("manifest.json")).expect("manifest.json");
    let first = manifest[0]["Layers"][0].as_str().expect("a layer");
    let layer = member(first);
    assert_eq!(&layer[257..262], b"ustar", "{first} is an uncompressed tar");
}

#[test]
fn an_oci_archive_keeps_its_layers_deletions_boot_command_and_env() {
    imports_app_with_layers_deletions_boot_and_env("oci_archive", |i| &i.oci_archive);
}

#[test]
fn an_oci_layout_keeps_its_layers_deletions_boot_command_and_env() {
    imports_app_with_layers_deletions_boot_and_env("oci_layout", |i| &i.oci_layout);
}

/// The media types of `layout`'s layers (its only manifest).
fn layer_media_types(layout: &Path) -> Vec<String> {
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("JSON")
    };
    let index = read(layout.join("index.json"));
    let digest = index["manifests"][0]["digest"].as_str().expect("digest");
    let manifest = read(layout.join("blobs/sha256").join(&digest[7..]));
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn gzip_and_zstd_layers_are_read_as_the_docker_archives_plain_tar_ones() {
    let Some(images) = images("layer_compressions") else {
        return;
    };
    let dir = tempdir();
    for (layout, suffix) in [
        (&images.oci_layout, "tar+gzip"),
        (&images.zstd_layout, "tar+zstd"),
    ] {
        let types = layer_media_types(layout);
        assert!(
            types.iter().all(|t| t.ends_with(&format!(".{suffix}"))),
            "{types:?}"
        );
        let image = import(layout, dir.path(), &format!("app-{suffix}"), &[]);
        assert_eq!(layer_count(&image), images.app_layers);
        let Some(app) = App::from_image("layer_compressions", Who::Invoker, &image) else {
            return;
        };
        assert_eq!(output(&app, &[]), "hi x\n", "{suffix}");
    }
}

#[test]
fn hard_links_and_xattrs_survive_and_user_and_workdir_are_honoured() {
    let Some(images) = images("linked") else {
        return;
    };
    let dir = tempdir();
    let image = import(&images.linked_layout, dir.path(), "linked.flatimage", &[]);
    assert_eq!(layer_count(&image), images.app_layers + 1);
    let out = dir.path().join("out");
    fim([OsStr::new("extract"), image.as_os_str(), out.as_os_str()]).assert_ok();
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(out.join("linked/a")).expect("a");
    let b = std::fs::metadata(out.join("linked/b")).expect("b");
    assert_eq!(
        (a.ino(), a.nlink()),
        (b.ino(), 2),
        "a hard link stays a hard link"
    );
    assert_eq!(
        xattr::get(out.join("linked/a"), "user.fim").expect("xattr"),
        Some(b"kept".to_vec())
    );
    let Some(app) = App::from_image("linked", Who::Invoker, &image) else {
        return;
    };
    // The test runs from a directory the image lacks: WorkingDir is the start directory.
    assert_eq!(
        output(&app, &["fim-exec", "sh", "-c", "id -u; id -g; pwd"]),
        "4242\n4343\n/srv\n"
    );
    let env = output(&app, &["fim-env", "list"]);
    assert!(
        env.contains("UID=4242") && env.contains("GID=4343"),
        "{env}"
    );
}

#[test]
fn squash_merges_the_layers_into_one_with_deletions_applied() {
    let Some(images) = images("squash") else {
        return;
    };
    let dir = tempdir();
    let image = import(&images.oci_archive, dir.path(), "squashed", &["--squash"]);
    assert_eq!(layer_count(&image), 1);
    let out = dir.path().join("out");
    fim([OsStr::new("extract"), image.as_os_str(), out.as_os_str()]).assert_ok();
    assert!(!out.join("etc/marker").exists());
    let names: Vec<_> = std::fs::read_dir(out.join("srv/replace"))
        .expect("replace")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["new.txt"]);
    assert!(!out.join("etc/.wh.marker").exists());
}

#[test]
fn several_tagged_images_need_a_tag_and_the_error_names_them() {
    let Some(images) = images("tags") else { return };
    let dir = tempdir();
    let out = dir.path().join("any");
    let refused = fim([
        OsStr::new("build"),
        images.tagged_layout.as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
    ]);
    refused.assert_clean_failure("fim: ");
    assert!(
        refused.stderr.contains("one, two") && refused.stderr.contains("--tag"),
        "{}",
        refused.stderr
    );
    assert!(!out.exists());
    let two = import(&images.tagged_layout, dir.path(), "two", &["--tag", "two"]);
    assert_eq!(layer_count(&two), images.app_layers + 1);
    let refused = fim([
        OsStr::new("build"),
        images.tagged_layout.as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
        OsStr::new("--platform"),
        OsStr::new("linux/arm64"),
        OsStr::new("--tag"),
        OsStr::new("one"),
    ]);
    refused.assert_clean_failure("fim: ");
    assert!(refused.stderr.contains("linux/amd64"), "{}", refused.stderr);
}

/// A copy of `layout` to damage.
fn copy_layout(layout: &Path, to: &Path) {
    run(Command::new("cp").arg("-a").arg(layout).arg(to)).assert_ok();
}

/// The path of the largest blob of a layout (a layer).
fn largest_blob(layout: &Path) -> PathBuf {
    std::fs::read_dir(layout.join("blobs/sha256"))
        .expect("blobs")
        .map(|e| e.expect("entry").path())
        .max_by_key(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .expect("a blob")
}

#[test]
fn a_flipped_byte_in_a_blob_is_refused_and_nothing_is_written() {
    let Some(images) = images("flipped") else {
        return;
    };
    let dir = tempdir();
    let layout = dir.path().join("layout");
    copy_layout(&images.oci_layout, &layout);
    let blob = largest_blob(&layout);
    let mut bytes = std::fs::read(&blob).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&blob, bytes).expect("write");
    let out = dir.path().join("app");
    let refused = fim([
        OsStr::new("build"),
        layout.as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
    ]);
    refused.assert_clean_failure("fim: ");
    let name = blob
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        refused.stderr.contains(&format!("blob sha256:{name}"))
            && refused.stderr.contains("does not match its digest"),
        "{}",
        refused.stderr
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["layout"], "no output and no temporary file is left");

    // The same in a docker archive, whose layers are checked against the config's diff_ids.
    let archive = dir.path().join("app-docker.tar");
    std::fs::copy(&images.docker_archive, &archive).expect("copy");
    // Flip a byte in the middle of the archive: inside the big busybox layer.
    let mut bytes = std::fs::read(&archive).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&archive, bytes).expect("write");
    let refused = fim([
        OsStr::new("build"),
        archive.as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
    ]);
    refused.assert_clean_failure("fim: ");
    assert!(
        refused.stderr.contains("does not match"),
        "{}",
        refused.stderr
    );
    assert!(!out.exists());
}

#[test]
fn a_manifest_naming_a_missing_blob_is_refused() {
    let Some(images) = images("missing") else {
        return;
    };
    let dir = tempdir();
    let layout = dir.path().join("layout");
    copy_layout(&images.oci_layout, &layout);
    let blob = largest_blob(&layout);
    std::fs::remove_file(&blob).expect("remove");
    let out = dir.path().join("app");
    let refused = fim([
        OsStr::new("build"),
        layout.as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
    ]);
    refused.assert_clean_failure("fim: ");
    let name = blob
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        refused.stderr.contains(&format!("sha256:{name}"))
            && refused.stderr.contains("does not hold"),
        "{}",
        refused.stderr
    );
    assert!(!out.exists());
}

#[test]
fn a_tar_that_is_neither_format_is_packed_as_a_root_filesystem() {
    let dir = tempdir();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    std::fs::write(root.join("etc/hostname"), "box\n").expect("write");
    // A manifest.json of its own does not make a root filesystem an image.
    std::fs::write(root.join("manifest.json"), "[]").expect("write");
    let tarball = dir.path().join("root.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tarball)
        .args(["etc", "manifest.json"]))
    .assert_ok();
    let image = dir.path().join("image");
    let built = build_with(&[&tarball], &image, &["--level", "3"]);
    assert!(!built.stderr.contains("importing"), "{}", built.stderr);
    let out = dir.path().join("out");
    fim([OsStr::new("extract"), image.as_os_str(), out.as_os_str()]).assert_ok();
    assert_eq!(
        std::fs::read_to_string(out.join("manifest.json")).expect("read"),
        "[]"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("etc/hostname")).expect("read"),
        "box\n"
    );
    assert!(inspect_json(&image)["reserved"]["fields"]["origin"].is_null());
}
