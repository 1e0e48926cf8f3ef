//! `fim-bind` entries made into the mounts of one run. Variables are expanded by our own
//! code (see `expand`): the source, a host path, in the host's environment; the
//! destination in the sandbox's, then the host's. A source the host lacks is skipped
//! with a debug line rather than failing the run: binds often name optional places.

use std::ffi::OsStr;
use std::path::PathBuf;

use fim_reserved::Bind;

use super::bwrap::Mount;
use super::environment::Env;
use super::expand::expand;
use crate::debug;

pub fn mounts(
    binds: &[Bind],
    host: &Env,
    inside: &Env,
    exists: impl Fn(&PathBuf) -> bool,
) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for (index, bind) in binds.iter().enumerate() {
        let src = PathBuf::from(expand(&bind.src, |n| host.get(n).map(OsStr::to_owned)));
        let dst = PathBuf::from(expand(&bind.dst, |n| {
            inside.get(n).or_else(|| host.get(n)).map(OsStr::to_owned)
        }));
        let skipped = if !src.is_absolute() {
            Some(format!("source {} is not an absolute path", src.display()))
        } else if !exists(&src) {
            Some(format!(
                "source {} does not exist on this host",
                src.display()
            ))
        } else if !dst.is_absolute() {
            Some(format!(
                "destination {} is not an absolute path",
                dst.display()
            ))
        } else {
            None
        };
        match skipped {
            Some(why) => debug::log(format!("fim-bind {index}: {why}; skipped")),
            None => mounts.push(Mount::Bind {
                kind: bind.kind,
                src,
                dst,
            }),
        }
    }
    mounts
}

#[cfg(test)]
mod tests {
    use super::*;
    use fim_reserved::BindKind;
    use std::ffi::OsString;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env(pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect())
    }

    fn bind(kind: BindKind, src: &str, dst: &str) -> Bind {
        Bind::new(kind, src, dst).unwrap()
    }

    fn mount(kind: BindKind, src: &str, dst: &str) -> Mount {
        Mount::Bind {
            kind,
            src: src.into(),
            dst: dst.into(),
        }
    }

    #[test]
    fn sources_expand_on_the_host_destinations_inside() {
        let host = env(&[("HOME", "/home/u"), ("DATA", "/srv/d")]);
        let inside = env(&[("HOME", "/home/app")]);
        let binds = [
            bind(BindKind::Ro, "${HOME}/Music", "${HOME}/Music"),
            bind(BindKind::Rw, "$DATA", "${DATA}"),
        ];
        assert_eq!(
            mounts(&binds, &host, &inside, |_| true),
            [
                mount(BindKind::Ro, "/home/u/Music", "/home/app/Music"),
                mount(BindKind::Rw, "/srv/d", "/srv/d"),
            ]
        );
    }

    #[test]
    fn missing_or_relative_sources_and_relative_destinations_are_skipped() {
        let host = env(&[("HOME", "/home/u")]);
        let binds = [
            bind(BindKind::Ro, "/gone", "/a"),
            bind(BindKind::Ro, "relative", "/b"),
            bind(BindKind::Ro, "/here", "$NOPE"),
            bind(BindKind::Dev, "/here", "/dev/here"),
        ];
        let exists = |p: &PathBuf| p.as_os_str() != "/gone";
        assert_eq!(
            mounts(&binds, &host, &Env::default(), exists),
            [mount(BindKind::Dev, "/here", "/dev/here")]
        );
    }

    #[test]
    fn paths_with_spaces_and_shell_characters_are_kept_whole() {
        let binds = [bind(BindKind::Rw, "/a b/$(id)", "/c d/`x`")];
        assert_eq!(
            mounts(&binds, &Env::default(), &Env::default(), |_| true),
            [mount(BindKind::Rw, "/a b/$(id)", "/c d/`x`")]
        );
    }
}
