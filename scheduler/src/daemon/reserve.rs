//! JRubies left for file requests: how many compiles pcq may run at once
//! on a master whose JRuby pool also serves `file_metadata`,
//! `file_content` and pluginsync.
//!
//! Puppet Server lends one pool of JRubies (`max-active-instances`) to
//! catalogs and files alike. If pcq's compiles take every instance, each
//! agent's file resources wait behind whole compiles. So at start pcq reads
//! each master's pool size from the status API and compiles on at most
//! `size - reserve_for_files` of them (the master's `max_concurrency`, if
//! lower, stands). When the pool cannot be read the configured
//! `max_concurrency` stands, with a warning: pcq cannot know what it
//! leaves.

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
            return Reservation {
                max_concurrency,
                warning: Some(format!(
                    "master {master}: its JRuby pool could not be read ({why}); \
                     max_concurrency {max_concurrency} stands: keep it at least \
                     {reserve_for_files} below the server's max-active-instances, \
                     or file requests wait behind compiles"
                )),
            }
        }
    };
    let room = size.saturating_sub(reserve_for_files).max(1);
    if max_concurrency <= room {
        let warning = (max_concurrency >= size).then(|| {
            format!(
                "master {master}: max_concurrency {max_concurrency} takes the whole pool of \
                 {size} JRubies (reserve_for_files = 0): file requests wait behind compiles"
            )
        });
        return Reservation {
            max_concurrency,
            warning,
        };
    }
    let left = size - room;
    Reservation {
        max_concurrency: room,
        warning: Some(format!(
            "master {master}: max_concurrency {max_concurrency} would leave {} of its {size} \
             JRubies for file requests; compiling at most {room} at once \
             (reserve_for_files = {reserve_for_files}{})",
            size.saturating_sub(max_concurrency),
            if left < reserve_for_files {
                ", and pcq needs one"
            } else {
                ""
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_it_can_read_keeps_the_reserve_free() {
        // Debian's default: 3 JRubies; pcq's default: leave one
        let r = reserve("local", 3, Ok(3), 1);
        assert_eq!(r.max_concurrency, 2);
        let w = r.warning.unwrap_or_default();
        assert!(w.contains("compiling at most 2"), "{w}");
        // a lower max_concurrency stands, without a word
        assert_eq!(
            reserve("local", 2, Ok(3), 1),
            Reservation {
                max_concurrency: 2,
                warning: None
            }
        );
        // a reserve as large as the pool still leaves pcq one
        let r = reserve("local", 4, Ok(2), 2);
        assert_eq!(r.max_concurrency, 1);
        assert!(r.warning.unwrap_or_default().contains("pcq needs one"));
    }

    #[test]
    fn taking_the_whole_pool_is_said_out_loud() {
        let r = reserve("m1", 3, Ok(3), 0);
        assert_eq!(r.max_concurrency, 3);
        assert!(r.warning.unwrap_or_default().contains("whole pool"));
        let r = reserve("m1", 5, Err("403 Forbidden"), 1);
        assert_eq!(
            r.max_concurrency, 5,
            "what pcq cannot read, it does not change"
        );
        assert!(r.warning.unwrap_or_default().contains("403 Forbidden"));
    }
}
