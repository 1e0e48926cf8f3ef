//! Desktop integration end to end: `fim-desktop setup`/`enable`, what a run writes under
//! `$XDG_DATA_HOME`, checked with the real freedesktop tools (desktop-file-validate,
//! update-mime-database through the launcher, gio, xdg-mime), moves, stale entries,
//! `clean`, opt-outs and refusals. Each check runs as the invoker and as a created user.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use fim_tests::sandbox::{App, Who};
use fim_tests::{Output, for_both, run, skip, which};

/// An app image with a desktop setup file and icon beside it, and a data home of its own.
struct Desk {
    app: App,
    xdg: PathBuf,
}

const SETUP: &str = r#"{"name": "Demo Game", "icon": "icon.png", "categories": ["Game"],
  "comment": "A demo", "keywords": ["demo"], "startup_wm_class": "demo",
  "mime_types": ["text/plain", {"type": "application/x-demo-save", "globs": ["*.dsave"]}]}"#;

impl Desk {
    fn new(test: &str, who: Who) -> Option<Desk> {
        let app = App::new(test, who)?;
        let xdg = app.host_dir("xdg");
        let desk = Desk { app, xdg };
        desk.put("icon.png", &png(512, 384));
        desk.put("app.json", SETUP.as_bytes());
        Some(desk)
    }

    /// Writes `name` in the app's directory, owned by its user.
    fn put(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.app.dir.path().join(name);
        std::fs::write(&path, bytes).expect("write a test file");
        self.app.own(&path);
        path
    }

    /// `IMAGE ARGS` with this data home.
    fn run(&self, args: &[&str]) -> Output {
        self.run_image(&self.app.image, args, &[])
    }

    fn run_image(&self, image: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.app.program(image, args);
        cmd.env("XDG_DATA_HOME", &self.xdg)
            .env_remove("DESKTOPINTEGRATION");
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    }

    /// setup, then enable everything.
    fn integrate(&self) {
        self.run(&["fim-desktop", "setup", "app.json"]).assert_ok();
        self.run(&["fim-desktop", "enable", "entry,mimetype,icon"])
            .assert_ok();
    }

    /// Every file under the data home, relative to it.
    fn files(&self) -> Vec<PathBuf> {
        walk(&self.xdg)
            .into_iter()
            .map(|p| p.strip_prefix(&self.xdg).unwrap_or(&p).to_owned())
            .collect()
    }

    /// The files the integration owns: named after an id.
    fn ours(&self) -> Vec<PathBuf> {
        let mut ours: Vec<PathBuf> = self
            .files()
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("flatimage_"))
            .collect();
        ours.sort();
        ours
    }

    /// The one menu entry of ours, and its text.
    fn entry(&self) -> (PathBuf, String) {
        let entries: Vec<PathBuf> = self
            .ours()
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "desktop"))
            .collect();
        assert_eq!(entries.len(), 1, "one entry expected: {entries:?}");
        let path = self.xdg.join(&entries[0]);
        let text = std::fs::read_to_string(&path).expect("read the entry");
        (path, text)
    }

    /// A freedesktop tool run against this data home only.
    fn tool(&self, program: &Path, args: &[&OsStrLike]) -> Output {
        let config = self.xdg.join("../xdg-config");
        std::fs::create_dir_all(&config).expect("mkdir config");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("XDG_DATA_HOME", &self.xdg)
            .env("XDG_DATA_DIRS", "/usr/share")
            .env("XDG_CONFIG_HOME", &config)
            .env_remove("XDG_CURRENT_DESKTOP")
            .env_remove("DESKTOP_SESSION")
            .env_remove("KDE_FULL_SESSION")
            .env_remove("GNOME_DESKTOP_SESSION_ID");
        run(&mut cmd)
    }
}

