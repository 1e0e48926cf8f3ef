//! `fim-instance`: the running instances of this image, and running a program inside
//! one of them. The records and the entering are `crate::sandbox::instance`.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::bail;

use super::Command;
use super::args::quoted;
use super::image::self_image;
use crate::places::Places;
use crate::sandbox::instance::{self, Record};

pub const INSTANCE: Command = Command {
    name: "fim-instance",
    synopsis: "fim-instance list | fim-instance exec ID PROGRAM [ARGS...]",
    summary: "List the running instances of this image, or run a program inside one of them.",
    help: "`list` shows each instance: ID, launcher pid, start time (UTC) and command.\n\
           `exec` runs PROGRAM inside instance ID: in its namespaces, with its root, working\n\
           directory and environment, so it sees what that instance sees, its private /tmp\n\
           included. The exit status is PROGRAM's. An ephemeral run (fim-ephemeral) is\n\
           listed with the ID e<launcher pid>; exec into it sees its writes.",
    run: Some(run),
};

fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let verb = args.first().map(|a| a.to_string_lossy().into_owned());
    match verb.as_deref() {
        Some("list") if args.len() == 1 => {
            for (id, record) in listing()? {
                let command: Vec<String> = record.command.iter().map(|w| quoted(w)).collect();
                println!(
                    "{id} {} {} {}",
                    record.pid,
                    instance::utc(record.started),
                    command.join(" ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some("exec") if args.len() >= 3 => {
            let wanted = args[1].to_string_lossy();
            let Some((_, record)) = listing()?.into_iter().find(|(id, _)| *id == wanted) else {
                bail!("fim-instance exec: no running instance '{wanted}' (see fim-instance list)");
            };
            instance::exec(&record, &args[2..])
        }
        _ => bail!("usage: fim-instance list | fim-instance exec ID PROGRAM [ARGS...]"),
    }
}

/// The running instances of this image started by this user, by ID: those of the shared
/// session, then the ephemeral runs, each in a session of its own, as `e<launcher pid>`.
fn listing() -> anyhow::Result<Vec<(String, Record)>> {
    let image = self_image()?;
    let uid = nix::unistd::getuid().as_raw();
    let shared = Places::existing(image.path(), uid)?
        .map(|places| instance::list(&places.instances))
        .unwrap_or_default();
    let mut all: Vec<(String, Record)> = shared
        .into_iter()
        .map(|(id, record)| (id.to_string(), record))
        .collect();
    for (pid, instances) in Places::ephemeral_sessions(image.path(), uid)? {
        all.extend(
            instance::list(&instances)
                .into_iter()
                .map(|(_, record)| (format!("e{pid}"), record)),
        );
    }
    Ok(all)
}
