//! `fim-desktop`: FlatImage's desktop-integration commands. `setup` stores the packager's
//! settings and icon in the image, `enable` says which files runs keep current (menu
//! entry, file types, icons), `clean` removes them, `dump` shows what would be written and
//! `show` what is stored. Writing the files is `crate::desktop` and the `fim-desktop` crate.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use fim_desktop::{
    IconKind, Integration, Integrations, Manifest, Settings, SetupFile, clean_stale, desktop_id,
    remove,
};
use fim_image::Image;

use super::Command;
use super::args::texts;
use super::image::{change_reserved, self_image, self_path};
use crate::desktop::{allowed_home, log_done};

pub const DESKTOP: Command = Command {
    name: "fim-desktop",
    synopsis: "fim-desktop setup FILE.json | enable LIST|none | clean [--stale] | dump WHAT FILE | show",
    summary: "Integrate the app with the desktop: menu entry, icon and file types.",
    help: "setup FILE.json stores the settings and the icon in the image. Keys: name, icon (a PNG\n\
           or SVG path, relative to the JSON file, at most 256 KiB; a PNG of 512x512 fills every\n\
           size), categories, comment, terminal, mime_types (the document types the app opens:\n\
           \"text/plain\", or for the app's own {\"type\": \"application/x-mine\", \"globs\":\n\
           [\"*.mine\"]}), startup_wm_class, keywords, and enable (a list, as below). An unknown\n\
           key, a missing icon or one that is not an image is refused; the image is unchanged.\n\
           enable LIST (entry,mimetype,icon or a part of it) turns integrations on and writes\n\
           them now; enable none turns them off and removes them. Each run keeps them current\n\
           under $XDG_DATA_HOME (default ~/.local/share): applications/ID.desktop,\n\
           icons/hicolor/NxN/apps/ID.png (or scalable/apps/ID.svg), mime/packages/ID.xml, and\n\
           their list in flatimage/desktop/ID.json. ID is flatimage_<md5 of the image's file://\n\
           URI>-<name>, as AppImage names its entries: two copies in two places do not overwrite\n\
           each other, and a moved image writes its new ID on its next run and removes the old.\n\
           DESKTOPINTEGRATION=0 or a file appimagekit/no_desktopintegration (in the data home,\n\
           /usr/share or /etc) turns all of it off.\n\
           clean removes what enable wrote for this image (the next run writes it again unless\n\
           enable none); clean --stale removes the entries of images that no longer exist.\n\
           dump entry|mimetype|icon FILE writes the entry, the MIME package or the stored icon to\n\
           FILE (- for standard output). show prints the stored settings and the ID.",
    run: Some(run),
};

fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let args = texts("fim-desktop", args)?;
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["setup", file] => setup(Path::new(file)),
        ["enable", list] => enable(list),
        ["clean"] => clean(false),
        ["clean", "--stale"] => clean(true),
        ["dump", what, file] => dump(what, file),
        ["show"] => show(),
        _ => bail!(
            "usage: {}",
            DESKTOP.synopsis.replace('\n', " ").replace("  ", "")
        ),
    }
}

/// The running image and the settings it stores, or a line saying to run setup first.
fn stored() -> anyhow::Result<(Image, Settings)> {
    let image = self_image()?;
    let settings = Settings::from_reserved(image.reserved())?
        .context("the image has no desktop settings: run fim-desktop setup FILE.json first")?;
    Ok((image, settings))
}

fn setup(file: &Path) -> anyhow::Result<ExitCode> {
    let previous = Settings::from_reserved(self_image()?.reserved())
        .ok()
        .flatten();
    let (settings, icon) = SetupFile::load(file, previous.as_ref())?;
    change_reserved("fim-desktop setup", |r| Ok(settings.store(r, Some(&icon))?))?;
    integrate_now(&settings)
}

fn enable(list: &str) -> anyhow::Result<ExitCode> {
    let enabled = Integrations::parse(list)?;
    let (_, mut settings) = stored()?;
    settings.enabled = enabled;
    change_reserved("fim-desktop enable", |r| Ok(settings.store(r, None)?))?;
    if enabled.any() {
        integrate_now(&settings)
    } else {
        clean(false)
    }
}

/// Writes the integration now rather than at the next run, so the user sees it at once.
fn integrate_now(settings: &Settings) -> anyhow::Result<ExitCode> {
    if !settings.enabled.any() {
        return Ok(ExitCode::SUCCESS);
    }
    let home = match allowed_home() {
        Ok(home) => home,
        Err(why) => {
            eprintln!("fim-desktop: stored; nothing written: desktop integration is {why}");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let image = self_image()?;
    let icon = image.reserved().icon();
    let integration = Integration {
        image: image.path(),
        settings,
        icon: icon.as_ref(),
    };
    let done = integration
        .install(&home)
        .context("fim-desktop: the integration could not be written")?;
    log_done(&integration.id(), &home, &done);
    eprintln!(
        "fim-desktop: {} ({}) integrated under {}",
        integration.id(),
        settings.enabled.names(),
        home.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn clean(stale: bool) -> anyhow::Result<ExitCode> {
    let home = fim_desktop::data_home(|n| std::env::var_os(n))
        .context("neither XDG_DATA_HOME nor HOME is an absolute path")?;
    let done = if stale {
        clean_stale(&home)?
    } else {
        let (_, settings) = stored()?;
        let id = desktop_id(&self_path()?, &settings.name);
        let done = remove(&home, &id)?;
        log_done(&id, &home, &done);
        done
    };
    for id in &done.stale {
        eprintln!("fim-desktop: removed {id}: its image is gone");
    }
    Ok(ExitCode::SUCCESS)
}

fn dump(what: &str, file: &str) -> anyhow::Result<ExitCode> {
    let (image, settings) = stored()?;
    let icon = image.reserved().icon();
    let integration = Integration {
        image: image.path(),
        settings: &settings,
        icon: icon.as_ref(),
    };
    let bytes = match what {
        "entry" => integration.entry()?.into_bytes(),
        "mimetype" => integration.mime()?.into_bytes(),
        "icon" => icon.clone().context("the image has no icon")?.data,
        _ => bail!("fim-desktop dump: say entry, mimetype or icon (got '{what}')"),
    };
    if file == "-" {
        use std::io::Write;
        std::io::stdout().write_all(&bytes)?;
    } else {
        std::fs::write(file, &bytes).with_context(|| format!("fim-desktop dump: {file}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn show() -> anyhow::Result<ExitCode> {
    let (image, settings) = stored()?;
    let id = desktop_id(image.path(), &settings.name);
    let mut stored = serde_json::to_value(&settings)?;
    if let Some(icon) = image.reserved().icon() {
        let kind = match IconKind::of(&icon) {
            Some(IconKind::Svg) => "svg",
            _ => "png",
        };
        stored["icon"] = serde_json::json!(format!("{kind}, {} bytes", icon.data.len()));
    }
    println!("{}", serde_json::to_string_pretty(&stored)?);
    println!("id: {id}");
    match allowed_home() {
        Ok(home) => {
            let state = match Manifest::read(&home, &id) {
                Some(m) => format!("{} files under {}", m.files.len(), home.display()),
                None => format!("nothing written under {}", home.display()),
            };
            println!("integration: {} ({state})", settings.enabled.names());
        }
        Err(why) => println!("integration: {} ({why})", settings.enabled.names()),
    }
    Ok(ExitCode::SUCCESS)
}
