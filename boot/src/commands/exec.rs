//! `fim-exec`, `fim-root`, and what runs when no `fim-*` command is given: the image's
//! boot command with the caller's arguments appended. All three end in one run of the
//! sandbox (`crate::sandbox::run`).

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::bail;
use fim_image::Image;
use fim_reserved::BootCommand;

use super::Command;
use super::casefold::effective_casefold;
use super::ephemeral::writable;
use super::image::self_image;
use super::overlay::effective_overlay;
use crate::debug;
use crate::sandbox::run::{self, Launch};
use crate::sandbox::start;

pub const EXEC: Command = Command {
    name: "fim-exec",
    synopsis: "fim-exec PROGRAM [ARGS...]",
    summary: "Run PROGRAM inside the image, as you.",
    help: "Without a fim- command, the image runs its boot command (fim-boot) with your\n\
           arguments appended. The app's exit status passes through; 127 means the program\n\
           is not in the image; the launcher's own failures exit 125.\n\
           \n\
           The app sees the image as /, writable: changes are kept in the data directory\n\
           .<image name>.data/ beside the image (FIM_DIR_DATA overrides it); when the image's\n\
           directory is read-only, in $XDG_DATA_HOME/fim/<image name>-<hash of its path>/\n\
           (~/.local/share/fim/... without XDG_DATA_HOME). The image's\n\
           system directories (/usr, /etc, /bin, /sbin, /lib*, /boot) are read-only here;\n\
           use fim-root to change them. The sandbox denies by default: /tmp and /dev/shm are\n\
           private, /dev holds only null, zero, random, tty and the like, /proc is the\n\
           sandbox's own, there is no /sys, and the host's home, network, display, sound,\n\
           buses and devices are not there until fim-perms grants them. fim-bind adds host\n\
           paths, fim-unshare more namespaces.\n\
           \n\
           The host's environment is not passed, except TERM, COLORTERM, NO_COLOR, LANG,\n\
           LANGUAGE, LC_*, TZ and FIM_DEBUG; the app gets PATH (the image's), HOME, USER,\n\
           LOGNAME and SHELL (see fim-env for UID, GID, USER, HOME, SHELL), the variables of\n\
           what the permissions grant (DISPLAY, WAYLAND_DISPLAY, XDG_RUNTIME_DIR,\n\
           PULSE_SERVER, DBUS_SESSION_BUS_ADDRESS...), the image's fim-env variables, and\n\
           FIM_IMAGE, FIM_DIR_IMAGE, FIM_DIR_DATA, FIM_OVERLAY, FIM_VERSION and FIM_ROOT.\n\
           /etc/passwd and /etc/group hold your user, so id, whoami and ~ work.\n\
           \n\
           Instances of one image run at the same time share one view: each sees what the\n\
           others write (fim-instance lists them); after the last one ends normally the mounts\n\
           stay 2 s so a relaunch starts warm. Signals sent to the launcher (TERM, INT, HUP,\n\
           QUIT, USR1, USR2) go to the app; killing the launcher ends the app and everything\n\
           it mounted. FIM_DEBUG=1 logs each step with its duration (and what a permission or\n\
           bind skipped); the session's own later lines go to <data directory>/session.log.\n\
           FIM_EPHEMERAL=1 (or fim-ephemeral on) makes a run forget what it writes.\n\
           FIM_BWRAP names the bwrap to use.",
    run: Some(exec),
};

pub const ROOT: Command = Command {
    name: "fim-root",
    synopsis: "fim-root PROGRAM [ARGS...]",
    summary: "Run PROGRAM inside the image as uid 0, with the system directories writable.",
    help: "A package manager can then install into the image's writable layer.\n\
           FIM_ROOT=1 makes every run do so. On the host, files it creates belong to you.\n\
           The image's own /etc/passwd and /etc/group are used, writable: users and groups\n\
           that packages, useradd or groupadd add are kept, and later runs know them.\n\
           Run by a normal user whom /etc/subuid and /etc/subgid give a range (with\n\
           newuidmap and newgidmap, package uidmap), those ids exist inside: _apt and\n\
           messagebus are real, and files keep their owners (on the host, the subordinate\n\
           ids own them). Without a range only one id exists, so calls that switch users or\n\
           give files to another owner (setuid, setgroups, chown...) succeed without doing\n\
           anything, and apt is told to download without its _apt sandbox (APT_CONFIG, in\n\
           /tmp); every file stays yours. FIM_DEBUG=1 says which mode a run uses.",
    run: Some(root),
};

