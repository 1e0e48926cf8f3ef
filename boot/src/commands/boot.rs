//! `fim-boot`: the command the image runs when started without a `fim-*` command.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{Context, bail};
use fim_reserved::BootCommand;

use super::Command;
use super::args::quoted;
use super::exec::default_boot;
use super::image::{change_reserved, self_image};
use crate::sandbox::start;

pub const BOOT: Command = Command {
    name: "fim-boot",
    synopsis: "fim-boot set PROGRAM [ARGS...] | fim-boot show | fim-boot clear",
    summary: "Store the command the image runs when started without a fim- command.",
    help: "The default is /bin/sh. Arguments given at run time are appended. `fim build --boot`\n\
           sets it too. An image imported from Docker or OCI keeps their rule instead: its\n\
           Entrypoint is the command, and arguments given at run time replace its Cmd.\n\
           `show` prints the command a run without arguments executes, as a shell would read\n\
           it back.",
    run: Some(run),
};

const USAGE: &str = "usage: fim-boot set PROGRAM [ARGS...] | fim-boot show | fim-boot clear";

fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let text = |a: &OsString| {
        a.to_str()
            .map(str::to_string)
            .with_context(|| format!("fim-boot: {a:?} is not valid UTF-8"))
    };
    let verb = args.first().map(|a| a.to_string_lossy().into_owned());
    match verb.as_deref() {
        Some("set") if args.len() >= 2 => {
            let program = text(&args[1])?;
            let rest = args[2..]
                .iter()
                .map(text)
                .collect::<anyhow::Result<Vec<_>>>()?;
            let command =
                BootCommand::new(program, rest).map_err(|e| anyhow::anyhow!("fim-boot: {e}"))?;
            change_reserved("fim-boot set", |r| Ok(r.set_boot(Some(&command))?))
        }
        Some("clear") if args.len() == 1 => {
            change_reserved("fim-boot clear", |r| Ok(r.set_boot(None)?))
        }
        Some("show") if args.len() == 1 => {
            let image = self_image()?;
            let boot = image.reserved().boot().unwrap_or_else(default_boot);
            let words: Vec<String> = start::boot_argv(&boot, &[])
                .iter()
                .map(|w| quoted(&w.to_string_lossy()))
                .collect();
            println!("{}", words.join(" "));
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!("{USAGE}"),
    }
}
