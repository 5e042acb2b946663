//! Outbound HTTP: what every call Waybill makes to a partner shares, whether a push, a job
//! webhook or an event callback. It is signed the Standard Webhooks way ([`sign`]), and it
//! reaches only addresses the policy allows ([`policy`]), checked against what the name
//! resolves to at the moment of the call.

pub mod call;
pub mod policy;
pub mod sign;
mod socket;

pub use call::{Call, Outcome};

use std::time::Duration;

use ureq::unversioned::transport::{Connector, RustlsConnector};

use crate::net::Cidr;

/// A blocking HTTP client for outbound calls: no redirects followed (a 3xx is an answer,
/// not a detour to an unchecked address), 4xx/5xx read as answers, one time limit per
/// call, and every resolved address checked against the policy. `per_host` connections to
/// one host are kept alive: as many as calls to one endpoint may run at once.
///
/// No proxy is ever taken from the environment (`HTTP_PROXY` and the like): through a
/// proxy, the resolver would see only the proxy's name, and the policy would judge the
/// proxy instead of the target. The connector chain has no proxy step either: it only
/// opens TCP to the checked addresses and adds TLS on top.
pub fn agent(timeout: Duration, allow: Vec<Cidr>, per_host: usize) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .user_agent(concat!("Waybill/", env!("CARGO_PKG_VERSION")))
        // ureq's default buffers are 128 KiB each way per connection; an answer is read
        // only up to its first KiB and bodies are streamed through, so 16 KiB will do.
        .input_buffer_size(16 * 1024)
        .output_buffer_size(16 * 1024)
        .max_response_header_size(16 * 1024)
        .max_idle_connections(per_host.max(256))
        .max_idle_connections_per_host(per_host)
        .build();
    ureq::Agent::with_parts(config, connector(), policy::GuardedResolver::new(allow))
}

/// Plain TCP ([`socket`]), wrapped in TLS when the URL is `https`.
fn connector() -> impl Connector {
    ().chain(socket::Direct).chain(RustlsConnector::default())
}
