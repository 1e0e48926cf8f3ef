//! What several commands do with words: take their arguments as text (settings are
//! UTF-8), print lists one item a line, and show a stored word so that a POSIX shell
//! would read it back as the same word.

use std::ffi::OsString;
use std::process::ExitCode;

/// The arguments as text; a setting is UTF-8.
pub fn texts(command: &str, args: &[OsString]) -> anyhow::Result<Vec<String>> {
    args.iter()
        .map(|a| {
            a.to_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("{command}: {a:?} is not valid UTF-8"))
        })
        .collect()
}

/// Prints `lines`, one per line.
pub fn print_lines(lines: impl IntoIterator<Item = String>) -> anyhow::Result<ExitCode> {
    for line in lines {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A word as a POSIX shell would need it written to mean itself.
pub fn quoted(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_is_exactly_one_word_on_or_off() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let switch = super::super::image::switch;
        assert_eq!(switch(&words(&["on"])), Some(true));
        assert_eq!(switch(&words(&["off"])), Some(false));
        for bad in [&[][..], &["On"], &["on", "off"], &["1"]] {
            assert_eq!(switch(&words(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn plain_words_are_shown_as_they_are() {
        assert_eq!(quoted("/bin/sh"), "/bin/sh");
        assert_eq!(quoted("--level=3"), "--level=3");
    }

    #[test]
    fn words_a_shell_would_split_or_expand_are_quoted() {
        assert_eq!(quoted("echo $1"), "'echo $1'");
        assert_eq!(quoted(""), "''");
        assert_eq!(quoted("*"), "'*'");
    }

    #[test]
    fn a_single_quote_survives_quoting() {
        assert_eq!(quoted("it's"), "'it'\\''s'");
    }

    #[test]
    fn arguments_that_are_not_utf8_are_refused_naming_the_command() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0xff]);
        let e = texts("fim-env", &[bad]).unwrap_err().to_string();
        assert!(e.starts_with("fim-env: "), "{e}");
    }
}
