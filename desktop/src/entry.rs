//! The menu entry: `applications/<id>.desktop`, as the Desktop Entry Specification writes
//! it (version 1.4: the newest that current distributions' validators know). Values are escaped as its "string" type says (`\\`, `\s` for a leading
//! space, `\;` inside lists); `Exec` quotes the image's path as one argument (inside
//! double quotes `"`, `` ` ``, `$` and `\` take a backslash; `%` is doubled) and passes
//! the opened files with `%F`.
//!
//! ```text
//! [Desktop Entry]
//! Type=Application
//! Name=Game
//! Exec="/home/u/Games/game.flatimage" %F
//! TryExec=/home/u/Games/game.flatimage
//! Icon=flatimage_<md5>-Game
//! ...
//! ```

use crate::settings::Settings;

/// The text of the desktop entry for `image` (an absolute UTF-8 path). `icon` names the
/// icon when the icons are integrated too.
pub fn desktop_entry(settings: &Settings, image: &str, icon: Option<&str>) -> String {
    let mut lines = vec![
        "[Desktop Entry]".to_owned(),
        "Version=1.4".to_owned(),
        "Type=Application".to_owned(),
        format!("Name={}", string_value(&settings.name)),
    ];
    if let Some(comment) = &settings.comment {
        lines.push(format!("Comment={}", string_value(comment)));
    }
    lines.push(format!("Exec={} %F", string_value(&exec_argument(image))));
    lines.push(format!("TryExec={}", string_value(image)));
    if let Some(icon) = icon {
        lines.push(format!("Icon={}", string_value(icon)));
    }
    lines.push(format!("Terminal={}", settings.terminal));
    if !settings.categories.is_empty() {
        lines.push(format!("Categories={}", list_value(&settings.categories)));
    }
    if !settings.mime_types.is_empty() {
        let names: Vec<String> = settings
            .mime_types
            .iter()
            .map(|t| t.name().to_owned())
            .collect();
        lines.push(format!("MimeType={}", list_value(&names)));
    }
    if !settings.keywords.is_empty() {
        lines.push(format!("Keywords={}", list_value(&settings.keywords)));
    }
    if let Some(class) = &settings.startup_wm_class {
        lines.push(format!("StartupWMClass={}", string_value(class)));
    }
    lines.push(format!("X-FlatImage-Image={}", string_value(image)));
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// A value of type string: backslashes doubled, control characters by name, and a
/// leading space kept with `\s`.
fn string_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ' ' if i == 0 => out.push_str("\\s"),
            c => out.push(c),
        }
    }
    out
}

/// A list: each item escaped, `;` inside an item as `\;`, every item ended by `;`.
fn list_value(items: &[String]) -> String {
    items
        .iter()
        .map(|item| format!("{};", string_value(item).replace(';', "\\;")))
        .collect()
}

/// One argument of `Exec`, always double-quoted, before the string escaping.
fn exec_argument(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    for c in arg.chars() {
        match c {
            '"' | '`' | '$' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '%' => out.push_str("%%"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{DocumentType, Integrations};

    fn settings() -> Settings {
        Settings {
            name: "Game".into(),
            categories: vec!["Game".into()],
            comment: None,
            terminal: false,
            mime_types: vec![DocumentType::Known("text/plain".into())],
            startup_wm_class: None,
            keywords: vec!["a;b".into()],
            enabled: Integrations::ALL,
        }
    }

    fn line<'a>(text: &'a str, key: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|l| l.strip_prefix('=')))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    }

    #[test]
    fn exec_quotes_the_path_and_passes_files() {
        let text = desktop_entry(&settings(), "/home/u/My Games/game.flatimage", None);
        assert_eq!(
            line(&text, "Exec"),
            r#""/home/u/My Games/game.flatimage" %F"#
        );
        assert_eq!(line(&text, "TryExec"), "/home/u/My Games/game.flatimage");
    }

    #[test]
    fn exec_escapes_quotes_dollars_backslashes_and_percent() {
        let text = desktop_entry(&settings(), r#"/a"b$c`d\e%f"#, None);
        // Inside the quotes: \" \$ \` \\ and %%; then the string escaping doubles each \.
        assert_eq!(line(&text, "Exec"), r#""/a\\"b\\$c\\`d\\\\e%%f" %F"#);
    }

    #[test]
    fn lists_end_with_semicolons_and_escape_them_inside_items() {
        let text = desktop_entry(&settings(), "/a", None);
        assert_eq!(line(&text, "Categories"), "Game;");
        assert_eq!(line(&text, "MimeType"), "text/plain;");
        assert_eq!(line(&text, "Keywords"), r"a\;b;");
    }

    #[test]
    fn icon_line_only_when_icons_are_integrated() {
        assert!(!desktop_entry(&settings(), "/a", None).contains("\nIcon="));
        let text = desktop_entry(&settings(), "/a", Some("flatimage_x-Game"));
        assert_eq!(line(&text, "Icon"), "flatimage_x-Game");
    }

    #[test]
    fn leading_space_and_backslash_survive_string_escaping() {
        assert_eq!(string_value(r" a\b"), r"\sa\\b");
    }
}
