//! The daemon's long-running tasks, watched.
//!
//! A daemon that loses its scheduler, its store or its listener must not
//! run on half-working and answer `/healthz` with 200: the first task that
//! panics, or ends when it should not, ends `pcq serve` with a non-zero exit
//! status, so systemd's `Restart=on-failure` brings it back.

use std::collections::HashMap;

/// How a long-running task of the daemon may end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ends {
    /// Its end is the daemon's clean end (the scheduler, after a shutdown).
    Cleanly,
    /// It ends when a shutdown begins; that is no reason to stop.
    AtShutdown,
    /// It runs as long as the daemon; its end is fatal.
    Never,
}

/// The daemon's long-running tasks, watched: the first that dies (a panic
/// anywhere, or an end it should not have) ends the daemon non-zero.
#[derive(Default)]
pub struct Tasks {
    set: tokio::task::JoinSet<()>,
    names: HashMap<tokio::task::Id, (&'static str, Ends)>,
}

impl Tasks {
    pub fn spawn(
        &mut self,
        name: &'static str,
        ends: Ends,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let id = self.set.spawn(task).id();
        self.names.insert(id, (name, ends));
    }

    /// Waits for the scheduler's clean end, or the first fatal one (what
    /// died and how).
    pub async fn supervise(mut self) -> Result<(), String> {
        while let Some(ended) = self.set.join_next_with_id().await {
            let (id, panic) = match ended {
                Ok((id, ())) => (id, None),
                Err(e) => (e.id(), Some(e)),
            };
            let (name, ends) = self
                .names
                .get(&id)
                .copied()
                .unwrap_or(("a task", Ends::Never));
            match (panic, ends) {
                (None, Ends::Cleanly) => return Ok(()),
                (None, Ends::AtShutdown) => continue,
                (None, Ends::Never) => {
                    return Err(format!("{name} stopped; pcq stops"));
                }
                (Some(e), _) => {
                    let what = if e.is_panic() {
                        "panicked"
                    } else {
                        "was cancelled"
                    };
                    return Err(format!("{name} {what}; pcq stops"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn forever() -> impl std::future::Future<Output = ()> + Send + 'static {
        std::future::pending::<()>()
    }

    #[tokio::test]
    async fn a_panic_anywhere_is_fatal() {
        let mut tasks = Tasks::default();
        tasks.spawn("the scheduler", Ends::Cleanly, forever());
        tasks.spawn("the API listener", Ends::Never, async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("a bug");
        });
        let e = tasks.supervise().await.expect_err("fatal");
        assert_eq!(e, "the API listener panicked; pcq stops");
        let mut tasks = Tasks::default();
        tasks.spawn("the scheduler", Ends::Cleanly, async { panic!("a bug") });
        let e = tasks.supervise().await.expect_err("fatal");
        assert_eq!(e, "the scheduler panicked; pcq stops");
    }

    #[tokio::test]
    async fn only_the_schedulers_end_is_clean() {
        let mut tasks = Tasks::default();
        tasks.spawn("the scheduler", Ends::Cleanly, async {
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        tasks.spawn("the signal handler", Ends::AtShutdown, async {});
        tasks.spawn("the CA poller", Ends::Never, forever());
        assert!(tasks.supervise().await.is_ok());
        let mut tasks = Tasks::default();
        tasks.spawn("the scheduler", Ends::Cleanly, forever());
        tasks.spawn("the store", Ends::Never, async {});
        let e = tasks.supervise().await.expect_err("fatal");
        assert_eq!(e, "the store stopped; pcq stops");
    }
}
