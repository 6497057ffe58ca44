//! The HTTP auth endpoint, one decision path with ext_authz ([`crate::authz`]):
//!
//! - `/authz` for nginx `auth_request`: the original request comes in `X-Original-Method` and
//!   `X-Original-URI`.
//! - `/authz/ext/<original path>` for Envoy's `http_service` (with `path_prefix: /authz/ext`):
//!   the original method and path are on the request line.
//!
//! 200 allows, with the `x-rolegate-*` headers (and `x-envoy-auth-headers-to-remove` naming the
//! credential and any client-sent `x-rolegate-*` header, which Envoy removes upstream); 400, 401
//! and 403 deny with the platform's JSON body (on `/authz` a 400 is sent as 403, the only denial
//! nginx passes on); 503 when rolegate cannot answer.

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    extract::{Request, State as Extract},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::Response,
    routing::any,
};

use crate::authz::{Authz, AuthzRequest, Denied, HEADER_PREFIX, Header, RequestHeaders, Verdict};

/// Where Envoy's `http_service` sends checks (its `path_prefix`).
pub const ENVOY_PREFIX: &str = "/authz/ext";
/// Where nginx's `auth_request` sends checks.
pub const NGINX_PATH: &str = "/authz";

/// The routes of the auth endpoint, to merge into the HTTP port's router.
pub fn router(authz: Arc<Authz>) -> Router {
    Router::new()
        .route(NGINX_PATH, any(nginx))
        .route(ENVOY_PREFIX, any(envoy))
        .route(&format!("{ENVOY_PREFIX}/{{*rest}}"), any(envoy))
        .with_state(authz)
}

struct Headers<'a>(&'a HeaderMap);

impl RequestHeaders for Headers<'_> {
    fn header(&self, name: &str) -> Header<'_> {
        let mut values = self.0.get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => Header::Absent,
            (Some(_), Some(_)) => Header::Many,
            (Some(v), None) => v.to_str().map_or(Header::NotText, Header::One),
        }
    }

    fn rolegate_headers(&self) -> Vec<String> {
        self.0
            .keys()
            .map(HeaderName::as_str)
            .filter(|k| k.starts_with(HEADER_PREFIX))
            .map(str::to_owned)
            .collect()
    }
}

async fn nginx(Extract(authz): Extract<Arc<Authz>>, req: Request) -> Response {
    let headers = Headers(req.headers());
    let original = |name| match headers.header(name) {
        Header::One(v) => Some(v),
        _ => None,
    };
    let (Some(method), Some(path)) = (original("x-original-method"), original("x-original-uri"))
    else {
        return denied(&forbidden_if_bad(Denied::bad_request(
            "the auth request lacks X-Original-Method or X-Original-URI (exactly one of each)",
        )));
    };
    judge(&authz, method, path, &headers, forbidden_if_bad)
}

/// nginx's auth_request understands only 2xx, 401 and 403 (anything else is a 500): a request
/// refused as malformed is answered 403 there, so the client still gets a definite denial.
fn forbidden_if_bad(mut d: Denied) -> Denied {
    if d.status == 400 {
        d.status = 403;
    }
    d
}

async fn envoy(Extract(authz): Extract<Arc<Authz>>, req: Request) -> Response {
    let target = req.uri().path_and_query().map_or("", |p| p.as_str());
    let path = target.strip_prefix(ENVOY_PREFIX).unwrap_or(target);
    let path = if path.is_empty() || path.starts_with('?') {
        // `/authz/ext` or `/authz/ext?q`: the original path was `/`.
        format!("/{path}")
    } else {
        path.to_owned()
    };
    judge(
        &authz,
        req.method().as_str(),
        &path,
        &Headers(req.headers()),
        |d| d,
    )
}

fn judge(
    authz: &Authz,
    method: &str,
    path: &str,
    headers: &Headers<'_>,
    adapt: fn(Denied) -> Denied,
) -> Response {
    let verdict = authz.authorize(&AuthzRequest {
        method,
        path,
        headers,
        context: None,
    });
    match verdict {
        Ok(Verdict::Allow(ok)) => {
            let mut res = Response::new(Body::empty());
            let h = res.headers_mut();
            for (k, v) in &ok.headers {
                if let Ok(v) = HeaderValue::from_str(v) {
                    h.insert(*k, v);
                }
            }
            if !ok.remove.is_empty()
                && let Ok(v) = HeaderValue::from_str(&ok.remove.join(","))
            {
                h.insert("x-envoy-auth-headers-to-remove", v);
            }
            res
        }
        Ok(Verdict::Deny(d)) => denied(&adapt(d)),
        Err(unanswerable) => {
            let body = serde_json::json!({
                "statusCode": 503,
                "status": "Service Unavailable",
                "message": unanswerable.to_string(),
            });
            json(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
        }
    }
}

fn denied(d: &Denied) -> Response {
    let status = StatusCode::from_u16(d.status).unwrap_or(StatusCode::FORBIDDEN);
    let mut res = json(status, d.body.clone());
    if let Some(scheme) = d.www_authenticate.as_deref()
        && let Ok(v) = HeaderValue::from_str(scheme)
    {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    res
}

fn json(status: StatusCode, body: String) -> Response {
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
