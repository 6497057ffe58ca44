//! The HTTP auth endpoint, one decision path with ext_authz ([`crate::authz`]):
//!
//! - `/authz` for nginx `auth_request`: the original request comes in `X-Original-Method` and
//!   `X-Original-URI`.
//! - `/authz/ext/<original path>` for Envoy's `http_service` (with `path_prefix: /authz/ext`):
//!   the original method and path are on the request line.
//!
//! 200 allows, with the `x-rolegate-*` headers (and `x-envoy-auth-headers-to-remove` naming the
//! credential and every client-sent header that impersonates rolegate's or the credential, which
//! Envoy removes upstream); 400, 401 and 403 deny with the platform's JSON body; 503 when
//! rolegate cannot answer.
//!
//! nginx differs in two ways. `auth_request` passes on only 401 and 403, so on `/authz` a 400 is
//! sent as 403 with `x-rolegate-status: 400`, which `deploy/nginx/nginx.conf` turns back into a
//! 400. And nginx cannot remove headers it is told about, only overwrite the names its config
//! sets (the nine identity headers and the credential): a request carrying any other header
//! that impersonates one of them (`x_rolegate_user`, `x-rolegate-admin`) is refused (400) rather
//! than allowed with the header left in.

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    extract::{Request, State as Extract},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::Response,
    routing::any,
};

use crate::{
    authz::{
        Allowed, Authz, AuthzRequest, Denied, Header, IDENTITY_HEADERS, ProxyDecision,
        RequestHeaders,
    },
    telemetry::{FrontEnd, TraceContext},
};

/// Where Envoy's `http_service` sends checks (its `path_prefix`).
pub(crate) const ENVOY_PREFIX: &str = "/authz/ext";
/// Where nginx's `auth_request` sends checks.
pub(crate) const NGINX_PATH: &str = "/authz";
/// On `/authz`, the status rolegate means when it answers 403 for a 400.
pub(crate) const NGINX_STATUS_HEADER: &str = "x-rolegate-status";

/// The routes of the auth endpoint, to merge into the HTTP port's router.
pub(crate) fn router(authz: Arc<Authz>) -> Router {
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

    fn each_name(&self, each: &mut dyn FnMut(&str)) {
        self.0.keys().map(HeaderName::as_str).for_each(each);
    }
}

/// How the proxy behind an endpoint takes rolegate's answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proxy {
    /// Envoy `http_service`: any status is passed on, `x-envoy-auth-headers-to-remove` is
    /// honoured.
    Envoy,
    /// nginx `auth_request`: only 2xx, 401 and 403; headers are only overwritten by its config.
    Nginx,
}

async fn nginx(Extract(authz): Extract<Arc<Authz>>, req: Request) -> Response {
    let res = nginx_answer(&authz, &req);
    authz.telemetry().http_auth.count(0, res.status().as_u16());
    res
}

fn nginx_answer(authz: &Authz, req: &Request) -> Response {
    let headers = Headers(req.headers());
    let original = |name| match headers.header(name) {
        Header::One(v) => Some(v),
        _ => None,
    };
    let (Some(method), Some(path)) = (original("x-original-method"), original("x-original-uri"))
    else {
        return denied(
            &Denied::bad_request(
                "the auth request lacks X-Original-Method or X-Original-URI (exactly one of each)",
            ),
            Proxy::Nginx,
        );
    };
    respond(authz, method, path, &headers, Proxy::Nginx)
}

/// The names nginx's config overwrites on every proxied request (`proxy_set_header`): the
/// identity headers and the credential header. A removal of any other name cannot be done
/// there.
fn nginx_overwrites(authz: &Authz, name: &str) -> bool {
    name == authz.config().credential_header || IDENTITY_HEADERS.contains(&name)
}

/// The refusal of an allowed request behind nginx that carries headers reading as rolegate's
/// which nginx cannot remove (it only overwrites the names its configuration sets).
fn nginx_forged(authz: &Authz, ok: &Allowed) -> Option<Denied> {
    let forged: Vec<&str> = ok
        .remove
        .iter()
        .map(String::as_str)
        .filter(|r| !nginx_overwrites(authz, r))
        .collect();
    if forged.is_empty() {
        return None;
    }
    tracing::info!(
        headers = forged.join(","),
        "refused: headers impersonating rolegate's that nginx cannot remove"
    );
    Some(Denied::forged_header(
        "the request carries a header that reads as one of rolegate's identity headers or the \
         credential header (ignoring case and '_' for '-')",
    ))
}
async fn envoy(Extract(authz): Extract<Arc<Authz>>, req: Request) -> Response {
    let res = envoy_answer(&authz, &req);
    authz.telemetry().http_auth.count(1, res.status().as_u16());
    res
}

fn envoy_answer(authz: &Authz, req: &Request) -> Response {
    let target = req.uri().path_and_query().map_or("", |p| p.as_str());
    let path = target.strip_prefix(ENVOY_PREFIX).unwrap_or(target);
    let path = if path.is_empty() || path.starts_with('?') {
        // `/authz/ext` or `/authz/ext?q`: the original path was `/`.
        format!("/{path}")
    } else {
        path.to_owned()
    };
    respond(
        authz,
        req.method().as_str(),
        &path,
        &Headers(req.headers()),
        Proxy::Envoy,
    )
}

fn respond(
    authz: &Authz,
    method: &str,
    path: &str,
    headers: &Headers<'_>,
    proxy: Proxy,
) -> Response {
    let trace = if authz.telemetry().wants_trace() {
        match headers.header("traceparent") {
            Header::One(v) => TraceContext::parse(v),
            _ => None,
        }
    } else {
        None
    };
    let verdict = authz.authorize_as(
        FrontEnd::HttpAuth,
        &AuthzRequest {
            method,
            path,
            headers,
            context: None,
        },
        trace,
        |ok| {
            (proxy == Proxy::Nginx)
                .then(|| nginx_forged(authz, ok))
                .flatten()
        },
    );
    match verdict {
        Ok(ProxyDecision::Allow(ok)) => {
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
        Ok(ProxyDecision::Deny(d)) => denied(&d, proxy),
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

fn denied(d: &Denied, proxy: Proxy) -> Response {
    // nginx's auth_request understands only 2xx, 401 and 403 (anything else is a 500): a
    // request refused as malformed is a 403 there, with the real status beside it.
    let nginx_bad = proxy == Proxy::Nginx && d.status == 400;
    let status = if nginx_bad {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::from_u16(d.status).unwrap_or(StatusCode::FORBIDDEN)
    };
    let mut res = json(status, d.body.clone());
    if nginx_bad {
        res.headers_mut()
            .insert(NGINX_STATUS_HEADER, HeaderValue::from_static("400"));
    }
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
