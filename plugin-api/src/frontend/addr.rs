//! Where a backend is and how to talk to it.

use std::fmt;
use std::str::FromStr;

use crate::codec::CodecKind;
use crate::wire::DEFAULT_PORT;

/// Which protocol a backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Ours: persistent, multiplexed, JSON or bincode.
    Native,
    /// TaskIt 4.0's: a connection per call, JSON. For original Python backends.
    Taskit4,
}

/// Where a backend is and how to talk to it. Parses from `host` (port
/// 54543), `host:port`, or `dns:name[:port]` for every address a DNS name
/// resolves to (see [`discover`](Self#structfield.discover)).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendAddr {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The protocol spoken to it.
    pub protocol: Protocol,
    /// The codec of native calls (TaskIt 4.0 calls are always JSON).
    pub codec: CodecKind,
    /// `host` is a name standing for many backends: every address it
    /// resolves to (A and AAAA records) is one, and the name is resolved
    /// again every [`FrontendConfig::resolve_every`](super::FrontendConfig)
    /// (a headless Kubernetes Service, for example). Without it a name is
    /// one backend, connected to by whichever address answers first.
    pub discover: bool,
}

impl BackendAddr {
    /// Whether it is on this machine's loopback (`localhost`, 127.0.0.0/8,
    /// `::1`).
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// A native backend using JSON.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            protocol: Protocol::Native,
            codec: CodecKind::Json,
            discover: false,
        }
    }

    /// Every address `name` resolves to, on `port`: what `dns:name:port`
    /// parses to.
    pub fn dns(name: impl Into<String>, port: u16) -> Self {
        Self {
            discover: true,
            ..Self::new(name, port)
        }
    }

    /// Whether `host` is an IP address (not a name to resolve).
    pub fn is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }

    /// The backend at `at`, spoken to as this one is.
    pub(super) fn at(&self, at: std::net::SocketAddr) -> Self {
        Self {
            host: at.ip().to_string(),
            port: at.port(),
            discover: false,
            ..self.clone()
        }
    }

    /// The same backend, spoken to with the TaskIt 4.0 protocol.
    pub fn taskit4(mut self) -> Self {
        self.protocol = Protocol::Taskit4;
        self.codec = CodecKind::Json;
        self
    }

    /// The same backend, with native calls encoded by `codec`.
    pub fn codec(mut self, codec: CodecKind) -> Self {
        self.codec = codec;
        self
    }

    /// `host:port`, with brackets around an IPv6 address: what to connect to.
    pub(super) fn endpoint(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether `other` names the same host and port, whatever the protocol.
    pub(super) fn same_place(&self, other: &BackendAddr) -> bool {
        self.host == other.host && self.port == other.port
    }
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.discover {
            f.write_str(DNS)?;
        }
        f.write_str(&self.endpoint())
    }
}

/// The prefix of a name standing for every address it resolves to.
const DNS: &str = "dns:";

/// A backend address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad backend address {0:?}: expected HOST, HOST:PORT or dns:NAME[:PORT]")]
pub struct BadAddr(pub String);

impl FromStr for BackendAddr {
    type Err = BadAddr;

    fn from_str(s: &str) -> Result<Self, BadAddr> {
        let bad = || BadAddr(s.to_owned());
        if let Some(name) = s.strip_prefix(DNS) {
            let addr: Self = name.parse().map_err(|_| bad())?;
            if addr.is_ip() {
                return Err(bad());
            }
            return Ok(Self {
                discover: true,
                ..addr
            });
        }
        if s.is_empty() {
            return Err(bad());
        }
        // [v6]:port, [v6], host:port, host
        if let Some(rest) = s.strip_prefix('[') {
            let (host, tail) = rest.split_once(']').ok_or_else(bad)?;
            let port = match tail.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if tail.is_empty() => DEFAULT_PORT,
                None => return Err(bad()),
            };
            return Ok(Self::new(host, port));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => {
                if host.is_empty() {
                    return Err(bad());
                }
                Ok(Self::new(host, port.parse().map_err(|_| bad())?))
            }
            _ => Ok(Self::new(s, DEFAULT_PORT)),
        }
    }
}

impl From<&str> for BackendAddr {
    /// Parses; an address that does not parse is kept whole as a host name,
    /// which will fail to connect (use `str::parse` to see the error).
    fn from(s: &str) -> Self {
        s.parse().unwrap_or_else(|_| Self::new(s, DEFAULT_PORT))
    }
}

impl From<String> for BackendAddr {
    /// As `From<&str>`.
    fn from(s: String) -> Self {
        Self::from(s.as_str())
    }
}

impl From<&String> for BackendAddr {
    /// As `From<&str>`.
    fn from(s: &String) -> Self {
        Self::from(s.as_str())
    }
}

impl From<(&str, u16)> for BackendAddr {
    fn from((host, port): (&str, u16)) -> Self {
        Self::new(host, port)
    }
}

impl From<std::net::SocketAddr> for BackendAddr {
    fn from(addr: std::net::SocketAddr) -> Self {
        Self::new(addr.ip().to_string(), addr.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        let a: BackendAddr = "example.org".parse().unwrap();
        assert_eq!((a.host.as_str(), a.port), ("example.org", 54543));
        let a: BackendAddr = "127.0.0.1:6000".parse().unwrap();
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 6000));
        let a: BackendAddr = "[::1]:7000".parse().unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.endpoint().as_str()),
            ("::1", 7000, "[::1]:7000")
        );
        let a: BackendAddr = "::1".parse().unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 54543));
        assert!("host:notaport".parse::<BackendAddr>().is_err());
        assert!("host:70000".parse::<BackendAddr>().is_err());
        assert!(":80".parse::<BackendAddr>().is_err());
        assert!("".parse::<BackendAddr>().is_err());
    }

    #[test]
    fn dns_names_parse() {
        let a: BackendAddr = "dns:hosts.taskit.svc:6000".parse().unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.discover, a.to_string().as_str()),
            ("hosts.taskit.svc", 6000, true, "dns:hosts.taskit.svc:6000")
        );
        assert_eq!(a, BackendAddr::dns("hosts.taskit.svc", 6000));
        let a: BackendAddr = "dns:localhost".parse().unwrap();
        assert_eq!((a.port, a.discover), (54543, true));
        assert!(!"localhost".parse::<BackendAddr>().unwrap().discover);
        // An address is not a name to resolve; nor is nothing.
        for bad in ["dns:", "dns:10.0.0.1:5", "dns:[::1]:5", "dns::5", "dns:h:x"] {
            assert!(bad.parse::<BackendAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn strings_convert_like_str() {
        let port = 6001;
        let a = BackendAddr::from(format!("127.0.0.1:{port}"));
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 6001));
        let owned = String::from("localhost:6002");
        let b = BackendAddr::from(&owned);
        assert_eq!(
            (b.host.as_str(), b.port, b.is_loopback()),
            ("localhost", 6002, true)
        );
        assert!(!BackendAddr::from("10.0.0.1:1").is_loopback());
        assert!(BackendAddr::from("[::1]:1").is_loopback());
    }
}
