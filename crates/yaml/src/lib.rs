//! Strict YAML decoding shared by every nodeward file format: the config
//! file, the workloads file and the policy files. Every error names the
//! file, line, column and field.
//!
//! Owns: reading and decoding one YAML document into a serde type.
//! Must not know: any nodeward file format (each crate keeps its own).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A file that could not be read or decoded, with where and which field.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: field `{field}`: {message}")]
    Decode {
        path: PathBuf,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
    #[error("{path}: field `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

impl FileError {
    /// An error found after decoding, in a named field.
    pub fn invalid(path: &Path, field: impl Into<String>, message: impl ToString) -> Self {
        Self::Invalid {
            path: path.to_owned(),
            field: field.into(),
            message: message.to_string(),
        }
    }
}

/// Reads and decodes `path`, naming the field path and line of any error.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    decode(path, &text)
}

/// Decodes `text` (the contents of `path`).
pub fn decode<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, FileError> {
    let de = serde_norway::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let field = match err.path().to_string() {
            p if p == "." => "(document)".to_owned(),
            p => p,
        };
        let inner = err.into_inner();
        let (line, column) = inner.location().map_or((1, 1), |l| (l.line(), l.column()));
        FileError::Decode {
            path: path.to_owned(),
            line,
            column,
            field,
            message: strip_context(&inner.to_string()),
        }
    })
}

/// serde_norway prefixes the parent path ("a.b: ") and appends
/// " at line L column C"; both are already printed up front.
fn strip_context(message: &str) -> String {
    let message = match message.find(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    match message.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => rest.to_owned(),
        _ => message.to_owned(),
    }
}
