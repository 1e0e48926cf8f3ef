//! The typed values held in the variable-length regions, their validation and
//! their byte encoding. Validation lives with the type so setters and decode
//! apply exactly the same rules.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ReservedError;
use crate::layout::ICON_EXT_SIZE;

fn has_nul(s: &str) -> bool {
    s.contains('\0')
}

fn malformed(e: serde_json::Error) -> ReservedError {
    ReservedError::MalformedJson(e.to_string())
}

/// What the launcher runs when the image is started without a command.
///
/// FlatImage's form is `program` + `args`, with the arguments given at run time
/// appended. An image imported from OCI/Docker keeps Docker's split: `program` +
/// `args` are its Entrypoint (`program` may then be empty) and `cmd` its Cmd, which
/// arguments given at run time replace. `workdir` is where the app starts when the
/// caller's directory is not visible inside the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootCommand {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Docker's Cmd: the default arguments, replaced by any given at run time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// Docker's WorkingDir: an absolute path inside the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

impl BootCommand {
    /// Builds and validates in one step.
    pub fn new<S: Into<String>>(
        program: impl Into<String>,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Self, ReservedError> {
        let boot = BootCommand {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            ..BootCommand::default()
        };
        boot.validate()?;
        Ok(boot)
    }

    /// Docker's Entrypoint and Cmd, with its working directory. An empty Entrypoint
    /// makes the whole command Cmd, so that run-time arguments replace all of it.
    pub fn from_docker(
        entrypoint: &[String],
        cmd: &[String],
        workdir: Option<&str>,
    ) -> Result<Self, ReservedError> {
        let (program, args) = match entrypoint.split_first() {
            Some((program, args)) => (program.clone(), args.to_vec()),
            None => (String::new(), Vec::new()),
        };
        let boot = BootCommand {
            program,
            args,
            cmd: cmd.to_vec(),
            workdir: workdir.map(str::to_owned),
        };
        boot.validate()?;
        Ok(boot)
    }

    /// The words run for `run_args` given at launch: the program (if any) and `args`,
    /// then `run_args` when there are any, else `cmd` (Docker's rule; with no `cmd`
    /// this is FlatImage's: run-time arguments are appended).
    pub fn argv<'a>(&'a self, run_args: &'a [String]) -> impl Iterator<Item = &'a String> {
        let tail = if run_args.is_empty() {
            &self.cmd
        } else {
            run_args
        };
        (!self.program.is_empty())
            .then_some(&self.program)
            .into_iter()
            .chain(&self.args)
            .chain(tail)
    }

    /// Something must be run and every string must survive becoming a C string for
    /// `execve`; the working directory must be absolute.
    pub fn validate(&self) -> Result<(), ReservedError> {
        let invalid = |why: String| Err(ReservedError::InvalidBoot(why));
        if self.program.is_empty() && self.cmd.is_empty() {
            return invalid("program is empty".into());
        }
        if self.program.is_empty() && !self.args.is_empty() {
            return invalid("arguments without a program".into());
        }
        if has_nul(&self.program) {
            return invalid("program contains a NUL byte".into());
        }
        if let Some(i) = self.args.iter().position(|a| has_nul(a)) {
            return invalid(format!("argument {i} contains a NUL byte"));
        }
        if let Some(i) = self.cmd.iter().position(|a| has_nul(a)) {
            return invalid(format!("cmd word {i} contains a NUL byte"));
        }
        if let Some(dir) = &self.workdir
            && (!dir.starts_with('/') || has_nul(dir))
        {
            return invalid(format!(
                "working directory '{dir}' must be an absolute path without NUL"
            ));
        }
        Ok(())
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, ReservedError> {
        self.validate()?;
        serde_json::to_vec(self).map_err(malformed)
    }

    pub(crate) fn decode(payload: &[u8]) -> Result<Self, ReservedError> {
        let boot: BootCommand = serde_json::from_slice(payload).map_err(malformed)?;
        boot.validate()?;
        Ok(boot)
    }
}

/// Where an image's layers and settings were imported from (`fim build` of a Docker
/// or OCI image), so that `fim inspect` can say so.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// `docker-archive`, `oci-archive` or `oci-layout`.
    pub format: String,
    /// The name the source gave the image (`localhost/app:latest`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Digest of the OCI manifest (`sha256:...`); a Docker archive has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Digest of the image config: the image ID `docker images` shows.
    pub config: String,
}

impl Origin {
    /// Every field is one printable word, so it can be shown and passed on as is.
    pub fn validate(&self) -> Result<(), ReservedError> {
        let word = |name: &str, value: &str| {
            if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                Err(ReservedError::InvalidOrigin(format!(
                    "{name} '{value}' must be one word without control characters"
                )))
            } else {
                Ok(())
            }
        };
        word("format", &self.format)?;
        if let Some(reference) = &self.reference {
            word("reference", reference)?;
        }
        for (name, digest) in [
            ("digest", self.digest.as_deref()),
            ("config", Some(&self.config)),
        ] {
            let Some(digest) = digest else { continue };
            if !is_digest(digest) {
                return Err(ReservedError::InvalidOrigin(format!(
                    "{name} '{digest}' is not a digest (ALGORITHM:HEX)"
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, ReservedError> {
        self.validate()?;
        serde_json::to_vec(self).map_err(malformed)
    }

    pub(crate) fn decode(payload: &[u8]) -> Result<Self, ReservedError> {
        let origin: Origin = serde_json::from_slice(payload).map_err(malformed)?;
        origin.validate()?;
        Ok(origin)
    }
}

/// The OCI digest grammar: `algorithm:encoded`, e.g. `sha256:` and 64 hex digits.
fn is_digest(text: &str) -> bool {
    let Some((algorithm, encoded)) = text.split_once(':') else {
        return false;
    };
    !algorithm.is_empty()
        && algorithm
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
        && !encoded.is_empty()
        && encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b))
}

/// One `KEY=VALUE` variable exported to the app. Serializes as that string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct EnvVar {
    pub key: String,
    pub value: String,
}

impl EnvVar {
    /// Builds and validates in one step.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Result<Self, ReservedError> {
        let var = EnvVar {
            key: key.into(),
            value: value.into(),
        };
        var.validate()?;
        Ok(var)
    }

    /// Splits at the first `=`, so values may themselves contain `=`.
    pub fn parse(entry: &str) -> Result<Self, ReservedError> {
        let (key, value) = entry
            .split_once('=')
            .ok_or_else(|| ReservedError::InvalidEnvVar {
                entry: entry.to_owned(),
                reason: "expected KEY=VALUE".into(),
            })?;
        Self::new(key, value)
    }

    /// Keys must be shell-safe identifiers and nothing may contain NUL,
    /// because the launcher passes these through `execve`'s environment.
    pub fn validate(&self) -> Result<(), ReservedError> {
        let reason = if self.key.is_empty() {
            Some("key is empty")
        } else if !is_env_key(&self.key) {
            Some("key must start with a letter or '_' and contain only letters, digits and '_'")
        } else if has_nul(&self.value) {
            Some("value contains a NUL byte")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(ReservedError::InvalidEnvVar {
                entry: self.to_string(),
                reason: reason.into(),
            }),
            None => Ok(()),
        }
    }

    /// Validates and de-duplicates keys: a later entry replaces an earlier
    /// one in place, so "setting an existing key" keeps the original order.
    pub(crate) fn normalize(vars: &[EnvVar]) -> Result<Vec<EnvVar>, ReservedError> {
        let mut out: Vec<EnvVar> = Vec::with_capacity(vars.len());
        for var in vars {
            var.validate()?;
            match out.iter_mut().find(|v| v.key == var.key) {
                Some(existing) => existing.value.clone_from(&var.value),
                None => out.push(var.clone()),
            }
        }
        Ok(out)
    }

    pub(crate) fn encode_list(vars: &[EnvVar]) -> Result<Vec<u8>, ReservedError> {
        let entries: Vec<String> = vars.iter().map(ToString::to_string).collect();
        serde_json::to_vec(&entries).map_err(malformed)
    }

    /// Stored lists must already be normalized, so a duplicate key is corruption.
    pub(crate) fn decode_list(payload: &[u8]) -> Result<Vec<EnvVar>, ReservedError> {
        let entries: Vec<String> = serde_json::from_slice(payload).map_err(malformed)?;
        let mut vars: Vec<EnvVar> = Vec::with_capacity(entries.len());
        for entry in &entries {
            let var = EnvVar::parse(entry)?;
            if vars.iter().any(|v| v.key == var.key) {
                return Err(ReservedError::InvalidEnvVar {
                    entry: entry.clone(),
                    reason: "duplicate key".into(),
                });
            }
            vars.push(var);
        }
        Ok(vars)
    }
}

fn is_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl fmt::Display for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

impl FromStr for EnvVar {
    type Err = ReservedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<EnvVar> for String {
    fn from(var: EnvVar) -> String {
        var.to_string()
    }
}

impl TryFrom<String> for EnvVar {
    type Error = ReservedError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

/// How a host path is made visible inside the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindKind {
    /// Read-only bind mount.
    Ro,
    /// Read-write bind mount.
    Rw,
    /// Device bind (bwrap `--dev-bind`).
    Dev,
}

impl BindKind {
    pub const ALL: [BindKind; 3] = [BindKind::Ro, BindKind::Rw, BindKind::Dev];

