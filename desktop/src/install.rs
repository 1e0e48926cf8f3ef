//! The files of an integration under `$XDG_DATA_HOME` (default `~/.local/share`), named
//! after the image's desktop id, and the manifest that lists them:
//!
//! ```text
//! applications/<id>.desktop                  the menu entry (entry)
//! mime/packages/<id>.xml                     the image's type and the app's documents (mimetype)
//! icons/hicolor/NxN/apps/<id>.png            the icon, per size (icon); an SVG goes to
//! icons/hicolor/scalable/apps/<id>.svg       scalable/ as it is
//! flatimage/desktop/<id>.json                manifest: the image's path, a stamp of what was
//!                                            written, and every file written
//! ```
//!
//! The id follows AppImage's naming, `flatimage_<md5 of the image's file:// URI>-<name>`:
//! two copies of one app in different places get different ids, and a moved image gets a
//! new one while the old entry, whose image is gone, is stale. Stale entries are removed
//! by [`clean_stale`] and by every [`Integration::install`]. A manifest only ever removes
//! files of its own id under the three places above, so a damaged one cannot remove
//! anything else. Files are written to a temporary name and renamed, so a reader never
//! sees half an entry. After a change the caches are refreshed with the freedesktop tools
//! when they are installed: update-desktop-database, update-mime-database,
//! gtk-update-icon-cache.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use fim_reserved::Icon;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::icon::{IconKind, render_png};
use crate::{DesktopError, Settings, desktop_entry, mime_package};

const APPLICATIONS: &str = "applications";
const MIME: &str = "mime";
const MIME_PACKAGES: &str = "mime/packages";
const ICONS: &str = "icons/hicolor";
const MANIFESTS: &str = "flatimage/desktop";
/// Bumped when the files written for the same settings change, so old ones are rewritten.
const WRITER_VERSION: u32 = 1;

/// `$XDG_DATA_HOME` if it is an absolute path, else `$HOME/.local/share`; `env` reads the
/// environment.
pub fn data_home(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let absolute = |v: OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    env("XDG_DATA_HOME").and_then(absolute).or_else(|| {
        env("HOME")
            .and_then(absolute)
            .map(|h| h.join(".local/share"))
    })
}

/// Why the user does not want desktop integration, if they said so the way AppImage users
/// do: `DESKTOPINTEGRATION=0` (or false, no, off), or a `no_desktopintegration` file in
/// `<data home>/appimagekit/`, `/usr/share/appimagekit/` or `/etc/appimagekit/`.
pub fn opted_out(env: impl Fn(&str) -> Option<OsString>, home: &Path) -> Option<String> {
    if let Some(value) = env("DESKTOPINTEGRATION") {
        let value = value.to_string_lossy().to_ascii_lowercase();
        if ["0", "false", "no", "off"].contains(&value.as_str()) {
            return Some(format!("DESKTOPINTEGRATION={value}"));
        }
    }
    [
        home.join("appimagekit/no_desktopintegration"),
        PathBuf::from("/usr/share/appimagekit/no_desktopintegration"),
        PathBuf::from("/etc/appimagekit/no_desktopintegration"),
    ]
    .into_iter()
    .find(|marker| marker.exists())
    .map(|marker| format!("{} exists", marker.display()))
}

/// `flatimage_<md5 of file://PATH>-<name>`, the name reduced to letters, digits and `_`.
pub fn desktop_id(image: &Path, name: &str) -> String {
    let mut uri = b"file://".to_vec();
    for &b in image.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            uri.push(b);
        } else {
            uri.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    let digest = Md5::digest(&uri);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let slug: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(64)
        .collect();
    format!("flatimage_{hex}-{slug}")
}

/// What an integration wrote: the image it points at, a stamp of its content, its files
/// (relative to the data home).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub image: PathBuf,
    pub stamp: String,
    pub files: Vec<PathBuf>,
}

impl Manifest {
    fn path(home: &Path, id: &str) -> PathBuf {
        home.join(MANIFESTS).join(format!("{id}.json"))
    }

