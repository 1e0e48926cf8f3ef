//! The desktop settings. A packager writes a JSON file with FlatImage's keys (`name`,
//! `icon` as a path, `categories`) and ours (`comment`, `terminal`, `mime_types`,
//! `startup_wm_class`, `keywords`, `enable`); [`SetupFile`] reads it, refusing unknown keys.
//! [`Settings`] is what the image keeps in its reserved desktop region: the same values
//! without the icon's path (the icon itself goes to the icon region) and with the
//! integrations `fim-desktop enable` turned on.
//!
//! ```json
//! {"name": "Game", "icon": "game.png", "categories": ["Game"],
//!  "mime_types": ["application/x-game-save", {"type": "application/x-game-map", "globs": ["*.map"]}]}
//! ```

use std::path::{Path, PathBuf};

use fim_reserved::{Icon, Reserved};
use serde::{Deserialize, Serialize};

use crate::DesktopError;

/// Which files an integration writes: the menu entry, the file types, the icons.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Integrations {
    pub entry: bool,
    pub mimetype: bool,
    pub icon: bool,
}

impl Integrations {
    pub const ALL: Integrations = Integrations {
        entry: true,
        mimetype: true,
        icon: true,
    };

    /// FlatImage's grammar: `entry,mimetype,icon` in any order and subset, or `none`.
    pub fn parse(text: &str) -> Result<Self, DesktopError> {
        if text == "none" {
            return Ok(Integrations::default());
        }
        let mut on = Integrations::default();
        for word in text.split(',') {
            match word {
                "entry" => on.entry = true,
                "mimetype" => on.mimetype = true,
                "icon" => on.icon = true,
                _ => {
                    return Err(DesktopError::settings(format!(
                        "unknown integration '{word}': say entry, mimetype and icon separated by commas, or none"
                    )));
                }
            }
        }
        Ok(on)
    }

    pub fn any(self) -> bool {
        self.entry || self.mimetype || self.icon
    }

    /// `entry,mimetype,icon` or `none`: what [`Integrations::parse`] reads back.
    pub fn names(self) -> String {
        let names: Vec<&str> = [
            (self.entry, "entry"),
            (self.mimetype, "mimetype"),
            (self.icon, "icon"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(",")
        }
    }
}

impl Serialize for Integrations {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let names = self.names();
        let list: Vec<&str> = if self.any() {
            names.split(',').collect()
        } else {
            Vec::new()
        };
        list.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Integrations {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        if list.is_empty() {
            return Ok(Integrations::default());
        }
        Integrations::parse(&list.join(",")).map_err(serde::de::Error::custom)
    }
}

/// A document type the app opens: a type the system knows (`"text/plain"`), or the app's
/// own, defined by the integration with its file-name patterns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DocumentType {
    Known(String),
    Own(OwnType),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnType {
    #[serde(rename = "type")]
    pub name: String,
    pub globs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl DocumentType {
    pub fn name(&self) -> &str {
        match self {
            DocumentType::Known(name) => name,
            DocumentType::Own(own) => &own.name,
        }
    }
}

/// The packager's JSON file, as `fim-desktop setup` and `fim build --desktop` read it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupFile {
    pub name: String,
    /// The icon's path; a relative path is taken from the JSON file's directory.
    pub icon: PathBuf,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub terminal: bool,
    #[serde(default)]
    pub mime_types: Vec<DocumentType>,
    #[serde(default)]
    pub startup_wm_class: Option<String>,
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Which integrations to turn on (a list of `entry`, `mimetype`, `icon`); when absent,
    /// the image keeps the ones it had (none for a new image), as FlatImage does.
    #[serde(default)]
    pub enable: Option<Integrations>,
}

impl SetupFile {
    pub fn parse(text: &str) -> Result<Self, DesktopError> {
        serde_json::from_str(text).map_err(|e| DesktopError::settings(e.to_string()))
    }