    /// Lower-case name, as stored and as accepted by `FromStr`.
    pub fn name(self) -> &'static str {
        match self {
            BindKind::Ro => "ro",
            BindKind::Rw => "rw",
            BindKind::Dev => "dev",
        }
    }
}

impl fmt::Display for BindKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BindKind {
    type Err = ReservedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ReservedError::UnknownBindKind(s.to_owned()))
    }
}

/// A host path mounted into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bind {
    #[serde(rename = "type")]
    pub kind: BindKind,
    pub src: String,
    pub dst: String,
}

impl Bind {
    /// Builds and validates in one step.
    pub fn new(
        kind: BindKind,
        src: impl Into<String>,
        dst: impl Into<String>,
    ) -> Result<Self, ReservedError> {
        let bind = Bind {
            kind,
            src: src.into(),
            dst: dst.into(),
        };
        bind.validate()?;
        Ok(bind)
    }

    /// `dst` must be absolute because it is resolved inside the sandbox,
    /// where there is no meaningful working directory, or start with a
    /// variable (`${HOME}/x`) that the launcher expands to an absolute path;
    /// `src` may hold variables too.
    pub fn validate(&self) -> Result<(), ReservedError> {
        let reason = if self.src.is_empty() {
            Some("source is empty")
        } else if self.dst.is_empty() {
            Some("destination is empty")
        } else if has_nul(&self.src) || has_nul(&self.dst) {
            Some("path contains a NUL byte")
        } else if !self.dst.starts_with('/') && !self.dst.starts_with('$') {
            Some("destination must be an absolute path (or start with a variable like ${HOME})")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(ReservedError::InvalidBind {
                src: self.src.clone(),
                dst: self.dst.clone(),
                reason: reason.into(),
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn encode_list(binds: &[Bind]) -> Result<Vec<u8>, ReservedError> {
        for bind in binds {
            bind.validate()?;
        }
        serde_json::to_vec(binds).map_err(malformed)
    }

    pub(crate) fn decode_list(payload: &[u8]) -> Result<Vec<Bind>, ReservedError> {
        let binds: Vec<Bind> = serde_json::from_slice(payload).map_err(malformed)?;
        for bind in &binds {
            bind.validate()?;
        }
        Ok(binds)
    }
}

/// The app icon: image bytes plus the extension that says how to read them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Icon {
    /// Lower-case file extension without the dot, `[a-z0-9]{1,8}`.
    pub extension: String,
    pub data: Vec<u8>,
}

impl Icon {
    /// Accepts `"PNG"` or `".png"` as typed by a user and normalizes it.
    pub fn new(extension: &str, data: Vec<u8>) -> Result<Self, ReservedError> {
        let icon = Icon {
            extension: extension.trim_start_matches('.').to_ascii_lowercase(),
            data,
        };
        icon.validate()?;
        Ok(icon)
    }

    /// The extension has to fit its fixed 8-byte slot and be safe to use as
    /// a file name suffix when the icon is exported.
    pub fn validate(&self) -> Result<(), ReservedError> {
        let ext = &self.extension;
        if ext.is_empty() || ext.len() > ICON_EXT_SIZE {
            return Err(ReservedError::InvalidIcon(format!(
                "extension '{ext}' must be 1 to {ICON_EXT_SIZE} characters"
            )));
        }
        if !ext
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(ReservedError::InvalidIcon(format!(
                "extension '{ext}' must contain only a-z and 0-9"
            )));
        }
        if self.data.is_empty() {
            return Err(ReservedError::InvalidIcon("image is empty".into()));
        }
        Ok(())
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, ReservedError> {
        self.validate()?;
        let mut payload = vec![0u8; ICON_EXT_SIZE];
        payload[..self.extension.len()].copy_from_slice(self.extension.as_bytes());
        payload.extend_from_slice(&self.data);
        Ok(payload)
    }

    pub(crate) fn decode(payload: &[u8]) -> Result<Self, ReservedError> {
        if payload.len() <= ICON_EXT_SIZE {
            return Err(ReservedError::InvalidIcon(format!(
                "payload of {} bytes has no image after the {ICON_EXT_SIZE}-byte extension",
                payload.len()
            )));
        }
        let (slot, data) = payload.split_at(ICON_EXT_SIZE);
        let len = slot.iter().position(|&b| b == 0).unwrap_or(ICON_EXT_SIZE);
        if slot[len..].iter().any(|&b| b != 0) {
            return Err(ReservedError::InvalidIcon(
                "extension slot is not NUL-padded".into(),
            ));
        }
        let extension = std::str::from_utf8(&slot[..len])
            .map_err(|_| ReservedError::InvalidIcon("extension is not UTF-8".into()))?;
        let icon = Icon {
            extension: extension.to_owned(),
            data: data.to_vec(),
        };
        icon.validate()?;
        Ok(icon)
    }
}

/// Desktop-integration settings are kept as the caller's JSON text; we only
/// insist it is an object so consumers can index it by key.
pub(crate) fn validate_desktop(text: &str) -> Result<serde_json::Value, ReservedError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ReservedError::InvalidDesktop(e.to_string()))?;
    if !value.is_object() {
        return Err(ReservedError::InvalidDesktop(
            "expected a JSON object".into(),
        ));
    }
    Ok(value)
}

pub(crate) fn decode_desktop(payload: &[u8]) -> Result<(String, serde_json::Value), ReservedError> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| ReservedError::InvalidDesktop("not UTF-8".into()))?;
    let value = validate_desktop(text)?;
    Ok((text.to_owned(), value))
}

