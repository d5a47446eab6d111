//! The leader's side of `pcq_inbox`: facts uploads a standby took.
//!
//! The leader listens for `NOTIFY pcq_inbox` (and looks every second
//! besides, should a notification be lost with its connection), takes the
//! oldest rows, and puts each through the very path an upload to it takes
//! ([`Command::Facts`]: the facts stored, the node bumped if a fact its
//! catalog uses changed). A row goes only once that path has committed,
//! so a leader that dies in between acts on it again (the same facts:
//! unchanged) rather than lose it. A row that cannot be an upload (an
//! invalid certname, values that are not a JSON object) is dropped, said
//! once, as the API would have refused it.
//!
//! Bumps and deploys a standby took (`pcq_requests`) go to the driver as
//! the API's own do; the driver's answer (a bump's result, a deploy's
//! report, a refusal) is written to the row, where the standby waits for
//! it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::certname::Certname;
use super::dependencies::Dependencies;
use super::driver::{now, ApiError, Command, FactsOutcome, FactsUpload};
use super::facts::Ignore;
use super::store::shared::{HandedIn, Request, RequestKind, Shared};
use crate::core::{Bumped, Time};

/// How often the inbox is looked at without a notification.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Drains the inbox into the driver until the driver is gone.
pub async fn drain(
    shared: Arc<Shared>,
    driver: mpsc::Sender<Command>,
    ignore: Arc<Ignore>,
    deps: Arc<Dependencies>,
) {
    let mut listening = None;
    let mut requests = Requests::default();
    // a deploy a standby took while no one led goes to the driver before
    // its first analysis ends (or that analysis would find the code moved
    // without a deploy, and forget the stored baseline)
    requests.look(&shared, &driver).await;
    loop {
        if listening.is_none() {
            match shared.listen().await {
                Ok(l) => listening = Some(l),
                Err(e) => tracing::warn!("listening for handed-in uploads: {e}"),
            }
        }
        let woken = async {
            match listening.as_mut() {
                Some(l) => l.woken.recv().await.is_some(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            alive = woken => if !alive { listening = None },
            _ = tokio::time::sleep(LOOK_EVERY) => {}
        }
        requests.look(&shared, &driver).await;
        loop {
            let rows = match shared.inbox().await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!("reading handed-in uploads: {e}");
                    break;
                }
            };
            let full = rows.len() >= 256;
            // a node's newest upload only: its older ones are superseded
            // (sent at once, their commits could land in any order)
            let (rows, superseded) = newest_per_node(rows);
            // all of them to the driver at once (their facts share its
            // group commits), then the answers in order
            let mut asked: Vec<(i64, Answer)> =
                superseded.into_iter().map(|id| (id, None)).collect();
            for row in rows {
                let id = row.id;
                match ask(row, &driver, &ignore, &deps).await {
                    Ok(answer) => asked.push((id, answer)),
                    Err(Acted::Refused) => asked.push((id, None)),
                    Err(_) => return, // the daemon is stopping
                }
            }
            let mut done = Vec::with_capacity(asked.len());
            let mut later = false;
            for (id, answer) in asked {
                match answered(answer).await {
                    Acted::Done | Acted::Refused => done.push(id),
                    Acted::Later => later = true,
                    Acted::DriverGone => return,
                }
            }
            if let Err(e) = shared.taken(&done).await {
                tracing::warn!("clearing handed-in uploads: {e}");
                break;
            }
            if !full || later {
                break;
            }
        }
    }
}

/// How long an answered request is kept for a standby that stopped
/// waiting for it.
const ANSWERS_KEPT: Duration = Duration::from_secs(3600);

/// The bumps and deploys standbys handed in (`pcq_requests`): each sent
/// to the driver as the API sends its own, once, and its answer written
/// to its row, where the standby that took it waits.
#[derive(Default)]
struct Requests {
    /// Rows sent to the driver whose answer is not committed yet (a
    /// deploy waits for its analysis): not sent again meanwhile.
    acting: HashSet<i64>,
    swept: Option<Instant>,
}

impl Requests {
    async fn look(&mut self, shared: &Arc<Shared>, driver: &mpsc::Sender<Command>) {
        if self
            .swept
            .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
        {
            self.swept = Some(Instant::now());
            let before = Time::from_micros(
                now()
                    .as_micros()
                    .saturating_sub(ANSWERS_KEPT.as_micros() as u64),
            );
            if let Err(e) = shared.sweep(before).await {
                tracing::debug!("sweeping answered requests: {e}");
            }
        }
        let rows = match shared.requests().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("reading handed-in bumps and deploys: {e}");
                return;
            }
        };
        // a row answered (committed) is no longer listed: forgotten here
        self.acting.retain(|id| rows.iter().any(|r| r.id == *id));
        for request in rows {
            if !self.acting.insert(request.id) {
                continue;
            }
            let driver = driver.clone();
            tokio::spawn(async move {
                let id = request.id;
                if let Some(answer) = act(request, &driver).await {
                    // stored by the driver with its next writes, fenced
                    let _ = driver.send(Command::Answered { id, answer }).await;
                }
            });
        }
    }
}

