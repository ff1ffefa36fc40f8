//! Strict YAML decoding shared by every nodeward file format: the config
//! file, the workloads file and the policy files. Every error names the
//! file, line, column and field.
//!
//! Owns: reading and decoding one YAML document into a serde type.
//! Must not know: any nodeward file format (each crate keeps its own).
#![forbid(unsafe_code)]

mod collect;
mod expansion;

use std::{
    collections::HashSet,
    io::Read,
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;

use collect::{FieldPath, Pass};
pub use expansion::ALIAS_BUDGET;

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

/// Every error [`decode_all`] found in one document.
#[derive(Debug)]
pub struct DecodeErrors {
    /// [`FileError::Decode`]s, in the order found.
    pub errors: Vec<FileError>,
    /// Decoding stopped at the limit: there may be more.
    pub truncated: bool,
    /// How many times the text was decoded to find them.
    pub passes: usize,
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

/// The largest file [`read`] reads: 64 MiB, eight times a workloads
/// file of 100 000 entries. A larger file is refused before it is read,
/// so a runaway generator cannot take the proxy's memory with it.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Reads and decodes `path`, naming the field path and line of any error.
/// Files over [`MAX_FILE_BYTES`] are refused.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let fail = |source| FileError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(fail)?;
    let mut text = String::new();
    // `take` as well as the size: the file may grow while it is read.
    let too_large = file.metadata().map_err(fail)?.len() > MAX_FILE_BYTES
        || file
            .take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(fail)? as u64
            > MAX_FILE_BYTES;
    if too_large {
        return Err(FileError::Invalid {
            path: path.to_owned(),
            field: "(file)".to_owned(),
            message: format!("larger than {} MiB, the limit", MAX_FILE_BYTES >> 20),
        });
    }
    decode(path, &text)
}

/// Decodes `text` (the contents of `path`). Aliases may expand the
/// document to twice its size plus [`ALIAS_BUDGET`] bytes; beyond, it is
/// refused before anything is built.
pub fn decode<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, FileError> {
    check_expansion(path, text)?;
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

/// Decodes `text` (the contents of `path`) as strictly as [`decode`], but
/// reports every field that is wrong rather than the first, each at its own
/// line: unknown fields and values that do not parse, up to `limit` errors.
///
/// After an error, the document is decoded again without the entry (mapping
/// key and value, or list element) the error was in, to find the next one
/// (see `collect`). What cannot be checked without that entry is not: when
/// a required field is wrong, the value holding it is passed over too.
/// Errors that stop the whole document (YAML syntax, a wrong top-level
/// type) end the search. Map keys are read as strings: use it for formats
/// whose keys are field names or string-keyed maps.
pub fn decode_all<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    limit: usize,
) -> Result<T, DecodeErrors> {
    if let Err(error) = check_expansion(path, text) {
        return Err(DecodeErrors {
            errors: vec![error],
            truncated: false,
            passes: 0,
        });
    }
    let mut skip = HashSet::new();
    let mut errors = Vec::new();
    let mut passes = 0;
    let stop = |errors, truncated, passes| {
        Err(DecodeErrors {
            errors,
            truncated,
            passes,
        })
    };
    loop {
        passes += 1;
        let de = serde_norway::Deserializer::from_str(text);
        let (error, at) = match collect::pass::<T, _>(de, &skip) {
            Pass::Decoded(value) if errors.is_empty() => return Ok(value),
            Pass::Decoded(_) => return stop(errors, false, passes),
            Pass::Failed(error, at) => (error, at),
        };
        // A pass that fails where an earlier one did (a key that is not a
        // string, a syntax error) cannot get further.
        if skip.contains(&at) {
            return stop(errors, false, passes);
        }
        let message = strip_context(&error.to_string());
        if !missing_skipped_field(&message, &at, &skip) {
            errors.push(decode_error(path, &at, &error, message));
            if errors.len() >= limit {
                return stop(errors, true, passes);
            }
        }
        if at.is_root() {
            return stop(errors, false, passes);
        }
        skip.insert(at);
    }
}

/// Refuses a document whose aliases expand past the budget (`expansion`).
fn check_expansion(path: &Path, text: &str) -> Result<(), FileError> {
    expansion::check(text).map_err(|at| FileError::Decode {
        path: path.to_owned(),
        line: at.line,
        column: at.column,
        field: "(document)".to_owned(),
        message: format!(
            "YAML aliases expand this document past twice its size plus {} MiB \
             (anchors nested like the \"billion laughs\"); write the values out",
            ALIAS_BUDGET >> 20
        ),
    })
}

/// Whether `message` is serde's complaint about a required field that an
/// earlier pass found wrong and this one passed over: already reported.
fn missing_skipped_field(message: &str, at: &FieldPath, skip: &HashSet<FieldPath>) -> bool {
    let field = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'));
    field.is_some_and(|field| skip.contains(&at.key(field)))
}

fn decode_error(
    path: &Path,
    at: &FieldPath,
    error: &serde_norway::Error,
    message: String,
) -> FileError {
    let (line, column) = error.location().map_or((1, 1), |l| (l.line(), l.column()));
    let field = match at.to_string() {
        p if p == "." => "(document)".to_owned(),
        p => p,
    };
    FileError::Decode {
        path: path.to_owned(),
        line,
        column,
        field,
        message,
    }
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

#[cfg(test)]
mod tests;
