//! The sandbox settings stored in the image: `fim-perms`, `fim-env`, `fim-bind`,
//! `fim-unshare` and `fim-notify`. Every command checks all of its input before it writes
//! anything, so a refused command leaves the image byte for byte as it was; a change
//! takes effect on the next run.

use std::ffi::OsString;
use std::ops::{BitOr, Sub};
use std::process::ExitCode;

use anyhow::bail;
use fim_reserved::{Bind, BindKind, EnvVar, Permissions, Reserved, ReservedError, Unshare};

use crate::commands::{change_reserved, quoted, self_image};
use crate::identity;

/// The arguments as text; a setting is UTF-8.
fn texts(command: &str, args: &[OsString]) -> anyhow::Result<Vec<String>> {
    args.iter()
        .map(|a| {
            a.to_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("{command}: {a:?} is not valid UTF-8"))
        })
        .collect()
}

/// Prints `lines`, one per line.
fn print_lines(lines: impl IntoIterator<Item = String>) -> anyhow::Result<ExitCode> {
    for line in lines {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A set of named flags in the reserved block: the permissions or the namespaces.
struct Flags<F> {
    command: &'static str,
    usage: &'static str,
    /// Whether `all` names every flag.
    all: Option<F>,
    parse: fn(&str) -> Result<F, ReservedError>,
    names: fn(&F) -> Vec<&'static str>,
    get: fn(&Reserved) -> F,
    set: fn(&mut Reserved, F),
}

impl<F> Flags<F>
where
    F: Copy + Default + BitOr<Output = F> + Sub<Output = F>,
{
    /// `add|del|set NAME... | list | clear`; names may also be comma-separated.
    fn run(&self, args: &[OsString]) -> anyhow::Result<ExitCode> {
        let args = texts(self.command, args)?;
        let usage = || anyhow::anyhow!("usage: {}", self.usage);
        let Some((verb, names)) = args.split_first() else {
            return Err(usage());
        };
        let (get, set) = (self.get, self.set);
        match verb.as_str() {
            "add" | "del" | "set" if !names.is_empty() => {
                let given = self.parse_all(names)?;
                let what = format!("{} {verb}", self.command);
                let verb = verb.clone();
                change_reserved(&what, move |r| {
                    let now = get(r);
                    set(
                        r,
                        match verb.as_str() {
                            "add" => now | given,
                            "del" => now - given,
                            _ => given,
                        },
                    );
                    Ok(())
                })
            }
            "list" if names.is_empty() => {
                let now = get(self_image()?.reserved());
                print_lines((self.names)(&now).into_iter().map(String::from))
            }
            "clear" if names.is_empty() => {
                change_reserved(&format!("{} clear", self.command), move |r| {
                    set(r, F::default());
                    Ok(())
                })
            }
            _ => Err(usage()),
        }
    }

    fn parse_all(&self, names: &[String]) -> anyhow::Result<F> {
        let mut flags = F::default();
        for name in names.iter().flat_map(|n| n.split(',')) {
            flags = flags
                | match self.all {
                    Some(all) if name.trim().eq_ignore_ascii_case("all") => all,
                    _ => {
                        (self.parse)(name).map_err(|e| anyhow::anyhow!("{}: {e}", self.command))?
                    }
                };
        }
        Ok(flags)
    }
}

/// `fim-perms add|del|set PERM... | list | clear`.
pub fn perms(args: &[OsString]) -> anyhow::Result<ExitCode> {
    Flags {
        command: "fim-perms",
        usage: "fim-perms add|del|set PERMISSION[,PERMISSION...]... | fim-perms list | fim-perms clear",
        all: Some(Permissions::all()),
        parse: Permissions::parse_name,
        names: Permissions::names,
        get: Reserved::permissions,
        set: Reserved::set_permissions,
    }
    .run(args)
}

/// `fim-unshare add|del|set NAMESPACE... | list | clear`.
pub fn unshare(args: &[OsString]) -> anyhow::Result<ExitCode> {
    Flags {
        command: "fim-unshare",
        usage: "fim-unshare add|del|set NAMESPACE[,NAMESPACE...]... | fim-unshare list | fim-unshare clear",
        all: None,
        parse: Unshare::parse_name,
        names: Unshare::names,
        get: Reserved::unshare,
        set: Reserved::set_unshare,
    }
    .run(args)
}

/// `fim-env add|set KEY=VALUE... | del KEY... | list | clear`.
pub fn env(args: &[OsString]) -> anyhow::Result<ExitCode> {
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

/// `fim-bind add ro|rw|dev SRC DST | del INDEX | list`.
pub fn bind(args: &[OsString]) -> anyhow::Result<ExitCode> {
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

/// `fim-notify on|off`.
pub fn notify(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let args = texts("fim-notify", args)?;
    let on = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["on"] => true,
        ["off"] => false,
        _ => bail!("usage: fim-notify on|off"),
    };
    change_reserved(&format!("fim-notify {}", args[0]), move |r| {
        r.set_notify(on);
        Ok(())
    })
}
