//! The shared-mime-info package of an integration, `mime/packages/<id>.xml`. It defines:
//!
//! ```text
//! application/x-flatimage          every image: "FI\x01" at byte 8 (as FlatImage marks its
//!                                  images) or a name ending in .flatimage; an executable
//! application/x-flatimage-<md5>    this image: its file name, with the app's icon, so file
//!                                  managers show the app's icon on it
//! the app's own document types     the `mime_types` given with their globs
//! ```
//!
//! Several packages may define `application/x-flatimage`; update-mime-database merges them,
//! so removing one image's package leaves the type to the others.

use crate::settings::{DocumentType, Settings};

/// The type of every image file.
pub const IMAGE_TYPE: &str = "application/x-flatimage";

/// The text of the package. `own_type` is this image's type, `file_name` its file name,
/// `icon` the app's icon name when the icons are integrated.
pub fn mime_package(
    settings: &Settings,
    own_type: &str,
    file_name: &str,
    icon: Option<&str>,
) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <mime-info xmlns=\"http://www.freedesktop.org/standards/shared-mime-info\">\n",
    );
    xml.push_str(&format!(
        "  <mime-type type=\"{IMAGE_TYPE}\">\n\
         \x20   <comment>FlatImage application</comment>\n\
         \x20   <sub-class-of type=\"application/x-executable\"/>\n\
         \x20   <generic-icon name=\"application-x-executable\"/>\n\
         \x20   <magic priority=\"60\">\n\
         \x20     <match type=\"string\" offset=\"8\" value=\"FI\\x01\"/>\n\
         \x20   </magic>\n\
         \x20   <glob pattern=\"*.flatimage\"/>\n\
         \x20 </mime-type>\n"
    ));
    xml.push_str(&format!(
        "  <mime-type type=\"{}\">\n    <comment>{}</comment>\n    <sub-class-of type=\"{IMAGE_TYPE}\"/>\n",
        escape(own_type),
        escape(&settings.name),
    ));
    if let Some(icon) = icon {
        xml.push_str(&format!("    <icon name=\"{}\"/>\n", escape(icon)));
    }
    xml.push_str(&format!(
        "    <glob pattern=\"{}\" case-sensitive=\"true\"/>\n  </mime-type>\n",
        escape(file_name)
    ));
    for document in &settings.mime_types {
        if let DocumentType::Own(own) = document {
            xml.push_str(&format!("  <mime-type type=\"{}\">\n", escape(&own.name)));
            let comment = own.comment.as_deref().unwrap_or(&settings.name);
            xml.push_str(&format!("    <comment>{}</comment>\n", escape(comment)));
            for glob in &own.globs {
                xml.push_str(&format!("    <glob pattern=\"{}\"/>\n", escape(glob)));
            }
            xml.push_str("  </mime-type>\n");
        }
    }
    xml.push_str("</mime-info>\n");
    xml
}

/// Text and attribute values: the five characters XML reserves.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Integrations, OwnType};

    fn settings() -> Settings {
        Settings {
            name: "Tom & Jerry".into(),
            categories: vec![],
            comment: None,
            terminal: false,
            mime_types: vec![
                DocumentType::Known("text/plain".into()),
                DocumentType::Own(OwnType {
                    name: "application/x-tj-save".into(),
                    globs: vec!["*.tjs".into()],
                    comment: None,
                }),
            ],
            startup_wm_class: None,
            keywords: vec![],
            enabled: Integrations::ALL,
        }
    }

    #[test]
    fn package_is_well_formed_xml_with_escaped_values() {
        let xml = mime_package(
            &settings(),
            "application/x-flatimage-abc",
            "a<b>.flatimage",
            Some("i"),
        );
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let types: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("mime-type"))
            .filter_map(|n| n.attribute("type"))
            .collect();
        assert_eq!(
            types,
            [
                IMAGE_TYPE,
                "application/x-flatimage-abc",
                "application/x-tj-save"
            ]
        );
        let glob = doc
            .descendants()
            .filter(|n| n.has_tag_name("glob"))
            .filter_map(|n| n.attribute("pattern"))
            .collect::<Vec<_>>();
        assert_eq!(glob, ["*.flatimage", "a<b>.flatimage", "*.tjs"]);
        assert!(xml.contains("<comment>Tom &amp; Jerry</comment>"));
    }

    #[test]
    fn image_magic_is_flatimage_bytes_at_offset_8() {
        let xml = mime_package(&settings(), "application/x-flatimage-abc", "a", None);
        assert!(xml.contains(r#"<match type="string" offset="8" value="FI\x01"/>"#));
        assert!(!xml.contains("<icon "));
    }

    #[test]
    fn known_document_types_are_not_redefined() {
        let xml = mime_package(&settings(), "application/x-flatimage-abc", "a", None);
        assert!(!xml.contains("text/plain"));
    }
}
