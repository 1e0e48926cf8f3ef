//! The app's environment. The host's is not inherited wholesale (it leaks sockets, tokens
//! and paths that mean nothing inside): only locale and terminal settings pass, plus the
//! identity and the `FIM_*` variables that describe the run.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// Host variables that pass into the sandbox unchanged.
const PASSED: &[&str] = &[
    "TERM",
    "COLORTERM",
    "NO_COLOR",
    "LANG",
    "LANGUAGE",
    "TZ",
    "FIM_DEBUG",
];

/// `PATH` inside: the image's own directories, not the host's.
pub const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the `FIM_*` variables describe.
#[derive(Debug, Clone)]
pub struct RunFacts {
    pub image: OsString,
    pub image_dir: OsString,
    pub data_dir: OsString,
    pub overlay: String,
    pub as_root: bool,
}

/// The sandbox's environment from the host's `host` variables.
pub fn sandbox_env(
    host: impl IntoIterator<Item = (OsString, OsString)>,
    facts: &RunFacts,
) -> Vec<(OsString, OsString)> {
    let host: Vec<(OsString, OsString)> = host.into_iter().collect();
    let get = |key: &str| host.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let mut env: Vec<(OsString, OsString)> =
        host.iter().filter(|(k, _)| passes(k)).cloned().collect();
    let mut set = |k: &str, v: OsString| env.push((k.into(), v));
    set("PATH", SANDBOX_PATH.into());
    if facts.as_root {
        set("HOME", "/root".into());
        set("USER", "root".into());
        set("LOGNAME", "root".into());
    } else {
        set("HOME", get("HOME").unwrap_or_else(|| "/".into()));
        for key in ["USER", "LOGNAME"] {
            if let Some(v) = get(key) {
                set(key, v);
            }
        }
    }
    set("FIM_IMAGE", facts.image.clone());
    set("FIM_FILE_BINARY", facts.image.clone());
    set("FIM_DIR_IMAGE", facts.image_dir.clone());
    set("FIM_DIR_DATA", facts.data_dir.clone());
    set("FIM_OVERLAY", facts.overlay.clone().into());
    set("FIM_VERSION", env!("CARGO_PKG_VERSION").into());
    set("FIM_ROOT", if facts.as_root { "1" } else { "0" }.into());
    env
}

fn passes(key: &OsStr) -> bool {
    let bytes = key.as_bytes();
    PASSED.iter().any(|p| p.as_bytes() == bytes) || bytes.starts_with(b"LC_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(as_root: bool) -> RunFacts {
        RunFacts {
            image: "/a/app.flatimage".into(),
            image_dir: "/a".into(),
            data_dir: "/a/.app.flatimage.data".into(),
            overlay: "bwrap".into(),
            as_root,
        }
    }

    fn host() -> Vec<(OsString, OsString)> {
        [
            ("TERM", "xterm"),
            ("LC_ALL", "C.UTF-8"),
            ("HOME", "/home/u"),
            ("USER", "u"),
            ("PATH", "/host/bin"),
            ("SSH_AUTH_SOCK", "/run/agent"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
        ]
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
    }

    fn lookup<'a>(env: &'a [(OsString, OsString)], key: &str) -> Option<&'a OsStr> {
        env.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_os_str())
    }

    #[test]
    fn terminal_and_locale_pass_secrets_do_not() {
        let env = sandbox_env(host(), &facts(false));
        assert_eq!(lookup(&env, "TERM"), Some(OsStr::new("xterm")));
        assert_eq!(lookup(&env, "LC_ALL"), Some(OsStr::new("C.UTF-8")));
        assert_eq!(lookup(&env, "SSH_AUTH_SOCK"), None);
        assert_eq!(lookup(&env, "AWS_SECRET_ACCESS_KEY"), None);
    }

    #[test]
    fn path_is_the_images_not_the_hosts() {
        let env = sandbox_env(host(), &facts(false));
        assert_eq!(lookup(&env, "PATH"), Some(OsStr::new(SANDBOX_PATH)));
        assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1);
    }

    #[test]
    fn identity_follows_the_mode() {
        let user = sandbox_env(host(), &facts(false));
        assert_eq!(lookup(&user, "HOME"), Some(OsStr::new("/home/u")));
        assert_eq!(lookup(&user, "USER"), Some(OsStr::new("u")));
        assert_eq!(lookup(&user, "FIM_ROOT"), Some(OsStr::new("0")));
        let root = sandbox_env(host(), &facts(true));
        assert_eq!(lookup(&root, "HOME"), Some(OsStr::new("/root")));
        assert_eq!(lookup(&root, "USER"), Some(OsStr::new("root")));
        assert_eq!(lookup(&root, "FIM_ROOT"), Some(OsStr::new("1")));
    }

    #[test]
    fn fim_variables_describe_the_run() {
        let env = sandbox_env(host(), &facts(false));
        assert_eq!(
            lookup(&env, "FIM_IMAGE"),
            Some(OsStr::new("/a/app.flatimage"))
        );
        assert_eq!(
            lookup(&env, "FIM_DIR_DATA"),
            Some(OsStr::new("/a/.app.flatimage.data"))
        );
        assert_eq!(lookup(&env, "FIM_OVERLAY"), Some(OsStr::new("bwrap")));
    }
}
