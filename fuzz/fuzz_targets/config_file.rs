//! The config file: decoding and validation, as `nodeward run --config`
//! does before binding a port. Any input is a config or an error naming
//! the field.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nodeward::config::{Config, ConfigFile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/nodeward/config.yaml");
    let Ok(file) = nodeward_yaml::decode::<ConfigFile>(path, text) else {
        return;
    };
    if let Err(e) = Config::from_file_with_env(path, file, Some("node-a".to_owned())) {
        let _ = e.to_string();
    }
});
