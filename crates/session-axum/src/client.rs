//! Who is asking: the client's address (through trusted proxies) and a short device label.

use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;

use axum::extract::FromRequestParts;
use axum::extract::connect_info::ConnectInfo;
use axum::http::header::USER_AGENT;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` the layer believes. Default: none, so the address is the
/// connection's peer and a client cannot claim another address by sending the header itself.
///
/// Behind a load balancer, list its addresses or networks: the client is then the right-most
/// `X-Forwarded-For` entry that is not a trusted proxy (each proxy appends the address it saw, so
/// entries left of the first untrusted one may be forged by the client).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    /// Trusts no proxy: the peer address is the client's.
    #[must_use]
    pub fn none() -> Self {
        Self::default()
    }

    /// Trusts these networks.
    #[must_use]
    pub fn new(networks: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            networks: networks.into_iter().collect(),
        }
    }

    /// Parses a comma-separated list of addresses and CIDR networks, e.g.
    /// `"10.0.0.0/8, 127.0.0.1, ::1"` (empty: none).
    ///
    /// # Errors
    /// The entry that is neither an address nor a network.
    pub fn parse(list: &str) -> Result<Self, String> {
        let networks = list
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{entry}` is not an IP address or network"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { networks })
    }

    /// Whether `address` is one of the trusted proxies.
    #[must_use]
    pub fn trusts(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.networks.iter().any(|net| net.contains(&address))
    }

    /// The client's address for a request from `peer` with `headers`: `peer` itself unless it
    /// is a trusted proxy; then the right-most `X-Forwarded-For` entry that is not one (or the
    /// left-most entry when all are). An entry that does not parse ends the walk at the last
    /// address known good.
    #[must_use]
    pub fn client_address(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.trusts(peer) {
            return Some(peer);
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(address) = parse_hop(hop) else {
                return Some(client);
            };
            client = address;
            if !self.trusts(address) {
                break;
            }
        }
        Some(client)
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// The longest device label kept: a label is for people to read, never a fingerprint.
const MAX_DEVICE_LABEL: usize = 64;

/// A short, human label for a `User-Agent` value, e.g. "Firefox on Linux", "Chrome on Android",
/// "Safari on iPhone"; empty when the parser (Project Woothee's dataset) recognises neither the
/// browser nor the system. The raw header is never stored: the label is enough to tell one's
/// devices apart and says less about the client.
#[must_use]
pub fn device_label(user_agent: &str) -> String {
    static PARSER: LazyLock<woothee::parser::Parser> = LazyLock::new(woothee::parser::Parser::new);
    let Some(parsed) = PARSER.parse(user_agent) else {
        return String::new();
    };
    let known = |part: &str| {
        (!part.is_empty() && part != woothee::woothee::VALUE_UNKNOWN).then(|| part.to_owned())
    };
    let label = match (known(parsed.name), known(parsed.os)) {
        (Some(name), Some(os)) => format!("{name} on {os}"),
        (Some(name), None) => name,
        (None, Some(os)) => os,
        (None, None) => String::new(),
    };
    let label: String = label
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_DEVICE_LABEL)
        .collect();
    label
}

/// The requesting client as the layer sees it: its address (through [`TrustedProxies`]) and the
/// device label of its `User-Agent`. [`crate::Session::sign_in`] records both in the new session
/// when the caller left them empty. Needs [`crate::SessionLayer`] (which holds the proxy setting)
/// and a server that records the peer address (`session_axum::serve`, or axum's
/// `into_make_service_with_connect_info`); without one the address is `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address, if known.
    pub address: Option<IpAddr>,
    /// Its device label (empty: unknown).
    pub device: String,
}

/// What the layer notes about a request's client, resolved only when asked.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClientSeen {
    pub(crate) address: Option<IpAddr>,
    pub(crate) user_agent: Option<HeaderValue>,
}

impl ClientSeen {
    pub(crate) fn of(proxies: &TrustedProxies, peer: Option<IpAddr>, headers: &HeaderMap) -> Self {
        Self {
            address: proxies.client_address(peer, headers),
            user_agent: headers.get(USER_AGENT).cloned(),
        }
    }

    pub(crate) fn info(&self) -> ClientInfo {
        ClientInfo {
            address: self.address,
            device: self
                .user_agent
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .map(device_label)
                .unwrap_or_default(),
        }
    }
}

/// The peer address a server recorded in the request's extensions.
pub(crate) fn peer_of<B>(request: &axum::http::Request<B>) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = crate::ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let session =
            <crate::Session as FromRequestParts<S>>::from_request_parts(parts, state).await?;
        Ok(session.client())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(forwarded: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for value in forwarded {
            h.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let none = TrustedProxies::none();
        let forged = headers(&["198.51.100.9"]);
        assert_eq!(
            none.client_address(Some(ip("203.0.113.5")), &forged),
            Some(ip("203.0.113.5")),
            "an untrusted peer's header is ignored"
        );
        let proxies = TrustedProxies::parse("10.0.0.0/8, ::1").unwrap();
        // The client forged the first entry; the proxy appended what it saw.
        let chain = headers(&["198.51.100.9, 203.0.113.5", "10.1.2.3"]);
        assert_eq!(
            proxies.client_address(Some(ip("10.0.0.1")), &chain),
            Some(ip("203.0.113.5"))
        );
        assert_eq!(
            proxies.client_address(Some(ip("10.0.0.1")), &headers(&["10.9.9.9"])),
            Some(ip("10.9.9.9")),
            "all trusted: the left-most"
        );
        assert_eq!(
            proxies.client_address(Some(ip("::1")), &headers(&["[2001:db8::7]:443"])),
            Some(ip("2001:db8::7"))
        );
        assert_eq!(
            proxies.client_address(Some(ip("10.0.0.1")), &headers(&["garbage, 10.2.2.2"])),
            Some(ip("10.2.2.2")),
            "a malformed entry stops the walk"
        );
        assert_eq!(
            proxies.client_address(Some(ip("::ffff:10.0.0.1")), &headers(&["203.0.113.5"])),
            Some(ip("203.0.113.5")),
            "an IPv4-mapped peer is its IPv4 address"
        );
        assert_eq!(proxies.client_address(None, &chain), None);
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.internal").is_err());
        assert_eq!(TrustedProxies::parse(" ").unwrap(), TrustedProxies::none());
    }

    #[test]
    fn device_labels_name_the_browser_and_the_system() {
        assert_eq!(
            device_label("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
            "Firefox on Linux"
        );
        assert_eq!(
            device_label(
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36"
            ),
            "Chrome on Android"
        );
        assert_eq!(device_label(""), "");
        assert_eq!(device_label("\u{1}\u{2}"), "");
        assert!(device_label(&"Firefox/1 ".repeat(1000)).len() <= MAX_DEVICE_LABEL);
    }
}
