//! The meeting lookup example service (the web tier's part of the connection process):
//! HTTPS `GET /meeting/M` answers the meeting's metadata, the zones for this client (ordered,
//! from a MaxMind GeoIP2/GeoLite2 Country or City database's country or continent when one is
//! configured, else a CIDR → zones table) with their controllers, and the tunnel servers to
//! try when no controller answers.

use crate::http::{respond, Request};
use crate::server::Peer;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

/// `corelay lookup --config FILE` (TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupConfig {
    /// HTTPS listen address.
    pub listen: SocketAddr,
    /// PEM certificate chain and key.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Every zone and its controllers (`host:port`, TLS).
    pub zones: Vec<ZoneEntry>,
    /// Client address ranges → zone names, best first; the first matching range wins.
    #[serde(default)]
    pub regions: Vec<Region>,
    /// Zones for clients no range matches.
    #[serde(default)]
    pub default_zones: Vec<String>,
    /// Tunnel servers (`host:port`, TLS).
    #[serde(default)]
    pub tunnels: Vec<String>,
    /// Known meetings; empty: any meeting id is accepted (its topic is its id).
    #[serde(default)]
    pub meetings: Vec<Meeting>,
    /// Tunnels and fronts (CIDRs) whose word on the client address is taken: a PROXY
    /// protocol v1 line before TLS (a tunnel), else the last `X-Forwarded-For` entry (a
    /// TLS-terminating front).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// A MaxMind GeoIP2/GeoLite2 Country or City `.mmdb`: consulted before `regions`.
    #[serde(default)]
    pub maxmind: Option<PathBuf>,
    /// ISO 3166-1 country code (`DE`) → zones, best first (with `maxmind`).
    #[serde(default)]
    pub countries: Vec<GeoZones>,
    /// Continent code (`EU`, `NA`, `AS`, ...) → zones, for countries not listed (with `maxmind`).
    #[serde(default)]
    pub continents: Vec<GeoZones>,
}

/// One country or continent code → zones row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoZones {
    /// The code as the database spells it (`DE`, `EU`).
    pub code: String,
    /// Zone names, best first.
    pub zones: Vec<String>,
}

/// An open MaxMind database (read into memory once at start).
pub struct GeoDb(maxminddb::Reader<Vec<u8>>);

impl GeoDb {
    /// Opens and checks `path`.
    pub fn open(path: &std::path::Path) -> Result<Self, String> {
        maxminddb::Reader::open_readfile(path)
            .map(GeoDb)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// (country ISO code, continent code) of `ip`, either absent when the database has none.
    pub fn locate(&self, ip: IpAddr) -> (Option<String>, Option<String>) {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        // A malformed record or an IPv6 address in an IPv4 database is "not found".
        let c = self
            .0
            .lookup(ip)
            .ok()
            .and_then(|r| r.decode::<maxminddb::geoip2::Country<'_>>().ok().flatten());
        match c {
            Some(c) => (
                c.country.iso_code.map(str::to_string),
                c.continent.code.map(str::to_string),
            ),
            None => (None, None),
        }
    }
}

/// A zone and its controllers.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct ZoneEntry {
    /// Zone name.
    pub name: String,
    /// Its controllers (`host:port`).
    pub controllers: Vec<String>,
}

/// One CIDR → zones row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// `10.1.0.0/16`, `2001:db8::/32`.
    pub cidr: String,
    /// Zone names, best first.
    pub zones: Vec<String>,
}

/// Meeting metadata.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Meeting {
    /// Meeting id.
    pub id: String,
    /// Title shown to members.
    #[serde(default)]
    pub topic: String,
}

/// What `GET /meeting/M` answers.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LookupAnswer {
    /// The meeting.
    pub meeting: Meeting,
    /// The client address the service saw.
    pub client: String,
    /// The range that matched (`default` if none).
    pub region: String,
    /// Zones for this client, best first.
    pub zones: Vec<ZoneEntry>,
    /// Tunnel servers.
    pub tunnels: Vec<String>,
}

/// Parses `a.b.c.d/n` or an IPv6 prefix.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (a, n) = s.split_once('/')?;
    let a: IpAddr = a.trim().parse().ok()?;
    let n: u8 = n.trim().parse().ok()?;
    let max = if a.is_ipv4() { 32 } else { 128 };
    (n <= max).then_some((a, n))
}

/// Whether `ip` is inside `net/len` (IPv4-mapped IPv6 clients match IPv4 ranges).
pub fn in_cidr(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - len as u32).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

