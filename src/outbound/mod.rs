//! Outbound HTTP: what every call Waybill makes to a partner shares, whether a push, a job
//! webhook or an event callback. It is signed the Standard Webhooks way ([`sign`]), and it
//! reaches only addresses the policy allows ([`policy`]), checked against what the name
//! resolves to at the moment of the call.

pub mod policy;
pub mod sign;

use std::time::Duration;

use crate::net::Cidr;

/// A blocking HTTP client for outbound calls: no redirects followed (a 3xx is an answer,
/// not a detour to an unchecked address), 4xx/5xx read as answers, one time limit per
/// call, and every resolved address checked against the policy.
pub fn agent(timeout: Duration, allow: Vec<Cidr>) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .user_agent(concat!("Waybill/", env!("CARGO_PKG_VERSION")))
        // Pushes to one receiver run up to 64 at a time; keep that many connections alive
        // instead of opening a new one for most attempts.
        .max_idle_connections(256)
        .max_idle_connections_per_host(crate::worker::delivery::CONCURRENCY)
        .build();
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::new(),
        policy::GuardedResolver::new(allow),
    )
}
