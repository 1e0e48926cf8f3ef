//! The app's environment. The host's is not inherited wholesale (it leaks sockets, tokens
//! and paths that mean nothing inside): only locale and terminal settings pass, plus the
//! identity, the variables that point at what the permissions granted, the image's own
//! `fim-env` settings and the `FIM_*` variables that describe the run.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use fim_reserved::EnvVar;

use super::expand::expand;
use super::identity::{self, Identity};

/// Host variables that pass into the sandbox unchanged, besides `LC_*`.
pub const PASSED: &[&str] = &[
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

/// A list of variables where setting a key again replaces its value in place.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Env(pub Vec<(OsString, OsString)>);

impl Env {
    pub fn set(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) {
        let (key, value) = (key.into(), value.into());
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&OsStr> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_os_str())
    }
}

/// `PATH` and the `FIM_*` variables: what the launcher itself tells the app.
pub fn own_vars(facts: &RunFacts) -> Env {
    let mut env = Env::default();
    env.set("PATH", SANDBOX_PATH);
    env.set("FIM_IMAGE", &facts.image);
    env.set("FIM_FILE_BINARY", &facts.image);
    env.set("FIM_DIR_IMAGE", &facts.image_dir);
    env.set("FIM_DIR_DATA", &facts.data_dir);
    env.set("FIM_OVERLAY", &facts.overlay);
    env.set("FIM_VERSION", env!("CARGO_PKG_VERSION"));
    env.set("FIM_ROOT", if facts.as_root { "1" } else { "0" });
    env
}

/// The image's `fim-env` settings, expanded in order: `${NAME}` is an earlier setting,
/// else one of the launcher's own variables, else the host's; nothing else is done to
/// the text (see `expand`).
pub fn configured(settings: &[EnvVar], own: &Env, host: &Env) -> Env {
    let mut done = Env::default();
    for var in settings {
        let value = expand(&var.value, |name| {
            done.get(name)
                .or_else(|| own.get(name))
                .or_else(|| host.get(name))
                .map(OsStr::to_owned)
        });
        done.set(var.key.as_str(), value);
    }
    done
}

