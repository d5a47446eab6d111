//! A facts upload's way to the store.
//!
//! The driver answers an upload only once its facts are durable, so the
//! compile a bump starts reads them. When the node's used-facts set
//! changed since its last upload, the previous facts are hashed with the
//! new set first (before they are overwritten), so that a set change alone
//! never counts as a fact change.

use std::sync::Arc;

use crate::daemon::analyze::UsedFacts;
use crate::daemon::backend::facts_map;
use crate::daemon::certname::Certname;
use crate::daemon::dependencies::Dependencies;
use crate::daemon::store::{StoreError, StoreHandle, Write};

/// Writes an upload durably; with `baseline_set`, first hashes the node's
/// previous facts with it. Returns that hash and the commit's result.
pub async fn store(
    store: &StoreHandle,
    deps: &Dependencies,
    certname: &Certname,
    write: Write,
    baseline_set: Option<Arc<UsedFacts>>,
) -> (Option<u64>, Result<(), StoreError>) {
    let mut baseline = None;
    if let Some(set) = baseline_set {
        if let Ok(Some(previous)) = store.facts(certname.as_str()).await {
            if let Ok(previous) = facts_map(&previous) {
                baseline = Some(deps.hash_with(&set, &previous));
            }
        }
    }
    let result = store.write_durably(vec![write]).await;
    (baseline, result)
}
