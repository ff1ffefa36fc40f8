//! The peer certificate verifier, fed DER chains. The first byte picks a
//! mode: even, the rest is `[u16 length][leaf DER][intermediate DER]`;
//! odd, the rest edits a genuine chain (`fuzz/fixtures`, minted for
//! `spiffe://fuzz.example/ns/shop/sa/backend` on node `node-a`) as
//! `(u16 offset, u8 xor)` triples, so parsing gets past the outer DER.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use nodeward_identity::tls::{peer_from_chain, verify_svid, TrustBundle, Usage};
use rustls::pki_types::{CertificateDer, UnixTime};

const ROOT: &[u8] = include_bytes!("../fixtures/root.der");
const LEAF: &[u8] = include_bytes!("../fixtures/leaf.der");
const NODE: &[u8] = include_bytes!("../fixtures/node.der");
/// An hour into the fixtures' validity, so the genuine chain verifies.
const NOW: u64 = 1_796_535_944 + 3600;

static BUNDLE: LazyLock<TrustBundle> = LazyLock::new(|| {
    TrustBundle::from_der(vec![CertificateDer::from(ROOT.to_vec())], "fuzz.example")
        .expect("fixture root")
});

fn chain(data: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (&mode, rest) = data.split_first()?;
    if mode % 2 == 0 {
        let (len, rest) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
        let (leaf, node) = rest.split_at(len);
        return Some((leaf.to_vec(), node.to_vec()));
    }
    let (mut leaf, mut node) = (LEAF.to_vec(), NODE.to_vec());
    for (i, edit) in rest.chunks_exact(3).enumerate() {
        let target = if i % 2 == 0 { &mut leaf } else { &mut node };
        let at = usize::from(u16::from_be_bytes([edit[0], edit[1]])) % target.len();
        target[at] ^= edit[2];
    }
    Some((leaf, node))
}

fuzz_target!(|data: &[u8]| {
    let Some((leaf, node)) = chain(data) else {
        return;
    };
    let (leaf, node) = (CertificateDer::from(leaf), CertificateDer::from(node));
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(NOW));
    let intermediates = [node.clone()];
    for usage in [Usage::Client, Usage::Server] {
        if let Err(reject) = verify_svid(&BUNDLE, &leaf, &intermediates, now, usage) {
            let _ = (reject.as_str(), reject.to_string());
        }
    }
    let _ = peer_from_chain(&[leaf, node]);
});
