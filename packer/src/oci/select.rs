//! Choosing one image among several in an archive: by tag (`--tag`), then by platform
//! (`--platform`, default linux/amd64). Pure, so every rule has a unit test.

use std::fmt;

use anyhow::bail;

/// `os/arch[/variant]`, as `--platform` takes it and as indexes record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform images are chosen for when `--platform` is not given.
    pub fn default_target() -> Self {
        Platform {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: None,
        }
    }

    /// Parses `linux/arm64` or `linux/arm/v7`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: parts
                    .get(2)
                    .filter(|v| !v.is_empty())
                    .map(|v| v.to_string()),
            }),
            _ => Err(format!(
                "'{text}' is not a platform (OS/ARCH or OS/ARCH/VARIANT, e.g. linux/arm64)"
            )),
        }
    }

    /// Whether an image for `self` serves a request for `wanted`: a variant is compared
    /// only when the request names one.
    pub fn serves(&self, wanted: &Platform) -> bool {
        self.os == wanted.os
            && self.arch == wanted.arch
            && (wanted.variant.is_none() || self.variant == wanted.variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What is known of one image before its manifest is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Names the archive gives it (`localhost/app:latest`, or a bare tag `latest`).
    pub tags: Vec<String>,
    /// From the index; `None` when only the image config will say.
    pub platform: Option<Platform>,
}

/// Whether `name` is what `--tag wanted` asks for: the whole name, or its tag after the
/// last `:` of the last path component.
pub fn tag_matches(name: &str, wanted: &str) -> bool {
    if name == wanted {
        return true;
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    last.rsplit_once(':').is_some_and(|(_, tag)| tag == wanted)
}

/// The index of the one candidate to import.
pub fn choose(
    candidates: &[Candidate],
    tag: Option<&str>,
    platform: &Platform,
    platform_given: bool,
) -> anyhow::Result<usize> {
    if candidates.is_empty() {
        bail!("the archive holds no image");
    }
    let all_tags = || -> String {
        let mut tags: Vec<&str> = candidates
            .iter()
            .flat_map(|c| c.tags.iter().map(String::as_str))
            .collect();
        tags.sort_unstable();
        tags.dedup();
        if tags.is_empty() {
            "none".into()
        } else {
            tags.join(", ")
        }
    };
    let mut pool: Vec<usize> = (0..candidates.len()).collect();
    if let Some(wanted) = tag {
        pool.retain(|&i| candidates[i].tags.iter().any(|t| tag_matches(t, wanted)));
        if pool.is_empty() {
            bail!(
                "no image tagged '{wanted}' in the archive (its tags: {})",
                all_tags()
            );
        }
    } else {
        let mut names: Vec<&String> = pool.iter().flat_map(|&i| &candidates[i].tags).collect();
        names.sort_unstable();
        names.dedup();
        if names.len() > 1 {
            bail!(
                "the archive holds several images ({}): choose one with --tag",
                all_tags()
            );
        }
    }
    if pool.len() == 1 {
        return Ok(pool[0]);
    }
    let fitting: Vec<usize> = pool
        .iter()
        .copied()
        .filter(|&i| {
            candidates[i]
                .platform
                .as_ref()
                .is_some_and(|p| p.serves(platform))
        })
        .collect();
    match fitting.as_slice() {
        [one] => Ok(*one),
        [first, ..] => Ok(*first),
        [] => {
            let mut offered: Vec<String> = pool
                .iter()
                .filter_map(|&i| candidates[i].platform.as_ref().map(ToString::to_string))
                .collect();
            offered.dedup();
            let hint = if platform_given {
                "choose another with --platform"
            } else {
                "choose one with --platform"
            };
            bail!(
                "no image for {platform} in the archive (it has: {}): {hint}",
                if offered.is_empty() {
                    "no platform information".to_string()
                } else {
                    offered.join(", ")
                }
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(tags: &[&str], platform: Option<&str>) -> Candidate {
        Candidate {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            platform: platform.map(|p| Platform::parse(p).unwrap()),
        }
    }

    #[test]
    fn platforms_parse_with_an_optional_variant() {
        let p = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!((p.os.as_str(), p.arch.as_str()), ("linux", "arm"));
        assert_eq!(p.variant.as_deref(), Some("v7"));
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("/amd64").is_err());
        assert!(Platform::parse("a/b/c/d").is_err());
    }

    #[test]
    fn an_index_of_platforms_gives_linux_amd64_by_default() {
        let multi = [
            cand(&[], Some("linux/arm64")),
            cand(&[], Some("linux/amd64")),
            cand(&[], Some("unknown/unknown")),
        ];
        let amd64 = Platform::default_target();
        assert_eq!(choose(&multi, None, &amd64, false).unwrap(), 1);
        let arm = Platform::parse("linux/arm64").unwrap();
        assert_eq!(choose(&multi, None, &arm, true).unwrap(), 0);
        let err = choose(&multi, None, &Platform::parse("linux/s390x").unwrap(), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("linux/arm64, linux/amd64"), "{err}");
        assert!(err.contains("--platform"), "{err}");
    }

    #[test]
    fn a_variant_is_compared_only_when_asked_for() {
        let arm = [
            cand(&[], Some("linux/arm/v6")),
            cand(&[], Some("linux/arm/v7")),
        ];
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(choose(&arm, None, &v7, true).unwrap(), 1);
        let any = Platform::parse("linux/arm").unwrap();
        assert_eq!(choose(&arm, None, &any, true).unwrap(), 0);
    }

    #[test]
    fn several_tagged_images_need_a_tag_and_the_error_names_them() {
        let layout = [cand(&["app:1"], None), cand(&["app:2"], None)];
        let amd64 = Platform::default_target();
        let err = choose(&layout, None, &amd64, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("app:1, app:2") && err.contains("--tag"),
            "{err}"
        );
        assert_eq!(choose(&layout, Some("2"), &amd64, false).unwrap(), 1);
        assert_eq!(choose(&layout, Some("app:1"), &amd64, false).unwrap(), 0);
        let err = choose(&layout, Some("3"), &amd64, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no image tagged '3'") && err.contains("app:1"),
            "{err}"
        );
    }

    #[test]
    fn a_single_image_is_taken_whatever_its_index_says() {
        let one = [cand(&["localhost/app:latest"], None)];
        let amd64 = Platform::default_target();
        assert_eq!(choose(&one, None, &amd64, false).unwrap(), 0);
        assert!(choose(&[], None, &amd64, false).is_err());
    }

    #[test]
    fn tags_match_whole_names_or_the_tag_part() {
        assert!(tag_matches("localhost/app:latest", "latest"));
        assert!(tag_matches("localhost/app:latest", "localhost/app:latest"));
        assert!(tag_matches("latest", "latest"));
        assert!(!tag_matches("localhost:5000/app", "5000/app"));
        assert!(!tag_matches("app:latest", "late"));
    }
}
