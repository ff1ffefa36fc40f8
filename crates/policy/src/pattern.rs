//! Istio's match syntax for string values: exact, `prefix*`, `*suffix` or
//! `*`. The file formats parse it, path normalisation checks path patterns
//! against it, and evaluation matches with it.

/// A match value as Istio writes it: exact, `prefix*`, `*suffix`, or `*`
/// (any non-empty value). The text is stored without the `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

impl Pattern {
    /// Parses Istio's match syntax; `*` anywhere but alone, first or last is
    /// an error, never a literal (Istio matchers are not globs or regexes).
    pub fn parse(s: &str) -> Result<Self, String> {
        let pattern = match s {
            "" => return Err("empty value; use \"*\" to match any value".to_owned()),
            "*" => Self::Presence,
            _ => match (s.strip_prefix('*'), s.strip_suffix('*')) {
                (Some(rest), None) => Self::Suffix(rest.to_owned()),
                (None, Some(rest)) => Self::Prefix(rest.to_owned()),
                _ => Self::Exact(s.to_owned()),
            },
        };
        if pattern.text().contains('*') {
            return Err(format!(
                "{s:?}: `*` is only allowed alone, first (suffix match) or last (prefix match)"
            ));
        }
        Ok(pattern)
    }

    /// The literal part; empty for `Presence`.
    pub fn text(&self) -> &str {
        match self {
            Self::Exact(t) | Self::Prefix(t) | Self::Suffix(t) => t,
            Self::Presence => "",
        }
    }
}
