//! `fim-env`: variables stored in the image for the app. Values are expanded at each run
//! by our own code (`crate::sandbox::expand`), never by a shell.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::bail;
use fim_reserved::EnvVar;

use super::Command;
use super::args::{print_lines, texts};
use super::image::{change_reserved, self_image};
use crate::sandbox::identity;

pub const ENV: Command = Command {
    name: "fim-env",
    synopsis: "fim-env add|set KEY=VALUE... | fim-env del KEY... | fim-env list | fim-env clear",
    summary: "Store variables for the app.",
    help: "`add` adds or replaces, `set` replaces them all.\n\
           A value may name variables as ${NAME} or $NAME: an earlier fim-env variable, else\n\
           one the launcher sets (PATH, FIM_DIR_DATA...), else the host's; an unknown one is\n\
           empty. That is the only expansion: values never reach a shell, so $(...),\n\
           backticks, quotes and globs stay as they are. Expansion happens at each run.\n\
           UID, GID, USER, HOME and SHELL set who the app is (uid, gid, name, home, shell,\n\
           as written in the sandbox's /etc/passwd and /etc/group; HOME is created in the\n\
           image if missing); by default you, with your HOME. fim-root is always root.",
    run: Some(run),
};

/// `fim-env add|set KEY=VALUE... | del KEY... | list | clear`.
fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let args = texts("fim-env", args)?;
    let usage =
        "usage: fim-env add|set KEY=VALUE... | fim-env del KEY... | fim-env list | fim-env clear";
    let Some((verb, rest)) = args.split_first() else {
        bail!("{usage}");
    };
    match verb.as_str() {
        "add" | "set" if !rest.is_empty() => {
            let given = rest
                .iter()
                .map(|entry| {
                    let var = EnvVar::parse(entry).map_err(|e| anyhow::anyhow!("fim-env: {e}"))?;
                    identity::check_setting(&var.key, &var.value)?;
                    Ok(var)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let replace = verb == "set";
            change_reserved(&format!("fim-env {verb}"), move |r| {
                let mut vars = if replace { Vec::new() } else { r.env() };
                vars.extend(given);
                Ok(r.set_env(&vars)?)
            })
        }
        "del" if !rest.is_empty() => {
            let keys = rest.to_vec();
            change_reserved("fim-env del", move |r| {
                let vars = r.env();
                if let Some(missing) = keys.iter().find(|k| !vars.iter().any(|v| &v.key == *k)) {
                    bail!("{missing} is not set (see fim-env list)");
                }
                let kept: Vec<EnvVar> = vars
                    .into_iter()
                    .filter(|v| !keys.contains(&v.key))
                    .collect();
                Ok(r.set_env(&kept)?)
            })
        }
        "list" if rest.is_empty() => print_lines(
            self_image()?
                .reserved()
                .env()
                .iter()
                .map(ToString::to_string),
        ),
        "clear" if rest.is_empty() => change_reserved("fim-env clear", |r| Ok(r.set_env(&[])?)),
        _ => bail!("{usage}"),
    }
}
