//! Who the client is when the edge sits behind a load balancer or another proxy.
//!
//! Connections from a trusted proxy (`[server] trusted_proxies`, addresses or CIDR blocks) may
//! say whose they are: with `[server] proxy_protocol` the proxy starts each connection with a
//! PROXY protocol header (v1 text or v2 binary, as HAProxy, AWS NLB and Traefik send it), which
//! gives the client for the whole connection; otherwise each request's `X-Forwarded-For` is
//! read from the right, skipping trusted proxies, as nginx's `real_ip_recursive` does. The
//! address found is the one the per-address connection cap, the lockout and the logs use.
//! Nobody else's headers are believed: from an untrusted peer, `X-Forwarded-For` is ignored (and
//! not forwarded), and a PROXY header is not read.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncReadExt};

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an address or address/prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix =
            match p {
                None => max,
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                    format!("{s:?}: the prefix length is not between 0 and {max}")
                })?,
            };
        Ok(Cidr { addr, prefix })
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, as a dual-stack socket reports IPv4 peers)
/// as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// At most this many `X-Forwarded-For` entries are looked at, from the right: a chain longer
/// than this is a client padding it, not a chain of proxies.
pub const MAX_FORWARDED_HOPS: usize = 32;

/// The trusted proxies.
#[derive(Debug, Clone, Default)]
pub struct Trusted {
    nets: Vec<Cidr>,
    /// Trusted proxies start each connection with a PROXY protocol header.
    pub proxy_protocol: bool,
}

