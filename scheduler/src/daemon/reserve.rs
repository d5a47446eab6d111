//! JRubies left for file requests: how many compiles pcq may run at once
//! on a master whose JRuby pool also serves `file_metadata`,
//! `file_content` and pluginsync.
//!
//! Puppet Server lends one pool of JRubies (`max-active-instances`) to
//! catalogs and files alike. If pcq's compiles take every instance, each
//! agent's file resources wait behind whole compiles. So at start pcq reads
//! each master's pool size from the status API and compiles on at most
//! `size - reserve_for_files` of them (the master's `max_concurrency`, if
//! lower, stands; pcq keeps one at least). When the pool cannot be read the
//! configured `max_concurrency` stands, with a warning: pcq cannot know
//! what it leaves. The size is read once, at start: a pool resized later
//! counts from pcq's next start.

/// The concurrency to run with, and what to warn about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// Compiles at once on this master.
    pub max_concurrency: u32,
    /// A line for the log, if the configuration needs a look.
    pub warning: Option<String>,
}

/// `max_concurrency` as configured, the pool's size if it could be read
/// (or why not), and the JRubies to leave.
pub fn reserve(
    master: &str,
    max_concurrency: u32,
    pool: Result<u32, &str>,
    reserve_for_files: u32,
) -> Reservation {
    let size = match pool {
        Ok(size) => size,
        Err(why) => {
            let warning = (reserve_for_files > 0).then(|| {
                format!(
                    "master {master}: its JRuby pool could not be read ({why}); \
                     max_concurrency {max_concurrency} stands: keep it at least \
                     {reserve_for_files} below the server's max-active-instances, \
                     or file requests wait behind compiles"
                )
            });
            return Reservation {
                max_concurrency,
                warning,
            };
        }
    };
    let room = size.saturating_sub(reserve_for_files).max(1);
    let run = max_concurrency.min(room);
    let left = size.saturating_sub(run);
    let warning = if run < max_concurrency {
        Some(format!(
            "master {master}: max_concurrency {max_concurrency} would leave {} of its {size} \
             JRubies for file requests; compiling at most {run} at once \
             (reserve_for_files = {reserve_for_files}){}",
            size.saturating_sub(max_concurrency),
            if left < reserve_for_files {
                ": the pool is too small for the reserve, and pcq keeps one"
            } else {
                ""
            }
        ))
    } else if left < reserve_for_files {
        Some(format!(
            "master {master}: its pool of {size} JRubies is too small to leave \
             {reserve_for_files} for file requests beside pcq's {run} compile(s): \
             {left} left"
        ))
    } else if reserve_for_files == 0 && run >= size {
        Some(format!(
            "master {master}: max_concurrency {max_concurrency} takes the whole pool of \
             {size} JRubies (reserve_for_files = 0): file requests wait behind compiles"
        ))
    } else {
        None
    };
    Reservation {
        max_concurrency: run,
        warning,
    }
}

/// JRubies free for pcq in a status reading: the free ones less the
/// reserve, where the reserve never takes the last JRuby (as
/// [`reserve`] keeps one for pcq in a pool too small for the reserve).
pub fn free_for_pcq(free: u32, size: u32, reserve_for_files: u32) -> u32 {
    free.saturating_sub(reserve_for_files.min(size.saturating_sub(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_never_takes_the_last_jruby_from_the_gate() {
        assert_eq!(free_for_pcq(3, 3, 1), 2);
        assert_eq!(free_for_pcq(1, 3, 1), 0);
        // a pool of one (Puppet Server's default on 2 CPUs), reserve 1:
        // pcq compiles on it when it is free, as `reserve` promised
        assert_eq!(free_for_pcq(1, 1, 1), 1);
        assert_eq!(free_for_pcq(0, 1, 1), 0);
        assert_eq!(free_for_pcq(2, 2, 5), 1);
    }

    fn said(r: &Reservation) -> &str {
        r.warning.as_deref().unwrap_or("")
    }

    #[test]
    fn a_pool_it_can_read_keeps_the_reserve_free() {
        // Debian's default: 3 JRubies; pcq's default: leave one
        let r = reserve("local", 3, Ok(3), 1);
        assert_eq!(r.max_concurrency, 2);
        assert!(said(&r).contains("compiling at most 2"), "{}", said(&r));
        // a lower max_concurrency stands, without a word
        assert_eq!(
            reserve("local", 2, Ok(3), 1),
            Reservation {
                max_concurrency: 2,
                warning: None
            }
        );
        assert_eq!(reserve("local", 1, Ok(8), 3).warning, None);
    }

    #[test]
    fn a_pool_too_small_for_the_reserve_still_compiles_and_says_so() {
        let r = reserve("local", 4, Ok(2), 2);
        assert_eq!(r.max_concurrency, 1);
        assert!(said(&r).contains("pcq keeps one"), "{}", said(&r));
        // already at one: nothing to lower, but the reserve is not kept
        for (max, size) in [(1, 1), (1, 2)] {
            let r = reserve("local", max, Ok(size), 2);
            assert_eq!(r.max_concurrency, 1);
            assert!(said(&r).contains("too small"), "{}", said(&r));
        }
    }

    #[test]
    fn taking_the_whole_pool_is_said_out_loud() {
        let r = reserve("m1", 3, Ok(3), 0);
        assert_eq!(r.max_concurrency, 3);
        assert!(said(&r).contains("whole pool"));
        let r = reserve("m1", 5, Err("403 Forbidden"), 1);
        assert_eq!(
            r.max_concurrency, 5,
            "what pcq cannot read, it does not change"
        );
        assert!(said(&r).contains("403 Forbidden"));
        // no reserve asked for: an unreadable pool changes nothing to say
        assert_eq!(reserve("m1", 5, Err("403 Forbidden"), 0).warning, None);
    }
}