type OsStrLike = std::ffi::OsStr;

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A real PNG of `w`x`h` pixels.
fn png(w: u32, h: u32) -> Vec<u8> {
    let picture = image::RgbaImage::from_fn(w, h, |x, y| {
        image::Rgba([(x % 256) as u8, (y % 256) as u8, 90, 255])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgba8(picture)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode a PNG");
    out.into_inner()
}

/// The tools a check needs, or `None` after saying which is missing.
fn tools<const N: usize>(test: &str, names: [&str; N]) -> Option<[PathBuf; N]> {
    let found: Vec<PathBuf> = names.iter().filter_map(|n| which(n)).collect();
    if found.len() < N {
        skip(&format!(
            "{test}: needs {} (packages desktop-file-utils, xdg-utils, libglib2.0-bin)",
            names.join(", ")
        ));
        return None;
    }
    found.try_into().ok()
}

fn value<'a>(entry: &'a str, key: &str) -> &'a str {
    entry
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in:\n{entry}"))
}

fn content_type(desk: &Desk, gio: &Path, file: &Path) -> String {
    let out = desk.tool(
        gio,
        &[
            "info".as_ref(),
            "-a".as_ref(),
            "standard::content-type".as_ref(),
            file.as_os_str(),
        ],
    );
    out.assert_ok();
    out.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("standard::content-type: "))
        .unwrap_or_else(|| panic!("no content type in {}", out.stdout))
        .to_owned()
}

for_both!(
    a_run_writes_a_valid_entry_sized_icons_and_file_types,
    an_unchanged_image_is_not_written_again,
    a_moved_image_gets_its_entry_rewritten_and_the_old_one_removed,
    clean_stale_and_clean_leave_nothing_of_ours,
    opt_outs_and_enable_none_write_nothing,
    bad_setups_are_refused_and_leave_the_image_identical,
);

fn a_run_writes_a_valid_entry_sized_icons_and_file_types(who: Who) {
    let test = "a_run_writes_a_valid_entry_sized_icons_and_file_types";
    let Some([validate, gio, xdg_mime]) = tools(test, ["desktop-file-validate", "gio", "xdg-mime"])
    else {
        return;
    };
    let Some(desk) = Desk::new(test, who) else {
        return;
    };
    desk.integrate();
    // What enable wrote is gone: one run writes it all again.
    std::fs::remove_dir_all(&desk.xdg).expect("empty the data home");
    desk.app.host_dir("xdg");
    desk.run(&["fim-exec", "sh", "-c", "true"]).assert_ok();

    let (path, entry) = desk.entry();
    desk.tool(&validate, &[path.as_os_str()]).assert_ok();
    let image = desk.app.image.to_str().expect("UTF-8 path");
    assert_eq!(value(&entry, "Exec"), format!("\"{image}\" %F"));
    assert_eq!(value(&entry, "TryExec"), image);
    assert_eq!(value(&entry, "Name"), "Demo Game");
    assert_eq!(
        value(&entry, "MimeType"),
        "text/plain;application/x-demo-save;"
    );
    let id = path
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("id")
        .to_owned();
    assert_eq!(value(&entry, "Icon"), id);

    // Every icon has the size its directory claims; a 512x384 picture fills them all.
    let icons: Vec<PathBuf> = desk
        .ours()
        .into_iter()
        .filter(|p| p.starts_with("icons/hicolor"))
        .collect();
    assert_eq!(icons.len(), 10, "{icons:?}");
    for icon in icons {
        let size_dir = icon.components().nth(2).expect("size directory");
        let claimed = size_dir.as_os_str().to_string_lossy().into_owned();
        let picture = image::open(desk.xdg.join(&icon)).expect("decode an icon");
        assert_eq!(
            format!("{}x{}", picture.width(), picture.height()),
            claimed,
            "{icon:?}"
        );
    }

    // The image's own type, by its name; any image by its mark at byte 8; documents of a
    // declared type open with the app.
    assert_eq!(&desk.app.image_bytes()[8..11], b"FI\x01");
    let own = content_type(&desk, &gio, &desk.app.image);
    assert!(own.starts_with("application/x-flatimage-"), "{own}");
    let renamed = desk.app.dir.path().join("renamed.bin");
    std::fs::copy(&desk.app.image, &renamed).expect("copy the image");
    assert_eq!(
        content_type(&desk, &gio, &renamed),
        "application/x-flatimage"
    );
    let save = desk.put("level1.dsave", b"save\0\x01");
    assert_eq!(content_type(&desk, &gio, &save), "application/x-demo-save");
    let default = desk.tool(
        &xdg_mime,
        &[
            "query".as_ref(),
            "default".as_ref(),
            "application/x-demo-save".as_ref(),
        ],
    );
    assert_eq!(default.assert_ok().stdout.trim(), format!("{id}.desktop"));

    // dump gives what the run wrote, and the icon as it was stored.
    let dumped = desk.app.dir.path().join("dumped");
    desk.run(&["fim-desktop", "dump", "entry", "-"]).assert_ok();
    assert_eq!(
        desk.run(&["fim-desktop", "dump", "entry", "-"]).stdout,
        entry
    );
    let dumped_icon = dumped.with_extension("png");
    desk.run(&[
        "fim-desktop",
        "dump",
        "icon",
        dumped_icon.to_str().expect("UTF-8"),
    ])
    .assert_ok();
    assert_eq!(
        std::fs::read(&dumped_icon).expect("read dump"),
        png(512, 384)
    );
}

