//! Case folding of file names: the key under which two names are "the same" in the
//! casefold view. It owns only the comparison key; which real name a key opens is
//! `names`.
//!
//! The choice is Unicode *simple* case folding (one character to one character), as Wine
//! and ext4's casefold use Unicode folding rather than ASCII alone: `Ä.txt` and `ä.txt`
//! are one name, so are `Σ`, `σ` and `ς`, and `K` (Kelvin sign) and `k`. It is computed
//! with the standard library's case tables (no extra crate in every image): a character
//! folds to `lowercase(uppercase(c))` when both mappings are single characters, and to
//! itself otherwise. That reproduces CaseFolding.txt's C+S mappings for the scripts apps
//! use (the upper-case round trip is what merges `ς`/`σ`, `ſ`/`s`, `ϐ`/`β`), and keeps
//! the characters whose folding is only *full* (`ß`, `İ`, ligatures) as themselves, as
//! simple folding does. Names are not normalised (ext4 also applies NFD): a decomposed
//! `A` + combining diaeresis and a precomposed `Ä` stay two names, as they are on disk.
//! Bytes that are not UTF-8 are compared as they are, with ASCII letters folded.

/// The folded form of `name`: equal for names that differ only by case.
pub fn fold(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        let mut buf = [0u8; 4];
        for c in chunk.valid().chars() {
            out.extend_from_slice(fold_char(c).encode_utf8(&mut buf).as_bytes());
        }
        out.extend(chunk.invalid().iter().map(u8::to_ascii_lowercase));
    }
    out
}

/// One character's simple case folding.
fn fold_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    let upper = single(c.to_uppercase()).unwrap_or(c);
    single(upper.to_lowercase()).unwrap_or(c)
}

/// The only character of a case mapping, if it maps to exactly one.
fn single(mut chars: impl Iterator<Item = char>) -> Option<char> {
    let first = chars.next()?;
    chars.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &str, b: &str) -> bool {
        fold(a.as_bytes()) == fold(b.as_bytes())
    }

    #[test]
    fn ascii_names_differing_by_case_fold_alike() {
        assert!(same("Program Files/Data.PAK", "program files/DATA.pak"));
        assert!(!same("data.pak", "data.pa"));
    }

    #[test]
    fn latin_umlauts_fold_alike() {
        assert!(same("Ä.txt", "ä.txt"));
        assert!(same("ÖSTERREICH", "österreich"));
    }

    #[test]
    fn simple_folding_merges_greek_sigmas_and_the_kelvin_sign() {
        assert!(same("Σ", "σ"));
        assert!(same("ς", "σ"));
        assert!(same("\u{212A}", "k"));
    }

    #[test]
    fn characters_with_only_full_folding_stay_themselves() {
        // Full folding would make ß "ss"; simple folding keeps one character.
        assert!(!same("straße", "strasse"));
        assert_eq!(fold("ß".as_bytes()), "ß".as_bytes());
        assert!(same("ẞ", "ß"));
    }

    #[test]
    fn names_are_not_normalised() {
        assert!(!same("A\u{308}.txt", "ä.txt"));
    }

    #[test]
    fn bytes_that_are_not_utf8_fold_ascii_only() {
        assert_eq!(fold(b"AB\xffC"), b"ab\xffc");
    }
}