    /// Reads the setup file at `path` and its icon: the settings to store (keeping
    /// `previous`'s integrations unless the file names them) and the icon.
    pub fn load(
        path: &Path,
        previous: Option<&Settings>,
    ) -> Result<(Settings, Icon), DesktopError> {
        let text = std::fs::read_to_string(path).map_err(|e| DesktopError::io(path, e))?;
        let file = SetupFile::parse(&text)
            .map_err(|e| DesktopError::settings(format!("{}: {e}", path.display())))?;
        let settings = file
            .settings(previous)
            .map_err(|e| DesktopError::settings(format!("{}: {e}", path.display())))?;
        let icon_path = path.parent().unwrap_or(Path::new(".")).join(&file.icon);
        let icon = crate::read_icon(&icon_path)?;
        Ok((settings, icon))
    }

    /// The settings to store, keeping `previous`'s integrations unless this file names them.
    pub fn settings(&self, previous: Option<&Settings>) -> Result<Settings, DesktopError> {
        let settings = Settings {
            name: self.name.clone(),
            categories: self.categories.clone(),
            comment: self.comment.clone(),
            terminal: self.terminal,
            mime_types: self.mime_types.clone(),
            startup_wm_class: self.startup_wm_class.clone(),
            keywords: self.keywords.clone(),
            enabled: self
                .enable
                .or(previous.map(|p| p.enabled))
                .unwrap_or_default(),
        };
        settings.validate()?;
        Ok(settings)
    }
}

/// The settings as the image keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub terminal: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mime_types: Vec<DocumentType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_wm_class: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub enabled: Integrations,
}

const NAME_MAX: usize = 200;

impl Settings {
    /// Reads the text of the reserved desktop region.
    pub fn from_stored(text: &str) -> Result<Self, DesktopError> {
        let settings: Settings = serde_json::from_str(text)
            .map_err(|e| DesktopError::settings(format!("stored desktop settings: {e}")))?;
        settings.validate()?;
        Ok(settings)
    }

    /// The settings an image keeps, if it has any.
    pub fn from_reserved(reserved: &Reserved) -> Result<Option<Self>, DesktopError> {
        reserved
            .desktop()
            .map(|text| Settings::from_stored(&text))
            .transpose()
    }

    /// Stores these settings and `icon` (when given) in `reserved`.
    pub fn store(&self, reserved: &mut Reserved, icon: Option<&Icon>) -> Result<(), DesktopError> {
        let refused = |e: fim_reserved::ReservedError| DesktopError::settings(e.to_string());
        reserved
            .set_desktop(Some(&self.to_stored()))
            .map_err(refused)?;
        if let Some(icon) = icon {
            reserved.set_icon(Some(icon)).map_err(refused)?;
        }
        Ok(())
    }

    /// The text for the reserved desktop region (compact JSON).
    pub fn to_stored(&self) -> String {
        // A struct of strings, lists and booleans always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Every value must be writable in a desktop entry and a MIME package as it is.
    pub fn validate(&self) -> Result<(), DesktopError> {
        plain_text("name", &self.name)?;
        if self.name.trim().is_empty() || self.name.chars().count() > NAME_MAX {
            return Err(DesktopError::settings(format!(
                "name must have 1 to {NAME_MAX} characters"
            )));
        }
        for category in &self.categories {
            if category.is_empty()
                || !category
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(DesktopError::settings(format!(
                    "category '{category}' is not a category name (letters, digits, - and _; see the freedesktop menu specification)"
                )));
            }
        }
        if let Some(comment) = &self.comment {
            plain_text("comment", comment)?;
        }
        if let Some(class) = &self.startup_wm_class {
            plain_text("startup_wm_class", class)?;
        }
        for keyword in &self.keywords {
            plain_text("keywords", keyword)?;
            if keyword.trim().is_empty() {
                return Err(DesktopError::settings("a keyword is empty"));
            }
        }
        for document in &self.mime_types {
            mime_type_name(document.name())?;
            if let DocumentType::Own(own) = document {
                if own.globs.is_empty() {
                    return Err(DesktopError::settings(format!(
                        "mime type '{}' needs at least one glob such as \"*.ext\"",
                        own.name
                    )));
                }
                for glob in &own.globs {
                    plain_text("globs", glob)?;
                    if glob.is_empty() || glob.contains('/') {
                        return Err(DesktopError::settings(format!(
                            "glob '{glob}' must be a non-empty file-name pattern without '/'"
                        )));
                    }
                }
                if let Some(comment) = &own.comment {
                    plain_text("comment", comment)?;
                }
            }
        }
        Ok(())
    }
}