fn an_unchanged_image_is_not_written_again(who: Who) {
    let Some(desk) = Desk::new("an_unchanged_image_is_not_written_again", who) else {
        return;
    };
    desk.integrate();
    let stamp = |desk: &Desk| -> Vec<(PathBuf, std::time::SystemTime)> {
        desk.ours()
            .into_iter()
            .map(|p| {
                let t = std::fs::metadata(desk.xdg.join(&p)).and_then(|m| m.modified());
                (p, t.expect("mtime"))
            })
            .collect()
    };
    let before = stamp(&desk);
    // Twice: the second run joins the first one's lingering session.
    for _ in 0..2 {
        let out = desk.run_image(
            &desk.app.image,
            &["fim-exec", "sh", "-c", "true"],
            &[("FIM_DEBUG", "1")],
        );
        out.assert_ok();
        assert!(
            !out.stderr.contains("desktop integration flatimage_"),
            "{}",
            out.stderr
        );
    }
    assert_eq!(stamp(&desk), before);
}

fn a_moved_image_gets_its_entry_rewritten_and_the_old_one_removed(who: Who) {
    let test = "a_moved_image_gets_its_entry_rewritten_and_the_old_one_removed";
    let Some(desk) = Desk::new(test, who) else {
        return;
    };
    desk.integrate();
    let (old_path, _) = desk.entry();
    let moved = desk.app.dir.path().join("Moved Game.flatimage");
    std::fs::rename(&desk.app.image, &moved).expect("move the image");
    desk.run_image(&moved, &["fim-exec", "sh", "-c", "true"], &[])
        .assert_ok();
    let (new_path, entry) = desk.entry();
    assert_ne!(new_path, old_path);
    assert!(!old_path.exists());
    let moved_text = moved.to_str().expect("UTF-8 path");
    assert_eq!(value(&entry, "Exec"), format!("\"{moved_text}\" %F"));
    let old_id = old_path
        .file_stem()
        .expect("id")
        .to_string_lossy()
        .into_owned();
    assert!(
        desk.ours()
            .iter()
            .all(|p| !p.to_string_lossy().contains(&old_id)),
        "{:?}",
        desk.ours()
    );
}

