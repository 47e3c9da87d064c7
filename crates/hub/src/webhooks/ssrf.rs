//! The SSRF guard for every outbound webhook request.
//!
//! A URL is checked when it is configured (scheme, host name, IP literal) and again at connect
//! time: the HTTP client resolves names through [`GuardedResolver`], which refuses a host if any
//! of its addresses is forbidden and hands the client only the vetted addresses, so a DNS answer
//! cannot change between the check and the connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Which destinations outbound requests may reach.
#[derive(Debug, Clone, Default)]
pub struct SsrfPolicy {
    /// Networks exempt from the guard (self-hosters' LANs, tests on loopback).
    allow: Vec<IpNet>,
}

/// Host names that always mean "this machine or its private network".
const FORBIDDEN_SUFFIXES: &[&str] = &[".local", ".internal", ".lan", ".localhost", ".home.arpa"];

impl SsrfPolicy {
    /// A policy exempting the given CIDRs (or single addresses).
    pub fn new(allow_cidrs: &[String]) -> Result<Self, String> {
        let allow = allow_cidrs
            .iter()
            .map(|c| {
                c.parse::<IpNet>()
                    .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{c:?} is not a CIDR"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allow })
    }

    /// Parse and check a webhook URL; the error says what is wrong with it.
    pub fn check_url(&self, raw: &str) -> Result<Url, String> {
        if raw.len() > 2048 {
            return Err("must be at most 2048 characters".into());
        }
        // The WHATWG parser normalises decimal, octal and hex IPv4 spellings to dotted quads.
        let url = Url::parse(raw).map_err(|e| format!("is not a valid URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "scheme {:?} is not allowed; use http or https",
                url.scheme()
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials; use the webhook secret".into());
        }
        match url.host() {
            None => return Err("has no host".into()),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip))?,
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip))?,
            Some(url::Host::Domain(name)) => check_name(name)?,
        }
        Ok(url)
    }

    /// Whether `ip` is in the operator's exemptions (`webhooks.allow_cidrs`).
    pub fn exempts(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|net| net.contains(&ip))
    }

    /// `Err` with the reason when a host name is a local one (checked before any lookup).
    pub fn check_host_name(&self, name: &str) -> Result<(), String> {
        check_name(name)
    }

    /// `Err` with the reason when `ip` may not be contacted.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if self.exempts(ip) {
            return Ok(());
        }
        match forbidden_reason(ip) {
            Some(reason) => Err(format!(
                "points to a {reason} address ({ip}), which is not allowed"
            )),
            None => Ok(()),
        }
    }

    /// Resolve `host` and vet every address: all of them, or none when any is forbidden (so
    /// the caller connects only to what was checked). Used for HTTP and SMTP alike.
    pub async fn resolve_vetted(
        &self,
        host: &str,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        check_name(host).map_err(Refused)?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
        if addrs.is_empty() {
            return Err(format!("{host} has no address").into());
        }
        for addr in &addrs {
            self.check_ip(addr.ip())
                .map_err(|e| Refused(format!("host {host} {e}")))?;
        }
        Ok(addrs)
    }

    /// A resolver for the HTTP client that enforces this policy at connect time.
    pub fn resolver(self: &Arc<Self>) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            policy: self.clone(),
        })
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || FORBIDDEN_SUFFIXES.iter().any(|s| name.ends_with(s)) {
        return Err(format!(
            "host {name:?} is a local name, which is not allowed"
        ));
    }
    if !name.contains('.') {
        return Err(format!("host {name:?} is not a fully qualified name"));
    }
    Ok(())
}

/// Why an address is off limits, or `None` for a public unicast address.
fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let reason = match (a, b, c) {
        (0, _, _) => "unspecified",
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => "private",
        (100, 64..=127, _) => "shared (CGNAT)",
        (127, _, _) => "loopback",
        (169, 254, _) => "link-local",
        (192, 0, 0) => "IETF protocol",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 88, 99) => "6to4 relay",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved",
        _ => return None,
    };
    Some(reason)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    // Encodings that carry an IPv4 address are judged by that address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return forbidden_v4(embedded(s[6], s[7])); // NAT64 well-known prefix
    }
    if s[0] == 0x2002 {
        return forbidden_v4(embedded(s[1], s[2])).or(Some("6to4")); // 6to4 tunnels are refused
    }
    let reason = match s[0] {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if s[..6] == [0, 0, 0, 0, 0, 0] => "IPv4-compatible",
        0x64 if s[1] == 0xff9b => "NAT64",
        0x100 if s[1..4] == [0, 0, 0] => "discard",
        0x2001 if s[1] < 0x200 => "IETF protocol (Teredo, ORCHID)",
        0x2001 if s[1] == 0xdb8 => "documentation",
        0x3fff if s[1] < 0x1000 => "documentation",
        0xfc00..=0xfdff => "unique local",
        0xfe80..=0xfebf => "link-local",
        0xfec0..=0xfeff => "site-local",
        0xff00..=0xffff => "multicast",
        _ => return None,
    };
    Some(reason)
}

/// A destination the guard refused at connect time; retrying cannot help.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// DNS resolution that refuses hosts with any forbidden address.
pub struct GuardedResolver {
    policy: Arc<SsrfPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let addrs = policy.resolve_vetted(name.as_str()).await?;
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> String {
        SsrfPolicy::default().check_url(url).expect_err(url)
    }

    #[test]
    fn local_private_and_special_destinations_are_refused() {
        for url in [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://0/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://169.254.169.254/latest",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://192.0.2.1/",
            "http://[::1]/",
            "http://[::]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[64:ff9b::a00:1]/",
            "http://[2002:7f00:1::]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://[ff02::1]/",
            "http://[2001:db8::1]/",
            "http://localhost:8080/",
            "http://foo.localhost/",
            "http://printer.local/",
            "http://db.internal/",
            "http://nas.lan./",
            "http://intranet/",
        ] {
            refused(url);
        }
        assert!(refused("ftp://example.com/").contains("scheme"));
        assert!(refused("http://user:pw@example.com/").contains("credentials"));
        assert!(refused(&format!("https://example.com/{}", "a".repeat(2100))).contains("2048"));
    }

    #[test]
    fn public_destinations_pass_and_the_allowlist_exempts() {
        let open = SsrfPolicy::default();
        for url in [
            "https://hooks.example.com/x?y=1",
            "http://93.184.216.34:8080/",
            "http://[2606:4700::1111]/",
        ] {
            open.check_url(url).expect(url);
        }
        let lab = SsrfPolicy::new(&["127.0.0.1/32".into(), "10.0.0.0/8".into()]).unwrap();
        lab.check_url("http://127.0.0.1:9999/hook").unwrap();
        lab.check_url("http://10.9.8.7/").unwrap();
        assert!(lab.check_url("http://127.0.0.2/").is_err());
        assert!(
            lab.check_url("http://localhost/").is_err(),
            "names stay refused"
        );
    }
}