impl LookupConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let c: LookupConfig =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for r in &c.regions {
            if parse_cidr(&r.cidr).is_none() {
                return Err(format!("regions: bad cidr {:?}", r.cidr));
            }
        }
        for t in &c.trusted_proxies {
            if parse_cidr(t).is_none() {
                return Err(format!("trusted_proxies: bad cidr {t:?}"));
            }
        }
        if c.maxmind.is_none() && !(c.countries.is_empty() && c.continents.is_empty()) {
            return Err("countries/continents need maxmind = \"FILE.mmdb\"".into());
        }
        for z in c
            .regions
            .iter()
            .flat_map(|r| &r.zones)
            .chain(c.countries.iter().flat_map(|g| &g.zones))
            .chain(c.continents.iter().flat_map(|g| &g.zones))
            .chain(&c.default_zones)
        {
            if !c.zones.iter().any(|e| &e.name == z) {
                return Err(format!("zone {z:?} is not in [[zones]]"));
            }
        }
        Ok(c)
    }

    /// The answer for `meeting` asked by `client`, or `None` for an unknown meeting. With
    /// `geo`, the client's country row, else its continent row, else the CIDR table.
    pub fn answer(
        &self,
        meeting: &str,
        client: IpAddr,
        geo: Option<&GeoDb>,
    ) -> Option<LookupAnswer> {
        let meeting = if self.meetings.is_empty() {
            Meeting {
                id: meeting.to_string(),
                topic: meeting.to_string(),
            }
        } else {
            self.meetings.iter().find(|m| m.id == meeting)?.clone()
        };
        let located = geo.map(|g| g.locate(client)).unwrap_or((None, None));
        let (region, names) = by_geo(&self.countries, located.0.as_deref(), "country")
            .or_else(|| by_geo(&self.continents, located.1.as_deref(), "continent"))
            .or_else(|| {
                self.regions
                    .iter()
                    .find(|r| parse_cidr(&r.cidr).is_some_and(|(n, l)| in_cidr(client, n, l)))
                    .map(|r| (r.cidr.clone(), &r.zones))
            })
            .unwrap_or_else(|| ("default".into(), &self.default_zones));
        let zones = names
            .iter()
            .filter_map(|n| self.zones.iter().find(|z| &z.name == n).cloned())
            .collect();
        Some(LookupAnswer {
            meeting,
            client: client.to_string(),
            region,
            zones,
            tunnels: self.tunnels.clone(),
        })
    }
}

/// The row of `rows` for `code`: (`kind:CODE`, its zones).
fn by_geo<'a>(
    rows: &'a [GeoZones],
    code: Option<&str>,
    kind: &str,
) -> Option<(String, &'a Vec<String>)> {
    let code = code?;
    let r = rows.iter().find(|r| r.code.eq_ignore_ascii_case(code))?;
    Some((format!("{kind}:{}", r.code), &r.zones))
}

/// The client's address: the one a trusted tunnel declared (PROXY line), else the last
/// `X-Forwarded-For` entry when the TCP peer is a trusted front, else the TCP peer. Behind a
/// PROXY line the HTTP is the client's own (end-to-end TLS), so its headers are not believed.
pub fn client_address(
    peer: SocketAddr,
    declared: Option<SocketAddr>,
    forwarded_for: Option<&str>,
    trusted: bool,
) -> IpAddr {
    if let Some(d) = declared {
        return d.ip();
    }
    forwarded_for
        .filter(|_| trusted)
        .and_then(|v| v.rsplit(',').next())
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or(peer.ip())
}

/// The answer to one request (the bytes of the HTTP response).
fn answer(req: &Request, peer: &Peer, cfg: &LookupConfig, geo: Option<&GeoDb>) -> Vec<u8> {
    let client = client_address(
        peer.addr,
        peer.declared,
        req.forwarded_for.as_deref(),
        peer.trusted,
    );
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = match req.path().strip_prefix("/meeting/") {
        _ if req.method != "GET" => respond(&mut out, 405, "text/plain", b"GET only\n"),
        Some(m) if !m.is_empty() && !m.contains('/') => match cfg.answer(m, client, geo) {
            Some(a) => {
                let body = serde_json::to_vec(&a).unwrap_or_default();
                respond(&mut out, 200, "application/json", &body)
            }
            None => respond(&mut out, 404, "text/plain", b"no such meeting\n"),
        },
        _ => respond(&mut out, 404, "text/plain", b"GET /meeting/ID\n"),
    };
    out
}

/// Serves the lookup forever.
pub fn run(cfg: LookupConfig) -> std::io::Result<()> {
    let tls = crate::net::server_config(&cfg.cert, &cfg.key)?;
    let geo = match &cfg.maxmind {
        Some(p) => Some(GeoDb::open(p).map_err(std::io::Error::other)?),
        None => None,
    };
    let l = TcpListener::bind(cfg.listen)?;
    eprintln!("lookup listening on https://{}", l.local_addr()?);
    let opts = crate::server::Options {
        max_connections: 16384,
        idle: Duration::from_secs(10),
        proxy_from: cfg
            .trusted_proxies
            .iter()
            .filter_map(|t| parse_cidr(t))
            .collect(),
        blocking: false,
    };
    crate::server::serve(l, tls, opts, move |req, peer| {
        answer(req, peer, &cfg, geo.as_ref())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let (n, l) = parse_cidr("10.9.0.0/16").unwrap();
        assert!(in_cidr("10.9.200.1".parse().unwrap(), n, l));
        assert!(!in_cidr("10.8.0.1".parse().unwrap(), n, l));
        assert!(in_cidr("::ffff:10.9.0.1".parse().unwrap(), n, l));
        let (n, l) = parse_cidr("0.0.0.0/0").unwrap();
        assert!(in_cidr("192.0.2.1".parse().unwrap(), n, l));
        let (n, l) = parse_cidr("2001:db8::/32").unwrap();
        assert!(in_cidr("2001:db8:1::1".parse().unwrap(), n, l));
        assert!(parse_cidr("10.0.0.0/33").is_none());
    }

    #[test]
    fn client_address_trusts_only_what_it_should() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let d: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_address(peer, Some(d), Some("1.1.1.1"), true),
            ip("192.0.2.7")
        );
        assert_eq!(
            client_address(peer, None, Some("1.1.1.1, 2.2.2.2"), true),
            ip("2.2.2.2")
        );
        assert_eq!(
            client_address(peer, None, Some("2.2.2.2"), false),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_address(peer, None, Some("junk"), true),
            ip("10.0.0.1")
        );
        assert_eq!(client_address(peer, None, None, true), ip("10.0.0.1"));
    }
}
