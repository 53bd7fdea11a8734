//! The client's address: the TCP peer, unless the peer is a trusted proxy; then the right-most
//! untrusted address of X-Forwarded-For (nginx `real_ip_recursive on`).

use super::access::CidrSet;
use std::net::IpAddr;

/// The CIDRs whose X-Forwarded-For is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(CidrSet);

impl TrustedProxies {
    pub fn new(set: CidrSet) -> Self {
        TrustedProxies(set)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Resolve the client address. `xff` are the X-Forwarded-For header values in order.
    /// A peer outside the trusted set is the client, whatever it sends.
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        xff: impl DoubleEndedIterator<Item = &'a [u8]>,
    ) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.0.contains(peer) {
            return peer;
        }
        let mut client = peer;
        // Walk right to left through every hop of every header line.
        for line in xff.rev() {
            let Ok(line) = std::str::from_utf8(line) else {
                return client;
            };
            for hop in line.rsplit(',') {
                let hop = hop.trim();
                let Some(ip) = parse_hop(hop) else {
                    return client;
                };
                client = ip;
                if !self.0.contains(ip) {
                    return ip;
                }
            }
        }
        client
    }
}

/// One X-Forwarded-For element: an IP, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(cidrs: &[&str]) -> TrustedProxies {
        TrustedProxies::new(CidrSet::new(cidrs.iter().map(|c| c.parse().unwrap())))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_cannot_choose_its_ip() {
        let t = trusted(&["10.0.0.0/8"]);
        let got = t.client_ip(ip("1.2.3.4"), [&b"10.0.1.100"[..]].into_iter());
        assert_eq!(got, ip("1.2.3.4"));
    }

    #[test]
    fn rightmost_untrusted_hop_wins() {
        let t = trusted(&["127.0.0.1/32", "10.0.0.0/8"]);
        let xff = [&b"6.6.6.6, 1.2.3.4"[..], b"10.0.0.2"];
        assert_eq!(t.client_ip(ip("127.0.0.1"), xff.into_iter()), ip("1.2.3.4"));
    }

    #[test]
    fn all_trusted_gives_the_leftmost_and_garbage_stops_the_walk() {
        let t = trusted(&["10.0.0.0/8", "127.0.0.0/8"]);
        assert_eq!(
            t.client_ip(ip("127.0.0.1"), [&b"10.0.0.3, 10.0.0.2"[..]].into_iter()),
            ip("10.0.0.3")
        );
        assert_eq!(
            t.client_ip(ip("127.0.0.1"), [&b"evil, 10.0.0.2"[..]].into_iter()),
            ip("10.0.0.2")
        );
        assert_eq!(
            t.client_ip(ip("127.0.0.1"), [].into_iter()),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn mapped_ipv6_compares_as_ipv4_and_ports_are_ignored() {
        let t = trusted(&["127.0.0.1/32"]);
        let got = t.client_ip(
            ip("::ffff:127.0.0.1"),
            [&b"[2001:db8::1]:443"[..]].into_iter(),
        );
        assert_eq!(got, ip("2001:db8::1"));
        let got = t.client_ip(ip("127.0.0.1"), [&b"::ffff:1.2.3.4"[..]].into_iter());
        assert_eq!(got, ip("1.2.3.4"));
    }
}
