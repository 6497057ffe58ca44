//! Paging of the Admin API's list calls: one page picked while the model is scanned.

use std::collections::BinaryHeap;

use compact_str::CompactString;

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// A page of a list call, with the revision the model had when it was read.
pub(super) struct Page<T> {
    pub(super) items: Vec<T>,
    pub(super) next_page_token: String,
    pub(super) revision: u64,
}

/// One page (by id, after a token) picked out of an unordered collection while it is scanned
/// under the model lock: only the `size + 1` smallest ids after the token are kept, in a
/// max-heap, so the scan clones and converts a page's worth instead of the whole collection, and
/// sorting happens on that page only. Writers wait for the scan, so it must stay this cheap.
pub(super) struct PageSelect<'t, T> {
    size: usize,
    token: &'t str,
    heap: BinaryHeap<Ranked<T>>,
}

/// An item ordered by its id alone.
struct Ranked<T>(CompactString, T);

impl<T> PartialEq for Ranked<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<T> Eq for Ranked<T> {}
impl<T> PartialOrd for Ranked<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Ranked<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl<'t, T> PageSelect<'t, T> {
    pub(super) fn new(size: u32, token: &'t str) -> Self {
        let size = match size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        PageSelect {
            size,
            token,
            heap: BinaryHeap::with_capacity(size + 1),
        }
    }

    /// Considers the item `id`; `make` builds it only when it may be on the page.
    pub(super) fn offer(&mut self, id: &str, make: impl FnOnce() -> T) {
        if !self.token.is_empty() && id <= self.token {
            return;
        }
        // One more than the page is kept, to know whether a next page exists.
        if self.heap.len() > self.size {
            if self.heap.peek().is_some_and(|top| id >= top.0.as_str()) {
                return;
            }
            self.heap.pop();
        }
        self.heap.push(Ranked(id.into(), make()));
    }

    /// The page in id order, and the token of the next page (empty: none).
    pub(super) fn finish(self) -> (Vec<T>, String) {
        let mut items = self.heap.into_sorted_vec();
        let next = if items.len() > self.size {
            items.truncate(self.size);
            items.last().map(|r| r.0.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        (items.into_iter().map(|r| r.1).collect(), next)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::{KeySpec, Model, model::tests::team_key};

    /// The page as the whole collection sorted would give it (how lists were paged before).
    fn sorted_page<T: Clone>(
        mut items: Vec<(Arc<str>, T)>,
        size: u32,
        token: &str,
    ) -> (Vec<T>, String) {
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let size = match size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let start = items.partition_point(|(id, _)| !token.is_empty() && **id <= *token);
        let rest = &items[start..];
        let out: Vec<(Arc<str>, T)> = rest.iter().take(size).cloned().collect();
        let next = if rest.len() > size {
            out.last().map(|(id, _)| id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        (out.into_iter().map(|(_, v)| v).collect(), next)
    }

    fn select_page(ids: &[Arc<str>], size: u32, token: &str) -> (Vec<Arc<str>>, String) {
        let mut select = PageSelect::new(size, token);
        for id in ids {
            select.offer(id, || id.clone());
        }
        select.finish()
    }

    #[test]
    fn a_page_picked_while_scanning_is_the_sorted_collections_page() {
        use rand::{Rng, seq::SliceRandom};
        let mut rng = rand::rng();
        for n in [0usize, 1, 5, 99, 100, 101, 250, 600] {
            let mut ids: Vec<Arc<str>> = (0..n).map(|i| Arc::from(format!("id{i:05}"))).collect();
            ids.shuffle(&mut rng);
            let items: Vec<(Arc<str>, Arc<str>)> =
                ids.iter().map(|i| (i.clone(), i.clone())).collect();
            for size in [0u32, 1, 7, 100, 5000] {
                // Paging through the whole collection, and from tokens that are not ids.
                let mut token = String::new();
                let mut seen = Vec::new();
                loop {
                    let got = select_page(&ids, size, &token);
                    assert_eq!(
                        got,
                        sorted_page(items.clone(), size, &token),
                        "n={n} size={size}"
                    );
                    seen.extend(got.0);
                    if got.1.is_empty() {
                        break;
                    }
                    token = got.1;
                }
                assert_eq!(seen.len(), n, "every item once (n={n}, size={size})");
                assert!(seen.windows(2).all(|w| w[0] < w[1]), "in id order");
                let odd = format!("id{:05}x", rng.random_range(0..n.max(1)));
                assert_eq!(
                    select_page(&ids, size, &odd),
                    sorted_page(items.clone(), size, &odd)
                );
            }
        }
    }

    /// How long a ListKeys page holds the model lock (writers wait meanwhile) when it picks the
    /// page while scanning, against collecting every visible key and sorting them (as before).
    /// `ROLEGATE_LIST_KEYS` sets the number of keys (default 20,000); the timings are printed
    /// (docs/performance.md has the measured numbers); both ways must give the same page.
    #[test]
    fn listing_keys_holds_the_model_lock_for_a_scan_only() {
        let n: usize = std::env::var("ROLEGATE_LIST_KEYS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let mut m = Model::default();
        for i in 0..n {
            let k = team_key(&format!("Key{i:08}"), "alice", "acme", &["DEVELOPER"]);
            m.keys.insert(k.prefix.clone(), Arc::new(k));
        }
        let token = format!("Key{:08}", n / 2);
        let t0 = std::time::Instant::now();
        let mut select = PageSelect::new(100, &token);
        for k in m.keys.values() {
            select.offer(&k.prefix, || (k.clone(), m.key_team(k).cloned()));
        }
        let scanned = t0.elapsed();
        let (page, next) = select.finish();

        let t0 = std::time::Instant::now();
        let items: Vec<_> = m
            .keys
            .values()
            .map(|k| {
                (
                    k.prefix.as_str().into(),
                    (k.clone(), m.key_team(k).cloned()),
                )
            })
            .collect();
        let collected = t0.elapsed();
        let (old_page, old_next) = sorted_page(items, 100, &token);
        let sorted = t0.elapsed();
        // For comparison: a whole copy of the model (what a snapshot per list would cost).
        let t0 = std::time::Instant::now();
        let copy = m.clone();
        let copied = t0.elapsed();
        assert_eq!(copy.keys.len(), n);
        eprintln!(
            "{n} keys: page picked while scanning {scanned:?} under the lock; collecting all \
             {collected:?} under the lock (+ sort and page outside: {sorted:?} in all); \
             copying the model {copied:?}"
        );
        assert_eq!(next, old_next);
        let prefixes = |p: &[(Arc<KeySpec>, Option<Arc<str>>)]| {
            p.iter().map(|(k, _)| k.prefix.clone()).collect::<Vec<_>>()
        };
        assert_eq!(prefixes(&page), prefixes(&old_page));
        assert_eq!(page.len(), 100.min(n.saturating_sub(n / 2 + 1)));
    }
}
