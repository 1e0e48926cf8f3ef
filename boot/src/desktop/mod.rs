//! Desktop integration at run time: every run of an image whose desktop settings have an
//! integration turned on checks, cheaply, that the files under `$XDG_DATA_HOME` are the
//! ones for where the image is now (a manifest read and a few stats: no work when nothing
//! changed), and writes them again when the image moved, was renamed or changed its
//! settings; writing sweeps the entries of images that no longer exist. The user's
//! opt-outs (`DESKTOPINTEGRATION=0`, AppImage's `no_desktopintegration` files) are honoured.
//! Integration never stops a run: what goes wrong is a `FIM_DEBUG` line.
//! The files themselves are the `fim-desktop` crate's.

use std::path::{Path, PathBuf};

use fim_desktop::{Installed, Integration, Settings, data_home, opted_out};
use fim_reserved::Reserved;

use crate::debug;

/// Where the integration's files go and whether the user allows it: the data home, or why not.
pub fn allowed_home() -> Result<PathBuf, String> {
    let env = |name: &str| std::env::var_os(name);
    let home = data_home(env).ok_or("neither XDG_DATA_HOME nor HOME is an absolute path")?;
    match opted_out(env, &home) {
        Some(why) => Err(format!("turned off by the user: {why}")),
        None => Ok(home),
    }
}

/// Brings the integration of `image` up to date if it is turned on. Called by every run.
pub fn keep_current(image: &Path, reserved: &Reserved) {
    let settings = match Settings::from_reserved(reserved) {
        Ok(Some(settings)) if settings.enabled.any() => settings,
        Ok(_) => return,
        Err(e) => return debug::log(format!("desktop integration skipped: {e}")),
    };
    let home = match allowed_home() {
        Ok(home) => home,
        Err(why) => return debug::log(format!("desktop integration skipped: {why}")),
    };
    let _check = debug::Step::new("check the desktop integration");
    let icon = reserved.icon();
    let integration = Integration {
        image,
        settings: &settings,
        icon: icon.as_ref(),
    };
    if integration.is_current(&home) {
        return;
    }
    let _step = debug::Step::new("write the desktop integration");
    match integration.install(&home) {
        Ok(done) => log_done(&integration.id(), &home, &done),
        Err(e) => debug::log(format!("desktop integration not written: {e}")),
    }
}

/// One `FIM_DEBUG` line per thing done.
pub fn log_done(id: &str, home: &Path, done: &Installed) {
    debug::log(format!(
        "desktop integration {id} under {}: {} written, {} removed",
        home.display(),
        done.written.len(),
        done.removed.len()
    ));
    for stale in &done.stale {
        debug::log(format!("removed the stale desktop integration {stale}"));
    }
    for line in &done.refreshed {
        debug::log(line);
    }
}