fn clean_stale_and_clean_leave_nothing_of_ours(who: Who) {
    let Some(desk) = Desk::new("clean_stale_and_clean_leave_nothing_of_ours", who) else {
        return;
    };
    let before: Vec<PathBuf> = desk.files();
    desk.integrate();
    let other = desk.app.dir.path().join("other.flatimage");
    std::fs::copy(&desk.app.image, &other).expect("copy the image");
    desk.app.own(&other);
    desk.run_image(&other, &["fim-exec", "sh", "-c", "true"], &[])
        .assert_ok();
    let ids = |desk: &Desk| -> Vec<String> {
        let mut ids: Vec<String> = desk
            .ours()
            .iter()
            .filter(|p| p.starts_with("applications"))
            .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect();
        ids.sort();
        ids
    };
    let both = ids(&desk);
    assert_eq!(both.len(), 2, "{both:?}");

    // The first image is deleted; the other one removes its files.
    std::fs::remove_file(&desk.app.image).expect("delete the image");
    let out = desk.run_image(&other, &["fim-desktop", "clean", "--stale"], &[]);
    out.assert_ok();
    let left = ids(&desk);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(out.stderr.contains("its image is gone"), "{}", out.stderr);

    // clean: no file of ours, and no cache that names us.
    desk.run_image(&other, &["fim-desktop", "clean"], &[])
        .assert_ok();
    assert_eq!(desk.ours(), Vec::<PathBuf>::new());
    for file in desk.files() {
        let bytes = std::fs::read(desk.xdg.join(&file)).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for id in &both {
            assert!(!text.contains(id.as_str()), "{file:?} still names {id}");
        }
        assert!(
            !text.contains("x-flatimage"),
            "{file:?} still names our types"
        );
    }
    // What was there before is still there.
    let after = desk.files();
    assert!(before.iter().all(|f| after.contains(f)));
}

fn opt_outs_and_enable_none_write_nothing(who: Who) {
    let Some(desk) = Desk::new("opt_outs_and_enable_none_write_nothing", who) else {
        return;
    };
    desk.run(&["fim-desktop", "setup", "app.json"]).assert_ok();
    let enable = ["fim-desktop", "enable", "entry,mimetype,icon"];
    let off = desk.run_image(&desk.app.image, &enable, &[("DESKTOPINTEGRATION", "0")]);
    off.assert_ok();
    assert!(
        off.stderr.contains("DESKTOPINTEGRATION=0"),
        "{}",
        off.stderr
    );
    desk.run_image(
        &desk.app.image,
        &["fim-exec", "sh", "-c", "true"],
        &[("DESKTOPINTEGRATION", "0")],
    )
    .assert_ok();
    assert_eq!(desk.ours(), Vec::<PathBuf>::new());

    let marker = desk.xdg.join("appimagekit/no_desktopintegration");
    std::fs::create_dir_all(marker.parent().expect("parent")).expect("mkdir appimagekit");
    std::fs::write(&marker, b"").expect("write the marker");
    desk.run(&["fim-exec", "sh", "-c", "true"]).assert_ok();
    assert_eq!(desk.ours(), Vec::<PathBuf>::new());
    std::fs::remove_file(&marker).expect("remove the marker");

    desk.run(&["fim-exec", "sh", "-c", "true"]).assert_ok();
    assert!(!desk.ours().is_empty());
    desk.run(&["fim-desktop", "enable", "none"]).assert_ok();
    assert_eq!(desk.ours(), Vec::<PathBuf>::new());
    desk.run(&["fim-exec", "sh", "-c", "true"]).assert_ok();
    assert_eq!(desk.ours(), Vec::<PathBuf>::new());
}

