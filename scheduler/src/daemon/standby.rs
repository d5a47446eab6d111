//! A standby: a `pcq serve` on a shared (PostgreSQL) store while another
//! leads. It schedules nothing and starts no compile; it serves nodes from
//! the database, so that every master's pcq answers its nodes:
//!
//! - a node's status, from its row;
//! - its catalog (with ETag and 304), from `catalogs` ([`super::last_good`]);
//! - its facts uploads, handed to the leader through `pcq_inbox`
//!   ([`Shared::hand_in`]): acknowledged once committed, acted on by the
//!   leader at once ([`super::inbox`]); refused, as the leader refuses
//!   them, from a certname `ca.exclude` names.
//!
//! Bumps and deploys are handed to the leader too (`pcq_requests`): the
//! standby waits for the leader's answer and gives it, so a deploy hook
//! may run on any master. What only the scheduler knows (the queue, the
//! site) is refused with 503. The standby answers the driver's
//! commands in the driver's place until it takes the lead; then the same
//! channel goes to the driver it builds.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::certname::Certname;
use super::driver::nodes::NodeInfo;
use super::driver::view::node_status;
use super::driver::{now, ApiError, Command, FactsOutcome, NodeStatus};
use super::metrics::Metrics;
use super::store::shared::{RequestKind, Shared};
use super::store::StoreError;

/// Answers `rx` from the database until `lead` resolves (this pcq took
/// the lead: its result is returned, and `rx` goes on to the driver) or a
/// shutdown comes (`None`).
pub async fn serve<T>(
    rx: &mut mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    exclude: Arc<HashSet<String>>,
    lead: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::pin!(lead);
    loop {
        tokio::select! {
            led = &mut lead => return Some(led),
            command = rx.recv() => match command {
                None | Some(Command::Shutdown { .. }) => return None,
                Some(command) => {
                    // each answer waits on the database: one at a time
                    // would queue every node behind the slowest
                    let (shared, metrics) = (shared.clone(), metrics.clone());
                    tokio::spawn(answer(command, shared, metrics, exclude.clone()));
                }
            },
        }
    }
}

async fn answer(
    command: Command,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    exclude: Arc<HashSet<String>>,
) {
    match command {
        Command::HandIn {
            certname,
            environment,
            values,
            reply,
        } => {
            let _ = reply
                .send(hand_in(&shared, &metrics, &exclude, &certname, environment, values).await);
        }
        // (an upload the API took just before this pcq stood by)
        Command::Facts {
            upload,
            values,
            reply,
        } => {
            let (certname, environment) = (upload.certname, upload.environment);
            let _ = reply
                .send(hand_in(&shared, &metrics, &exclude, &certname, environment, values).await);
        }
        Command::Status { certname, reply } => {
            // an unreachable database drops the question: 503, not "unknown"
            if let Ok(status) = status(&shared, &certname).await {
                let _ = reply.send(status);
            }
        }
        Command::Stats { reply } => {
            // alive, with no queue of its own
            let _ = reply.send(None);
        }
        Command::Bump { certname, reply } => {
            let target = certname.to_string();
            let answer = ask_leader(&shared, RequestKind::Bump, &target, false, &reply).await;
            let _ = reply.send(answer);
        }
        Command::Deploy {
            environment,
            new,
            reply,
        } => {
            let answer = ask_leader(&shared, RequestKind::Deploy, &environment, new, &reply).await;
            let _ = reply.send(answer);
        }
        // the queue and the site are the leader's: the question is dropped
        // (503); nothing else is sent to a standby
        _ => {}
    }
}

/// A facts upload into `pcq_inbox`, unless `ca.exclude` names the node
/// (refused, as the leader refuses it).
async fn hand_in(
    shared: &Shared,
    metrics: &Metrics,
    exclude: &HashSet<String>,
    certname: &Certname,
    environment: Option<String>,
    values: Vec<u8>,
) -> Result<FactsOutcome, ApiError> {
    if exclude.contains(certname.as_str()) {
        return Err(ApiError::excluded(certname));
    }
    shared
        .hand_in(certname.as_str(), environment.as_deref(), values, now())
        .await
        .map_err(refused)?;
    // (refusals are counted by the API)
    Metrics::count(&metrics.facts_uploads, "handed_in");
    Ok(FactsOutcome::Stored)
}

/// How often a standby looks for the leader's answer to a request.
const ANSWER_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Hands a bump or a deploy to the leader and waits for its answer (the
/// one it gives its own callers), for as long as the caller waits. A
/// request the caller stopped waiting for stays: the leader acts on it.
async fn ask_leader<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    kind: RequestKind,
    target: &str,
    new: bool,
    reply: &tokio::sync::oneshot::Sender<Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let id = shared
        .request(kind, target, new, now())
        .await
        .map_err(refused)?;
    loop {
        if reply.is_closed() {
            return Err(ApiError::ShuttingDown);
        }
        tokio::time::sleep(ANSWER_POLL).await;
        let Some(answer) = shared.answer_of(id).await.map_err(refused)? else {
            continue;
        };
        if let Err(e) = shared.forget(id).await {
            tracing::debug!("forgetting answered request {id}: {e}");
        }
        return serde_json::from_str::<Result<T, ApiError>>(&answer).unwrap_or_else(|e| {
            Err(ApiError::Internal(format!(
                "the leader's answer cannot be read ({e}): {standing}",
                standing = answer.chars().take(200).collect::<String>()
            )))
        });
    }
}

fn refused(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(why) => ApiError::Busy(why),
        StoreError::Busy => ApiError::Busy(e.to_string()),
        other => ApiError::Internal(other.to_string()),
    }
}

async fn status(shared: &Shared, certname: &Certname) -> Result<Option<NodeStatus>, StoreError> {
    let Some(stored) = shared.node(certname.as_str()).await? else {
        return Ok(None);
    };
    let info = NodeInfo {
        catalog_hash: stored.catalog_hash,
        catalog_changed_at: stored.catalog_changed_at,
        facts_hash: stored.facts_hash,
        last_error: stored.last_error,
        ..NodeInfo::new(certname.clone())
    };
    Ok(Some(node_status(stored.view, &info)))
}
