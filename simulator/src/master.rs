//! A simulated master: CPU shared by its running compiles, the file
//! requests it serves and its background load, and a Linux-like load
//! average.
//!
//! Compile times in a scenario are CPU seconds on an idle core. While
//! compiles plus background processes do not exceed the cores, a compile
//! runs at full speed; beyond that every runnable process gets
//! `cores / runnable` of a core (processor sharing), so a herd of compiles
//! slows all of them down, as it does on a real master. The load average is
//! the kernel's: every 5 s, `load = load * e + runnable * (1 - e)` with
//! `e = exp(-5/60)`.
//!
//! Each running compile has one completion event. While the speed stays the
//! same, starting or finishing a compile schedules nothing else; when the
//! speed changes, the master's generation moves on (older completion events
//! become stale) and every running compile is scheduled again.

use scheduler::core::Time;

/// Seconds between load-average updates (Linux's LOAD_FREQ).
pub const LOAD_TICK_SECS: u64 = 5;

/// A completion event to schedule: when, for which generation, what.
pub type Completion = (Time, u32, Work);

/// What a master's CPU works on: a compile (its model's key) or a file
/// request (`file_metadata`, `file_content`) for a node's agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Work {
    /// A compile; the key is the model's.
    Compile(u32),
    /// A file request of this node's agent.
    File(u32),
}

/// Work running on a master: what it is and the CPU seconds left.
#[derive(Clone, Copy, Debug)]
struct Job {
    work: Work,
    work_left: f64,
    started: Time,
}

/// One master's CPU, compiles and load.
#[derive(Clone, Debug)]
pub struct SimMaster {
    /// Compiles that run at full speed at once: the cores, or the
    /// parallelism `pcq calibrate` measured (a real server reaches less
    /// than its core count).
    cores: f64,
    background: f64,
    /// Whether it is reachable.
    pub up: bool,
    jobs: Vec<Job>,
    /// When `jobs[..].work_left` was last brought up to date.
    last: Time,
    /// Generation of the completion events; older ones are stale.
    pub generation: u32,
    /// The one-minute load average.
    pub load1: f64,
    /// Slot-seconds of compiling after `measure_from`.
    busy: f64,
    measure_from: Time,
}

/// `now + secs`, rounded up to the microsecond (a completion never fires
/// before its work is done).
fn after(now: Time, secs: f64) -> Time {
    Time::from_micros(
        now.as_micros()
            .saturating_add((secs.max(0.0) * 1e6).ceil() as u64),
    )
}

impl SimMaster {
    /// A master with `cores` cores (at least 1; fractional: an effective
    /// parallelism) and `background` runnable processes.
    pub fn new(cores: f64, background: f64, measure_from: Time) -> SimMaster {
        SimMaster {
            cores: cores.max(1.0),
            background,
            up: true,
            jobs: Vec::new(),
            last: Time::ZERO,
            generation: 0,
            load1: background,
            busy: 0.0,
            measure_from,
        }
    }

    /// Compiles running.
    pub fn running(&self) -> usize {
        self.compiles()
    }

    fn compiles(&self) -> usize {
        self.jobs
            .iter()
            .filter(|j| matches!(j.work, Work::Compile(_)))
            .count()
    }

    /// Runnable processes now: compiles, file requests and background.
    pub fn runnable(&self) -> f64 {
        self.jobs.len() as f64 + self.background
    }

