//! `fim-bind`: host paths mounted into the sandbox, stored in the image. They become
//! mounts at each run in `crate::sandbox::binds`.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::bail;
use fim_reserved::{Bind, BindKind};

use super::Command;
use super::args::{print_lines, quoted, texts};
use super::image::{change_reserved, self_image};

pub const BIND: Command = Command {
    name: "fim-bind",
    synopsis: "fim-bind add ro|rw|dev SRC DST | fim-bind del INDEX | fim-bind list",
    summary: "Mount host path SRC at DST inside the sandbox, read-only, read-write or with devices.",
    help: "ro is read-only, rw read-write, dev read-write with device nodes usable. SRC and\n\
           DST may hold ${NAME} (SRC from the host's environment, DST from the app's, then the\n\
           host's), expanded as fim-env does. A SRC missing at run time is skipped\n\
           (FIM_DEBUG=1 says so). `list` shows each bind with its INDEX (from 0) for `del`.\n\
           Binds are mounted after the permissions' ones.",
    run: Some(run),
};

/// `fim-bind add ro|rw|dev SRC DST | del INDEX | list`.
fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let args = texts("fim-bind", args)?;
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["add", kind, src, dst] => {
            let kind: BindKind = kind.parse().map_err(|e| anyhow::anyhow!("fim-bind: {e}"))?;
            let bind = Bind::new(kind, *src, *dst).map_err(|e| anyhow::anyhow!("fim-bind: {e}"))?;
            change_reserved("fim-bind add", move |r| {
                let mut binds = r.binds();
                binds.push(bind);
                Ok(r.set_binds(&binds)?)
            })
        }
        ["del", index] => {
            let index = index.parse::<usize>().ok();
            let shown = words[1].to_string();
            change_reserved("fim-bind del", move |r| {
                let mut binds = r.binds();
                match index.filter(|i| *i < binds.len()) {
                    Some(i) => {
                        binds.remove(i);
                        Ok(r.set_binds(&binds)?)
                    }
                    None => bail!(
                        "no bind {shown} (the image has {}; see fim-bind list)",
                        binds.len()
                    ),
                }
            })
        }
        ["list"] => print_lines(
            self_image()?
                .reserved()
                .binds()
                .iter()
                .enumerate()
                .map(|(i, b)| format!("{i} {} {} {}", b.kind, quoted(&b.src), quoted(&b.dst))),
        ),
        _ => bail!("usage: fim-bind add ro|rw|dev SRC DST | fim-bind del INDEX | fim-bind list"),
    }
}
