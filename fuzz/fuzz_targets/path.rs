//! Request path normalisation, with its invariants: a normalised path
//! starts with `/`, has no `.`, `..` or empty segment, and normalising it
//! again changes nothing (so what policy matched is what is forwarded).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeward_policy::normalize_path;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(normal) = normalize_path(raw) else {
        return;
    };
    let path = &normal.path;
    assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
    assert!(!path.contains("//"), "{raw:?} -> {path:?}");
    for segment in path.split('/').skip(1) {
        assert!(segment != ".." && segment != ".", "{raw:?} -> {path:?}");
    }
    assert!(!path.contains(['?', '#']), "{raw:?} -> {path:?}");
    let again = normalize_path(path).expect("a normal path normalises");
    assert_eq!(&again.path, path, "not idempotent for {raw:?}");
    assert_eq!(again.query, None);
    // What is forwarded reads back as the same path and query.
    let target = normal.request_target();
    assert_eq!(normalize_path(&target).as_ref(), Ok(&normal), "{raw:?}");
});
