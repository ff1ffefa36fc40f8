//! Escaping for anything from a certificate or the network before it goes
//! into a log line, an access record or an audit record: control and
//! invisible formatting characters cannot forge or hide record content.

use std::borrow::Cow;

/// Longest value a record keeps from the network; a 64 KiB path must not
/// make every queued record 64 KiB.
pub const MAX_FIELD: usize = 1024;

/// `s` cut to [`MAX_FIELD`] bytes (marked), with control and invisible
/// formatting characters (and `\`, so escapes stay unambiguous) replaced by
/// `\u{..}` escapes; borrowed when there is nothing to change.
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
    c == '\\'
        || c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

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