fn bad_setups_are_refused_and_leave_the_image_identical(who: Who) {
    let test = "bad_setups_are_refused_and_leave_the_image_identical";
    let Some(desk) = Desk::new(test, who) else {
        return;
    };
    let original = desk.app.image_bytes();
    let mut big = b"\x89PNG\r\n\x1a\n".to_vec();
    big.resize(5 << 20, 7);
    desk.put("big.png", &big);
    desk.put("notes.txt", b"just some text\n");
    let cases = [
        (
            r#"{"name": "A", "icon": "icon.png", "colour": "red"}"#,
            "unknown field `colour`",
        ),
        (r#"{"name": "A", "icon": "icon.png""#, "EOF"),
        (r#"{"name": "A", "icon": "big.png"}"#, "at most"),
        (
            r#"{"name": "A", "icon": "notes.txt"}"#,
            "is not a PNG or SVG image",
        ),
        (r#"{"name": "A", "icon": "missing.png"}"#, "cannot be read"),
        (
            r#"{"name": "A", "icon": "icon.png", "mime_types": ["nonsense"]}"#,
            "type/subtype",
        ),
    ];
    for (json, reason) in cases {
        desk.put("bad.json", json.as_bytes());
        let out = desk.run(&["fim-desktop", "setup", "bad.json"]);
        out.assert_clean_failure("app.flatimage: ");
        assert!(out.stderr.contains(reason), "{json}: {}", out.stderr);
        assert!(
            desk.app.image_bytes() == original,
            "{json} changed the image"
        );
    }
    for args in [
        &["fim-desktop", "enable", "entry,menu"][..],
        &["fim-desktop", "enable", "entry"],
        &["fim-desktop", "dump", "entry", "-"],
        &["fim-desktop", "frobnicate"],
    ] {
        desk.run(args).assert_clean_failure("app.flatimage: ");
        assert!(
            desk.app.image_bytes() == original,
            "{args:?} changed the image"
        );
    }
    assert_eq!(desk.ours(), Vec::<PathBuf>::new());
}

#[test]
fn build_with_desktop_sets_it_at_pack_time_and_an_svg_is_installed_as_it_is() {
    let test = "build_with_desktop_sets_it_at_pack_time_and_an_svg_is_installed_as_it_is";
    let dir = fim_tests::tempdir();
    let svg = br#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 8 8"><rect width="8" height="8"/></svg>"#;
    std::fs::write(dir.path().join("icon.svg"), svg).expect("write svg");
    let json = r#"{"name": "Vector", "icon": "icon.svg", "categories": ["Utility"],
                   "enable": ["entry", "icon"]}"#;
    let setup = dir.path().join("vector.json");
    std::fs::write(&setup, json).expect("write json");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    let image = dir.path().join("vector.flatimage");
    fim_tests::build_with(
        &[&root],
        &image,
        &["--desktop", setup.to_str().expect("UTF-8")],
    )
    .assert_ok();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"name": "A", "icon": "icon.svg", "x": 1}"#).expect("write json");
    let refused = dir.path().join("refused.flatimage");
    let mut args = vec![OsString::from("build"), root.clone().into()];
    args.extend([
        "-o".into(),
        refused.clone().into(),
        "--desktop".into(),
        bad.into(),
    ]);
    fim_tests::fim(args).assert_clean_failure("fim: ");
    assert!(!refused.exists(), "a refused build left an image behind");

    let Some(desk) = Desk::new(test, Who::Invoker) else {
        return;
    };
    std::fs::copy(&image, &desk.app.image).expect("copy the image");
    let show = desk.run(&["fim-desktop", "show"]);
    assert!(
        show.assert_ok().stdout.contains("\"name\": \"Vector\""),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout.contains("integration: entry,icon"),
        "{}",
        show.stdout
    );
    let id = show
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("id line")
        .to_owned();
    // A bare root: `fim-desktop enable` writes without a run.
    desk.run(&["fim-desktop", "enable", "entry,icon"])
        .assert_ok();
    let installed = desk
        .xdg
        .join(format!("icons/hicolor/scalable/apps/{id}.svg"));
    assert_eq!(std::fs::read(&installed).expect("read the svg"), svg);
    assert!(
        desk.xdg
            .join(format!("applications/{id}.desktop"))
            .is_file()
    );
    assert!(!desk.xdg.join(format!("mime/packages/{id}.xml")).exists());
}
