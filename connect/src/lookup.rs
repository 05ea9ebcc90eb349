//! The meeting lookup example service (the web tier's part of the connection process):
//! HTTPS `GET /meeting/M` answers the meeting's metadata, the zones for this client (ordered,
//! from a CIDR → zones table standing in for Geo-IP) with their controllers, and the tunnel
//! servers to try when no controller answers.

use crate::http::{read_request, respond, serve_tls, TlsStream};
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
        for z in c
            .regions
            .iter()
            .flat_map(|r| &r.zones)
            .chain(&c.default_zones)
        {
            if !c.zones.iter().any(|e| &e.name == z) {
                return Err(format!("zone {z:?} is not in [[zones]]"));
            }
        }
        Ok(c)
    }

    /// The answer for `meeting` asked by `client`, or `None` for an unknown meeting.
    pub fn answer(&self, meeting: &str, client: IpAddr) -> Option<LookupAnswer> {
        let meeting = if self.meetings.is_empty() {
            Meeting {
                id: meeting.to_string(),
                topic: meeting.to_string(),
            }
        } else {
            self.meetings.iter().find(|m| m.id == meeting)?.clone()
        };
        let (region, names) = self
            .regions
            .iter()
            .find(|r| parse_cidr(&r.cidr).is_some_and(|(n, l)| in_cidr(client, n, l)))
            .map(|r| (r.cidr.clone(), &r.zones))
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

fn serve(mut s: TlsStream, peer: SocketAddr, cfg: &LookupConfig) {
    while let Ok(Some(req)) = read_request(&mut s) {
        let r = match req.path().strip_prefix("/meeting/") {
            _ if req.method != "GET" => respond(&mut s, 405, "text/plain", b"GET only\n"),
            Some(m) if !m.is_empty() && !m.contains('/') => match cfg.answer(m, peer.ip()) {
                Some(a) => {
                    let body = serde_json::to_vec(&a).unwrap_or_default();
                    respond(&mut s, 200, "application/json", &body)
                }
                None => respond(&mut s, 404, "text/plain", b"no such meeting\n"),
            },
            _ => respond(&mut s, 404, "text/plain", b"GET /meeting/ID\n"),
        };
        if r.is_err() {
            return;
        }
    }
}

/// Serves the lookup forever.
pub fn run(cfg: LookupConfig) -> std::io::Result<()> {
    let tls = crate::net::server_config(&cfg.cert, &cfg.key)?;
    let l = TcpListener::bind(cfg.listen)?;
    eprintln!("lookup listening on https://{}", l.local_addr()?);
    serve_tls(l, tls, 4096, Duration::from_secs(10), move |s, p| {
        serve(s, p, &cfg)
    });
    Ok(())
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
}
