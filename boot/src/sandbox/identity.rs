//! Who the app is: uid, gid, user name, home and shell, and the `/etc/passwd` and
//! `/etc/group` that say so, so `id`, `whoami` and `~` work in any image. As in FlatImage,
//! `fim-env` settings UID, GID, USER, HOME and SHELL choose them; otherwise the app is
//! the user who started it (root under `fim-root`).

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use anyhow::bail;

/// The `fim-env` keys that set the identity rather than being exported as they are.
pub const KEYS: [&str; 5] = ["UID", "GID", "USER", "HOME", "SHELL"];

/// The shell of a user who set none: every image has one.
const DEFAULT_SHELL: &str = "/bin/sh";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    pub home: PathBuf,
    pub shell: String,
}

/// What the identity is made from.
pub struct Sources<'a> {
    /// `fim-root`: uid 0, whatever the settings say.
    pub as_root: bool,
    /// The launcher's uid and gid on the host.
    pub host_ids: (u32, u32),
    /// The host's `USER` and `HOME`.
    pub host_user: Option<&'a OsStr>,
    pub host_home: Option<&'a OsStr>,
    /// A `fim-env` setting, already expanded.
    pub setting: &'a dyn Fn(&str) -> Option<OsString>,
}

/// Resolves the identity, refusing settings that cannot stand in `/etc/passwd`.
pub fn resolve(s: &Sources) -> anyhow::Result<Identity> {
    let text = |key: &str| -> anyhow::Result<Option<String>> {
        match (s.setting)(key) {
            None => Ok(None),
            Some(value) => {
                let value = value.into_string().map_err(|v| {
                    anyhow::anyhow!("fim-env: {key}={} is not valid UTF-8", v.to_string_lossy())
                })?;
                check_field(key, &value)?;
                Ok(Some(value))
            }
        }
    };
    let shell = text("SHELL")?.unwrap_or_else(|| DEFAULT_SHELL.into());
    if s.as_root {
        return Ok(Identity {
            uid: 0,
            gid: 0,
            user: "root".into(),
            home: "/root".into(),
            shell,
        });
    }
    let id = |key: &str, host: u32| -> anyhow::Result<u32> {
        match text(key)? {
            None => Ok(host),
            Some(v) => parse_id(key, &v),
        }
    };
    let uid = id("UID", s.host_ids.0)?;
    let gid = id("GID", s.host_ids.1)?;
    let host_user = s
        .host_user
        .and_then(OsStr::to_str)
        .filter(|u| check_name(u).is_ok());
    let user = match text("USER")? {
        Some(user) => {
            check_name(&user)?;
            user
        }
        // The host's name and home belong to the host's uid only.
        None => match host_user {
            Some(name) if uid == s.host_ids.0 => name.into(),
            _ if uid == 0 => "root".into(),
            _ => "user".into(),
        },
    };
    let host_home = s
        .host_home
        .and_then(OsStr::to_str)
        .filter(|h| h.starts_with('/') && check_field("HOME", h).is_ok());
    let home = match text("HOME")? {
        Some(home) if home.starts_with('/') => home,
        Some(home) => bail!("fim-env: HOME={home} is not an absolute path"),
        None => match host_home {
            Some(home) if uid == s.host_ids.0 => home.into(),
            _ if uid == 0 => "/root".into(),
            _ => format!("/home/{user}"),
        },
    };
    Ok(Identity {
        uid,
        gid,
        user,
        home: home.into(),
        shell,
    })
}

/// A uid or gid as `fim-env` takes it: a decimal number below the kernel's "no id".
pub fn parse_id(key: &str, value: &str) -> anyhow::Result<u32> {
    match value.parse::<u32>() {
        Ok(id) if id != u32::MAX && !value.starts_with('+') => Ok(id),
        _ => bail!("fim-env: {key}={value} is not a user or group id (a number)"),
    }
}

/// A user name: what `useradd` accepts, in short.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-$".contains(&b));
    if !valid {
        bail!("fim-env: USER={name} is not a user name (letters, digits, '.', '_', '-')");
    }
    Ok(())
}

/// A value for a field of `/etc/passwd`, whose fields are `:`-separated lines.
fn check_field(key: &str, value: &str) -> anyhow::Result<()> {
    if value.contains([':', '\n', '\0']) {
        bail!("fim-env: {key}={value:?} cannot stand in /etc/passwd (':' or a line break)");
    }
    Ok(())
}

/// Checks a `fim-env` value for an identity key before it is stored; values holding a
/// variable are checked once expanded, at run time.
pub fn check_setting(key: &str, value: &str) -> anyhow::Result<()> {
    match key {
        "UID" | "GID" => parse_id(key, value).map(drop),
        "USER" | "HOME" | "SHELL" if value.contains('$') => check_field(key, value),
        "USER" => check_name(value),
        "HOME" if !value.starts_with('/') => {
            bail!("fim-env: HOME={value} is not an absolute path")
        }
        "HOME" | "SHELL" => check_field(key, value),
        _ => Ok(()),
    }
}

impl Identity {
    /// The image's `/etc/passwd` with this user's line in place of any that shares its
    /// name or uid.
    pub fn passwd(&self, image: &str) -> String {
        let ours = format!(
            "{}:x:{}:{}:{}:{}:{}",
            self.user,
            self.uid,
            self.gid,
            self.user,
            self.home.display(),
            self.shell
        );
        let uid = self.uid.to_string();
        merged(image, &ours, |fields| {
            fields.first() == Some(&self.user.as_str()) || fields.get(2) == Some(&uid.as_str())
        })
    }

