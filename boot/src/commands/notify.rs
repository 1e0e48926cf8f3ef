//! `fim-notify`: whether a run announces itself with a desktop notification; the
//! announcing is `crate::sandbox::notify`.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::bail;

use super::Command;
use super::args::{on_off, texts};
use super::image::change_reserved;

pub const NOTIFY: Command = Command {
    name: "fim-notify",
    synopsis: "fim-notify on|off",
    summary: "Show a desktop notification when the app starts.",
    help: "It is sent with notify-send (package libnotify-bin). Nothing happens, silently,\n\
           without a session bus or notify-send.",
    run: Some(run),
};

/// `fim-notify on|off`.
fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let args = texts("fim-notify", args)?;
    let Some(on) = on_off(&args) else {
        bail!("usage: fim-notify on|off");
    };
    change_reserved(&format!("fim-notify {}", args[0]), move |r| {
        r.set_notify(on);
        Ok(())
    })
}