impl Trusted {
    pub fn new(nets: Vec<Cidr>, proxy_protocol: bool) -> Trusted {
        Trusted {
            nets,
            proxy_protocol,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn len(&self) -> usize {
        self.nets.len()
    }

    /// The client of a request that came from `peer` with these `X-Forwarded-For` values (in
    /// the order received): `peer` itself unless it is trusted; otherwise the rightmost entry
    /// that is not a trusted proxy. An entry that is not an address ends the walk at the last
    /// address believed.
    pub fn forwarded_client<'a>(
        &self,
        peer: IpAddr,
        values: impl Iterator<Item = &'a [u8]>,
    ) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let values: Vec<&[u8]> = values.collect();
        let entries = values
            .iter()
            .rev()
            .flat_map(|v| v.rsplit(|b| *b == b','))
            .take(MAX_FORWARDED_HOPS);
        let mut client = peer;
        for e in entries {
            let Some(ip) = std::str::from_utf8(e).ok().and_then(parse_forwarded) else {
                break;
            };
            client = canonical(ip);
            if !self.contains(client) {
                break;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_forwarded(e: &str) -> Option<IpAddr> {
    let e = e.trim();
    if let Ok(ip) = e.parse() {
        return Some(ip);
    }
    e.parse::<SocketAddr>().ok().map(|s| s.ip())
}

/// The largest PROXY protocol header read: v1's is at most 107 bytes; v2's holds 36 bytes of
/// addresses plus TLVs, which the edge does not use.
pub const MAX_PROXY_HEADER: usize = 1024;

/// Why a trusted proxy's connection was dropped.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("PROXY protocol header longer than {MAX_PROXY_HEADER} bytes")]
    TooLong,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error("reading the PROXY protocol header: {0}")]
    Read(#[from] std::io::Error),
}

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Reads a PROXY protocol header (v1 or v2) from the start of `stream`, consuming exactly its
/// bytes so that what follows (the TLS handshake) is untouched. Returns the client's address,
/// or `None` for a header that names none (v1 `UNKNOWN`, v2 `LOCAL`: the proxy's own health
/// checks), whose connection is then the proxy's.
pub async fn read_proxy_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).await?;
    let mut buf = vec![first[0]];
    match first[0] {
        b'P' => {
            // v1: one text line, at most 107 bytes with its CRLF.
            while buf.last() != Some(&b'\n') {
                if buf.len() >= 107 {
                    return Err(ProxyHeaderError::TooLong);
                }
                stream.read_exact(&mut first).await?;
                buf.push(first[0]);
            }
            let h = ppp::v1::Header::try_from(buf.as_slice())
                .map_err(|e| ProxyHeaderError::Malformed(e.to_string()))?;
            Ok(match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Unknown => None,
            })
        }
        b'\r' => {
            // v2: a 16-byte preamble whose last two bytes give the length of the rest.
            buf.resize(16, 0);
            stream.read_exact(&mut buf[1..]).await?;
            if &buf[..12] != V2_SIGNATURE {
                return Err(ProxyHeaderError::Missing);
            }
            let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
            if 16 + len > MAX_PROXY_HEADER {
                return Err(ProxyHeaderError::TooLong);
            }
            buf.resize(16 + len, 0);
            stream.read_exact(&mut buf[16..]).await?;
            let h = ppp::v2::Header::try_from(buf.as_slice())
                .map_err(|e| ProxyHeaderError::Malformed(e.to_string()))?;
            if h.command == ppp::v2::Command::Local {
                return Ok(None);
            }
            Ok(match h.addresses {
                ppp::v2::Addresses::IPv4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                ppp::v2::Addresses::IPv6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                _ => None,
            })
        }
        _ => Err(ProxyHeaderError::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(nets: &[&str]) -> Trusted {
        Trusted::new(nets.iter().map(|n| n.parse().unwrap()).collect(), false)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.200.1.1")));
        assert!(c.contains(ip("::ffff:10.1.1.1")), "v4-mapped");
        assert!(!c.contains(ip("11.0.0.1")));
        let c: Cidr = "fd00::/8".parse().unwrap();
        assert!(c.contains(ip("fd12::1")) && !c.contains(ip("fe80::1")));
        let c: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(c.contains(ip("1.2.3.4")));
        let c: Cidr = "127.0.0.1".parse().unwrap();
        assert!(c.contains(ip("127.0.0.1")) && !c.contains(ip("127.0.0.2")));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "example.com",
            "10.0.0.0/",
            "1.2.3.4/-1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let t = trusted(&["10.0.0.0/8"]);
        let xff = |v: &[&'static str]| v.iter().map(|s| s.as_bytes()).collect::<Vec<_>>();
        // An untrusted peer's header is ignored.
        let h = xff(&["1.1.1.1"]);
        assert_eq!(
            t.forwarded_client(ip("8.8.8.8"), h.into_iter()),
            ip("8.8.8.8")
        );
        // The rightmost untrusted entry wins; trusted hops are skipped; what the client wrote
        // on the left (a spoof) is not reached.
        let h = xff(&["6.6.6.6, 2.2.2.2", "10.0.0.5"]);
        assert_eq!(
            t.forwarded_client(ip("10.0.0.1"), h.into_iter()),
            ip("2.2.2.2")
        );
        // Ports and IPv6 forms.
        let h = xff(&["[2001:db8::1]:4711"]);
        assert_eq!(
            t.forwarded_client(ip("10.0.0.1"), h.into_iter()),
            ip("2001:db8::1")
        );
        // Garbage stops the walk at the last believed address.
        let h = xff(&["2.2.2.2, nonsense, 10.0.0.7"]);
        assert_eq!(
            t.forwarded_client(ip("10.0.0.1"), h.into_iter()),
            ip("10.0.0.7")
        );
        // No header: the proxy itself.
        assert_eq!(
            t.forwarded_client(ip("10.0.0.1"), std::iter::empty()),
            ip("10.0.0.1")
        );
        // A chain padded with trusted addresses past the bound ends at the bound.
        let long = vec!["10.0.0.9"; MAX_FORWARDED_HOPS + 5].join(",");
        let long = format!("3.3.3.3,{long}");
        let c = t.forwarded_client(ip("10.0.0.1"), std::iter::once(long.as_bytes()));
        assert_eq!(c, ip("10.0.0.9"));
    }

    #[tokio::test]
    async fn proxy_headers_are_read_exactly() {
        let mut s: &[u8] = b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 443\r\n\x16rest";
        let a = read_proxy_header(&mut s).await.unwrap();
        assert_eq!(a, Some("192.0.2.7:5555".parse().unwrap()));
        assert_eq!(s, b"\x16rest", "nothing past the header is read");
        let mut s: &[u8] = b"PROXY UNKNOWN\r\n";
        assert_eq!(read_proxy_header(&mut s).await.unwrap(), None);
        // v2, TCP over IPv6.
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend([0x21, 0x21, 0, 36]);
        v2.extend(ip6("2001:db8::7"));
        v2.extend(ip6("2001:db8::1"));
        v2.extend([0x12, 0x34, 0x01, 0xbb]);
        v2.push(0x16);
        let mut s = v2.as_slice();
        let a = read_proxy_header(&mut s).await.unwrap();
        assert_eq!(a, Some("[2001:db8::7]:4660".parse().unwrap()));
        assert_eq!(s, [0x16]);
        // v2 LOCAL (a health check).
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(
            read_proxy_header(&mut local.as_slice()).await.unwrap(),
            None
        );
        // Refused: none at all, a TLS hello, an endless v1 line, an oversized v2 length.
        for bad in [
            b"GET / HTTP/1.1\r\n".to_vec(),
            vec![0x16, 3, 1],
            [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat(),
            [V2_SIGNATURE.as_slice(), &[0x21, 0x11, 0xff, 0xff]].concat(),
            b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\n".to_vec(),
        ] {
            assert!(
                read_proxy_header(&mut bad.as_slice()).await.is_err(),
                "{bad:?}"
            );
        }
    }

    fn ip6(s: &str) -> [u8; 16] {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }
}