/// Sends a request to the driver: its answer as JSON (`None`: the daemon
/// is stopping; the row waits for the next leader).
async fn act(request: Request, driver: &mpsc::Sender<Command>) -> Option<String> {
    tracing::info!(
        "a standby handed in a {:?} of {}",
        request.kind,
        request.target
    );
    match request.kind {
        RequestKind::Bump => match Certname::parse(&request.target) {
            Ok(certname) => {
                let (reply, answer) = oneshot::channel();
                driver.send(Command::Bump { certname, reply }).await.ok()?;
                encode(answer.await.ok()?)
            }
            Err(e) => encode::<Bumped>(Err(ApiError::BadRequest(e.to_string()))),
        },
        RequestKind::Deploy => {
            let (reply, answer) = oneshot::channel();
            let deploy = Command::Deploy {
                environment: request.target,
                new: request.new,
                reply,
            };
            driver.send(deploy).await.ok()?;
            encode(answer.await.ok()?)
        }
    }
}

/// A driver's answer as a request's row keeps it; `None` for "shutting
/// down" (not an answer: the next leader acts on the request).
fn encode<T: serde::Serialize>(answer: Result<T, ApiError>) -> Option<String> {
    if matches!(answer, Err(ApiError::ShuttingDown)) {
        return None;
    }
    serde_json::to_string(&answer).ok()
}

/// The newest row of each node (rows come oldest first), and the ids of
/// the older ones.
fn newest_per_node(rows: Vec<HandedIn>) -> (Vec<HandedIn>, Vec<i64>) {
    let mut newest = std::collections::HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        newest.insert(row.certname.clone(), i);
    }
    let mut superseded = Vec::new();
    let mut kept = Vec::with_capacity(newest.len());
    for (i, row) in rows.into_iter().enumerate() {
        if newest.get(&row.certname) == Some(&i) {
            kept.push(row);
        } else {
            superseded.push(row.id);
        }
    }
    (kept, superseded)
}

enum Acted {
    /// Committed by the driver.
    Done,
    /// Not an upload: dropped.
    Refused,
    /// The driver or the store is busy: try again later.
    Later,
    /// The daemon is stopping.
    DriverGone,
}

/// The driver's answer to come, for a row it was sent (`None`: the row
/// is not an upload and is dropped).
type Answer = Option<(Certname, oneshot::Receiver<Result<FactsOutcome, ApiError>>)>;

/// Sends one row to the driver as an upload.
async fn ask(
    row: HandedIn,
    driver: &mpsc::Sender<Command>,
    ignore: &Ignore,
    deps: &Dependencies,
) -> Result<Answer, Acted> {
    let Ok(certname) = Certname::parse(&row.certname) else {
        tracing::warn!(
            "a handed-in upload for the invalid certname {:?}: dropped",
            row.certname
        );
        return Err(Acted::Refused);
    };
    let values: serde_json::Map<String, serde_json::Value> = match serde_json::from_slice(
        &row.values,
    ) {
        Ok(values) => values,
        Err(e) => {
            tracing::warn!(%certname, "a handed-in upload is not a facts object ({e}): dropped");
            return Err(Acted::Refused);
        }
    };
    let upload = FactsUpload::of(certname.clone(), row.environment, &values, ignore, deps);
    let (reply, answer) = oneshot::channel();
    let command = Command::Facts {
        upload,
        values: row.values,
        reply,
    };
    if driver.send(command).await.is_err() {
        return Err(Acted::DriverGone);
    }
    Ok(Some((certname, answer)))
}

/// What the driver's answer means for the row.
async fn answered(answer: Answer) -> Acted {
    let Some((certname, answer)) = answer else {
        return Acted::Refused;
    };
    match answer.await {
        Ok(Ok(_)) => Acted::Done,
        Ok(Err(ApiError::BadRequest(why) | ApiError::UnknownEnvironment(why))) => {
            tracing::warn!(%certname, "a handed-in upload refused ({why}): dropped");
            Acted::Refused
        }
        Ok(Err(ApiError::UnknownNode(_))) => {
            tracing::warn!(%certname, "a handed-in upload of a node pcq does not schedule: dropped");
            Acted::Refused
        }
        Ok(Err(ApiError::ShuttingDown)) | Err(_) => Acted::DriverGone,
        Ok(Err(e)) => {
            tracing::warn!(%certname, "a handed-in upload waits: {e}");
            Acted::Later
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, certname: &str) -> HandedIn {
        HandedIn {
            id,
            certname: certname.into(),
            environment: None,
            values: b"{}".to_vec(),
        }
    }

    #[test]
    fn only_a_nodes_newest_upload_is_acted_on() {
        let (kept, superseded) =
            newest_per_node(vec![row(1, "a"), row(2, "b"), row(3, "a"), row(4, "a")]);
        let ids: Vec<i64> = kept.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![2, 4]);
        assert_eq!(superseded, vec![1, 3]);
    }
}
