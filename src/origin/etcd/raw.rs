//! Writing a whole state into an etcd prefix directly, in the layout, without a rolegate
//! instance: how `rolegate bench-etcd` puts a policy of a million keys into etcd, far faster
//! than one `Apply`. The objects go in transactions of `batch` puts, then `meta` and the write
//! marker, so an instance started afterwards finds a bootstrapped prefix. It is not one
//! revision: only for a prefix that no instance serves while it is written.

use super::{
    EtcdConnect, EtcdError,
    client::EtcdClient,
    layout::{self, Layout},
    pb::etcdserverpb::{RangeRequest, TxnRequest},
};
use crate::domain::Model;

/// What [`load_model`] wrote.
#[derive(Clone, Copy, Debug)]
pub struct Loaded {
    /// Object keys written.
    pub objects: usize,
    /// The etcd revision of the last transaction.
    pub revision: i64,
}

/// Whether `prefix` holds a bootstrapped state (its `meta` key).
pub async fn is_bootstrapped(connect: &EtcdConnect, prefix: &str) -> Result<bool, EtcdError> {
    let client = EtcdClient::new(connect)?;
    let meta = client
        .range(RangeRequest {
            key: Layout::new(prefix).meta(),
            count_only: true,
            ..Default::default()
        })
        .await?;
    Ok(meta.count > 0)
}

/// Writes every object of `model` under `prefix`, `batch` puts per transaction (at most the
/// cluster's `--max-txn-ops`), then `meta` and the write marker.
pub async fn load_model(
    connect: &EtcdConnect,
    prefix: &str,
    model: &Model,
    batch: usize,
) -> Result<Loaded, EtcdError> {
    let client = EtcdClient::new(connect)?;
    let layout = Layout::new(prefix);
    let ops = layout.ops(&Model::default().diff(model));
    let objects = ops.len();
    let mut revision = 0;
    for chunk in ops.chunks(batch.max(1)) {
        let answer = client
            .txn(TxnRequest {
                compare: Vec::new(),
                success: chunk.to_vec(),
                failure: Vec::new(),
            })
            .await?;
        revision = answer.header.map_or(revision, |h| h.revision);
    }
    let answer = client
        .txn(TxnRequest {
            compare: Vec::new(),
            success: vec![
                layout::put(
                    layout.meta(),
                    format!("{{\"layout\":{}}}", layout::LAYOUT_VERSION).into_bytes(),
                ),
                layout::put(layout.marker(), b"{\"loaded\":true}".to_vec()),
            ],
            failure: Vec::new(),
        })
        .await?;
    revision = answer.header.map_or(revision, |h| h.revision);
    Ok(Loaded { objects, revision })
}
