//! Picking a Service endpoint: power of two choices on open connections.
//!
//! Two endpoints drawn at random, the one with fewer connections open
//! through this proxy wins. Unlike round robin it steers away from an
//! endpoint stuck with long-lived connections, and unlike "least
//! connections" over all endpoints it needs no scan and no shared lock, and
//! proxies on different nodes do not all pile onto the same idle endpoint
//! at once (each sees only its own counts).

use nodeward_workloads::Endpoint;

use crate::random::below;

/// The endpoint for a new connection, `None` when there is none.
pub fn pick(endpoints: &[Endpoint]) -> Option<&Endpoint> {
    match endpoints.len() {
        0 => None,
        1 => endpoints.first(),
        n => {
            let a = below(n);
            // A second, different index: skip over `a`.
            let b = (a + 1 + below(n - 1)) % n;
            let (ea, eb) = (&endpoints[a], &endpoints[b]);
            Some(if eb.open() < ea.open() { eb } else { ea })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nodeward_workloads::EndpointGuard;

    use super::*;

    fn endpoints(n: u8) -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint {
                ips: vec![std::net::IpAddr::from([10, 0, 0, i])],
                workload: None,
                load: Arc::default(),
            })
            .collect()
    }

    #[test]
    fn none_and_one() {
        assert!(pick(&[]).is_none());
        let one = endpoints(1);
        assert!(std::ptr::eq(pick(&one).expect("one"), &one[0]));
    }

    #[test]
    fn a_busy_endpoint_gets_no_new_connections_from_two_choices() {
        let two = endpoints(2);
        let _busy = EndpointGuard::open(&two[0]);
        for _ in 0..1000 {
            assert!(std::ptr::eq(pick(&two).expect("some"), &two[1]));
        }
    }

    #[test]
    fn connections_that_stay_open_spread_evenly() {
        let four = endpoints(4);
        let guards: Vec<EndpointGuard> = (0..400)
            .map(|_| EndpointGuard::open(pick(&four).expect("some")))
            .collect();
        let loads: Vec<usize> = four.iter().map(Endpoint::open).collect();
        // Two choices keep the spread within a few connections.
        assert!(loads.iter().all(|l| (95..=105).contains(l)), "{loads:?}");
        drop(guards);
        assert!(four.iter().all(|e| e.open() == 0));
    }
}