fn exec(args: &[OsString]) -> anyhow::Result<ExitCode> {
    launch("fim-exec", args, root_from_env())
}

fn root(args: &[OsString]) -> anyhow::Result<ExitCode> {
    launch("fim-root", args, true)
}

/// The image started without a `fim-*` command: its boot command, `args` appended.
pub fn boot(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let image = self_image()?;
    let boot = image.reserved().boot().unwrap_or_else(default_boot);
    if is_default_shell(&boot) && asks_for_help(args) {
        // The shell would answer "Illegal option"; the user wants the launcher's help.
        let me = std::env::args().next().unwrap_or_else(|| "IMAGE".into());
        println!(
            "This image has no boot command of its own: it starts {}, which has no --help.\n\
             Run `{me} fim-help` for the launcher's commands, or `{me} fim-exec PROGRAM` to run a program inside it.",
            boot.program
        );
        return Ok(ExitCode::SUCCESS);
    }
    let command = start::boot_argv(&boot, args);
    run_in(image, command, root_from_env())
}

/// The boot command of an image that has none.
pub fn default_boot() -> BootCommand {
    BootCommand {
        program: "/bin/sh".into(),
        ..BootCommand::default()
    }
}

fn is_default_shell(boot: &BootCommand) -> bool {
    boot.args.is_empty() && boot.cmd.is_empty() && matches!(boot.program.as_str(), "/bin/sh" | "sh")
}

fn asks_for_help(args: &[OsString]) -> bool {
    matches!(args, [one] if one == "--help" || one == "-h")
}

/// `FIM_ROOT=1` runs as `fim-root` would, as in FlatImage.
fn root_from_env() -> bool {
    std::env::var_os("FIM_ROOT").is_some_and(|v| v == "1")
}

/// `fim-exec PROG ARGS...` and `fim-root PROG ARGS...`.
fn launch(name: &str, args: &[OsString], as_root: bool) -> anyhow::Result<ExitCode> {
    if args.is_empty() {
        bail!("usage: {name} PROGRAM [ARGS...]");
    }
    let image = self_image()?;
    run_in(image, args.to_vec(), as_root)
}

fn run_in(image: Image, command: Vec<OsString>, as_root: bool) -> anyhow::Result<ExitCode> {
    let (overlay, source) = effective_overlay(&image)?;
    debug::log(format!("overlay {overlay} (from {source:?})"));
    let (casefold, source) = effective_casefold(&image)?;
    debug::log(format!("casefold {casefold} (from {source:?})"));
    let writable = writable(&image)?;
    debug::log(format!("writable view: {writable:?}"));
    run::run(
        image,
        (overlay, casefold),
        Launch {
            command,
            as_root,
            writable,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn only_a_lone_help_flag_is_a_request_for_help() {
        assert!(asks_for_help(&words(&["--help"])));
        assert!(asks_for_help(&words(&["-h"])));
        assert!(!asks_for_help(&words(&[])));
        assert!(!asks_for_help(&words(&["-c", "--help"])));
        assert!(!asks_for_help(&words(&["--help", "x"])));
    }

    #[test]
    fn the_default_shell_is_sh_without_arguments() {
        assert!(is_default_shell(&default_boot()));
        let set = |program: &str, args: &[&str]| BootCommand {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..BootCommand::default()
        };
        assert!(is_default_shell(&set("sh", &[])));
        assert!(!is_default_shell(&set("/bin/sh", &["-c", "app"])));
        assert!(!is_default_shell(&set("/usr/bin/app", &[])));
    }
}
