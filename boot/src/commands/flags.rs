//! The commands over a set of named flags in the reserved block (`fim-perms`,
//! `fim-unshare`): `add|del|set NAME... | list | clear`, names as separate words or
//! comma-separated. Every name is checked before anything is written.

use std::ffi::OsString;
use std::ops::{BitOr, Sub};
use std::process::ExitCode;

use fim_reserved::{Reserved, ReservedError};

use super::args::{print_lines, texts};
use super::image::{change_reserved, self_image};

/// A set of named flags in the reserved block: the permissions or the namespaces.
pub struct Flags<F> {
    pub command: &'static str,
    pub usage: &'static str,
    /// Whether `all` names every flag.
    pub all: Option<F>,
    pub parse: fn(&str) -> Result<F, ReservedError>,
    pub names: fn(&F) -> Vec<&'static str>,
    pub get: fn(&Reserved) -> F,
    pub set: fn(&mut Reserved, F),
}

impl<F> Flags<F>
where
    F: Copy + Default + BitOr<Output = F> + Sub<Output = F>,
{
    /// `add|del|set NAME... | list | clear`; names may also be comma-separated.
    pub fn run(&self, args: &[OsString]) -> anyhow::Result<ExitCode> {
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
