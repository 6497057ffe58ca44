//! `envoy.service.auth.v3.Authorization/Check`: Envoy's (and Istio's) external authorization,
//! converted to and from the shared decision path in [`crate::authz`]. A denial is an OK RPC
//! carrying the HTTP answer; only "cannot answer" is an RPC error (Unavailable), so that Envoy's
//! `failure_mode_allow` and `status_on_error` decide what the client sees.

use std::{collections::HashMap, sync::Arc};

use envoy_types::{
    ext_authz::v3::pb::{
        Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
        HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
    },
    pb::{
        envoy::config::core::v3::HeaderMap,
        google::{
            protobuf::{Struct, Value, value::Kind},
            rpc,
        },
    },
};
use tonic::{Request, Response, Status};

use crate::authz::{
    Allowed, Authz, AuthzRequest, Denied, HEADER_PREFIX, Header, RequestHeaders, Verdict,
};

/// The message type the Check method decodes (named for benches and tests).
pub type WireRequest = CheckRequest;
/// The message type the Check method encodes.
pub type WireResponse = CheckResponse;

/// The Authorization service.
#[derive(Clone)]
pub struct ExtAuthzService {
    authz: Arc<Authz>,
}

impl ExtAuthzService {
    pub fn new(authz: Arc<Authz>) -> Self {
        ExtAuthzService { authz }
    }

    /// Judges one CheckRequest (the RPC minus tonic's wrapping; also used by benches).
    pub fn judge(&self, req: &CheckRequest) -> Result<CheckResponse, Status> {
        let attributes = req.attributes.as_ref();
        let Some(http) = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
        else {
            return Ok(denied(&Denied::bad_request(
                "the CheckRequest carries no HTTP request attributes",
            )));
        };
        let headers = EnvoyHeaders {
            map: &http.headers,
            raw: http.header_map.as_ref(),
        };
        let pseudo = |name: &str| match headers.header(name) {
            Header::One(v) => v,
            _ => "",
        };
        let method = if http.method.is_empty() {
            pseudo(":method")
        } else {
            &http.method
        };
        let path = if http.path.is_empty() {
            pseudo(":path")
        } else {
            &http.path
        };
        let context = attributes
            .map(|a| &a.context_extensions)
            .filter(|c| !c.is_empty());
        let verdict = self.authz.authorize(&AuthzRequest {
            method,
            path,
            headers: &headers,
            context,
        })?;
        Ok(match verdict {
            Verdict::Allow(ok) => allowed(ok),
            Verdict::Deny(d) => denied(&d),
        })
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        self.judge(request.get_ref()).map(Response::new)
    }
}

/// The request headers as Envoy sends them: a map with repeated headers comma-joined, or, with
/// `encode_raw_headers`, a list with repeats kept apart.
struct EnvoyHeaders<'a> {
    map: &'a HashMap<String, String>,
    raw: Option<&'a HeaderMap>,
}

impl RequestHeaders for EnvoyHeaders<'_> {
    fn header(&self, name: &str) -> Header<'_> {
        if let Some(v) = self.map.get(name) {
            return Header::One(v);
        }
        let Some(raw) = self.raw else {
            return Header::Absent;
        };
        let mut found = Header::Absent;
        for h in raw
            .headers
            .iter()
            .filter(|h| h.key.eq_ignore_ascii_case(name))
        {
            if found != Header::Absent {
                return Header::Many;
            }
            let value = if h.raw_value.is_empty() {
                Some(h.value.as_str())
            } else {
                std::str::from_utf8(&h.raw_value).ok()
            };
            found = value.map_or(Header::NotText, Header::One);
        }
        found
    }

    fn rolegate_headers(&self) -> Vec<String> {
        let from_map = self.map.keys().map(String::as_str);
        let from_raw = self
            .raw
            .into_iter()
            .flat_map(|m| m.headers.iter().map(|h| h.key.as_str()));
        let mut names: Vec<String> = from_map
            .chain(from_raw)
            .filter(|k| {
                k.len() >= HEADER_PREFIX.len()
                    && k[..HEADER_PREFIX.len()].eq_ignore_ascii_case(HEADER_PREFIX)
            })
            .map(str::to_ascii_lowercase)
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        append: None,
        // Replace, never append: a client-sent header of the same name must not survive.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        keep_empty_value: false,
    }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

/// The dynamic_metadata field of an `x-rolegate-*` header.
fn metadata_field(header: &str) -> &str {
    match header {
        "x-rolegate-key" => "key",
        "x-rolegate-user" => "user",
        "x-rolegate-team" => "team",
        "x-rolegate-project" => "project",
        "x-rolegate-scope" => "scope",
        "x-rolegate-filter-teams" => "filter_teams",
        "x-rolegate-filter-owner-keys" => "filter_owner_keys",
        "x-rolegate-revision" => "revision",
        other => other,
    }
}

fn allowed(ok: Allowed) -> CheckResponse {
    // The same facts as the headers, for later filters and access logs
    // (`%DYNAMIC_METADATA(envoy.filters.http.ext_authz:scope)%`).
    let mut fields: HashMap<String, Value> = HashMap::with_capacity(ok.headers.len() + 1);
    for (k, v) in &ok.headers {
        fields.insert(metadata_field(k).to_owned(), string_value(v));
    }
    if !ok.entitlement.is_empty() {
        fields.insert("entitlement".into(), string_value(&ok.entitlement));
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: tonic::Code::Ok as i32,
            message: String::new(),
            details: Vec::new(),
        }),
        dynamic_metadata: Some(Struct { fields }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: ok.headers.iter().map(|(k, v)| header(k, v)).collect(),
            headers_to_remove: ok.remove,
            ..Default::default()
        })),
    }
}

fn denied(d: &Denied) -> CheckResponse {
    let code = match d.status {
        401 => tonic::Code::Unauthenticated,
        400 => tonic::Code::InvalidArgument,
        _ => tonic::Code::PermissionDenied,
    };
    let mut headers = vec![header("content-type", "application/json")];
    if let Some(scheme) = &d.www_authenticate {
        headers.push(header("www-authenticate", scheme));
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: code as i32,
            message: d.reason.to_owned(),
            details: Vec::new(),
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(d.status),
            }),
            headers,
            body: d.body.clone(),
        })),
    }
}