    /// The manifest of `id`, if there is a readable one.
    pub fn read(home: &Path, id: &str) -> Option<Manifest> {
        let text = std::fs::read(Manifest::path(home, id)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Its files that an integration of `id` may remove: relative, without `..`, named
    /// after the id, in one of the integration's places.
    fn own_files(&self, id: &str) -> Vec<PathBuf> {
        self.files
            .iter()
            .filter(|f| f.components().all(|c| matches!(c, Component::Normal(_))))
            .filter(|f| {
                [APPLICATIONS, MIME_PACKAGES, ICONS]
                    .iter()
                    .any(|place| f.starts_with(place))
            })
            .filter(|f| {
                f.file_stem()
                    .is_some_and(|stem| stem.as_bytes() == id.as_bytes())
            })
            .cloned()
            .collect()
    }
}

/// The tools that refresh the caches, after the places they cover changed.
#[derive(Debug, Default, Clone, Copy)]
struct Changed {
    entries: bool,
    mime: bool,
    icons: bool,
}

impl Changed {
    fn note(&mut self, file: &Path) {
        if file.starts_with(APPLICATIONS) {
            self.entries = true;
        } else if file.starts_with(MIME) {
            self.mime = true;
        } else if file.starts_with(ICONS) {
            self.icons = true;
        }
    }

    /// Runs the refreshing tools; what each did, for the caller's log.
    fn refresh(self, home: &Path) -> Vec<String> {
        let mut runs = Vec::new();
        if self.entries {
            runs.push(refresh_with(
                "update-desktop-database",
                &["-q"],
                &home.join(APPLICATIONS),
            ));
        }
        if self.mime {
            runs.push(refresh_with("update-mime-database", &[], &home.join(MIME)));
        }
        if self.icons {
            runs.push(refresh_with(
                "gtk-update-icon-cache",
                &["--quiet", "--ignore-theme-index", "--force"],
                &home.join(ICONS),
            ));
        }
        runs
    }
}

/// `TOOL ARGS DIR`, when TOOL is installed; no shell, output discarded.
fn refresh_with(tool: &str, args: &[&str], dir: &Path) -> String {
    if !dir.is_dir() {
        return format!("{tool}: {} is gone, nothing to refresh", dir.display());
    }
    match Command::new(tool)
        .args(args)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => format!("{tool} refreshed {}", dir.display()),
        Ok(status) => format!("{tool} {}: {status}", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            format!("{tool} is not installed; its cache was not refreshed")
        }
        Err(e) => format!("{tool}: {e}"),
    }
}

/// One image's integration: what to write for it.
pub struct Integration<'a> {
    /// The image's absolute path.
    pub image: &'a Path,
    pub settings: &'a Settings,
    pub icon: Option<&'a Icon>,
}

/// What [`Integration::install`] or a removal did.
#[derive(Debug, Default)]
pub struct Installed {
    /// Files written (relative to the data home); unchanged ones are not rewritten.
    pub written: Vec<PathBuf>,
    /// Files removed: ones this integration no longer has, and stale entries'.
    pub removed: Vec<PathBuf>,
    /// Ids of stale entries removed.
    pub stale: Vec<String>,
    /// One line per cache tool run.
    pub refreshed: Vec<String>,
}

