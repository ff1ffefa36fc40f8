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

/// Lists of lists of lists of strings, a shape aliases can multiply.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Nested {
    #[allow(dead_code)]
    name: Vec<Vec<Vec<String>>>,
}

/// A list of 1000 aliases of a list of 1000 aliases of a list of 2000
/// strings: 12 kB of text, 2 * 10^9 strings if expanded (the "billion
/// laughs" shape, with a leaf large enough to pass serde_norway's own
/// limit of 100 alias jumps per event).
fn billion_laughs() -> String {
    let leaf = vec!["x"; 2000].join(",");
    let middle = format!("&m [&l [{leaf}]{}]", ",*l".repeat(999));
    format!("name: [{middle}{}]\n", ",*m".repeat(999))
}

#[test]
fn alias_expansion_past_the_budget_is_refused_before_decoding() {
    let text = billion_laughs();
    let err = decode::<Nested>(Path::new("f.yaml"), &text).expect_err("expansion");
    let message = err.to_string();
    assert!(message.starts_with("f.yaml:1:"), "{message}");
    assert!(message.contains("aliases expand"), "{message}");
    let errors = decode_all::<Nested>(Path::new("f.yaml"), &text, 20).expect_err("expansion");
    assert_eq!(errors.errors.len(), 1);
    assert!(errors.errors[0].to_string().contains("aliases expand"));
}

#[test]
fn aliases_within_the_budget_decode() {
    let text = "name: [&m [&l [a, b], *l], *m]\n";
    let doc = decode::<Nested>(Path::new("f.yaml"), text).expect("small");
    assert_eq!(doc.name.len(), 2);
    // Text without aliases never meets the budget, however large (the
    // `*` makes the walk run).
    let big = format!("name: [[[{}]]]\n", vec!["'*'"; 300_000].join(","));
    assert!(big.len() > ALIAS_BUDGET);
    let doc = decode::<Nested>(Path::new("f.yaml"), &big).expect("big");
    assert_eq!(doc.name[0][0].len(), 300_000);
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for depth in [200, 10_000] {
        let (open, close) = ("[".repeat(depth), "]".repeat(depth));
        let text = format!("name: {open}{close}\n");
        let err = decode::<Nested>(Path::new("f.yaml"), &text).expect_err("typed");
        assert!(err.to_string().contains("invalid type"), "{depth}: {err}");
        let errors = decode_all::<Nested>(Path::new("f.yaml"), &text, 20).expect_err("typed");
        assert!(errors.errors[0].to_string().contains("invalid type"));
        // A value that takes any shape stops at serde_norway's depth limit.
        let any = decode::<serde_norway::Value>(Path::new("f.yaml"), &text).expect_err("any");
        assert!(
            any.to_string().contains("recursion limit"),
            "{depth}: {any}"
        );
        // The alias walk meets the same limit, and leaves it to the decode.
        let text = format!("a: &a {open}{close}\nb: *a\n");
        let any = decode::<serde_norway::Value>(Path::new("f.yaml"), &text).expect_err("any");
        assert!(
            any.to_string().contains("recursion limit"),
            "{depth}: {any}"
        );
    }
}

#[test]
fn a_file_over_the_size_limit_is_refused_unread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("huge.yaml");
    // Sparse: 64 MiB + 1 of NULs that take no disk.
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(MAX_FILE_BYTES + 1).expect("set_len");
    let err = read::<Doc>(&path).expect_err("huge").to_string();
    assert!(
        err.contains("huge.yaml: field `(file)`: larger than 64 MiB"),
        "{err}"
    );
    file.set_len(0).expect("truncate");
    std::fs::write(&path, "name: x\n").expect("write");
    assert_eq!(read::<Doc>(&path).expect("small").name, "x");
}