/// No control characters: they cannot be written in a desktop entry's value.
fn plain_text(key: &str, value: &str) -> Result<(), DesktopError> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(DesktopError::settings(format!(
            "{key} holds the control character {:?}",
            c
        ))),
        None => Ok(()),
    }
}

/// `type/subtype`, each a non-empty token of RFC 6838's restricted names.
fn mime_type_name(name: &str) -> Result<(), DesktopError> {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    match name.split_once('/') {
        Some((kind, sub)) if token(kind) && token(sub) => Ok(()),
        _ => Err(DesktopError::settings(format!(
            "mime type '{name}' is not of the form type/subtype"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(json: &str) -> Result<Settings, DesktopError> {
        SetupFile::parse(json)?.settings(None)
    }

    #[test]
    fn flatimage_keys_are_read() {
        let s = setup(r#"{"name":"App","icon":"a.png","categories":["Game","Utility"]}"#).unwrap();
        assert_eq!(s.name, "App");
        assert_eq!(s.categories, ["Game", "Utility"]);
        assert_eq!(s.enabled, Integrations::default());
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let e = SetupFile::parse(r#"{"name":"A","icon":"a.png","colour":"red"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn missing_name_or_icon_is_refused() {
        assert!(SetupFile::parse(r#"{"icon":"a.png"}"#).is_err());
        assert!(SetupFile::parse(r#"{"name":"A"}"#).is_err());
    }

    #[test]
    fn integrations_parse_flatimage_grammar() {
        assert_eq!(
            Integrations::parse("entry,mimetype,icon").unwrap(),
            Integrations::ALL
        );
        assert_eq!(
            Integrations::parse("none").unwrap(),
            Integrations::default()
        );
        let icon_only = Integrations::parse("icon").unwrap();
        assert!(icon_only.icon && !icon_only.entry && !icon_only.mimetype);
        assert!(Integrations::parse("entry,menu").is_err());
        assert!(Integrations::parse("").is_err());
        assert_eq!(Integrations::ALL.names(), "entry,mimetype,icon");
        assert_eq!(Integrations::default().names(), "none");
    }

    #[test]
    fn enable_key_sets_integrations_else_previous_ones_stay() {
        let with = r#"{"name":"A","icon":"a.png","enable":["entry","icon"]}"#;
        let s = setup(with).unwrap();
        assert!(s.enabled.entry && s.enabled.icon && !s.enabled.mimetype);
        let without = SetupFile::parse(r#"{"name":"B","icon":"a.png"}"#).unwrap();
        assert_eq!(without.settings(Some(&s)).unwrap().enabled, s.enabled);
    }

    #[test]
    fn stored_form_round_trips_without_the_icon_path() {
        let s = setup(
            r#"{"name":"A","icon":"a.png","terminal":true,"keywords":["k"],
                "mime_types":["text/plain",{"type":"application/x-a","globs":["*.a"]}]}"#,
        )
        .unwrap();
        let text = s.to_stored();
        assert!(!text.contains("a.png"), "{text}");
        assert_eq!(Settings::from_stored(&text).unwrap(), s);
    }

    #[test]
    fn values_a_desktop_entry_cannot_hold_are_refused() {
        for bad in [
            r#"{"name":"","icon":"a"}"#,
            r#"{"name":"A\nB","icon":"a"}"#,
            r#"{"name":"A","icon":"a","categories":["Game;X"]}"#,
            r#"{"name":"A","icon":"a","mime_types":["plain"]}"#,
            r#"{"name":"A","icon":"a","mime_types":[{"type":"a/b","globs":[]}]}"#,
            r#"{"name":"A","icon":"a","mime_types":[{"type":"a/b","globs":["x/*.b"]}]}"#,
            r#"{"name":"A","icon":"a","keywords":[" "]}"#,
        ] {
            assert!(setup(bad).is_err(), "accepted {bad}");
        }
    }
}