/// The sandbox's environment: allowed host variables, `PATH`, the identity, what the
/// permissions `granted`, the `configured` settings (which may override all of these but
/// the identity), and the launcher's own variables, which nothing overrides.
pub fn sandbox_env(
    host: &Env,
    own: &Env,
    identity: &Identity,
    granted: &Env,
    configured: &Env,
) -> Vec<(OsString, OsString)> {
    let mut env = Env(host.0.iter().filter(|(k, _)| passes(k)).cloned().collect());
    env.set("PATH", SANDBOX_PATH);
    env.set("HOME", &identity.home);
    env.set("USER", &identity.user);
    env.set("LOGNAME", &identity.user);
    env.set("SHELL", &identity.shell);
    for (key, value) in &granted.0 {
        env.set(key, value);
    }
    for (key, value) in &configured.0 {
        if !identity::KEYS.iter().any(|k| k == key) {
            env.set(key, value);
        }
    }
    for (key, value) in &own.0 {
        if key != "PATH" {
            env.set(key, value);
        }
    }
    env.0
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

    fn host() -> Env {
        Env([
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
        .collect())
    }

    fn identity() -> Identity {
        Identity {
            uid: 1000,
            gid: 100,
            user: "u".into(),
            home: "/home/u".into(),
            shell: "/bin/sh".into(),
        }
    }

    fn settings(entries: &[&str]) -> Vec<EnvVar> {
        entries.iter().map(|e| EnvVar::parse(e).unwrap()).collect()
    }

    fn env_with(settings_: &[&str], granted: &[(&str, &str)]) -> Env {
        let own = own_vars(&facts(false));
        let configured = configured(&settings(settings_), &own, &host());
        let mut grants = Env::default();
        for (k, v) in granted {
            grants.set(*k, *v);
        }
        Env(sandbox_env(
            &host(),
            &own,
            &identity(),
            &grants,
            &configured,
        ))
    }

    #[test]
    fn terminal_and_locale_pass_secrets_do_not() {
        let env = env_with(&[], &[]);
        assert_eq!(env.get("TERM"), Some(OsStr::new("xterm")));
        assert_eq!(env.get("LC_ALL"), Some(OsStr::new("C.UTF-8")));
        assert_eq!(env.get("SSH_AUTH_SOCK"), None);
        assert_eq!(env.get("AWS_SECRET_ACCESS_KEY"), None);
    }

    #[test]
    fn path_is_the_images_not_the_hosts() {
        let env = env_with(&[], &[]);
        assert_eq!(env.get("PATH"), Some(OsStr::new(SANDBOX_PATH)));
        assert_eq!(env.0.iter().filter(|(k, _)| k == "PATH").count(), 1);
    }

    #[test]
    fn identity_sets_home_user_logname_and_shell() {
        let env = env_with(&[], &[]);
        assert_eq!(env.get("HOME"), Some(OsStr::new("/home/u")));
        assert_eq!(env.get("USER"), Some(OsStr::new("u")));
        assert_eq!(env.get("LOGNAME"), Some(OsStr::new("u")));
        assert_eq!(env.get("SHELL"), Some(OsStr::new("/bin/sh")));
        assert_eq!(env.get("FIM_ROOT"), Some(OsStr::new("0")));
    }

    #[test]
    fn fim_variables_describe_the_run_and_cannot_be_overridden() {
        let env = env_with(&["FIM_IMAGE=/elsewhere"], &[]);
        assert_eq!(env.get("FIM_IMAGE"), Some(OsStr::new("/a/app.flatimage")));
        assert_eq!(
            env.get("FIM_DIR_DATA"),
            Some(OsStr::new("/a/.app.flatimage.data"))
        );
        assert_eq!(env.get("FIM_OVERLAY"), Some(OsStr::new("bwrap")));
    }

    #[test]
    fn granted_variables_are_set() {
        let env = env_with(&[], &[("DISPLAY", ":0")]);
        assert_eq!(env.get("DISPLAY"), Some(OsStr::new(":0")));
    }

    #[test]
    fn settings_are_expanded_by_our_code_only() {
        let env = env_with(
            &[
                "X=$(touch /tmp/pwned)",
                "Y=${HOME}/a",
                "Z=`id`",
                "W=$AWS_SECRET_ACCESS_KEY",
            ],
            &[],
        );
        assert_eq!(env.get("X"), Some(OsStr::new("$(touch /tmp/pwned)")));
        assert_eq!(env.get("Y"), Some(OsStr::new("/home/u/a")));
        assert_eq!(env.get("Z"), Some(OsStr::new("`id`")));
        assert_eq!(
            env.get("W"),
            Some(OsStr::new("x")),
            "a host variable named in a setting is passed on purpose"
        );
    }

    #[test]
    fn settings_see_earlier_settings_then_the_launchers_variables_then_the_hosts() {
        let env = env_with(
            &[
                "A=one",
                "B=${A}-two",
                "PATH=/opt/bin:$PATH",
                "D=$FIM_DIR_DATA/d",
            ],
            &[],
        );
        assert_eq!(env.get("B"), Some(OsStr::new("one-two")));
        assert_eq!(
            env.get("PATH"),
            Some(OsStr::new(&*format!("/opt/bin:{SANDBOX_PATH}")))
        );
        assert_eq!(env.get("D"), Some(OsStr::new("/a/.app.flatimage.data/d")));
    }

    #[test]
    fn identity_settings_are_not_exported_as_they_are() {
        let env = env_with(&["UID=5", "HOME=/elsewhere", "LANG=C"], &[]);
        assert_eq!(env.get("UID"), None);
        assert_eq!(
            env.get("HOME"),
            Some(OsStr::new("/home/u")),
            "the identity's"
        );
        assert_eq!(env.get("LANG"), Some(OsStr::new("C")));
    }
}
