//! The connection to etcd: one lazily connected gRPC channel per endpoint, the one in use
//! changed when it fails, an optional user token, and every unary call bounded by the request
//! timeout.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tonic::{Request, Status, metadata::MetadataValue, transport::Channel};

use super::pb::etcdserverpb::{
    AuthenticateRequest, RangeRequest, RangeResponse, StatusRequest, StatusResponse, TxnRequest,
    TxnResponse, WatchRequest, WatchResponse, auth_client::AuthClient, kv_client::KvClient,
    maintenance_client::MaintenanceClient, watch_client::WatchClient,
};
use crate::tls::client::{ClientTls, endpoint};

/// The largest response taken from etcd: a page of a range read is bounded by its limit, but a
/// value is up to etcd's request size (1.5 MiB by default, more when raised for large applies).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// How etcd is reached (`serve --etcd-*`). Its `Debug` shows no password.
#[derive(Clone)]
pub struct EtcdConnect {
    /// Client URLs of the members (`http://` or `https://`).
    pub endpoints: Vec<String>,
    /// TLS towards `https://` endpoints.
    pub tls: ClientTls,
    /// With etcd authentication on: the user and its password.
    pub user: Option<(String, String)>,
    /// The longest a connection to one member may take.
    pub dial_timeout: Duration,
    /// The longest one call may take.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for EtcdConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConnect")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("dial_timeout", &self.dial_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// Why a call to etcd failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("the etcd endpoint {url:?} is not usable: {message}")]
    Config { url: String, message: String },
    /// No member answered (each was tried): connection refused, timeouts, no leader.
    #[error("etcd is unreachable: {0}")]
    Unreachable(String),
    /// A member answered with an error.
    #[error("etcd refused the request: {0}")]
    Refused(String),
    /// A write was sent but no answer came back: it may or may not have been committed.
    #[error("etcd did not answer the write, which may or may not have been committed: {0}")]
    Ambiguous(String),
}

/// A client of one etcd cluster.
pub(crate) struct EtcdClient {
    channels: Vec<(String, Channel)>,
    /// The endpoint in use: the next call starts there.
    current: AtomicUsize,
    user: Option<(String, String)>,
    token: Mutex<Option<String>>,
    pub(crate) request_timeout: Duration,
}

/// Whether an error says the request never reached a member able to serve it, so that trying
/// another member cannot apply it twice.
fn never_served(status: &Status) -> bool {
    // A connection that could not be made, or a member without a leader, took nothing in; a
    // connection that broke or a leader that changed may have taken the request.
    let text = format!("{status:?}").to_ascii_lowercase();
    status.code() == tonic::Code::Unavailable
        && (text.contains("tcp connect error")
            || text.contains("error trying to connect")
            || text.contains("connection refused")
            || text.contains("dns error")
            || text.contains("no leader"))
}

/// Whether trying another member may help a read.
fn retry_read(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
    )
}

impl EtcdClient {
    /// Channels to every endpoint; nothing is dialled until the first call.
    pub(crate) fn new(connect: &EtcdConnect) -> Result<Self, EtcdError> {
        if connect.endpoints.is_empty() {
            return Err(EtcdError::Config {
                url: String::new(),
                message: "no endpoint given".into(),
            });
        }
        let channels = connect
            .endpoints
            .iter()
            .map(|url| {
                let ep = endpoint(url, &connect.tls).map_err(|e| EtcdError::Config {
                    url: url.clone(),
                    message: e.to_string(),
                })?;
                let channel = ep
                    .connect_timeout(connect.dial_timeout)
                    .http2_keep_alive_interval(Duration::from_secs(2))
                    .keep_alive_timeout(connect.dial_timeout)
                    .keep_alive_while_idle(true)
                    .connect_lazy();
                Ok((url.clone(), channel))
            })
            .collect::<Result<_, EtcdError>>()?;
        Ok(EtcdClient {
            channels,
            current: AtomicUsize::new(0),
            user: connect.user.clone(),
            token: Mutex::new(None),
            request_timeout: connect.request_timeout,
        })
    }

