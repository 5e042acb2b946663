//! Which addresses outbound calls may reach. Everything that is not a public unicast
//! address is refused unless an `outbound.allow` range covers it, and the check runs on
//! the addresses a name resolves to at the moment of the call, inside the HTTP client's
//! resolver. The client then connects only to the addresses that passed, so a name that
//! is re-pointed at 127.0.0.1 after the URL was saved is still refused.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

use crate::net::Cidr;

/// Why an address is refused, or `None` when it is a public unicast address.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => refusal_v4(v4),
            None => refusal_v6(v6),
        },
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn refusal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let ranges: &[([u8; 4], u32, &'static str)] = &[
        ([0, 0, 0, 0], 8, "an unspecified (\"this network\") address"),
        ([10, 0, 0, 0], 8, "a private address"),
        ([100, 64, 0, 0], 10, "a carrier-grade NAT address"),
        ([127, 0, 0, 0], 8, "a loopback address"),
        ([169, 254, 0, 0], 16, "a link-local address"),
        ([172, 16, 0, 0], 12, "a private address"),
        ([192, 0, 0, 0], 24, "an IETF protocol address"),
        ([192, 0, 2, 0], 24, "a documentation address"),
        ([192, 168, 0, 0], 16, "a private address"),
        ([198, 18, 0, 0], 15, "a benchmarking address"),
        ([198, 51, 100, 0], 24, "a documentation address"),
        ([203, 0, 113, 0], 24, "a documentation address"),
        ([224, 0, 0, 0], 4, "a multicast address"),
        ([240, 0, 0, 0], 4, "a reserved address"),
    ];
    ranges
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

fn refusal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    let within = |net: u128, prefix: u32| {
        let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
        bits & mask == net & mask
    };
    // IPv6 forms that carry an IPv4 address: judged by the address inside.
    let embedded = |at: u32| Ipv4Addr::from((bits >> at) as u32);
    if ip.is_unspecified() {
        Some("an unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if within(0, 96) {
        // IPv4-compatible (::a.b.c.d), deprecated since 2006; nothing public uses it.
        Some("an IPv4-compatible address")
    } else if within(0x0064_ff9b << 96, 96) {
        refusal_v4(embedded(0)).map(|_| "a NAT64 address of a refused IPv4 address")
    } else if within(0x2002 << 112, 16) {
        refusal_v4(embedded(80)).map(|_| "a 6to4 address of a refused IPv4 address")
    } else if within(0xfec0 << 112, 10) {
        Some("a site-local address")
    } else if within(0xfc00 << 112, 7) {
        Some("a unique local (private) address")
    } else if within(0xfe80 << 112, 10) {
        Some("a link-local address")
    } else if within(0xff00 << 112, 8) {
        Some("a multicast address")
    } else if within(0x2001_0db8 << 96, 32) {
        Some("a documentation address")
    } else if within(0x0064_ff9b_0001 << 80, 48) {
        Some("a local-use NAT64 address")
    } else {
        None
    }
}

/// Whether `ip` may be called: public, or inside an allowed range.
pub fn permitted(ip: IpAddr, allow: &[Cidr]) -> Result<(), String> {
    match refusal(ip) {
        None => Ok(()),
        Some(_) if allow.iter().any(|c| c.contains(ip)) => Ok(()),
        Some(why) => Err(format!("{ip} is {why}; outbound.allow does not include it")),
    }
}

/// How long a name's addresses are reused before it is looked up again.
const NAME_TTL: Duration = Duration::from_secs(5);
/// Most names remembered at once.
const NAMES_KEPT: usize = 1024;

/// The system resolver, keeping only permitted addresses. When none is left the call
/// fails with the reason, so a refused target is a failed attempt that says why.
///
/// ureq's resolver starts a thread for every lookup it times out, and it looks up the host
/// on every call, pooled connection or not. So an address literal is not looked up at all,
/// and a name's addresses are reused for [`NAME_TTL`]. The policy still judges the
/// addresses on every call.
#[derive(Debug)]
pub struct GuardedResolver {
    allow: Vec<Cidr>,
    inner: DefaultResolver,
    names: Mutex<HashMap<String, (Instant, Vec<SocketAddr>)>>,
}

impl GuardedResolver {
    pub fn new(allow: Vec<Cidr>) -> Self {
        GuardedResolver {
            allow,
            inner: DefaultResolver::default(),
            names: Mutex::default(),
        }
    }

    /// The addresses of `uri`'s host, unchecked.
    fn lookup(
        &self,
        uri: &http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<Vec<SocketAddr>, ureq::Error> {
        let host = uri.host().unwrap_or_default();
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let name = format!("{host}:{port}");
        if let Ok(names) = self.names.lock() {
            if let Some((at, addrs)) = names.get(&name) {
                if at.elapsed() < NAME_TTL {
                    return Ok(addrs.clone());
                }
            }
        }
        let addrs: Vec<SocketAddr> = self.inner.resolve(uri, config, timeout)?.to_vec();
        if let Ok(mut names) = self.names.lock() {
            if names.len() >= NAMES_KEPT {
                names.clear();
            }
            names.insert(name, (Instant::now(), addrs.clone()));
        }
        Ok(addrs)
    }
}

impl Resolver for GuardedResolver {
    fn resolve(
        &self,
        uri: &http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let resolved = self.lookup(uri, config, timeout)?;
        let mut kept = self.empty();
        let mut refused = None;
        for addr in resolved.iter().take(16) {
            match permitted(addr.ip(), &self.allow) {
                Ok(()) => kept.push(*addr),
                Err(why) => refused = refused.or(Some(why)),
            }
        }
        if kept.is_empty() {
            let why = refused.unwrap_or_else(|| "the name has no address".into());
            return Err(ureq::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("refused: {why}"),
            )));
        }
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_unicast_addresses_pass() {
        let refused = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "::1",
            "::",
            "fd00::1",
            "fc12::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "::169.254.169.254",
            "::8.8.8.8",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:a9fe:a9fe::1",
            "2002:7f00:1::",
            "2002:c0a8:101::5",
            "fec0::1",
            "feff::1",
        ];
        for ip in refused {
            assert!(
                refusal(ip.parse().unwrap()).is_some(),
                "{ip} must be refused"
            );
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(refusal(ip.parse().unwrap()), None, "{ip} is public");
        }
    }

    #[test]
    fn allowed_ranges_are_exceptions() {
        let allow: Vec<Cidr> = vec!["127.0.0.0/8".parse().unwrap()];
        assert!(permitted("127.0.0.1".parse().unwrap(), &allow).is_ok());
        let e = permitted("10.0.0.1".parse().unwrap(), &allow).unwrap_err();
        assert!(e.contains("private"), "{e}");
    }

    #[test]
    fn the_client_refuses_loopback_unless_allowed() {
        // A real listener on loopback: refused by policy, reached once allowed.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://localhost:{}/",
            listener.local_addr().unwrap().port()
        );
        let strict = super::super::agent(std::time::Duration::from_secs(5), vec![], 4);
        let err = strict.get(&url).call().unwrap_err().to_string();
        assert!(err.contains("refused") && err.contains("loopback"), "{err}");

        std::thread::spawn(move || {
            use std::io::{Read, Write};
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n");
            }
        });
        let open = super::super::agent(
            std::time::Duration::from_secs(5),
            vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            4,
        );
        assert_eq!(open.get(&url).call().unwrap().status().as_u16(), 204);
    }
}
