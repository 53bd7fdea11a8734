//! The kernel's TCP socket tables (/proc/net/tcp and /proc/net/tcp6): what the admin listener
//! reports about listeners and connections without touching them.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// `st` of a listening socket in /proc/net/tcp.
pub const LISTEN: u8 = 0x0A;
/// `st` of an established connection.
pub const ESTABLISHED: u8 = 0x01;

/// Every TCP socket of this network namespace as (local address, state). Empty where the
/// tables cannot be read (not Linux, no /proc).
pub fn tcp_sockets() -> Vec<(SocketAddr, u8)> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            out.extend(text.lines().skip(1).filter_map(parse_line));
        }
    }
    out
}

/// One table row: `sl local_address rem_address st ...`. Addresses are hex words in host byte
/// order, ports big-endian hex (`0100007F:1F90` is 127.0.0.1:8080).
fn parse_line(line: &str) -> Option<(SocketAddr, u8)> {
    let mut cols = line.split_whitespace();
    let local = cols.nth(1)?;
    let state = u8::from_str_radix(cols.nth(1)?, 16).ok()?;
    let (ip, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        ip.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
    };
    let addr = match ip.len() {
        8 => SocketAddr::from((Ipv4Addr::from(word(0)?), port)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            SocketAddr::from((Ipv6Addr::from(b), port))
        }
        _ => return None,
    };
    Some((addr, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse() {
        let v4 =
            "   1: 0100007F:AD30 0100007F:A8BF 06 00000000:00000000 03:00000974 00000000     0";
        let (addr, st) = parse_line(v4).unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(addr, "127.0.0.1:44336".parse().unwrap());
        }
        assert_eq!(st, 6);
        assert!(parse_line("  sl  local_address rem_address   st").is_none());
        assert!(parse_line("   1: 0100007F 0 0A").is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_bound_listener_is_listed_until_closed() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(l) = std::net::TcpListener::bind(bind) else {
                continue; // no IPv6 loopback here
            };
            let addr = l.local_addr().unwrap();
            assert!(tcp_sockets().contains(&(addr, LISTEN)), "{addr}");
            drop(l);
            assert!(!tcp_sockets().contains(&(addr, LISTEN)), "{addr}");
        }
    }
}
