//! Several hubs behind one [`Hub`]: a follower given more than one hub URL opens its feed on the
//! hub it used last and, when that one cannot be reached or refuses, on the next, in turn. Hubs on
//! the same etcd share one history and one revision line, so a follower resumes on another hub
//! from its revision, without a snapshot, when that hub still keeps it.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Hub, Start, UpstreamError};

/// Hubs tried in turn, starting with the one that served last.
pub(crate) struct Hubs<H: Hub> {
    hubs: Vec<H>,
    current: AtomicUsize,
    /// Every hub's address, comma-separated (for logs and `/status`).
    addresses: String,
}

impl<H: Hub> Hubs<H> {
    /// `hubs` must not be empty.
    pub(crate) fn new(hubs: Vec<H>) -> Self {
        assert!(!hubs.is_empty(), "at least one hub");
        let addresses = hubs
            .iter()
            .map(|h| h.address())
            .collect::<Vec<_>>()
            .join(",");
        Hubs {
            hubs,
            current: AtomicUsize::new(0),
            addresses,
        }
    }
}

impl<H: Hub> Hub for Hubs<H> {
    type Feed = H::Feed;

    fn address(&self) -> &str {
        &self.addresses
    }

    async fn open(&self, start: Start) -> Result<H::Feed, UpstreamError> {
        let first = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.hubs.len() {
            let at = (first + i) % self.hubs.len();
            let hub = &self.hubs[at];
            match hub.open(start.clone()).await {
                Ok(feed) => {
                    if at != first {
                        tracing::info!(hub = %hub.address(), "follow mode: failed over to this hub");
                    }
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(feed);
                }
                Err(err) => {
                    if self.hubs.len() > 1 {
                        tracing::warn!(hub = %hub.address(), error = %err, "follow mode: this hub cannot serve the watch; trying the next");
                    }
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or(UpstreamError::Ended))
    }
}
