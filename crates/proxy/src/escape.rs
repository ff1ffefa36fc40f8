//! Escaping for anything from a certificate or the network before it goes
//! into a log line, an access record or an audit record: control and
//! invisible formatting characters cannot forge or hide record content.
//!
//! What is escaped is decided by Unicode general category, not by a list:
//! every `Cc` (controls, C1 included), `Cf` (format: bidi controls such as
//! U+202E and U+061C, zero-width characters, U+00AD, U+2060, tags) and `Zl`
//! / `Zp` (U+2028, U+2029, which JSON leaves raw and some readers break lines
//! at). A hand-picked list missed U+2028, U+061C, U+2060 and U+00AD.

use std::borrow::Cow;

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Longest value a record keeps from the network; a 64 KiB path must not
/// make every queued record 64 KiB.
pub const MAX_FIELD: usize = 1024;

/// `s` cut to [`MAX_FIELD`] bytes (marked), with every character of the
/// categories `Cc`, `Cf`, `Zl` and `Zp` (and `\`, so escapes stay
/// unambiguous) replaced by a `\u{..}` escape; borrowed when there is
/// nothing to change.
pub fn clean(s: &str) -> Cow<'_, str> {
    if s.len() > MAX_FIELD {
        let mut cut = MAX_FIELD;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        return Cow::Owned(format!("{}…[truncated]", clean(&s[..cut])));
    }
    if !s.chars().any(suspicious) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if suspicious(c) {
            out.push_str(&format!("\\u{{{:04x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn suspicious(c: char) -> bool {
    // ASCII first: the common case never looks at the category table.
    if c.is_ascii() {
        return c == '\\' || c.is_ascii_control();
    }
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(c: char) -> bool {
        let s = c.to_string();
        clean(&s) != s
    }

    /// Every Unicode scalar value: escaped iff `\` or of category Cc, Cf,
    /// Zl or Zp; and the escape names the character.
    #[test]
    fn clean_escapes_exactly_the_cc_cf_zl_zp_categories_and_backslash() {
        let invisible = [
            GeneralCategory::Control,
            GeneralCategory::Format,
            GeneralCategory::LineSeparator,
            GeneralCategory::ParagraphSeparator,
        ];
        let mut count = 0;
        for c in (0..=0x10_ffff).filter_map(char::from_u32) {
            let want = c == '\\' || invisible.contains(&c.general_category());
            let mut buf = [0; 4];
            let out = clean(c.encode_utf8(&mut buf));
            if want {
                assert_eq!(
                    out,
                    format!("\\u{{{:04x}}}", c as u32),
                    "U+{:04X}",
                    c as u32
                );
                count += 1;
            } else {
                assert!(
                    matches!(out, Cow::Borrowed(_)),
                    "U+{:04X} escaped",
                    c as u32
                );
            }
        }
        // Cc alone is 65 characters: the table really was consulted.
        assert!(count > 65 + 100, "{count}");
    }

    /// The characters an outside probe got through the old hand-picked list.
    #[test]
    fn clean_escapes_line_separators_and_invisible_format_characters() {
        for c in [
            '\u{2028}',
            '\u{2029}',
            '\u{061c}',
            '\u{2060}',
            '\u{00ad}',
            '\u{e0001}',
        ] {
            assert!(escaped(c), "U+{:04X} left raw", c as u32);
        }
        assert_eq!(clean("/a\u{2028}b"), "/a\\u{2028}b");
    }

    #[test]
    fn clean_escapes_controls_and_bidi_but_keeps_plain_text() {
        assert!(matches!(clean("/api/items"), Cow::Borrowed(_)));
        assert_eq!(clean("a\nb"), "a\\u{000a}b");
        assert_eq!(clean("x\u{202e}y\u{7f}"), "x\\u{202e}y\\u{007f}");
        assert_eq!(clean("ünïcode ok"), "ünïcode ok");
        assert_eq!(
            clean("a\\u{000a}"),
            "a\\u{005c}u{000a}",
            "a literal escape stays distinguishable"
        );
        let long = "é".repeat(MAX_FIELD);
        let cut = clean(&long);
        assert!(
            cut.len() < MAX_FIELD + 32 && cut.ends_with("[truncated]"),
            "{cut}"
        );
    }
}