    /// The image's `/etc/group`, plus a group for this user's gid if the image has none.
    pub fn group(&self, image: &str) -> String {
        let gid = self.gid.to_string();
        let has_gid = image
            .lines()
            .any(|l| l.split(':').nth(2) == Some(gid.as_str()));
        if has_gid {
            return merged(image, "", |_| false);
        }
        let name_taken = image
            .lines()
            .any(|l| l.split(':').next() == Some(self.user.as_str()));
        let name = if name_taken {
            format!("group{gid}")
        } else {
            self.user.clone()
        };
        merged(image, &format!("{name}:x:{gid}:"), |_| false)
    }
}

/// The lines of `image` that `replaced` does not pick, then `ours` (when not empty).
fn merged(image: &str, ours: &str, replaced: impl Fn(&[&str]) -> bool) -> String {
    let mut out = String::new();
    for line in image.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if !replaced(&fields) {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !ours.is_empty() {
        out.push_str(ours);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                                nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
                                u:x:1000:1000:old:/home/old:/bin/false\n";
    const IMAGE_GROUP: &str = "root:x:0:\nnobody:x:65534:\n";

    fn sources<'a>(as_root: bool, setting: &'a dyn Fn(&str) -> Option<OsString>) -> Sources<'a> {
        Sources {
            as_root,
            host_ids: (1000, 100),
            host_user: Some(OsStr::new("u")),
            host_home: Some(OsStr::new("/home/u")),
            setting,
        }
    }

    fn none(_: &str) -> Option<OsString> {
        None
    }

    fn settings(
        pairs: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Option<OsString> {
        move |key| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| v.into())
    }

    #[test]
    fn by_default_the_app_is_the_host_user() {
        let id = resolve(&sources(false, &none)).unwrap();
        assert_eq!(
            id,
            Identity {
                uid: 1000,
                gid: 100,
                user: "u".into(),
                home: "/home/u".into(),
                shell: "/bin/sh".into()
            }
        );
    }

    #[test]
    fn root_mode_is_uid_0_whatever_the_settings() {
        let set = settings(&[("UID", "5"), ("USER", "x"), ("SHELL", "/bin/ash")]);
        let id = resolve(&sources(true, &set)).unwrap();
        assert_eq!((id.uid, id.gid, id.user.as_str()), (0, 0, "root"));
        assert_eq!(id.home, PathBuf::from("/root"));
        assert_eq!(id.shell, "/bin/ash");
    }

    #[test]
    fn settings_choose_every_field() {
        let set = settings(&[
            ("UID", "1234"),
            ("GID", "2345"),
            ("USER", "alice"),
            ("HOME", "/home/alice"),
            ("SHELL", "/bin/ash"),
        ]);
        let id = resolve(&sources(false, &set)).unwrap();
        assert_eq!(
            id,
            Identity {
                uid: 1234,
                gid: 2345,
                user: "alice".into(),
                home: "/home/alice".into(),
                shell: "/bin/ash".into()
            }
        );
    }

    #[test]
    fn another_uid_does_not_take_the_host_name_or_home() {
        let set = settings(&[("UID", "4321")]);
        let id = resolve(&sources(false, &set)).unwrap();
        assert_eq!(id.user, "user");
        assert_eq!(id.home, PathBuf::from("/home/user"));
    }

    #[test]
    fn bad_settings_are_refused() {
        for pairs in [
            &[("UID", "abc")][..],
            &[("UID", "-1")],
            &[("GID", "4294967295")],
            &[("USER", "a:b")],
            &[("USER", "a b")],
            &[("HOME", "relative")],
            &[("HOME", "/a:b")],
            &[("SHELL", "/bin/sh\nroot::0:0::/:/bin/sh")],
        ] {
            let set = settings(pairs);
            assert!(resolve(&sources(false, &set)).is_err(), "{pairs:?}");
        }
    }

    #[test]
    fn passwd_replaces_the_line_of_the_same_name_or_uid() {
        let id = resolve(&sources(false, &none)).unwrap();
        assert_eq!(
            id.passwd(IMAGE_PASSWD),
            "root:x:0:0:root:/root:/bin/sh\n\
             nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
             u:x:1000:100:u:/home/u:/bin/sh\n"
        );
        assert_eq!(id.passwd(""), "u:x:1000:100:u:/home/u:/bin/sh\n");
    }

    #[test]
    fn group_adds_the_gid_only_when_missing() {
        let id = resolve(&sources(false, &none)).unwrap();
        assert_eq!(id.group(IMAGE_GROUP), format!("{IMAGE_GROUP}u:x:100:\n"));
        assert_eq!(
            id.group("root:x:0:\nusers:x:100:\n"),
            "root:x:0:\nusers:x:100:\n"
        );
        assert_eq!(id.group("u:x:7:\n"), "u:x:7:\ngroup100:x:100:\n");
    }

    #[test]
    fn settings_are_checked_before_they_are_stored() {
        assert!(check_setting("UID", "1000").is_ok());
        assert!(check_setting("UID", "${X}").is_err());
        assert!(check_setting("USER", "${USER}").is_ok());
        assert!(check_setting("USER", "a:b").is_err());
        assert!(check_setting("HOME", "${HOME}/x").is_ok());
        assert!(check_setting("HOME", "/a\nb").is_err());
        assert!(check_setting("HOME", "relative").is_err());
        assert!(check_setting("OTHER", "a:b").is_ok());
        assert!(check_setting("PATH", "/opt/bin:$PATH").is_ok());
    }
}
