//! End-user tokens (`RequestAuthentication`): whatever bytes arrive in the
//! `Authorization` header, an `x-jwt` header or the `token` query
//! parameter, authentication answers without panicking, and a token the
//! fuzzer made is never accepted (it cannot sign with the JWKS's keys, whose
//! private halves were thrown away), however its header names `alg`, `kid`,
//! `crit` or the key.
#![no_main]

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use nodeward_policy::{jwt::NoKeys, Destination, PolicySet, Settings};

/// An ES256 and an RS256 public key; their private keys no longer exist.
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","use":"sig","x":"2v14QZ-SDMQPolQv0G_oMrr9X7uJrEo9GoogU7SsYOw","y":"_GHVHTtBoieCGQFvZcYjE-FSJWF6WS_X42X9YGufCdA"},{"kty":"RSA","kid":"r1","alg":"RS256","use":"sig","n":"5HdmX0ulrBc25wNP83v8BZIS8dw6oaTvLFZiVhFZGk7y9jFacTPyS7pylrjVsCJyp0pIYUPQcPPz_shLve-zYhU4nQvPeivi0fHz3Sjz4sl2jOx0OEXJQ62DZhi0KcQvagYl3tTJ3_LKQowuLSK-Jxt7V47y2NFTDAi5B3rFroj8yk5YSBDJrnTrADnQ1daPneWqTHAC0Ff3GhXQj_byBENZrnDfoRCMeOpuDKe_WWqeDKzHlv4WNIKvnQ1syZqlX8vbIbC7NYoIw-gjdlmbA72B5fmjd2qHvdi3F4MxXHn9sAgx-bON6oy0XsXJeHjIu2eCU6g0dULv8fBTaqHv2Q","e":"AQAB"}]}"#;

fn policies() -> &'static PolicySet {
    static SET: OnceLock<PolicySet> = OnceLock::new();
    SET.get_or_init(|| {
        let yaml = format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: cart}}}}
  jwtRules:
  - issuer: https://issuer.example
    audiences: [api]
    jwks: '{JWKS}'
    fromHeaders: [{{name: authorization, prefix: 'Bearer '}}, {{name: x-jwt}}]
    fromParams: [token]
    outputClaimToHeaders: [{{header: x-user, claim: sub}}, {{header: x-tenant, claim: org.tenant}}]
"
        );
        let sources = [(PathBuf::from("fuzz.yaml"), yaml)];
        PolicySet::from_sources(&sources, Settings::default()).expect("the fuzz policy loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&place, token)) = data.split_first() else {
        return;
    };
    let Ok(token) = std::str::from_utf8(token) else {
        return;
    };
    let mut headers = HeaderMap::new();
    let mut query = None;
    let query_text = format!("a=1&token={token}");
    match place % 4 {
        0 => match HeaderValue::from_str(&format!("Bearer {token}")) {
            Ok(v) => drop(headers.insert("authorization", v)),
            Err(_) => return,
        },
        1 => match HeaderValue::from_str(token) {
            Ok(v) => drop(headers.insert("x-jwt", v)),
            Err(_) => return,
        },
        2 => query = Some(query_text.as_str()),
        _ => match HeaderValue::from_str(token) {
            // The same token twice, in two places.
            Ok(v) => {
                headers.insert("x-jwt", v);
                query = Some(query_text.as_str());
            }
            Err(_) => return,
        },
    }
    let labels = BTreeMap::from([("app".to_owned(), "cart".to_owned())]);
    let dest = Destination {
        namespace: "shop",
        name: "cart",
        labels: &labels,
        port: 8080,
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let authn = policies().authenticate(&dest, &headers, query, &NoKeys, now);
    assert!(authn.applies);
    match &authn.result {
        Ok(Some(auth)) => panic!("a token nobody could sign was accepted: {auth:?}"),
        Ok(None) => {
            let _ = authn.rewrite(&mut headers, query);
        }
        Err(e) => {
            let _ = e.as_str();
        }
    }
});
