//! Queueing formulas the simulator must reproduce where they apply.
//!
//! They are the simulator's credentials: a model that misses Erlang C on an
//! M/M/c set-up, or Puppet's own sizing rule in steady state, has no
//! business advising how many masters to buy.

/// Mean wait in queue of an M/M/c queue (Erlang C): arrivals `lambda` per
/// second, service rate `mu` per server, `c` servers. `None` when the queue
/// is unstable (`lambda >= c * mu`).
pub fn erlang_c_wait(lambda: f64, mu: f64, c: u32) -> Option<f64> {
    let c_f = f64::from(c);
    let a = lambda / mu; // offered load in Erlangs
    let rho = a / c_f;
    if rho >= 1.0 || c == 0 {
        return None;
    }
    // sum_{k<c} a^k/k!, and a^c/c!, computed iteratively
    let mut term = 1.0;
    let mut sum = 0.0;
    for k in 0..c {
        sum += term;
        term *= a / f64::from(k + 1);
    }
    let top = term / (1.0 - rho);
    let p_wait = top / (sum + top);
    Some(p_wait / (c_f * mu - lambda))
}

/// Mean wait in queue of the finite-source M/M/c//N queue: `n` sources that
/// each, when not in the system, generate a job at rate `lambda`; `c`
/// servers of rate `mu`.
pub fn finite_source_wait(lambda: f64, mu: f64, c: u32, n: u32) -> f64 {
    let r = lambda / mu;
    // unnormalized p_k, k = 0..=n
    let mut p = Vec::with_capacity(n as usize + 1);
    let mut pk = 1.0;
    p.push(pk);
    for k in 1..=n {
        let kf = f64::from(k);
        let sources = f64::from(n - k + 1);
        pk *= if k <= c {
            sources * r / kf
        } else {
            sources * r / f64::from(c)
        };
        p.push(pk);
    }
    let total: f64 = p.iter().sum();
    let mut lq = 0.0;
    let mut l = 0.0;
    for (k, pk) in p.iter().enumerate() {
        let prob = pk / total;
        l += k as f64 * prob;
        if k as u32 > c {
            lq += (k as u32 - c) as f64 * prob;
        }
    }
    let effective = lambda * (f64::from(n) - l);
    if effective <= 0.0 {
        0.0
    } else {
        lq / effective
    }
}

/// Puppet's sizing rule in steady state: the share of JRubies busy when `n`
/// nodes, each compiling `s` seconds every `r` seconds, share `m` masters
/// of `j` JRubies: `n * s / (m * j * r)` (from `j = n * s / (m * r)`).
pub fn puppet_utilization(n: f64, s: f64, m: f64, j: f64, r: f64) -> f64 {
    n * s / (m * j * r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erlang_c_known_values() {
        // M/M/1: Wq = rho / (mu - lambda)
        let w = erlang_c_wait(0.5, 1.0, 1).expect("stable");
        assert!((w - 1.0).abs() < 1e-12, "{w}");
        // c = 2, lambda = 1, mu = 1: P_wait = 1/3, Wq = 1/3
        let w = erlang_c_wait(1.0, 1.0, 2).expect("stable");
        assert!((w - 1.0 / 3.0).abs() < 1e-12, "{w}");
        assert_eq!(erlang_c_wait(2.0, 1.0, 2), None);
    }

    #[test]
    fn finite_source_tends_to_erlang_c_for_large_fleets() {
        // N sources of rate lambda/N look like Poisson(lambda) as N grows
        let exact = erlang_c_wait(2.4, 0.7, 4).expect("stable");
        let big = finite_source_wait(2.4 / 20_000.0, 0.7, 4, 20_000);
        assert!((big - exact).abs() / exact < 0.01, "{big} vs {exact}");
        // M/M/1//1: one source never waits
        assert_eq!(finite_source_wait(1.0, 1.0, 1, 1), 0.0);
    }

    #[test]
    fn puppet_rule_example_from_the_docs() {
        // s = 10, r = 1800, j = 1 -> 180 nodes per server fill it
        assert!((puppet_utilization(180.0, 10.0, 1.0, 1.0, 1800.0) - 1.0).abs() < 1e-12);
    }
}
