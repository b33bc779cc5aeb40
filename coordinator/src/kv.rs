//! Reading whole prefixes: paginated ranges at one revision, so a namespace with 100k keys is
//! read consistently without one oversized response.

use std::time::Duration;

use crate::etcd_error::{EtcdError, bounded};
use crate::keys::prefix_end;
use etcd_client::{Client, GetOptions, KeyValue};

/// Keys per page.
const PAGE: i64 = 2_000;
/// At most this many keys are made room for ahead (the count is etcd's, not checked).
const MAX_RESERVE: usize = 1 << 20;
/// Longest wait for one page.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A consistent read of one prefix.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub kvs: Vec<KeyValue>,
    /// The store revision the listing reflects; watch from `revision + 1` to miss nothing.
    pub revision: i64,
}

/// Every key under `prefix`, read at one revision (the current one when `at` is `None`).
pub async fn list_prefix(
    client: &Client,
    prefix: &str,
    at: Option<i64>,
) -> Result<Listing, EtcdError> {
    let mut client = client.clone();
    let end = prefix_end(prefix);
    let mut from = prefix.as_bytes().to_vec();
    let mut out = Listing {
        kvs: Vec::new(),
        revision: at.unwrap_or(0),
    };
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if out.revision > 0 {
            opts = opts.with_revision(out.revision);
        }
        let mut resp = bounded(
            "listing",
            PAGE_TIMEOUT,
            client.get(from.clone(), Some(opts)),
        )
        .await
        .map_err(|mut e| {
            e.op = format!("listing {prefix}");
            e
        })?;
        if out.revision == 0 {
            out.revision = resp.header().map_or(0, |h| h.revision());
        }
        if out.kvs.is_empty() {
            // The first page counts the whole range: room for all of it at once, not a
            // doubling vector's slack (a tenth of a listing's memory at 10k jobs).
            let total = usize::try_from(resp.count()).unwrap_or(0);
            out.kvs.reserve_exact(total.min(MAX_RESERVE));
        }
        let more = resp.more();
        if let Some(last) = resp.kvs().last() {
            // The next page starts right after the last key of this one.
            from = last.key().to_vec();
            from.push(0);
        }
        // Moved, not cloned: a page is held once, and its decode buffers go with it.
        let page = resp.take_kvs();
        let last_page = !more || page.is_empty();
        out.kvs.extend(page);
        if last_page {
            return Ok(out);
        }
    }
}