impl Integration<'_> {
    pub fn id(&self) -> String {
        desktop_id(self.image, &self.settings.name)
    }

    fn image_text(&self) -> Result<&str, DesktopError> {
        self.image
            .to_str()
            .filter(|p| !p.chars().any(char::is_control) && self.image.is_absolute())
            .ok_or_else(|| DesktopError::UnusablePath(self.image.to_owned()))
    }

    /// A digest of everything the files are made of.
    fn stamp(&self) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&WRITER_VERSION.to_le_bytes());
        h.update(self.image.as_os_str().as_bytes());
        h.update(&[0]);
        h.update(self.settings.to_stored().as_bytes());
        if let Some(icon) = self.icon {
            h.update(icon.extension.as_bytes());
            h.update(&[0]);
            h.update(&icon.data);
        }
        format!("{:032x}", h.digest128())
    }

    /// True when the files under `home` are the ones this integration writes: the
    /// manifest's image and stamp match and every file is there. A read and a few stats.
    pub fn is_current(&self, home: &Path) -> bool {
        let id = self.id();
        Manifest::read(home, &id).is_some_and(|m| {
            m.image == self.image
                && m.stamp == self.stamp()
                && m.files
                    .iter()
                    .all(|f| home.join(f).symlink_metadata().is_ok())
        })
    }

    /// The icon name entries and types use, when the icons are integrated.
    fn icon_name(&self) -> Option<String> {
        self.icon
            .filter(|_| self.settings.enabled.icon)
            .map(|_| self.id())
    }

    /// The menu entry's text.
    pub fn entry(&self) -> Result<String, DesktopError> {
        let image = self.image_text()?;
        Ok(desktop_entry(
            self.settings,
            image,
            self.icon_name().as_deref(),
        ))
    }

    /// The MIME package's text; the image's own type is `application/x-flatimage-<md5>`.
    pub fn mime(&self) -> Result<String, DesktopError> {
        let id = self.id();
        let digest = id
            .strip_prefix("flatimage_")
            .and_then(|rest| rest.get(..32))
            .unwrap_or_default();
        let own_type = format!("{}-{digest}", crate::IMAGE_TYPE);
        let file_name = self
            .image
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| DesktopError::UnusablePath(self.image.to_owned()))?;
        Ok(mime_package(
            self.settings,
            &own_type,
            file_name,
            self.icon_name().as_deref(),
        ))
    }

    /// The files to write, relative to the data home, with their bytes.
    fn files(&self, id: &str) -> Result<Vec<(PathBuf, Vec<u8>)>, DesktopError> {
        let enabled = self.settings.enabled;
        let icon = self.icon.filter(|_| enabled.icon);
        let mut files = Vec::new();
        if enabled.entry {
            let path = Path::new(APPLICATIONS).join(format!("{id}.desktop"));
            files.push((path, self.entry()?.into_bytes()));
        }
        if enabled.mimetype {
            let path = Path::new(MIME_PACKAGES).join(format!("{id}.xml"));
            files.push((path, self.mime()?.into_bytes()));
        }
        if let Some(icon) = icon {
            match IconKind::of(icon) {
                Some(IconKind::Svg) => files.push((
                    Path::new(ICONS).join(format!("scalable/apps/{id}.svg")),
                    icon.data.clone(),
                )),
                Some(IconKind::Raster) => {
                    for (size, png) in render_png(&icon.data)? {
                        files.push((
                            Path::new(ICONS).join(format!("{size}x{size}/apps/{id}.png")),
                            png,
                        ));
                    }
                }
                None => {
                    return Err(DesktopError::StoredIcon(format!(
                        "icons of type '{}' cannot be installed",
                        icon.extension
                    )));
                }
            }
        }
        Ok(files)
    }

    /// Writes this integration's files under `home`, removes the ones it no longer has and
    /// every stale entry's, then refreshes the caches of what changed.
    pub fn install(&self, home: &Path) -> Result<Installed, DesktopError> {
        let id = self.id();
        let files = self.files(&id)?;
        let mut done = Installed::default();
        let mut changed = Changed::default();
        for (file, bytes) in &files {
            let path = home.join(file);
            if std::fs::read(&path).is_ok_and(|old| old == *bytes) {
                continue;
            }
            write_atomically(&path, bytes)?;
            changed.note(file);
            done.written.push(file.clone());
        }
        let kept: Vec<&PathBuf> = files.iter().map(|(f, _)| f).collect();
        if let Some(old) = Manifest::read(home, &id) {
            for file in old.own_files(&id) {
                if !kept.contains(&&file) && remove_file(home, &file)? {
                    changed.note(&file);
                    done.removed.push(file);
                }
            }
        }
        let manifest = Manifest {
            image: self.image.to_owned(),
            stamp: self.stamp(),
            files: files.into_iter().map(|(f, _)| f).collect(),
        };
        let text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        write_atomically(&Manifest::path(home, &id), &text)?;
        sweep_stale(home, Some(&id), &mut done, &mut changed)?;
        done.refreshed = changed.refresh(home);
        Ok(done)
    }
}