    /// Speed of each compile with `jobs` running, 1.0 uncontended.
    fn rate_with(&self, jobs: usize) -> f64 {
        let runnable = jobs as f64 + self.background;
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
            let done = elapsed * self.rate_with(self.jobs.len());
            for j in &mut self.jobs {
                j.work_left -= done;
            }
            let measured = now.since(self.last.max(self.measure_from)).as_secs_f64();
            self.busy += measured * self.compiles() as f64;
        }
        self.last = now;
    }

    /// Every running compile's completion, under a new generation.
    fn reschedule(&mut self, now: Time, out: &mut Vec<Completion>) {
        self.generation = self.generation.wrapping_add(1);
        let rate = self.rate_with(self.jobs.len());
        for j in &self.jobs {
            out.push((after(now, j.work_left / rate), self.generation, j.work));
        }
    }

    /// Starts `work` of `cpu` CPU seconds; pushes the completion events to
    /// schedule onto `out`.
    pub fn start(&mut self, now: Time, work: Work, cpu: f64, out: &mut Vec<Completion>) {
        self.advance(now);
        let before = self.rate_with(self.jobs.len());
        self.jobs.push(Job {
            work,
            work_left: cpu.max(0.0),
            started: now,
        });
        let rate = self.rate_with(self.jobs.len());
        if rate == before {
            out.push((after(now, cpu / rate), self.generation, work));
        } else {
            self.reschedule(now, out);
        }
    }

    /// The completion event (`generation`, `work`) fired. Returns when the
    /// work started if the event was current (the work is done); pushes
    /// events to schedule again if the speed changed.
    pub fn complete(
        &mut self,
        now: Time,
        generation: u32,
        work: Work,
        out: &mut Vec<Completion>,
    ) -> Option<Time> {
        if generation != self.generation {
            return None;
        }
        let i = self.jobs.iter().position(|j| j.work == work)?;
        let started = self.jobs[i].started;
        self.advance(now);
        let before = self.rate_with(self.jobs.len());
        self.jobs.swap_remove(i);
        if self.rate_with(self.jobs.len()) != before {
            self.reschedule(now, out);
        }
        Some(started)
    }

    /// Drops everything running (the master died); returns it.
    pub fn kill_all(&mut self, now: Time) -> Vec<Work> {
        self.advance(now);
        self.generation = self.generation.wrapping_add(1);
        self.jobs.drain(..).map(|j| j.work).collect()
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

    /// Runs a master to the end: returns (key, finish time) in order.
    fn drain(m: &mut SimMaster, mut pending: Vec<Completion>) -> Vec<(Work, Time)> {
        let mut done = Vec::new();
        while !pending.is_empty() {
            pending.sort_by_key(|c| std::cmp::Reverse(c.0));
            let Some((at, g, key)) = pending.pop() else {
                break;
            };
            let mut out = Vec::new();
            if m.complete(at, g, key, &mut out).is_some() {
                done.push((key, at));
            }
            pending.extend(out);
        }
        done
    }

    #[test]
    fn uncontended_compiles_take_their_work() {
        let mut m = SimMaster::new(4.0, 0.0, Time::ZERO);
        let mut out = Vec::new();
        m.start(Time::ZERO, Work::Compile(7), 3.0, &mut out);
        assert_eq!(out, vec![(Time::from_secs(3), 0, Work::Compile(7))]);
        m.start(Time::from_secs(1), Work::Compile(8), 1.0, &mut out);
        assert_eq!(
            out[1],
            (Time::from_secs(2), 0, Work::Compile(8)),
            "one event each, same generation"
        );
        let done = drain(&mut m, out);
        assert_eq!(
            done,
            vec![
                (Work::Compile(8), Time::from_secs(2)),
                (Work::Compile(7), Time::from_secs(3))
            ]
        );
        assert_eq!(m.busy_seconds(Time::from_secs(3)), 4.0);
    }

    #[test]
    fn contention_shares_the_cores() {
        // 2 cores, 4 compiles of 2 s each: each runs at half speed -> 4 s
        let mut m = SimMaster::new(2.0, 0.0, Time::ZERO);
        let mut out = Vec::new();
        for k in 0..4 {
            m.start(Time::ZERO, Work::Compile(k), 2.0, &mut out);
        }
        let done = drain(&mut m, out);
        assert_eq!(done.len(), 4);
        assert!(
            done.iter().all(|&(_, t)| t == Time::from_secs(4)),
            "{done:?}"
        );
        // background load slows them further
        let mut m = SimMaster::new(2.0, 2.0, Time::ZERO);
        let mut out = Vec::new();
        m.start(Time::ZERO, Work::Compile(0), 1.0, &mut out);
        assert_eq!(
            out,
            vec![(Time::from_micros(1_500_000), 1, Work::Compile(0))]
        );
        // a compile ending speeds up the rest: 3 compiles on 2 cores
        let mut m = SimMaster::new(2.0, 0.0, Time::ZERO);
        let mut out = Vec::new();
        m.start(Time::ZERO, Work::Compile(0), 1.0, &mut out);
        m.start(Time::ZERO, Work::Compile(1), 1.0, &mut out);
        m.start(Time::ZERO, Work::Compile(2), 2.0, &mut out);
        // at 2/3 speed, 0 and 1 end at 1.5 s; 2 has 1 s left, at full speed
        let done = drain(&mut m, out);
        assert_eq!(
            done[2],
            (Work::Compile(2), Time::from_micros(2_500_000)),
            "{done:?}"
        );
    }

    #[test]
    fn a_dead_master_fires_nothing() {
        let mut m = SimMaster::new(4.0, 0.0, Time::ZERO);
        let mut out = Vec::new();
        m.start(Time::ZERO, Work::Compile(1), 5.0, &mut out);
        assert_eq!(m.kill_all(Time::from_secs(1)), vec![Work::Compile(1)]);
        assert!(drain(&mut m, out).is_empty());
    }

    #[test]
    fn load_average_follows_the_kernel_formula() {
        let mut m = SimMaster::new(4.0, 0.0, Time::ZERO);
        let mut out = Vec::new();
        m.start(Time::ZERO, Work::Compile(0), 1e9, &mut out);
        m.start(Time::ZERO, Work::Compile(1), 1e9, &mut out);
        for _ in 0..12 {
            m.tick_load();
        }
        // one minute of 2 runnable: 2 * (1 - 1/e)
        let expected = 2.0 * (1.0 - (-1.0f64).exp());
        assert!((m.load1 - expected).abs() < 1e-9, "{}", m.load1);
    }
}
