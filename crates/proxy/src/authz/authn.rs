//! The request gate's JWT step: `RequestAuthentication` before any policy.
//!
//! A request to a workload a `RequestAuthentication` selects has its token
//! checked ([`nodeward_policy::PolicySet::authenticate`]). A bad token gets
//! 401 with `www-authenticate` (RFC 6750); a good one, or none, goes on to
//! the policies with its end-user identity, after the token is removed
//! (unless `forwardOriginalToken`) and `outputClaimToHeaders` set. The token
//! itself is never logged: records carry the request principal.

use std::time::SystemTime;

use http::{request::Parts, HeaderValue, StatusCode, Uri};

use nodeward_policy::{jwt::Authentication, Decision, PolicySet};

use super::{audit::Kind, connection, effective_host, RequestGate, RequestView};
use crate::{
    escape::clean,
    http::{self as proxy_http, Verdict},
    trace::RequestSpan,
};

impl RequestGate {
    /// Authenticates the request and rewrites it; the answer (401, or 400)
    /// when it is refused.
    pub(super) fn authenticate(
        &self,
        set: &PolicySet,
        parts: &mut Parts,
    ) -> Result<Authentication, Box<Verdict>> {
        let conn = connection(&self.subject);
        let query = parts.uri.query();
        let keys = self.authz.keys.as_ref();
        let authn = set.authenticate(
            &conn.destination,
            &parts.headers,
            query,
            keys,
            SystemTime::now(),
        );
        if !authn.applies {
            return Ok(authn);
        }
        match &authn.result {
            Ok(Some(_)) => self.authz.observer.jwt_validation("ok"),
            Ok(None) => {}
            Err(e) => {
                self.authz.observer.jwt_validation(e.as_str());
                return Err(Box::new(Verdict::Respond(self.unauthenticated(parts, *e))));
            }
        }
        if let Some(query) = authn.rewrite(&mut parts.headers, parts.uri.query()) {
            // A target that cannot be rebuilt without the token is refused:
            // passing the original would hand the token to the pod.
            let Some(uri) = with_query(&parts.uri, &query) else {
                let raw_path = parts.uri.path().to_owned();
                let why = "the token could not be removed";
                return Err(Box::new(self.refuse(parts, &raw_path, why)));
            };
            parts.uri = uri;
        }
        Ok(authn)
    }

    /// Records the refusal (audit, access and the request's span) and
    /// builds the 401.
    fn unauthenticated(
        &self,
        parts: &mut Parts,
        why: nodeward_policy::jwt::JwtError,
    ) -> http::Response<bytes::Bytes> {
        let d = Decision {
            allow: false,
            policy: None,
            action: None,
            reason: format!("JWT {}: {why}", why.as_str()),
            audit: Vec::new(),
        };
        // The host as the policies would have judged it (`:authority` on
        // HTTP/2, Host on HTTP/1.1); empty when it is unusable.
        let host = effective_host(parts)
            .ok()
            .flatten()
            .map(|h| h.to_string())
            .unwrap_or_default();
        self.traced(&mut parts.extensions, &host, &d);
        if let Some(span) = parts.extensions.get_mut::<RequestSpan>() {
            span.jwt_refused(why.as_str());
        }
        let view = RequestView {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            host: &host,
            request_principal: None,
        };
        let (id, subject) = (self.id, &self.subject);
        let layer = "request";
        self.authz
            .record(id, subject, Some(&view), layer, &d, Kind::Authz, None);
        let mut response =
            proxy_http::refusal(StatusCode::UNAUTHORIZED, "Jwt verification fails\n");
        let challenge = format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"",
            clean(why.as_str())
        );
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(http::header::WWW_AUTHENTICATE, value);
        }
        self.log(&view, response.status(), Some(&d), None);
        response
    }
}

#[cfg(test)]
mod tests;

/// `uri` with its query replaced (dropped when empty).
fn with_query(uri: &Uri, query: &str) -> Option<Uri> {
    let mut parts = uri.clone().into_parts();
    let path = uri.path();
    let target = if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    };
    parts.path_and_query = Some(target.parse().ok()?);
    Uri::from_parts(parts).ok()
}
