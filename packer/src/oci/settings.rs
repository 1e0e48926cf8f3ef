//! The image config becomes the image's settings: Entrypoint and Cmd the boot command
//! (kept apart, for Docker's rule), WorkingDir its start directory, Env the stored
//! environment, and User the identity keys the launcher reads (UID, GID, USER, HOME),
//! resolved here from the image's own `/etc/passwd` and `/etc/group`.

use anyhow::{Context, bail};
use fim_reserved::{BootCommand, EnvVar};
use oci_spec::image::Config;

use super::layer::IdFiles;

/// What an image config sets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    pub boot: Option<BootCommand>,
    pub env: Vec<EnvVar>,
}

pub fn from_config(config: Option<&Config>, ids: &IdFiles) -> anyhow::Result<Settings> {
    let Some(config) = config else {
        return Ok(Settings::default());
    };
    let none = Vec::new();
    let entrypoint = config.entrypoint().as_ref().unwrap_or(&none);
    let cmd = config.cmd().as_ref().unwrap_or(&none);
    let workdir = config
        .working_dir()
        .as_deref()
        .filter(|d| !d.is_empty())
        .map(|d| {
            if d.starts_with('/') {
                d.to_string()
            } else {
                format!("/{d}")
            }
        });
    let boot = if entrypoint.is_empty() && cmd.is_empty() {
        None
    } else {
        Some(
            BootCommand::from_docker(entrypoint, cmd, workdir.as_deref())
                .map_err(|e| anyhow::anyhow!("the image's Entrypoint/Cmd: {e}"))?,
        )
    };
    let mut env = Vec::new();
    for entry in config.env().as_ref().unwrap_or(&none) {
        let var = EnvVar::parse(entry).map_err(|e| anyhow::anyhow!("the image's Env: {e}"))?;
        env.push(var);
    }
    let user = config.user().as_deref().unwrap_or("");
    let has_home = env.iter().any(|v| v.key == "HOME");
    for (key, value) in identity(user, ids)? {
        if key == "HOME" && has_home {
            continue;
        }
        env.push(EnvVar::new(key, value).map_err(|e| anyhow::anyhow!("the image's User: {e}"))?);
    }
    Ok(Settings { boot, env })
}

/// One line of `/etc/passwd`: name, uid, gid, home.
fn passwd_entry<'a>(
    passwd: &'a str,
    wanted: &dyn Fn(&str, u32) -> bool,
) -> Option<(&'a str, u32, u32, &'a str)> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let (uid, gid) = (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
        wanted(f[0], uid).then_some((f[0], uid, gid, *f.get(5).unwrap_or(&"")))
    })
}

fn group_id(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f[0] == name).then(|| f.get(2)?.parse().ok()).flatten()
    })
}

/// Docker's `User` (`name`, `uid`, `name:group`, `uid:gid`, ...) as the launcher's
/// identity settings; empty means the launcher's default (the caller).
pub fn identity(user: &str, ids: &IdFiles) -> anyhow::Result<Vec<(&'static str, String)>> {
    if user.is_empty() {
        return Ok(Vec::new());
    }
    let passwd = ids.passwd.as_deref().map(String::from_utf8_lossy);
    let group = ids.group.as_deref().map(String::from_utf8_lossy);
    let (who, grp) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let numeric = |s: &str| s.parse::<u32>().ok().filter(|&id| id != u32::MAX);
    let entry = match numeric(who) {
        Some(uid) => passwd
            .as_deref()
            .and_then(|p| passwd_entry(p, &|_, id| id == uid)),
        None => Some(
            passwd
                .as_deref()
                .and_then(|p| passwd_entry(p, &|name, _| name == who))
                .with_context(|| {
                    format!(
                        "the image's User '{user}' is not in its /etc/passwd, so its uid is \
                         unknown: rebuild the image with a numeric User (UID or UID:GID)"
                    )
                })?,
        ),
    };
    let uid = numeric(who).or(entry.map(|e| e.1)).unwrap_or(0);
    let gid = match grp {
        Some(g) => match numeric(g) {
            Some(gid) => gid,
            None => group
                .as_deref()
                .and_then(|text| group_id(text, g))
                .with_context(|| {
                    format!(
                        "the image's User '{user}' names group '{g}', which is not in its \
                         /etc/group: rebuild the image with a numeric group (UID:GID)"
                    )
                })?,
        },
        None => entry.map_or(0, |e| e.2),
    };
    let mut out = vec![("UID", uid.to_string()), ("GID", gid.to_string())];
    if let Some((name, _, _, home)) = entry {
        out.push(("USER", name.to_string()));
        if home.starts_with('/') {
            out.push(("HOME", home.to_string()));
        }
    } else if uid == 0 {
        out.push(("USER", "root".into()));
    }
    for (key, value) in &out {
        if value.contains([':', '\n']) || value.is_empty() {
            bail!(
                "the image's User '{user}' gives {key}={value:?}, which cannot stand in /etc/passwd"
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> IdFiles {
        IdFiles {
            passwd: Some(
                b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n".to_vec(),
            ),
            group: Some(b"root:x:0:\nstaff:x:50:\n".to_vec()),
        }
    }

    fn keys(user: &str) -> Vec<String> {
        identity(user, &ids())
            .unwrap()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    #[test]
    fn a_user_name_is_resolved_from_the_images_passwd() {
        assert_eq!(
            keys("app"),
            ["UID=1000", "GID=1001", "USER=app", "HOME=/home/app"]
        );
        assert_eq!(
            keys("app:staff"),
            ["UID=1000", "GID=50", "USER=app", "HOME=/home/app"]
        );
        assert_eq!(keys("root"), ["UID=0", "GID=0", "USER=root", "HOME=/root"]);
    }

    #[test]
    fn numeric_users_need_no_passwd() {
        assert_eq!(keys("4242"), ["UID=4242", "GID=0"]);
        assert_eq!(keys("4242:7"), ["UID=4242", "GID=7"]);
        assert_eq!(
            keys("1000"),
            ["UID=1000", "GID=1001", "USER=app", "HOME=/home/app"]
        );
        assert!(identity("", &ids()).unwrap().is_empty());
    }

    #[test]
    fn an_unknown_user_or_group_is_refused_with_one_line() {
        let err = identity("nobody", &ids()).unwrap_err().to_string();
        assert!(err.contains("'nobody' is not in its /etc/passwd"), "{err}");
        assert!(!err.contains('\n'));
        let err = identity("app:wheel", &ids()).unwrap_err().to_string();
        assert!(err.contains("group 'wheel'"), "{err}");
        assert!(identity("app", &IdFiles::default()).is_err());
    }

    #[test]
    fn entrypoint_cmd_env_and_workdir_become_settings() {
        let config: Config = serde_json::from_str(
            r#"{"Entrypoint":["/bin/echo","hi"],"Cmd":["x"],"Env":["FOO=bar","PATH=/bin"],
                "WorkingDir":"/srv","User":"4242"}"#,
        )
        .unwrap();
        let s = from_config(Some(&config), &IdFiles::default()).unwrap();
        let boot = s.boot.unwrap();
        assert_eq!(boot.program, "/bin/echo");
        assert_eq!(boot.args, ["hi"]);
        assert_eq!(boot.cmd, ["x"]);
        assert_eq!(boot.workdir.as_deref(), Some("/srv"));
        let env: Vec<String> = s.env.iter().map(ToString::to_string).collect();
        assert_eq!(env, ["FOO=bar", "PATH=/bin", "UID=4242", "GID=0"]);
        assert_eq!(
            from_config(None, &IdFiles::default()).unwrap(),
            Settings::default()
        );
    }
}
