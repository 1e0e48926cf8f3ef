//! Which real name a name opens in one directory of the casefold view. It owns the
//! directory's map from folded name to the real names that fold to it, and the rule that
//! picks one:
//!
//! ```text
//! "save.dat" ──fold──> "save.dat" ──> ["SAVE.dat", "Save.DAT"]   (sorted, byte-wise)
//!                                        └─ chosen: the smallest, unless an exact match exists
//! ```
//!
//! An exact match always wins (the caller tries the exact name first, so a name that is on
//! disk opens itself). Otherwise, of the real names that differ only by case, the
//! byte-wise smallest is chosen: fixed, independent of directory order, and in ASCII it
//! prefers upper case (`DATA` < `Data` < `data`). The map is rebuilt from a fresh listing
//! when the directory changes (its stamp: mtime and ctime), so writers outside this view
//! are seen too.

use std::collections::HashMap;

use super::fold::fold;

/// When a directory last changed: its mtime and ctime, to the nanosecond.
pub type Stamp = (i64, i64, i64, i64);

/// The names of one directory, by folded name.
#[derive(Debug, Default)]
pub struct DirNames {
    pub stamp: Stamp,
    by_fold: HashMap<Vec<u8>, Vec<Vec<u8>>>,
}

/// What a name resolves to when it is not on disk as given.
#[derive(Debug, PartialEq, Eq)]
pub struct Folded<'a> {
    /// The real name chosen.
    pub real: &'a [u8],
    /// Every real name that folds alike, when there is more than one (a collision).
    pub collision: Option<&'a [Vec<u8>]>,
}

impl DirNames {
    /// The map of a directory listing (`.` and `..` excluded by the caller).
    pub fn new(stamp: Stamp, names: impl IntoIterator<Item = Vec<u8>>) -> DirNames {
        let mut by_fold: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
        for name in names {
            by_fold.entry(fold(&name)).or_default().push(name);
        }
        for reals in by_fold.values_mut() {
            reals.sort_unstable();
        }
        DirNames { stamp, by_fold }
    }

    /// The real name `name` opens when `name` itself is not in the directory.
    pub fn resolve(&self, name: &[u8]) -> Option<Folded<'_>> {
        let reals = self.by_fold.get(&fold(name))?;
        let real = reals.first()?;
        Some(Folded {
            real,
            collision: (reals.len() > 1).then_some(reals.as_slice()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(names: &[&str]) -> DirNames {
        DirNames::new((0, 0, 0, 0), names.iter().map(|n| n.as_bytes().to_vec()))
    }

    #[test]
    fn another_case_finds_the_real_name() {
        let d = dir(&["Data.PAK", "Save.DAT"]);
        let found = d.resolve(b"data.pak");
        assert_eq!(
            found,
            Some(Folded {
                real: b"Data.PAK",
                collision: None
            })
        );
        assert_eq!(
            d.resolve(b"SAVE.DAT").map(|f| f.real),
            Some(&b"Save.DAT"[..])
        );
    }

    #[test]
    fn a_name_that_folds_to_nothing_there_is_missing() {
        assert_eq!(dir(&["Data.PAK"]).resolve(b"data.pa"), None);
    }

    #[test]
    fn a_collision_chooses_the_bytewise_smallest_and_names_all() {
        let d = dir(&["data.pak", "Data.PAK", "DATA.pak"]);
        let found = d.resolve(b"dAtA.pAk");
        assert_eq!(found.as_ref().map(|f| f.real), Some(&b"DATA.pak"[..]));
        let all: Vec<&[u8]> = found
            .and_then(|f| f.collision)
            .map(|c| c.iter().map(Vec::as_slice).collect())
            .unwrap_or_default();
        assert_eq!(all, [&b"DATA.pak"[..], b"Data.PAK", b"data.pak"]);
    }

    #[test]
    fn the_choice_does_not_depend_on_listing_order() {
        let a = dir(&["b", "B"]);
        let b = dir(&["B", "b"]);
        assert_eq!(
            a.resolve(b"b").map(|f| f.real),
            b.resolve(b"b").map(|f| f.real)
        );
    }

    #[test]
    fn unicode_names_resolve_by_simple_folding() {
        assert_eq!(
            dir(&["Ä.txt"]).resolve("ä.txt".as_bytes()).map(|f| f.real),
            Some("Ä.txt".as_bytes())
        );
    }
}
