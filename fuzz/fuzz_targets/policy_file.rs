//! The policy loader: the bytes of one policy file, every YAML document in
//! it. Any input gives a set or errors; none may panic or run away.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use nodeward_policy::{PolicySet, Settings};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sources = [(PathBuf::from("fuzz.yaml"), text.to_owned())];
    if let Err(errors) = PolicySet::from_sources(&sources, Settings::default()) {
        // Error messages are printed to operators: formatting must not fail.
        let _ = errors.to_string();
    }
});
