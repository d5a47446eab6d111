//! A simulated master: CPU shared by its running compiles and its
//! background load, and a Linux-like load average.
//!
//! Compile times in a scenario are CPU seconds on an idle core. While
//! compiles plus background processes do not exceed the cores, a compile
//! runs at full speed; beyond that every runnable process gets
//! `cores / runnable` of a core (processor sharing), so a herd of compiles
//! slows all of them down, as it does on a real master. The load average is
//! the kernel's: every 5 s, `load = load * e + runnable * (1 - e)` with
//! `e = exp(-5/60)`.

use scheduler::core::Time;

/// `Time + seconds`, rounded up to the microsecond (a completion never
/// fires before its work is done).
trait PlusSecs {
    fn plus_secs(self, secs: f64) -> Time;
}

impl PlusSecs for Time {
    fn plus_secs(self, secs: f64) -> Time {
        Time::from_micros(self.as_micros().saturating_add((secs * 1e6).ceil() as u64))
    }
}

/// Seconds between load-average updates (Linux's LOAD_FREQ).
pub const LOAD_TICK_SECS: u64 = 5;

/// A compile running on a master: who it is for and the CPU work left.
#[derive(Clone, Copy, Debug)]
struct Job {
    key: u32,
    work_left: f64,
}

/// One master's CPU, compiles and load.
#[derive(Clone, Debug)]
pub struct SimMaster {
    cores: f64,
    background: f64,
    /// Whether it is reachable.
    pub up: bool,
    jobs: Vec<Job>,
    /// When `jobs[..].work_left` was last brought up to date.
    last: Time,
    /// Generation of the pending completion event; older ones are stale.
    pub generation: u32,
    /// Time of the pending completion event (NEVER: none pending).
    scheduled: Time,
    /// The one-minute load average.
    pub load1: f64,
    /// Slot-seconds of compiling after `measure_from`.
    busy: f64,
    measure_from: Time,
}

impl SimMaster {
    /// A master with `cores` cores and `background` runnable processes.
    pub fn new(cores: u32, background: f64, measure_from: Time) -> SimMaster {
        SimMaster {
            cores: f64::from(cores.max(1)),
            background,
            up: true,
            jobs: Vec::new(),
            last: Time::ZERO,
            generation: 0,
            scheduled: Time::NEVER,
            load1: background,
            busy: 0.0,
            measure_from,
        }
    }

    /// Compiles running.
    pub fn running(&self) -> usize {
        self.jobs.len()
    }

    /// Runnable processes now: compiles plus background.
    pub fn runnable(&self) -> f64 {
        self.jobs.len() as f64 + self.background
    }

    /// Speed of each compile, 1.0 on an uncontended master.
    fn rate(&self) -> f64 {
        let runnable = self.runnable();
        if runnable <= self.cores {
            1.0
        } else {
            self.cores / runnable
        }
    }

    /// Brings work and busy time up to `now`.
    fn advance(&mut self, now: Time) {
        if now <= self.last {
            return;
        }
        let elapsed = now.since(self.last).as_secs_f64();
        if !self.jobs.is_empty() {
            let done = elapsed * self.rate();
            for j in &mut self.jobs {
                j.work_left -= done;
            }
            let measured = now.since(self.last.max(self.measure_from)).as_secs_f64();
            self.busy += measured * self.jobs.len() as f64;
        }
        self.last = now;
    }

    /// Starts a compile of `work` CPU seconds for `key`. Returns the time and
    /// generation of a completion event to schedule, if the pending one no
    /// longer holds (the new compile ends first, or compiles slowed down).
    pub fn start(&mut self, now: Time, key: u32, work: f64) -> Option<(Time, u32)> {
        self.advance(now);
        let rate_before = self.rate();
        self.jobs.push(Job {
            key,
            work_left: work.max(0.0),
        });
        let ends = now.plus_secs(work.max(0.0) / self.rate());
        if self.rate() == rate_before && self.scheduled != Time::NEVER && ends >= self.scheduled {
            return None; // the pending completion is still the next one
        }
        self.next_completion(now)
    }

    /// The compile that completes now (the one with the least work left),
    /// and the next completion to schedule.
    pub fn complete(&mut self, now: Time) -> (Option<u32>, Option<(Time, u32)>) {
        self.advance(now);
        let done = self
            .jobs
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.work_left.total_cmp(&b.1.work_left))
            .map(|(i, _)| i);
        let key = done.map(|i| self.jobs.swap_remove(i).key);
        (key, self.next_completion(now))
    }

    /// Drops every running compile (the master died); returns their keys.
    pub fn kill_all(&mut self, now: Time) -> Vec<u32> {
        self.advance(now);
        self.generation = self.generation.wrapping_add(1);
        self.scheduled = Time::NEVER;
        self.jobs.drain(..).map(|j| j.key).collect()
    }

    fn next_completion(&mut self, now: Time) -> Option<(Time, u32)> {
        self.generation = self.generation.wrapping_add(1);
        self.scheduled = Time::NEVER;
        let least = self
            .jobs
            .iter()
            .map(|j| j.work_left)
            .min_by(f64::total_cmp)?;
        let at = now.plus_secs(least.max(0.0) / self.rate());
        self.scheduled = at;
        Some((at, self.generation))
    }

    /// One load-average update (call every [`LOAD_TICK_SECS`]).
    pub fn tick_load(&mut self) {
        let e = (-(LOAD_TICK_SECS as f64) / 60.0).exp();
        self.load1 = self.load1 * e + self.runnable() * (1.0 - e);
    }

    /// Slot-seconds spent compiling since `measure_from`, up to `now`.
    pub fn busy_seconds(&mut self, now: Time) -> f64 {
        self.advance(now);
        self.busy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncontended_compiles_take_their_work() {
        let mut m = SimMaster::new(4, 0.0, Time::ZERO);
        let (at, _) = m.start(Time::ZERO, 7, 3.0).expect("scheduled");
        assert_eq!(at, Time::from_secs(3));
        let (at, _) = m.start(Time::from_secs(1), 8, 1.0).expect("scheduled");
        assert_eq!(at, Time::from_secs(2));
        let (done, next) = m.complete(Time::from_secs(2));
        assert_eq!(done, Some(8));
        assert_eq!(next.map(|n| n.0), Some(Time::from_secs(3)));
        assert_eq!(m.busy_seconds(Time::from_secs(3)), 4.0);
    }

    #[test]
    fn contention_shares_the_cores() {
        // 2 cores, 4 compiles of 2 s each: each runs at half speed -> 4 s
        let mut m = SimMaster::new(2, 0.0, Time::ZERO);
        let mut last = None;
        for k in 0..4 {
            last = m.start(Time::ZERO, k, 2.0);
        }
        assert_eq!(last.map(|l| l.0), Some(Time::from_secs(4)));
        // background load slows them further
        let mut m = SimMaster::new(2, 2.0, Time::ZERO);
        let next = m.start(Time::ZERO, 0, 1.0);
        assert_eq!(next.map(|l| l.0), Some(Time::from_micros(1_500_000)));
    }

    #[test]
    fn load_average_follows_the_kernel_formula() {
        let mut m = SimMaster::new(4, 0.0, Time::ZERO);
        m.start(Time::ZERO, 0, 1e9);
        m.start(Time::ZERO, 1, 1e9);
        for _ in 0..12 {
            m.tick_load();
        }
        // one minute of 2 runnable: 2 * (1 - 1/e)
        let expected = 2.0 * (1.0 - (-1.0f64).exp());
        assert!((m.load1 - expected).abs() < 1e-9, "{}", m.load1);
    }
}