    /// The endpoints, for `/status` and logs.
    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.channels.iter().map(|(u, _)| u.clone()).collect()
    }

    /// The endpoint in use now.
    pub(crate) fn current_endpoint(&self) -> String {
        let i = self.current.load(Ordering::Relaxed) % self.channels.len();
        self.channels[i].0.clone()
    }

    /// Moves on to the next endpoint (the one in use failed).
    fn rotate(&self, from: usize) {
        let _ = self.current.compare_exchange(
            from,
            (from + 1) % self.channels.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn token(&self) -> Option<String> {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `message` with the auth token, when there is one.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        if let Some(token) = self.token()
            && let Ok(value) = MetadataValue::try_from(token.as_str())
        {
            req.metadata_mut().insert("token", value);
        }
        req
    }

    /// Logs the configured user in on `channel` (once, or again when its token expired).
    async fn authenticate(&self, channel: Channel) -> Result<(), Status> {
        let Some((name, password)) = &self.user else {
            return Ok(());
        };
        let mut auth = AuthClient::new(channel);
        let answer = tokio::time::timeout(
            self.request_timeout,
            auth.authenticate(AuthenticateRequest {
                name: name.clone(),
                password: password.clone(),
            }),
        )
        .await
        .map_err(|_| Status::deadline_exceeded("etcd did not answer the authentication"))??;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(answer.into_inner().token);
        Ok(())
    }

    /// Runs one unary call against the endpoint in use and, when it cannot be served there,
    /// against the others in turn. `idempotent`: the call may be sent again after a failure
    /// that leaves its outcome unknown (a read); a write is sent again only after failures that
    /// say it was never served.
    async fn call<T, F, Fut>(&self, idempotent: bool, f: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel, Option<String>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let tries = self.channels.len().max(2);
        let mut last = String::new();
        let mut authenticated = false;
        for _ in 0..tries {
            let at = self.current.load(Ordering::Relaxed) % self.channels.len();
            let (url, channel) = &self.channels[at];
            if self.user.is_some() && self.token().is_none() {
                if let Err(e) = self.authenticate(channel.clone()).await {
                    last = format!("{url}: authentication: {}", e.message());
                    if e.code() == tonic::Code::InvalidArgument
                        || e.code() == tonic::Code::FailedPrecondition
                    {
                        return Err(EtcdError::Refused(last));
                    }
                    self.rotate(at);
                    continue;
                }
                authenticated = true;
            }
            let outcome =
                tokio::time::timeout(self.request_timeout, f(channel.clone(), self.token()))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Status::deadline_exceeded(format!(
                            "no answer within {}",
                            humantime::format_duration(self.request_timeout)
                        )))
                    });
            match outcome {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => {
                    last = format!("{url}: {}", status.message());
                    if status.code() == tonic::Code::Unauthenticated
                        && self.user.is_some()
                        && !authenticated
                    {
                        // The token expired: log in again and retry on the same member.
                        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        continue;
                    }
                    if never_served(&status) || (idempotent && retry_read(&status)) {
                        self.rotate(at);
                        continue;
                    }
                    if !idempotent && retry_read(&status) {
                        self.rotate(at);
                        return Err(EtcdError::Ambiguous(last));
                    }
                    return Err(EtcdError::Refused(last));
                }
            }
        }
        Err(EtcdError::Unreachable(last))
    }

    pub(crate) async fn range(&self, req: RangeRequest) -> Result<RangeResponse, EtcdError> {
        self.call(true, |channel, _| {
            let req = self.request(req.clone());
            async move {
                KvClient::new(channel)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .range(req)
                    .await
            }
        })
        .await
    }

    pub(crate) async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.call(false, |channel, _| {
            let req = self.request(req.clone());
            async move {
                KvClient::new(channel)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .max_encoding_message_size(MAX_RESPONSE_BYTES)
                    .txn(req)
                    .await
            }
        })
        .await
    }

    pub(crate) async fn status(&self) -> Result<StatusResponse, EtcdError> {
        self.call(true, |channel, _| {
            let req = self.request(StatusRequest {});
            async move { MaintenanceClient::new(channel).status(req).await }
        })
        .await
    }

    /// Opens a watch stream on the endpoint in use (moving on to the next one when it cannot
    /// be opened there); `requests` feeds the stream.
    pub(crate) async fn watch(
        &self,
        requests: tokio::sync::mpsc::Receiver<WatchRequest>,
    ) -> Result<tonic::Streaming<WatchResponse>, EtcdError> {
        let at = self.current.load(Ordering::Relaxed) % self.channels.len();
        let (url, channel) = &self.channels[at];
        if self.user.is_some()
            && self.token().is_none()
            && let Err(e) = self.authenticate(channel.clone()).await
        {
            self.rotate(at);
            return Err(EtcdError::Unreachable(format!(
                "{url}: authentication: {}",
                e.message()
            )));
        }
        let req = self.request(tokio_stream::wrappers::ReceiverStream::new(requests));
        let opened = tokio::time::timeout(
            self.request_timeout,
            WatchClient::new(channel.clone())
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .watch(req),
        )
        .await;
        match opened {
            Ok(Ok(stream)) => Ok(stream.into_inner()),
            Ok(Err(status)) => {
                if status.code() == tonic::Code::Unauthenticated {
                    *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                self.rotate(at);
                Err(EtcdError::Unreachable(format!(
                    "{url}: {}",
                    status.message()
                )))
            }
            Err(_) => {
                self.rotate(at);
                Err(EtcdError::Unreachable(format!(
                    "{url}: the watch was not accepted within {}",
                    humantime::format_duration(self.request_timeout)
                )))
            }
        }
    }

    /// After a watch on the endpoint in use broke: the next one starts elsewhere.
    pub(crate) fn watch_failed(&self) {
        let at = self.current.load(Ordering::Relaxed) % self.channels.len();
        self.rotate(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_not_in_debug_output() {
        let connect = EtcdConnect {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            tls: ClientTls::default(),
            user: Some(("rolegate".into(), "s3cret-pw".into())),
            dial_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
        };
        let text = format!("{connect:?}");
        assert!(
            text.contains("rolegate") && !text.contains("s3cret-pw"),
            "{text}"
        );
    }

    #[test]
    fn only_failures_that_took_nothing_in_send_a_write_again() {
        assert!(never_served(&Status::unavailable(
            "error trying to connect: tcp connect error: Connection refused"
        )));
        assert!(never_served(&Status::unavailable("etcdserver: no leader")));
        assert!(!never_served(&Status::unavailable(
            "etcdserver: leader changed"
        )));
        assert!(!never_served(&Status::unavailable(
            "connection reset by peer"
        )));
        assert!(!never_served(&Status::invalid_argument(
            "connection refused"
        )));
    }
}
