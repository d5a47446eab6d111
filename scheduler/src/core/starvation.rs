//! Which lane the next start comes from.
//!
//! Lanes are served in priority order (urgent, deploy, cycle), with two
//! guarantees for the lower lanes so that a storm of bumps cannot freeze them:
//!
//! - **age bound**: a lane whose oldest ready job has waited past the lane's
//!   `max_wait` is served first (the most overdue lane, if several);
//! - **minimum share**: while a lane has a job ready it earns `min_share`
//!   credit per start; a lane holding a whole credit is served next and pays
//!   one. Over any run of `k` starts during which the lane stays ready it gets
//!   at least `floor(k * min_share)` minus a constant.
//!
//! Shares add up to at most 1 (checked in the config), so credits cannot
//! pile up without bound.

use std::time::Duration;

use super::config::LanesConfig;
use super::node::Lane;
use super::time::Time;

/// One start's worth of credit. Credits are counted in millionths of a start
/// so that shares such as 0.1 add up exactly (ten tenths make one start).
const ONE: u64 = 1_000_000;
/// Credits are capped so a lane that was starved cannot then monopolize.
const CREDIT_CAP: u64 = 2 * ONE;

/// The lane chooser's memory: credits of the deploy and cycle lanes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Chooser {
    credit: [u64; 3],
}

/// For each lane in [`Lane::ALL`] order: `Some(since)` when it has a job
/// ready to start, waiting since `since`.
pub(crate) type Ready = [Option<Time>; 3];

impl Chooser {
    /// Picks the lane to start from and books the start against the credits.
    /// `None` when no lane has a ready job.
    pub fn choose(&mut self, cfg: &LanesConfig, ready: Ready, now: Time) -> Option<Lane> {
        let bounds = [(Lane::Deploy, &cfg.deploy), (Lane::Cycle, &cfg.cycle)];

        let mut overdue: Option<(Lane, Duration)> = None;
        for (lane, bound) in bounds {
            if let (Some(since), Some(max_wait)) = (ready[lane.index()], bound.max_wait) {
                let age = now.since(since);
                if age > max_wait {
                    let over = age - max_wait;
                    if overdue.is_none_or(|(_, o)| over > o) {
                        overdue = Some((lane, over));
                    }
                }
            }
        }

        for (lane, bound) in bounds {
            let credit = &mut self.credit[lane.index()];
            *credit = if ready[lane.index()].is_some() {
                let share = (bound.min_share * ONE as f64).round() as u64;
                (*credit + share).min(CREDIT_CAP)
            } else {
                0
            };
        }

        let by_credit = || {
            bounds
                .iter()
                .map(|(lane, _)| *lane)
                .filter(|lane| self.credit[lane.index()] >= ONE)
                .fold(None, |best: Option<Lane>, lane| match best {
                    Some(b) if self.credit[b.index()] >= self.credit[lane.index()] => Some(b),
                    _ => Some(lane),
                })
        };
        let lane = overdue
            .map(|(lane, _)| lane)
            .or_else(by_credit)
            .or_else(|| Lane::ALL.into_iter().find(|l| ready[l.index()].is_some()))?;

        let credit = &mut self.credit[lane.index()];
        *credit = credit.saturating_sub(ONE);
        Some(lane)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::LaneBound;

    fn cfg(deploy: (f64, Option<u64>), cycle: (f64, Option<u64>)) -> LanesConfig {
        let bound = |(min_share, max_wait): (f64, Option<u64>)| LaneBound {
            min_share,
            max_wait: max_wait.map(Duration::from_secs),
        };
        LanesConfig {
            deploy: bound(deploy),
            cycle: bound(cycle),
        }
    }

    #[test]
    fn priority_order_without_bounds() {
        let cfg = cfg((0.0, None), (0.0, None));
        let mut c = Chooser::default();
        let t = Time::from_secs(100);
        let all = [Some(t), Some(t), Some(t)];
        assert_eq!(c.choose(&cfg, all, t), Some(Lane::Urgent));
        assert_eq!(
            c.choose(&cfg, [None, Some(t), Some(t)], t),
            Some(Lane::Deploy)
        );
        assert_eq!(c.choose(&cfg, [None, None, Some(t)], t), Some(Lane::Cycle));
        assert_eq!(c.choose(&cfg, [None, None, None], t), None);
    }

    #[test]
    fn min_share_gives_each_lower_lane_its_fraction() {
        let cfg = cfg((0.25, None), (0.1, None));
        let mut c = Chooser::default();
        let t = Time::from_secs(1);
        let mut counts = [0u32; 3];
        for _ in 0..1000 {
            let lane = c
                .choose(&cfg, [Some(t), Some(t), Some(t)], t)
                .expect("ready");
            counts[lane.index()] += 1;
        }
        // each lower lane gets its share, give or take the one start it
        // can lose to the other lane when both hold a credit at once
        assert!((249..=251).contains(&counts[1]), "{counts:?}");
        assert!((99..=101).contains(&counts[2]), "{counts:?}");
        assert_eq!(counts.iter().sum::<u32>(), 1000);
    }

    #[test]
    fn most_overdue_lane_goes_first() {
        let cfg = cfg((0.0, Some(60)), (0.0, Some(10)));
        let mut c = Chooser::default();
        let now = Time::from_secs(1000);
        // deploy waited 100 s (40 over), cycle waited 30 s (20 over)
        let ready = [
            Some(now),
            Some(Time::from_secs(900)),
            Some(Time::from_secs(970)),
        ];
        assert_eq!(c.choose(&cfg, ready, now), Some(Lane::Deploy));
        // cycle waited 100 s (90 over)
        let ready = [
            Some(now),
            Some(Time::from_secs(900)),
            Some(Time::from_secs(900)),
        ];
        assert_eq!(c.choose(&cfg, ready, now), Some(Lane::Cycle));
        // nobody over: urgent
        let ready = [
            Some(now),
            Some(Time::from_secs(990)),
            Some(Time::from_secs(995)),
        ];
        assert_eq!(c.choose(&cfg, ready, now), Some(Lane::Urgent));
    }

    #[test]
    fn credit_resets_when_a_lane_empties() {
        let cfg = cfg((0.0, None), (0.5, None));
        let mut c = Chooser::default();
        let t = Time::ZERO;
        assert_eq!(
            c.choose(&cfg, [Some(t), None, Some(t)], t),
            Some(Lane::Urgent)
        );
        // the cycle lane empties; its half credit is gone
        assert_eq!(c.choose(&cfg, [Some(t), None, None], t), Some(Lane::Urgent));
        assert_eq!(
            c.choose(&cfg, [Some(t), None, Some(t)], t),
            Some(Lane::Urgent)
        );
        assert_eq!(
            c.choose(&cfg, [Some(t), None, Some(t)], t),
            Some(Lane::Cycle)
        );
    }
}
