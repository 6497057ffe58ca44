//! Calling a server as a caller: the flags that say where and as whom ([`Conn`]), the channel,
//! the Admin client, the key in each call's metadata, failed calls as people read them, and
//! every page of a list.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rolegate::{
    grpc::pb::{self, admin_client::AdminClient},
    tls::client::ClientTlsArgs,
};
use tonic::{Request, transport::Channel};

use super::output::Output;

/// Where to connect and as whom.
#[derive(Args, Clone, Debug)]
pub(crate) struct Conn {
    /// The server's gRPC address (https:// for TLS).
    #[arg(long, env = "ROLEGATE_ADDR", default_value = "http://127.0.0.1:50051")]
    pub(crate) addr: String,
    #[command(flatten)]
    pub(crate) tls: ClientTlsArgs,
    /// The caller's API key, `<prefix>.<secret>`.
    #[arg(long, env = "ROLEGATE_API_KEY", hide_env_values = true)]
    pub(crate) key: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
}

/// A channel to the server of `conn`: 5 s to connect, 30 s a call.
pub(crate) async fn channel(conn: &Conn) -> anyhow::Result<Channel> {
    rolegate::tls::client::endpoint(&conn.addr, &conn.tls.clone().into())?
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", conn.addr))
}

/// An Admin client on a new [`channel`].
pub(crate) async fn admin(conn: &Conn) -> anyhow::Result<AdminClient<Channel>> {
    Ok(AdminClient::new(channel(conn).await?))
}

/// `message` as a call with the caller's key in the `authorization: ApiKey` metadata.
pub(crate) fn call<T>(conn: &Conn, message: T) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(message);
    let value = format!("ApiKey {}", conn.key)
        .parse()
        .context("--key has characters that cannot be sent")?;
    req.metadata_mut().insert("authorization", value);
    Ok(req)
}

/// A failed call as people read it: the code, the message and each field violation.
pub(crate) fn failed(status: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(bad) = status.get_details_bad_request() {
        for v in bad.field_violations {
            text.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    anyhow::anyhow!(text)
}

/// Every item of a paged list call: `page(token)` fetches one page (of the largest size the
/// server gives) and its next token; pages are asked for until the server says there are none.
pub(crate) async fn all_pages<T, F, Fut>(mut page: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = anyhow::Result<(Vec<T>, String)>>,
{
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let (items, next) = page(token).await?;
        all.extend(items);
        if next.is_empty() {
            return Ok(all);
        }
        token = next;
    }
}

/// The page request of [`all_pages`].
pub(crate) fn list_page(token: String) -> pb::ListRequest {
    pb::ListRequest {
        page_size: 1000,
        page_token: token,
    }
}
