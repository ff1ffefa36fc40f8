//! `RequestAuthentication` as the proxy applies it: the file format turned
//! into rules with their keys and token locations.

use std::sync::Arc;

use http::{header::AUTHORIZATION, HeaderName};
use jsonwebtoken::jwk::JwkSet;

use crate::{
    file::{
        ClaimToHeaderFile, JwtHeaderFile, JwtRuleFile, RequestAuthenticationFile,
        RequestAuthenticationSpecFile,
    },
    model::{policy_ref, FieldError, Loaded, Selector},
    PolicyInfo, PolicyKind, PolicyRef,
};

/// Where tokens are looked for when a rule names no location (Istio's
/// default): `Authorization: Bearer <token>` and `?access_token=<token>`.
const DEFAULT_PREFIX: &str = "Bearer ";
const DEFAULT_PARAM: &str = "access_token";

/// One `RequestAuthentication`.
#[derive(Debug)]
pub(crate) struct RequestAuthnPolicy {
    pub id: PolicyRef,
    pub selector: Selector,
    pub rules: Box<[JwtRule]>,
}

/// One `jwtRules` entry: an issuer, its keys, and where its tokens travel.
#[derive(Debug)]
pub struct JwtRule {
    pub issuer: String,
    /// Empty: any audience.
    pub audiences: Vec<String>,
    pub keys: Keys,
    /// Empty: the default locations (see [`JwtRule::locations`]).
    locations: Vec<TokenLocation>,
    pub forward_original_token: bool,
    /// `(header, claim path)`.
    pub output_claims: Vec<(HeaderName, Box<[String]>)>,
}

/// A rule's keys.
#[derive(Debug, Clone)]
pub enum Keys {
    Inline(Arc<JwkSet>),
    /// Fetched by the proxy (a [`super::KeySource`]).
    Uri(Arc<str>),
}

/// Where a token may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// The header's value after `prefix` (compared ignoring ASCII case).
    Header { name: HeaderName, prefix: String },
    /// A query parameter.
    Param(String),
}

impl JwtRule {
    /// The rule's token locations, or Istio's defaults when it names none.
    pub fn locations(&self) -> Vec<TokenLocation> {
        if !self.locations.is_empty() {
            return self.locations.clone();
        }
        vec![
            TokenLocation::Header {
                name: AUTHORIZATION,
                prefix: DEFAULT_PREFIX.to_owned(),
            },
            TokenLocation::Param(DEFAULT_PARAM.to_owned()),
        ]
    }
}

impl Loaded<RequestAuthnPolicy> {
    /// The listing entry for [`crate::PolicySet::policies`].
    pub fn info(&self) -> PolicyInfo<'_> {
        PolicyInfo {
            kind: PolicyKind::RequestAuthentication,
            namespace: self.policy.id.namespace(),
            name: self.policy.id.name(),
            action: None,
            mtls_mode: None,
            file: &self.origin.file,
            line: self.origin.line,
        }
    }
}

impl TryFrom<RequestAuthenticationFile> for RequestAuthnPolicy {
    type Error = FieldError;

    fn try_from(file: RequestAuthenticationFile) -> Result<Self, FieldError> {
        let RequestAuthenticationFile {
            api_version: _,
            kind: _,
            metadata,
            spec,
        } = file;
        let id = policy_ref(metadata)?;
        let RequestAuthenticationSpecFile {
            selector,
            jwt_rules,
        } = spec.unwrap_or_default();
        let rules = jwt_rules.unwrap_or_default().into_iter().enumerate();
        let rules = rules
            .map(|(i, r)| {
                JwtRule::try_from(r).map_err(|e| e.within(&format!("spec.jwtRules[{i}]")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            id,
            selector: Selector::from(selector),
            rules,
        })
    }
}

impl TryFrom<JwtRuleFile> for JwtRule {
    type Error = FieldError;

    fn try_from(file: JwtRuleFile) -> Result<Self, FieldError> {
        let JwtRuleFile {
            issuer,
            audiences,
            jwks,
            jwks_uri,
            from_headers,
            from_params,
            forward_original_token,
            output_claim_to_headers,
        } = file;
        let issuer = issuer
            .filter(|i| !i.is_empty())
            .ok_or_else(|| FieldError::new("issuer", "is required"))?;
        let keys = match (jwks, jwks_uri) {
            (Some(jwks), None) => Keys::Inline(jwks.0),
            (None, Some(uri)) => Keys::Uri(uri.0.into()),
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "jwks",
                    "and jwksUri are both set; give one",
                ))
            }
            (None, None) => {
                let why =
                    "or jwksUri is required (nodeward does not discover keys from the issuer)";
                return Err(FieldError::new("jwks", why));
            }
        };
        let headers = from_headers.unwrap_or_default().into_iter();
        let params = from_params.unwrap_or_default().into_iter();
        let mut locations: Vec<TokenLocation> = headers.map(header_location).collect();
        for (i, name) in params.enumerate() {
            if name.is_empty() || name.contains(['&', '=', '#']) {
                let why = format!("{name:?} is not a query parameter name");
                return Err(FieldError::new(format!("fromParams[{i}]"), why));
            }
            locations.push(TokenLocation::Param(name));
        }
        let outputs = output_claim_to_headers.unwrap_or_default().into_iter();
        Ok(Self {
            issuer,
            audiences: audiences.unwrap_or_default(),
            keys,
            locations,
            forward_original_token: forward_original_token.unwrap_or(false),
            output_claims: outputs
                .map(|ClaimToHeaderFile { header, claim }| (header.0, claim.0))
                .collect(),
        })
    }
}

fn header_location(file: JwtHeaderFile) -> TokenLocation {
    let JwtHeaderFile { name, prefix } = file;
    TokenLocation::Header {
        name: name.0,
        prefix: prefix.unwrap_or_default(),
    }
}
