//! The PROXY protocol (HAProxy's, versions 1 and 2): the client's address, before anything else
//! on a connection. Parsed on listeners behind a TCP load balancer (`downstream`), written to
//! stream backends (`stream`). Only what a header says about addresses is used; v2 TLVs are
//! skipped. A leaf: imports nothing of gatehouse.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (spec §2.1).
const V1_MAX: usize = 107;
/// The longest v2 header accepted (16 fixed bytes and the addresses with some TLVs).
pub const V2_MAX: usize = 16 + 1024;

/// What a header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection was proxied for this client, to this destination.
    Proxied {
        source: SocketAddr,
        dest: SocketAddr,
    },
    /// The balancer's own connection (health checks) or an unknown family: keep the TCP peer.
    Local,
}

/// Parse a header at the start of `buf`: `Ok(Some((header, length)))`, `Ok(None)` when more
/// bytes are needed, `Err` when this is not a valid PROXY header.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, String> {
    if buf.len() >= 12 && buf[..12] == V2_SIGNATURE[..] || V2_SIGNATURE.starts_with(buf) {
        return parse_v2(buf);
    }
    if buf.starts_with(b"PROXY ") || b"PROXY ".starts_with(buf) {
        return parse_v1(buf);
    }
    Err("the connection does not start with a PROXY protocol header".into())
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err("PROXY v1 header longer than 107 bytes".into())
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| "PROXY v1 header is not text")?;
    let parts: Vec<&str> = line.split(' ').collect();
    let header = match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Header::Local,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| -> Result<IpAddr, String> {
                let ip: IpAddr = s.parse().map_err(|_| format!("bad address {s:?}"))?;
                match (ip, *family) {
                    (IpAddr::V4(_), "TCP4") | (IpAddr::V6(_), "TCP6") => Ok(ip),
                    _ => Err(format!("{s:?} is not a {family} address")),
                }
            };
            let port = |s: &str| -> Result<u16, String> {
                if s.starts_with('0') && s.len() > 1 {
                    return Err(format!("bad port {s:?}"));
                }
                s.parse().map_err(|_| format!("bad port {s:?}"))
            };
            Header::Proxied {
                source: SocketAddr::new(ip(src)?, port(sport)?),
                dest: SocketAddr::new(ip(dst)?, port(dport)?),
            }
        }
        _ => return Err(format!("malformed PROXY v1 header {line:?}")),
    };
    Ok(Some((header, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, String> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (ver_cmd, family) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Err(format!("PROXY v2 header with version {}", ver_cmd >> 4));
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if 16 + len > V2_MAX {
        return Err(format!("PROXY v2 header of {len} bytes is too long"));
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let header = match ver_cmd & 0x0f {
        0 => Header::Local,
        1 => match family {
            // TCP or UDP over IPv4.
            0x11 | 0x12 if len >= 12 => {
                let ip = |o: usize| Ipv4Addr::new(body[o], body[o + 1], body[o + 2], body[o + 3]);
                let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                Header::Proxied {
                    source: SocketAddr::new(ip(0).into(), port(8)),
                    dest: SocketAddr::new(ip(4).into(), port(10)),
                }
            }
            // TCP or UDP over IPv6.
            0x21 | 0x22 if len >= 36 => {
                let ip = |o: usize| {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(&body[o..o + 16]);
                    Ipv6Addr::from(b)
                };
                let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                Header::Proxied {
                    source: SocketAddr::new(ip(0).into(), port(32)),
                    dest: SocketAddr::new(ip(16).into(), port(34)),
                }
            }
            0x11 | 0x12 | 0x21 | 0x22 => {
                return Err("PROXY v2 header too short for its addresses".into())
            }
            // AF_UNSPEC or AF_UNIX: nothing usable, keep the TCP peer.
            _ => Header::Local,
        },
        c => return Err(format!("PROXY v2 header with command {c}")),
    };
    Ok(Some((header, 16 + len)))
}

/// The v1 header for a connection from `source` to `dest` (what gatehouse sends to a backend).
pub fn v1(source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let family = match (source, dest) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => "TCP4",
        (SocketAddr::V6(_), SocketAddr::V6(_)) => "TCP6",
        _ => return b"PROXY UNKNOWN\r\n".to_vec(),
    };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        dest.ip(),
        source.port(),
        dest.port()
    )
    .into_bytes()
}

/// The v2 header for a connection from `source` to `dest`.
pub fn v2(source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let (family, src, dst): (u8, Vec<u8>, Vec<u8>) = match (source.ip(), dest.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (0x11, s.octets().into(), d.octets().into()),
        (IpAddr::V6(s), IpAddr::V6(d)) => (0x21, s.octets().into(), d.octets().into()),
        _ => return v2_local(),
    };
    let mut out = V2_SIGNATURE.to_vec();
    // PROXY command, TCP over the family, then the length of two addresses and two ports.
    out.extend_from_slice(&[0x21, family, 0, (2 * src.len() + 4) as u8]);
    out.extend_from_slice(&src);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&dest.port().to_be_bytes());
    out
}

/// The v2 LOCAL header: no address to report.
pub fn v2_local() -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0, 0]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_headers() {
        let h = b"PROXY TCP4 10.0.1.100 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h).unwrap(),
            Some((
                Header::Proxied {
                    source: addr("10.0.1.100:56324"),
                    dest: addr("10.0.0.1:443")
                },
                42
            ))
        );
        let h6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert!(matches!(parse(h6), Ok(Some((Header::Proxied { .. }, 40)))));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap(),
            Some((Header::Local, 15))
        );
        assert_eq!(parse(b"PROXY TCP4 10.0").unwrap(), None);
        assert_eq!(parse(b"PRO").unwrap(), None);
        for bad in [
            &b"PROXY TCP4 10.0.0.1 10.0.0.2 1\r\n"[..],
            b"PROXY TCP4 2001:db8::1 10.0.0.2 1 2\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 01 2\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1 70000\r\n",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse(&[b'P', b'R', b'O', b'X', b'Y', b' '].repeat(20)).is_err());
    }

    #[test]
    fn v2_headers_round_trip() {
        let (s, d) = (addr("192.0.2.7:4000"), addr("192.0.2.1:80"));
        let mut h = v2(s, d);
        let n = h.len();
        h.extend_from_slice(b"GET /");
        assert_eq!(
            parse(&h).unwrap(),
            Some((Header::Proxied { source: s, dest: d }, n))
        );
        assert_eq!(parse(&h[..n - 1]).unwrap(), None);
        assert_eq!(parse(&h[..5]).unwrap(), None);
        let (s6, d6) = (addr("[2001:db8::7]:4000"), addr("[2001:db8::1]:443"));
        assert!(matches!(
            parse(&v2(s6, d6)),
            Ok(Some((Header::Proxied { source, .. }, 52))) if source == s6
        ));
        // LOCAL (a balancer's health check) keeps the TCP peer.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).unwrap(), Some((Header::Local, 16)));
        let mut bad = V2_SIGNATURE.to_vec();
        bad.extend_from_slice(&[0x31, 0x11, 0, 12]);
        assert!(parse(&bad).is_err());
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(parse(&short).is_err());
        assert_eq!(
            parse(&v1(s, d)).unwrap(),
            Some((Header::Proxied { source: s, dest: d }, v1(s, d).len()))
        );
    }
}
