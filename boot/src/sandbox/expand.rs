//! `${NAME}` and `$NAME` in configured values (`fim-env`, `fim-bind`), expanded by this
//! code alone. Nothing is ever handed to a shell: `$(...)`, backticks, globs, quotes and
//! backslashes mean themselves, so data stored in an image cannot run a command on the
//! host (FlatImage passes such values through `wordexp`, which does).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// `text` with every `$NAME` and `${NAME}` replaced by `lookup(NAME)`; a variable that
/// `lookup` does not know expands to nothing, as in a shell. A `$` that does not start a
/// name (`$(`, `$1`, `${` without `}`, a lone `$`) stays as it is. NAME is a letter or `_`
/// followed by letters, digits and `_`.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<OsString>) -> OsString {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.extend_from_slice(&rest.as_bytes()[..dollar]);
        let after = &rest[dollar + 1..];
        match reference(after) {
            Some((name, used)) => {
                if let Some(value) = lookup(name) {
                    out.extend_from_slice(value.as_bytes());
                }
                rest = &after[used..];
            }
            None => {
                out.push(b'$');
                rest = after;
            }
        }
    }
    out.extend_from_slice(rest.as_bytes());
    OsString::from_vec(out)
}

/// The variable named at the start of `text` (just after a `$`) and how many bytes of
/// `text` the reference takes.
fn reference(text: &str) -> Option<(&str, usize)> {
    if let Some(braced) = text.strip_prefix('{') {
        let end = braced.find('}')?;
        let name = &braced[..end];
        return is_name(name).then_some((name, end + 2));
    }
    let len = text
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    let name = &text[..len];
    is_name(name).then_some((name, len))
}

/// A shell variable name: a letter or `_`, then letters, digits and `_`.
pub fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> Option<OsString> {
        match name {
            "HOME" => Some("/home/u".into()),
            "EMPTY" => Some("".into()),
            "SPACES" => Some("a b".into()),
            _ => None,
        }
    }

    fn text(value: &str) -> String {
        expand(value, host).to_string_lossy().into_owned()
    }

    #[test]
    fn braced_and_bare_names_expand() {
        assert_eq!(text("${HOME}/a"), "/home/u/a");
        assert_eq!(text("$HOME/a"), "/home/u/a");
        assert_eq!(text("x${HOME}y$HOME"), "x/home/uy/home/u");
    }

    #[test]
    fn a_bare_name_takes_every_name_character() {
        assert_eq!(text("$HOME_DIR"), "", "HOME_DIR is unknown");
        assert_eq!(text("${HOME}_DIR"), "/home/u_DIR");
    }

    #[test]
    fn unknown_variables_expand_to_nothing() {
        assert_eq!(text("a${NOPE}b$NOPE"), "ab");
        assert_eq!(text("[$EMPTY]"), "[]");
    }

    #[test]
    fn command_substitution_and_backticks_stay_literal() {
        assert_eq!(text("$(touch /tmp/pwned)"), "$(touch /tmp/pwned)");
        assert_eq!(text("`id`"), "`id`");
        assert_eq!(text("\\`id\\`"), "\\`id\\`");
        assert_eq!(text("$((1+2))"), "$((1+2))");
    }

    #[test]
    fn a_dollar_that_starts_no_name_stays() {
        assert_eq!(text("$"), "$");
        assert_eq!(text("cost: 5$"), "cost: 5$");
        assert_eq!(text("$1 $@ $$"), "$1 $@ $$");
        assert_eq!(text("${HOME"), "${HOME");
        assert_eq!(text("${}"), "${}");
        assert_eq!(text("${HOME:-x}"), "${HOME:-x}");
    }

    #[test]
    fn values_are_inserted_verbatim_not_split_or_rescanned() {
        assert_eq!(text("$SPACES"), "a b");
        let rescan = expand("$A", |n| (n == "A").then(|| "$HOME".into()));
        assert_eq!(rescan, "$HOME");
    }

    #[test]
    fn non_ascii_text_around_references_is_kept() {
        assert_eq!(text("é${HOME}ü"), "é/home/uü");
    }

    #[test]
    fn names_follow_shell_rules() {
        assert!(is_name("HOME") && is_name("_x1") && is_name("a"));
        assert!(!is_name("") && !is_name("1A") && !is_name("A-B") && !is_name("É"));
    }
}