/// Removes the integration `id` (every file its manifest lists, then the manifest) and
/// refreshes the caches. Nothing to remove is not an error.
pub fn remove(home: &Path, id: &str) -> Result<Installed, DesktopError> {
    let mut done = Installed::default();
    let mut changed = Changed::default();
    remove_integration(home, id, &mut done, &mut changed)?;
    done.refreshed = changed.refresh(home);
    Ok(done)
}

/// Removes every integration whose image no longer exists, and refreshes the caches.
pub fn clean_stale(home: &Path) -> Result<Installed, DesktopError> {
    let mut done = Installed::default();
    let mut changed = Changed::default();
    sweep_stale(home, None, &mut done, &mut changed)?;
    done.refreshed = changed.refresh(home);
    Ok(done)
}

/// The ids of every integration with a manifest under `home`, with their manifests.
pub fn list_integrations(home: &Path) -> Vec<(String, Option<Manifest>)> {
    let Ok(dir) = std::fs::read_dir(home.join(MANIFESTS)) else {
        return Vec::new();
    };
    let mut found: Vec<(String, Option<Manifest>)> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_suffix(".json")?.to_owned();
            id.starts_with("flatimage_").then_some(id)
        })
        .map(|id| {
            let manifest = Manifest::read(home, &id);
            (id, manifest)
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn sweep_stale(
    home: &Path,
    keep: Option<&str>,
    done: &mut Installed,
    changed: &mut Changed,
) -> Result<(), DesktopError> {
    for (id, manifest) in list_integrations(home) {
        if Some(id.as_str()) == keep {
            continue;
        }
        // An unreadable manifest is left alone: it may be a newer writer's.
        let Some(manifest) = manifest else { continue };
        if !manifest.image.is_file() {
            remove_integration(home, &id, done, changed)?;
            done.stale.push(id);
        }
    }
    Ok(())
}

fn remove_integration(
    home: &Path,
    id: &str,
    done: &mut Installed,
    changed: &mut Changed,
) -> Result<(), DesktopError> {
    let Some(manifest) = Manifest::read(home, id) else {
        return Ok(());
    };
    for file in manifest.own_files(id) {
        if remove_file(home, &file)? {
            changed.note(&file);
            done.removed.push(file);
        }
    }
    let path = Manifest::path(home, id);
    if remove_file(home, path.strip_prefix(home).unwrap_or(&path))? {
        done.removed.push(path);
    }
    Ok(())
}

/// Removes `home/file`, then its parent directories that are left empty (the icon size
/// folders the integration created), up to the places themselves, which the cache tools
/// need. False when it was not there.
fn remove_file(home: &Path, file: &Path) -> Result<bool, DesktopError> {
    let path = home.join(file);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(DesktopError::io(path, e)),
    }
    let mut dir = path.parent();
    let places = [APPLICATIONS, MIME_PACKAGES, ICONS].map(|place| home.join(place));
    while let Some(d) =
        dir.filter(|d| *d != home && d.starts_with(home) && !places.iter().any(|p| p == d))
    {
        if std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(true)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DesktopError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| DesktopError::io(dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".flatimage-")
        .tempfile_in(dir)
        .map_err(|e| DesktopError::io(dir, e))?;
    tmp.write_all(bytes)
        .map_err(|e| DesktopError::io(tmp.path(), e))?;
    // The default 0600 of a temporary file would hide entries from other readers.
    let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644);
    tmp.as_file()
        .set_permissions(mode)
        .map_err(|e| DesktopError::io(tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| DesktopError::io(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Integrations;

    fn settings() -> Settings {
        Settings {
            name: "My Game".into(),
            categories: vec!["Game".into()],
            comment: None,
            terminal: false,
            mime_types: vec![],
            startup_wm_class: None,
            keywords: vec![],
            enabled: Integrations::ALL,
        }
    }

    fn svg() -> Icon {
        Icon::new(
            "svg",
            br#"<svg xmlns="http://www.w3.org/2000/svg"/>"#.to_vec(),
        )
        .unwrap()
    }

    #[test]
    fn id_is_md5_of_the_file_uri_then_the_name() {
        // md5("file:///opt/My%20App.flatimage")
        let id = desktop_id(Path::new("/opt/My App.flatimage"), "My Game!");
        let expected = format!("{:x}", Md5::digest(b"file:///opt/My%20App.flatimage"));
        assert_eq!(id, format!("flatimage_{expected}-My_Game_"));
    }

    #[test]
    fn same_app_in_two_places_gets_two_ids() {
        let a = desktop_id(Path::new("/a/game.flatimage"), "Game");
        let b = desktop_id(Path::new("/b/game.flatimage"), "Game");
        assert_ne!(a, b);
    }

    #[test]
    fn data_home_prefers_an_absolute_xdg_data_home() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            data_home(env(&[("XDG_DATA_HOME", "/x"), ("HOME", "/h")])),
            Some("/x".into())
        );
        assert_eq!(
            data_home(env(&[("XDG_DATA_HOME", "rel"), ("HOME", "/h")])),
            Some("/h/.local/share".into())
        );
        assert_eq!(data_home(env(&[])), None);
    }

    #[test]
    fn install_then_is_current_then_remove_leaves_nothing() {
        let home = tempfile::tempdir().unwrap();
        let image = home.path().join("game.flatimage");
        std::fs::write(&image, b"x").unwrap();
        let settings = settings();
        let icon = svg();
        let it = Integration {
            image: &image,
            settings: &settings,
            icon: Some(&icon),
        };
        assert!(!it.is_current(home.path()));
        let done = it.install(home.path()).unwrap();
        assert_eq!(done.written.len(), 3, "{done:?}");
        assert!(it.is_current(home.path()));
        remove(home.path(), &it.id()).unwrap();
        let left: Vec<_> = walk(home.path());
        assert!(
            left.iter().all(|p| !p.to_string_lossy().contains(&it.id())),
            "{left:?}"
        );
    }

    #[test]
    fn turning_an_integration_off_removes_its_files() {
        let home = tempfile::tempdir().unwrap();
        let image = home.path().join("game.flatimage");
        std::fs::write(&image, b"x").unwrap();
        let mut settings = settings();
        let icon = svg();
        let it = Integration {
            image: &image,
            settings: &settings,
            icon: Some(&icon),
        };
        it.install(home.path()).unwrap();
        settings.enabled = Integrations::parse("entry").unwrap();
        let it = Integration {
            image: &image,
            settings: &settings,
            icon: Some(&icon),
        };
        let done = it.install(home.path()).unwrap();
        assert_eq!(done.removed.len(), 2, "{done:?}");
        assert!(it.is_current(home.path()));
    }

    #[test]
    fn stale_entry_is_swept_by_the_next_install() {
        let home = tempfile::tempdir().unwrap();
        let (gone, here) = (
            home.path().join("gone.flatimage"),
            home.path().join("here.flatimage"),
        );
        std::fs::write(&gone, b"x").unwrap();
        std::fs::write(&here, b"x").unwrap();
        let settings = settings();
        let old = Integration {
            image: &gone,
            settings: &settings,
            icon: None,
        };
        old.install(home.path()).unwrap();
        std::fs::remove_file(&gone).unwrap();
        let new = Integration {
            image: &here,
            settings: &settings,
            icon: None,
        };
        let done = new.install(home.path()).unwrap();
        assert_eq!(done.stale, [old.id()]);
        assert!(
            !home
                .path()
                .join(APPLICATIONS)
                .join(format!("{}.desktop", old.id()))
                .exists()
        );
    }

    #[test]
    fn manifest_cannot_remove_files_of_another_id_or_outside() {
        let m = Manifest {
            image: "/x".into(),
            stamp: String::new(),
            files: vec![
                "applications/flatimage_a-X.desktop".into(),
                "applications/other.desktop".into(),
                "../flatimage_a-X.desktop".into(),
                "/etc/flatimage_a-X.desktop".into(),
                "Documents/flatimage_a-X.desktop".into(),
            ],
        };
        assert_eq!(
            m.own_files("flatimage_a-X"),
            [PathBuf::from("applications/flatimage_a-X.desktop")]
        );
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
        out
    }
}
