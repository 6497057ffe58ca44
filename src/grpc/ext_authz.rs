//! `envoy.service.auth.v3.Authorization/Check`: Envoy's (and Istio's) external authorization,
//! converted to and from the shared decision path in [`crate::authz`]. A denial is an OK RPC
//! carrying the HTTP answer; only "cannot answer" is an RPC error (Unavailable), so that Envoy's
//! `failure_mode_allow` and `status_on_error` decide what the client sees.

mod wire;

use std::{convert::Infallible, sync::Arc};

use envoy_types::{
    ext_authz::v3::pb::{
        CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
        HttpResponse, HttpStatus,
    },
    pb::google::rpc,
};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http},
    server::{Grpc, NamedService, UnaryService},
};

use crate::{
    authz::{Authz, AuthzRequest, Denied, Header, ProxyDecision, RequestHeaders, RouteContext},
    telemetry::{FrontEnd, TraceContext},
};

pub(crate) use wire::{CheckRequest, WireResponse};

/// The message type the Check method decodes: only the fields rolegate reads ([`wire`]).
pub type WireRequest = CheckRequest;

/// The gRPC path of the one method.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The Authorization service's logic: a decoded request in, an answer out.
#[derive(Clone)]
pub struct ExtAuthzService {
    authz: Arc<Authz>,
}

impl ExtAuthzService {
    pub fn new(authz: Arc<Authz>) -> Self {
        ExtAuthzService { authz }
    }

    /// Judges one CheckRequest (the RPC minus tonic's wrapping; also used by benches).
    pub fn answer(&self, req: &CheckRequest) -> Result<WireResponse, Status> {
        self.answer_traced(req, None)
    }

    /// [`ExtAuthzService::answer`] with the call's own trace context (its gRPC metadata), used
    /// when the checked HTTP request carries none.
    pub(crate) fn answer_traced(
        &self,
        req: &CheckRequest,
        call_trace: Option<TraceContext>,
    ) -> Result<WireResponse, Status> {
        if !req.has_http() {
            return Ok(denied(Denied::bad_request(
                "the CheckRequest carries no HTTP request attributes",
            )));
        }
        let headers = EnvoyHeaders(req);
        let pseudo = |name: &str| match headers.header(name) {
            Header::One(v) => v,
            _ => "",
        };
        let method = match req.method() {
            "" => pseudo(":method"),
            m => m,
        };
        let path = match req.path() {
            "" => pseudo(":path"),
            p => p,
        };
        let context = EnvoyContext(req);
        let trace = if self.authz.telemetry().wants_trace() {
            match headers.header("traceparent") {
                Header::One(v) => TraceContext::parse(v),
                _ => None,
            }
            .or(call_trace)
        } else {
            None
        };
        let verdict = self.authz.authorize_as(
            FrontEnd::ExtAuthz,
            &AuthzRequest {
                method,
                path,
                headers: &headers,
                context: req.has_context().then_some(&context as &dyn RouteContext),
            },
            trace,
            |_| None,
        )?;
        Ok(match verdict {
            ProxyDecision::Allow(ok) => WireResponse::Allowed(ok),
            ProxyDecision::Deny(d) => denied(d),
        })
    }
}

/// `envoy.service.auth.v3.Authorization` as a tonic service, with [`EnvoyCodec`] in place of
/// the generated server's prost codec (what the generated `AuthorizationServer` does, for the
/// one method, with the lean messages).
#[derive(Clone)]
pub(crate) struct ExtAuthzServer {
    service: ExtAuthzService,
    max_decoding_message_size: Option<usize>,
}

impl ExtAuthzServer {
    pub(crate) fn new(service: ExtAuthzService) -> Self {
        ExtAuthzServer {
            service,
            max_decoding_message_size: None,
        }
    }

    /// Limits the size of a request (default: tonic's 4 MiB).
    #[must_use]
    pub(crate) fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.max_decoding_message_size = Some(limit);
        self
    }
}

