//! SPIFFE ID parsing (URI SANs of peer certificates, policy principals).
//! An accepted ID prints as it was parsed and parses again to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeward_identity::{spiffe::trust_domain_from_uri, SpiffeId};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let _ = trust_domain_from_uri(raw);
    let Ok(id) = SpiffeId::parse(raw) else {
        return;
    };
    assert_eq!(id.as_str(), raw);
    assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id));
    assert!(!id.trust_domain().is_empty());
    let _ = (id.namespace_and_sa(), id.node_name(), id.path());
});
