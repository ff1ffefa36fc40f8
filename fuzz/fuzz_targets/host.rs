//! Host and authority judgement: `Host`, `:authority` and policy host
//! patterns go through `normalize_host`. A normal form normalises to
//! itself, so the host policy judged is the host the pod receives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeward_policy::normalize_host;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(host) = normalize_host(raw) else {
        return;
    };
    let forwarded = host.to_string();
    assert!(!host.name.is_empty(), "{raw:?}");
    assert!(host.port != Some(0), "{raw:?}");
    assert!(
        !host.name.bytes().any(|b| b.is_ascii_uppercase()),
        "{raw:?} -> {forwarded:?}"
    );
    assert!(!host.name.ends_with('.'), "{raw:?} -> {forwarded:?}");
    let again = normalize_host(&forwarded).expect("a normal host normalises");
    assert_eq!(again, host, "not idempotent for {raw:?}");
});
