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
//! prefers upper case (`DATA` < `Data` < `data`). The view's own changes update the map in
//! place (a directory filling up is not listed again for each new file); any other change
//! of the directory (its stamp: mtime and ctime) has it rebuilt from a fresh listing.

use std::collections::HashMap;

use super::fold::fold;

/// When a directory last changed: its mtime and ctime, to the nanosecond.
pub type Stamp = (i64, i64, i64, i64);

/// The names of one directory, by folded name.
#[derive(Debug, Default, Clone)]
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

    /// Records that the directory, now stamped `stamp`, gained `name`.
    pub fn add(&mut self, stamp: Stamp, name: &[u8]) {
        let reals = self.by_fold.entry(fold(name)).or_default();
        if let Err(at) = reals.binary_search_by(|r| r.as_slice().cmp(name)) {
            reals.insert(at, name.to_vec());
        }
        self.stamp = stamp;
    }

    /// Records that the directory, now stamped `stamp`, lost `name`.
    pub fn remove(&mut self, stamp: Stamp, name: &[u8]) {
        let key = fold(name);
        if let Some(reals) = self.by_fold.get_mut(&key) {
            reals.retain(|r| r != name);
            if reals.is_empty() {
                self.by_fold.remove(&key);
            }
        }
        self.stamp = stamp;
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
    fn names_added_and_removed_in_place_resolve_as_a_fresh_listing_would() {
        let mut d = dir(&["Data.PAK"]);
        d.add((1, 0, 0, 0), b"Save.DAT");
        d.add((2, 0, 0, 0), b"SAVE.dat");
        assert_eq!(
            d.resolve(b"save.dat").map(|f| f.real),
            Some(&b"SAVE.dat"[..])
        );
        d.remove((3, 0, 0, 0), b"SAVE.dat");
        assert_eq!(
            d.resolve(b"save.dat").map(|f| f.real),
            Some(&b"Save.DAT"[..])
        );
        d.remove((4, 0, 0, 0), b"Save.DAT");
        assert_eq!(d.resolve(b"save.dat"), None);
        assert_eq!(d.stamp, (4, 0, 0, 0));
    }

    #[test]
    fn unicode_names_resolve_by_simple_folding() {
        assert_eq!(
            dir(&["Ä.txt"]).resolve("ä.txt".as_bytes()).map(|f| f.real),
            Some("Ä.txt".as_bytes())
        );
    }
}
