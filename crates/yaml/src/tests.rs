use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Doc {
    name: String,
    items: Option<Vec<Item>>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Item {
    port: u16,
    tag: Option<String>,
}

/// `line:field: message` of every error, or the value.
fn all(text: &str) -> Result<Doc, Vec<String>> {
    decode_all::<Doc>(Path::new("f.yaml"), text, 10).map_err(|e| {
        assert!(!e.truncated);
        e.errors.iter().map(short).collect()
    })
}

fn short(error: &FileError) -> String {
    match error {
        FileError::Decode {
            line,
            field,
            message,
            ..
        } => format!("{line}:{field}: {message}"),
        other => panic!("not a decode error: {other}"),
    }
}

#[test]
fn a_valid_document_decodes_as_strictly_as_decode() {
    let text = "name: a\nitems: [{port: 1}, {port: 2, tag: x}]\nlabels: {k: v}\n";
    let strict: Doc = decode(Path::new("f.yaml"), text).expect("valid");
    assert_eq!(all(text).expect("valid"), strict);
}

#[test]
fn every_unknown_field_and_bad_value_is_reported_at_its_line() {
    let text = "\
name: a
nmae: b
items:
  - {port: 1}
  - {port: 70000, tag: x}
  - {port: 3, tga: y}
labels: {k: [v]}
extra: 1
";
    assert_eq!(
        all(text).expect_err("invalid"),
        [
            "2:nmae: unknown field `nmae`, expected one of `name`, `items`, `labels`",
            "5:items[1].port: invalid value: integer `70000`, expected u16",
            "6:items[2].tga: unknown field `tga`, expected `port` or `tag`",
            "7:labels.k: invalid type: sequence, expected a string",
            "8:extra: unknown field `extra`, expected one of `name`, `items`, `labels`",
        ]
    );
}

/// The first error is exactly the one [`decode`] reports.
#[test]
fn the_first_error_is_the_strict_decoders() {
    for text in [
        "name: a\nitems: [{port: x}]\nbad: 1\n",
        "name: a\nitems: {port: 1}\n",
        "items: []\n",
        "name: [a]\n",
        "- a\n",
        "name: a\n  b: : c\n",
        "name: a\nlabels: {[k]: v}\n",
    ] {
        let strict = decode::<Doc>(Path::new("f.yaml"), text).expect_err(text);
        let errors = decode_all::<Doc>(Path::new("f.yaml"), text, 10).expect_err(text);
        assert_eq!(short(&errors.errors[0]), short(&strict), "{text}");
    }
}

/// A wrong required field is reported once: the struct missing it after it
/// was passed over is passed over too, rather than reported as missing.
#[test]
fn a_wrong_required_field_is_not_also_reported_missing() {
    let text = "name: a\nitems:\n  - {port: 1}\n  - {port: [2], tga: x}\n  - {port: 0x10000}\n";
    assert_eq!(
        all(text).expect_err("invalid"),
        [
            "4:items[1].port: invalid type: sequence, expected u16",
            "4:items[1].tga: unknown field `tga`, expected `port` or `tag`",
            "5:items[2].port: invalid value: integer `65536`, expected u16",
        ]
    );
    // At the top level too; the search then ends.
    assert_eq!(
        all("name: [a]\nnmae: b\n").expect_err("invalid"),
        [
            "1:name: invalid type: sequence, expected a string",
            "2:nmae: unknown field `nmae`, expected one of `name`, `items`, `labels`",
        ]
    );
    // A field that is really missing is reported.
    assert_eq!(
        all("name: a\nitems: [{tag: x}]\n").expect_err("invalid"),
        ["2:items[0]: missing field `port`"]
    );
}

#[test]
fn document_level_errors_end_the_search() {
    assert_eq!(
        all("- a\n").expect_err("invalid"),
        ["1:(document): invalid type: sequence, expected struct Doc"]
    );
    let errors = all("name: a\n  b: : c\n").expect_err("invalid");
    assert_eq!(errors.len(), 1, "{errors:?}");
}

#[test]
fn the_limit_stops_the_search_and_says_so() {
    let text: String = (0..5).map(|i| format!("f{i}: x\n")).collect();
    let errors = decode_all::<Doc>(Path::new("f.yaml"), &text, 3).expect_err("invalid");
    assert!(errors.truncated);
    assert_eq!(errors.errors.len(), 3);
    let errors = decode_all::<Doc>(Path::new("f.yaml"), &text, 7).expect_err("invalid");
    assert!(!errors.truncated);
    // The five unknown fields, and `name` missing.
    assert_eq!(errors.errors.len(), 6);
}

#[test]
fn aliases_are_followed_and_their_errors_reported_where_used() {
    let text = "name: a\nitems:\n  - &i {port: 1, bad: 1}\n  - *i\n";
    let errors = all(text).expect_err("invalid");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("items[0].bad"), "{errors:?}");
    assert!(errors[1].contains("items[1].bad"), "{errors:?}");
}