impl NamedService for ExtAuthzServer {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

impl<B> Service<http::Request<B>> for ExtAuthzServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != CHECK_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let method = CheckMethod(self.service.clone());
        let limit = self.max_decoding_message_size;
        Box::pin(async move {
            let mut grpc = Grpc::new(EnvoyCodec).apply_max_message_size_config(limit, None);
            Ok(grpc.unary(method, req).await)
        })
    }
}

/// The Check method: judging is synchronous, so its future is ready at once (no box).
struct CheckMethod(ExtAuthzService);

impl UnaryService<CheckRequest> for CheckMethod {
    type Response = WireResponse;
    type Future = std::future::Ready<Result<tonic::Response<WireResponse>, Status>>;

    fn call(&mut self, request: tonic::Request<CheckRequest>) -> Self::Future {
        let trace = if self.0.authz.telemetry().wants_trace() {
            crate::grpc::authorizer::traceparent(request.metadata())
        } else {
            None
        };
        std::future::ready(
            self.0
                .answer_traced(request.get_ref(), trace)
                .map(tonic::Response::new),
        )
    }
}

/// Decodes [`CheckRequest`]s and encodes [`WireResponse`]s; errors as tonic's prost codec
/// reports them (a body that does not decode is INTERNAL).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct EnvoyCodec;

impl Codec for EnvoyCodec {
    type Encode = WireResponse;
    type Decode = CheckRequest;
    type Encoder = EnvoyCodec;
    type Decoder = EnvoyCodec;

    fn encoder(&mut self) -> Self::Encoder {
        EnvoyCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        EnvoyCodec
    }
}

impl Encoder for EnvoyCodec {
    type Item = WireResponse;
    type Error = Status;

    fn encode(&mut self, item: WireResponse, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // EncodeBuf grows as needed, so a full buffer is a bug.
        item.encode(dst)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for EnvoyCodec {
    type Item = CheckRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<CheckRequest>, Status> {
        CheckRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// The request headers as Envoy sends them: a map with repeated headers comma-joined, or, with
/// `encode_raw_headers`, a list with repeats kept apart.
struct EnvoyHeaders<'a>(&'a CheckRequest);

impl RequestHeaders for EnvoyHeaders<'_> {
    fn header(&self, name: &str) -> Header<'_> {
        if let Some(v) = self.0.header(name) {
            return Header::One(v);
        }
        let mut found = Header::Absent;
        for (_, value) in self
            .0
            .raw_headers()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
        {
            if found != Header::Absent {
                return Header::Many;
            }
            found = value.map_or(Header::NotText, Header::One);
        }
        found
    }

    fn each_name(&self, each: &mut dyn FnMut(&str)) {
        self.0.header_names().for_each(&mut *each);
        self.0.raw_headers().for_each(|(name, _)| each(name));
    }
}

/// `context_extensions`.
struct EnvoyContext<'a>(&'a CheckRequest);

impl RouteContext for EnvoyContext<'_> {
    fn value(&self, name: &str) -> Option<&str> {
        self.0.context(name)
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

fn denied(d: Denied) -> WireResponse {
    let code = match d.status {
        401 => tonic::Code::Unauthenticated,
        400 => tonic::Code::InvalidArgument,
        _ => tonic::Code::PermissionDenied,
    };
    let mut headers = vec![header("content-type", "application/json")];
    if let Some(scheme) = &d.www_authenticate {
        headers.push(header("www-authenticate", scheme));
    }
    // The status message stays with Envoy, but a 401's names no reason either: the precise
    // one is in rolegate's log.
    let message = if d.status == 401 {
        "unauthenticated"
    } else {
        d.reason
    };
    WireResponse::Other(CheckResponse {
        status: Some(rpc::Status {
            code: code as i32,
            message: message.to_owned(),
            details: Vec::new(),
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(d.status),
            }),
            headers,
            body: d.body,
        })),
    })
}

#[cfg(test)]
mod tests;