/// A URL is handed to other programs as one argument, so it may not contain
/// whitespace or NUL.
pub(crate) fn validate_remote(url: &str) -> Result<(), ReservedError> {
    let reason = if url.is_empty() {
        Some("URL is empty")
    } else if has_nul(url) {
        Some("contains a NUL byte")
    } else if url.chars().any(char::is_whitespace) {
        Some("contains whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ReservedError::InvalidRemote {
            url: url.to_owned(),
            reason: reason.into(),
        }),
        None => Ok(()),
    }
}

pub(crate) fn decode_remote(payload: &[u8]) -> Result<String, ReservedError> {
    let url = std::str::from_utf8(payload).map_err(|_| ReservedError::InvalidRemote {
        url: String::from_utf8_lossy(payload).into_owned(),
        reason: "not UTF-8".into(),
    })?;
    validate_remote(url)?;
    Ok(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_key_validation() {
        for ok in ["A=1", "_=x", "PATH=/bin:/usr/bin", "a1_B2=", "X=a=b"] {
            assert!(EnvVar::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["=x", "1A=x", "A-B=x", "A B=x", "ÄB=x", "A\0=x"] {
            assert!(EnvVar::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env_parse_splits_at_first_equals() {
        let var = EnvVar::parse("OPTS=--a=1 --b=2").unwrap();
        assert_eq!(
            (var.key.as_str(), var.value.as_str()),
            ("OPTS", "--a=1 --b=2")
        );
        assert_eq!(var.to_string(), "OPTS=--a=1 --b=2");
    }

    #[test]
    fn env_errors_name_entry_and_reason() {
        assert_eq!(
            EnvVar::parse("NOEQUALS").unwrap_err().to_string(),
            "invalid environment variable 'NOEQUALS': expected KEY=VALUE"
        );
        assert_eq!(
            EnvVar::parse("V=a\0b").unwrap_err(),
            ReservedError::InvalidEnvVar {
                entry: "V=a\0b".into(),
                reason: "value contains a NUL byte".into()
            }
        );
    }

    #[test]
    fn env_normalize_replaces_existing_key_in_place() {
        let vars: Vec<EnvVar> = ["A=1", "B=2", "A=3"]
            .iter()
            .map(|s| EnvVar::parse(s).unwrap())
            .collect();
        let normalized = EnvVar::normalize(&vars).unwrap();
        let text: Vec<String> = normalized.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["A=3", "B=2"]);
    }

    #[test]
    fn env_decode_rejects_duplicate_keys() {
        let err = EnvVar::decode_list(br#"["A=1","A=2"]"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid environment variable 'A=2': duplicate key"
        );
    }

    #[test]
    fn env_var_serializes_as_key_value_string() {
        let var = EnvVar::new("HOME", "/home/me").unwrap();
        assert_eq!(serde_json::to_string(&var).unwrap(), r#""HOME=/home/me""#);
        let back: EnvVar = serde_json::from_str(r#""HOME=/home/me""#).unwrap();
        assert_eq!(back, var);
    }

    #[test]
    fn bind_kind_parse() {
        assert_eq!("ro".parse(), Ok(BindKind::Ro));
        assert_eq!("RW".parse(), Ok(BindKind::Rw));
        assert_eq!("dev".parse(), Ok(BindKind::Dev));
        assert_eq!(
            "rx".parse::<BindKind>().unwrap_err().to_string(),
            "unknown bind type 'rx' (expected ro, rw or dev)"
        );
        for kind in BindKind::ALL {
            assert_eq!(kind.to_string().parse(), Ok(kind));
        }
    }

    #[test]
    fn bind_validation() {
        assert!(Bind::new(BindKind::Ro, "$HOME/x", "/x").is_ok());
        assert!(Bind::new(BindKind::Ro, "", "/x").is_err());
        assert!(Bind::new(BindKind::Ro, "/x", "").is_err());
        assert!(Bind::new(BindKind::Ro, "/x\0", "/x").is_err());
        assert_eq!(
            Bind::new(BindKind::Rw, "/a", "rel")
                .unwrap_err()
                .to_string(),
            "invalid bind '/a' -> 'rel': destination must be an absolute path (or start with a variable like ${HOME})"
        );
        assert!(Bind::new(BindKind::Rw, "${HOME}/a", "${HOME}/a").is_ok());
    }

    #[test]
    fn bind_json_uses_type_key() {
        let bind = Bind::new(BindKind::Dev, "/dev/dri", "/dev/dri").unwrap();
        let json = Bind::encode_list(std::slice::from_ref(&bind)).unwrap();
        assert_eq!(
            json,
            br#"[{"type":"dev","src":"/dev/dri","dst":"/dev/dri"}]"#
        );
        assert_eq!(Bind::decode_list(&json).unwrap(), [bind]);
    }

    #[test]
    fn bind_decode_rejects_unknown_type_and_fields() {
        assert!(Bind::decode_list(br#"[{"type":"rx","src":"/a","dst":"/b"}]"#).is_err());
        assert!(Bind::decode_list(br#"[{"type":"ro","src":"/a","dst":"/b","x":1}]"#).is_err());
    }

    #[test]
    fn boot_validation() {
        assert!(BootCommand::new("/bin/sh", ["-c", "true"]).is_ok());
        assert_eq!(
            BootCommand::new("", Vec::<String>::new())
                .unwrap_err()
                .to_string(),
            "invalid boot command: program is empty"
        );
        assert_eq!(
            BootCommand::new("sh", ["ok", "a\0b"])
                .unwrap_err()
                .to_string(),
            "invalid boot command: argument 1 contains a NUL byte"
        );
    }

    #[test]
    fn boot_json_shape() {
        let boot = BootCommand::new("app", ["--x"]).unwrap();
        assert_eq!(
            boot.encode().unwrap(),
            br#"{"program":"app","args":["--x"]}"#
        );
        assert_eq!(
            BootCommand::decode(br#"{"program":"app"}"#).unwrap().args,
            Vec::<String>::new()
        );
        assert!(BootCommand::decode(br#"{"program":"app","extra":1}"#).is_err());
    }

    #[test]
    fn docker_rule_run_args_replace_cmd_and_keep_entrypoint() {
        let words = |boot: &BootCommand, run: &[&str]| -> Vec<String> {
            let run: Vec<String> = run.iter().map(|s| s.to_string()).collect();
            boot.argv(&run).cloned().collect()
        };
        let both = BootCommand::from_docker(
            &["/bin/echo".into(), "hi".into()],
            &["x".into()],
            Some("/srv"),
        )
        .unwrap();
        assert_eq!(words(&both, &[]), ["/bin/echo", "hi", "x"]);
        assert_eq!(words(&both, &["y", "z"]), ["/bin/echo", "hi", "y", "z"]);
        let cmd_only = BootCommand::from_docker(&[], &["sh".into(), "-c".into()], None).unwrap();
        assert_eq!(words(&cmd_only, &[]), ["sh", "-c"]);
        assert_eq!(words(&cmd_only, &["ls", "/"]), ["ls", "/"]);
        let entry_only = BootCommand::from_docker(&["app".into()], &[], None).unwrap();
        assert_eq!(words(&entry_only, &["y"]), ["app", "y"]);
        let flatimage = BootCommand::new("app", ["--x"]).unwrap();
        assert_eq!(words(&flatimage, &["y"]), ["app", "--x", "y"]);
        assert!(BootCommand::from_docker(&[], &[], None).is_err());
    }

    #[test]
    fn docker_boot_json_keeps_entrypoint_cmd_and_workdir_apart() {
        let boot =
            BootCommand::from_docker(&["/bin/echo".into()], &["x".into()], Some("/srv")).unwrap();
        let json = boot.encode().unwrap();
        assert_eq!(
            json,
            br#"{"program":"/bin/echo","args":[],"cmd":["x"],"workdir":"/srv"}"#
        );
        assert_eq!(BootCommand::decode(&json).unwrap(), boot);
        let cmd_only = BootCommand::decode(br#"{"cmd":["sh"]}"#).unwrap();
        assert_eq!(cmd_only.program, "");
        assert!(BootCommand::decode(br#"{"args":["x"],"cmd":["sh"]}"#).is_err());
        assert!(BootCommand::decode(br#"{"program":"a","workdir":"rel"}"#).is_err());
        assert!(BootCommand::decode(br#"{"program":"a","cmd":["\u0000"]}"#).is_err());
    }

    #[test]
    fn origin_fields_are_words_and_digests() {
        let origin = Origin {
            format: "oci-archive".into(),
            reference: Some("localhost/app:latest".into()),
            digest: Some(format!("sha256:{}", "a".repeat(64))),
            config: format!("sha256:{}", "b".repeat(64)),
        };
        let json = origin.encode().unwrap();
        assert_eq!(Origin::decode(&json).unwrap(), origin);
        let bad = |f: fn(&mut Origin)| {
            let mut o = origin.clone();
            f(&mut o);
            o.validate().is_err()
        };
        assert!(bad(|o| o.config = "abc".into()));
        assert!(bad(|o| o.digest = Some("sha256:".into())));
        assert!(bad(|o| o.reference = Some("a b".into())));
        assert!(bad(|o| o.format = String::new()));
        assert!(Origin::decode(br#"{"format":"x","config":"sha256:ab","y":1}"#).is_err());
    }

    #[test]
    fn icon_extension_is_normalized_and_validated() {
        assert_eq!(Icon::new(".PNG", vec![1]).unwrap().extension, "png");
        assert!(Icon::new("svg", vec![1]).is_ok());
        assert!(Icon::new("", vec![1]).is_err());
        assert!(Icon::new("toolongext", vec![1]).is_err());
        assert!(Icon::new("p-g", vec![1]).is_err());
        assert_eq!(
            Icon::new("png", vec![]).unwrap_err().to_string(),
            "invalid icon: image is empty"
        );
    }

    #[test]
    fn icon_payload_is_padded_extension_then_data() {
        let icon = Icon::new("jpg", vec![0xff, 0xd8]).unwrap();
        let payload = icon.encode().unwrap();
        assert_eq!(payload, b"jpg\0\0\0\0\0\xff\xd8");
        assert_eq!(Icon::decode(&payload).unwrap(), icon);
    }

    #[test]
    fn icon_decode_rejects_garbage_after_extension_nul() {
        assert!(Icon::decode(b"png\0x\0\0\0\x01").is_err());
        assert!(Icon::decode(b"png\0\0\0\0\0").is_err());
    }

    #[test]
    fn desktop_must_be_json_object() {
        assert!(validate_desktop(r#"{"categories":["Game"]}"#).is_ok());
        assert_eq!(
            validate_desktop("[1]").unwrap_err().to_string(),
            "invalid desktop entry: expected a JSON object"
        );
        assert!(validate_desktop("{").is_err());
    }

    #[test]
    fn remote_rejects_whitespace_nul_and_empty() {
        assert!(validate_remote("https://example.org/repo").is_ok());
        assert!(validate_remote("").is_err());
        assert!(validate_remote("https://a b").is_err());
        assert!(validate_remote("https://a\tb").is_err());
        assert!(validate_remote("https://a\0b").is_err());
    }
}
