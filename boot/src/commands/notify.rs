//! `fim-notify`: whether a run announces itself with a desktop notification; the
//! announcing is `crate::sandbox::notify`.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::bail;

use super::Command;
use super::args::texts;
use super::image::{store_switch, switch};
use fim_reserved::Reserved;

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
    match switch(&texts("fim-notify", args)?) {
        Some(on) => store_switch("fim-notify", on, Reserved::set_notify),
        None => bail!("usage: fim-notify on|off"),
    }
}
