//! Sending one message to a channel: the request each chat service documents, over the
//! webhook system's SSRF-safe client, or an e-mail over SMTP to a vetted address. The delivery
//! workers call this for jobs of notification channels; the verdicts are the webhook ones, so
//! retries, disabling and the delivery log work the same.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::{Value, json};

use super::channel::{ChannelConfig, SmtpTls};
use super::render::{Message, Renderer};
use crate::events::{Event, Severity};
use crate::webhooks::send::{Attempt, Delivery, Verdict, WebhookClient, error_chain};

/// Longest text the services take in one message (Discord 2,000, Telegram 4,096 characters).
const DISCORD_MAX: usize = 2000;
const TELEGRAM_MAX: usize = 4096;
const NTFY_MAX: usize = 4096;

/// Renders and sends messages; paces each channel.
pub struct Notifier {
    client: WebhookClient,
    renderer: Renderer,
    /// The name the hub gives in SMTP `EHLO`.
    hello_name: String,
    /// Send times within the last minute, per channel.
    sent: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Notifier {
    /// A notifier sending with `client` (the webhook client: same SSRF guard, no redirects).
    pub fn new(client: WebhookClient, renderer: Renderer, hello_name: String) -> Self {
        Self {
            client,
            renderer,
            hello_name,
            sent: Mutex::default(),
        }
    }

    /// `None` when the channel may send now (and counts this send), else how long to wait.
    pub fn admit(&self, channel_id: &str, per_minute: u32) -> Option<Duration> {
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        let mut sent = self.sent.lock().expect("rate table poisoned");
        let times = sent.entry(channel_id.to_string()).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= minute)
        {
            times.pop_front();
        }
        // At least one a minute, whatever a stored routing says (0 would never send).
        if times.len() >= per_minute.max(1) as usize {
            let oldest = *times.front().expect("full");
            return Some(minute.saturating_sub(now.duration_since(oldest)));
        }
        times.push_back(now);
        None
    }

    /// Render `events` as one message and send it. `id` identifies the message (the first
    /// event's id: the same on every retry).
    pub async fn send(
        &self,
        config: &ChannelConfig,
        events: &[Event],
        id: &str,
        timeout: Duration,
    ) -> Attempt {
        let message = self.renderer.render(events);
        match config {
            ChannelConfig::Email { .. } => self.send_email(config, &message, timeout).await,
            _ => self.send_http(config, &message, events, id, timeout).await,
        }
    }

    async fn send_http(
        &self,
        config: &ChannelConfig,
        m: &Message,
        events: &[Event],
        id: &str,
        timeout: Duration,
    ) -> Attempt {
        let mut headers = Vec::new();
        let mut secrets = Vec::new();
        let (url, body) = match config {
            ChannelConfig::Slack { url } => (url.clone(), slack(m)),
            ChannelConfig::Discord { url } => (url.clone(), discord(m)),
            ChannelConfig::Teams { url } => (url.clone(), teams(m)),
            ChannelConfig::Telegram {
                bot_token,
                chat_id,
                api_url,
            } => (
                format!("{api_url}/bot{bot_token}/sendMessage"),
                telegram(m, chat_id),
            ),
            ChannelConfig::Ntfy {
                server_url,
                topic,
                token,
            } => {
                if let Some(token) = token {
                    headers.push(("authorization", format!("Bearer {token}")));
                }
                // ntfy takes JSON messages at its root URL, with the topic in the body.
                (format!("{server_url}/"), ntfy(m, topic))
            }
            ChannelConfig::Webhook { url, secret } => {
                secrets.extend(secret.as_deref());
                (url.clone(), generic(m, events))
            }
            ChannelConfig::Email { .. } => unreachable!("e-mail goes over SMTP"),
        };
        let body = serde_json::to_vec(&body).expect("JSON serialises");
        self.client
            .attempt(&Delivery {
                url: &url,
                body: &body,
                event_id: id,
                event_type: &m.event_type,
                secrets: &secrets,
                timeout,
                headers: &headers,
            })
            .await
    }

    async fn send_email(&self, config: &ChannelConfig, m: &Message, timeout: Duration) -> Attempt {
        let started = Instant::now();
        let failed = |error: String, verdict: Verdict| Attempt {
            verdict,
            status_code: None,
            response_body: None,
            error: Some(error),
            duration_ms: started.elapsed().as_millis() as u64,
        };
        let ChannelConfig::Email {
            host,
            port,
            tls,
            username,
            password,
            from,
            to,
        } = config
        else {
            unreachable!("called for e-mail only")
        };
        // The SSRF guard vets the SMTP server too: the connection goes to a vetted address
        // (the name is kept for the certificate check).
        let policy = self.client.policy();
        let mut addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => match policy.check_ip(ip) {
                Ok(()) => vec![ip],
                Err(e) => return failed(format!("destination refused: {e}"), Verdict::Failed),
            },
            Err(_) => match tokio::time::timeout(timeout, policy.resolve_vetted(host)).await {
                Ok(Ok(addrs)) => addrs.iter().map(|a| a.ip()).collect(),
                Ok(Err(e)) if e.is::<crate::webhooks::ssrf::Refused>() => {
                    return failed(format!("destination refused: {e}"), Verdict::Failed);
                }
                Ok(Err(e)) => {
                    return failed(
                        format!("cannot resolve {host}: {e}"),
                        Verdict::Retry { after: None },
                    );
                }
                Err(_) => {
                    return failed(
                        format!("resolving {host} timed out"),
                        Verdict::Retry { after: None },
                    );
                }
            },
        };
        addresses.sort_by_key(|ip| ip.is_ipv6());
        addresses.dedup();
        let email = match build_email(from, to, m) {
            Ok(e) => e,
            Err(e) => return failed(e, Verdict::Failed),
        };
        // The first vetted address that accepts a connection gets the message, once: moving
        // on after an SMTP answer (a refused login) would repeat it, and after DATA could send
        // the message twice.
        let Some(ip) = first_reachable(&addresses, *port, timeout).await else {
            return failed(
                format!("cannot connect to {host} port {port}"),
                Verdict::Retry { after: None },
            );
        };
        let tls = match smtp_tls(*tls, host) {
            Ok(t) => t,
            Err(e) => return failed(e, Verdict::Failed),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(ip.to_string())
            .port(*port)
            .tls(tls)
            .hello_name(client_id(&self.hello_name))
            .timeout(Some(timeout));
        if let (Some(user), Some(pass)) = (username, password) {
            builder = builder.credentials(Credentials::new(user.clone(), pass.clone()));
        }
        let mailer = builder.build();
        // Resolving, connecting and sending stay within twice the channel's timeout, well
        // inside the job's lease, so a slow server can never have the job sent twice.
        let budget = (timeout * 2).saturating_sub(started.elapsed());
        let sent = tokio::time::timeout(budget, mailer.send(email)).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        match sent {
            Ok(Ok(response)) => Attempt {
                verdict: Verdict::Delivered,
                status_code: smtp_code(&response.code().to_string()),
                response_body: Some(response.message().collect::<Vec<_>>().join(" ")),
                error: None,
                duration_ms,
            },
            Ok(Err(e)) => Attempt {
                // 5xx: the server refuses for good; 4xx, I/O and TLS troubles may pass.
                verdict: if e.is_permanent() {
                    Verdict::Failed
                } else {
                    Verdict::Retry { after: None }
                },
                status_code: e.status().and_then(|c| smtp_code(&c.to_string())),
                response_body: None,
                error: Some(format!("SMTP: {}", error_chain(&e))),
                duration_ms,
            },
            Err(_) => Attempt {
                verdict: Verdict::Retry { after: None },
                status_code: None,
                response_body: None,
                error: Some(format!("SMTP timed out after {} s", duration_ms / 1000)),
                duration_ms,
            },
        }
    }
}

/// The first address that accepts a TCP connection on `port`, each tried for at most
/// `timeout` / the number of addresses.
async fn first_reachable(addresses: &[IpAddr], port: u16, timeout: Duration) -> Option<IpAddr> {
    let each = timeout / u32::try_from(addresses.len().max(1)).unwrap_or(1);
    for ip in addresses {
        let connect = tokio::net::TcpStream::connect((*ip, port));
        if let Ok(Ok(_)) = tokio::time::timeout(each, connect).await {
            return Some(*ip);
        }
    }
    None
}

/// The EHLO name: an address literal in brackets when the hub is known by an IP address.
fn client_id(name: &str) -> ClientId {
    match name.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ClientId::Ipv4(ip),
        Ok(IpAddr::V6(ip)) => ClientId::Ipv6(ip),
        Err(_) => ClientId::Domain(name.to_string()),
    }
}

fn smtp_tls(tls: SmtpTls, host: &str) -> Result<Tls, String> {
    let params =
        || TlsParameters::new(host.to_string()).map_err(|e| format!("TLS setup failed: {e}"));
    Ok(match tls {
        SmtpTls::None => Tls::None,
        SmtpTls::Starttls => Tls::Required(params()?),
        SmtpTls::Implicit => Tls::Wrapper(params()?),
    })
}

fn smtp_code(code: &str) -> Option<u16> {
    code.parse().ok()
}

fn build_email(from: &str, to: &[String], m: &Message) -> Result<lettre::Message, String> {
    let from = Mailbox::from_str(from).map_err(|e| format!("bad sender address: {e}"))?;
    let mut builder = lettre::Message::builder()
        .from(from)
        .subject(m.subject.clone());
    for addr in to {
        let mailbox = Mailbox::from_str(addr).map_err(|e| format!("bad recipient {addr}: {e}"))?;
        builder = builder.to(mailbox);
    }
    builder
        .header(ContentType::TEXT_PLAIN)
        .body(m.body.clone())
        .map_err(|e| format!("cannot build the e-mail: {e}"))
}

/// Cut `text` to at most `max` characters, marking the cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped: a server name cannot inject a link or a
/// mention.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Slack incoming webhook: `{"text": ...}`.
fn slack(m: &Message) -> Value {
    json!({
        "text": format!("*{}*\n{}", slack_escape(&m.subject), slack_escape(&m.body)),
    })
}

/// Discord webhook: `{"content": ...}`, with mentions turned off so an event cannot ping
/// `@everyone`.
fn discord(m: &Message) -> Value {
    json!({
        "content": clip(&format!("**{}**\n{}", m.subject, m.body), DISCORD_MAX),
        "allowed_mentions": { "parse": [] },
    })
}

/// Microsoft Teams workflow webhook ("When a Teams webhook request is received"): a message
/// with one Adaptive Card attachment.
fn teams(m: &Message) -> Value {
    let color = match m.severity {
        Severity::Critical | Severity::Error => "Attention",
        Severity::Warning => "Warning",
        Severity::Info => "Default",
    };
    let mut body = vec![
        json!({ "type": "TextBlock", "text": m.subject, "weight": "Bolder", "size": "Medium",
                "color": color, "wrap": true }),
        json!({ "type": "TextBlock", "text": m.body, "wrap": true }),
    ];
    if let Some(link) = &m.link {
        body.push(json!({
            "type": "ActionSet",
            "actions": [{ "type": "Action.OpenUrl", "title": "Open in Server Monitor", "url": link }],
        }));
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
            },
        }],
    })
}

/// Telegram Bot API `sendMessage`, plain text (no parse mode: nothing to escape).
fn telegram(m: &Message, chat_id: &str) -> Value {
    json!({
        "chat_id": chat_id,
        "text": clip(&format!("{}\n\n{}", m.subject, m.body), TELEGRAM_MAX),
        "disable_web_page_preview": true,
    })
}

/// ntfy JSON publishing: topic, title, message, priority 1-5, tags (emoji names), click URL.
fn ntfy(m: &Message, topic: &str) -> Value {
    let resolved = matches!(m.event_type.as_str(), "alert.resolved" | "server.online");
    let (priority, tag) = match m.severity {
        _ if resolved => (3, "white_check_mark"),
        Severity::Critical => (5, "rotating_light"),
        Severity::Error => (4, "rotating_light"),
        Severity::Warning => (4, "warning"),
        Severity::Info => (3, "information_source"),
    };
    let mut body = json!({
        "topic": topic,
        "title": m.subject,
        "message": clip(&m.body, NTFY_MAX),
        "priority": priority,
        "tags": [tag],
    });
    if let Some(link) = &m.link {
        body["click"] = json!(link);
    }
    body
}

/// Generic webhook: the rendered message and the events it covers, signed like a managed
/// webhook's delivery.
fn generic(m: &Message, events: &[Event]) -> Value {
    json!({
        "title": m.subject,
        "text": m.body,
        "severity": m.severity,
        "event_type": m.event_type,
        "count": m.count,
        "link": m.link,
        "events": events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::ssrf::SsrfPolicy;
    use std::sync::Arc;

    #[test]
    fn the_rate_limit_admits_up_to_the_limit_then_says_how_long_to_wait() {
        let client = WebhookClient::new(Arc::new(SsrfPolicy::default())).unwrap();
        let n = Notifier::new(client, Renderer::default(), "hub".into());
        assert_eq!(n.admit("a", 2), None);
        assert_eq!(n.admit("a", 2), None);
        let wait = n.admit("a", 2).expect("third in a minute waits");
        assert!(
            wait > Duration::from_secs(58) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert_eq!(n.admit("b", 2), None, "channels are paced apart");
    }

    #[test]
    fn long_texts_are_clipped_to_what_the_service_takes() {
        let text = "x".repeat(5000);
        let clipped = clip(&text, DISCORD_MAX);
        assert_eq!(clipped.chars().count(), DISCORD_MAX);
        assert!(clipped.ends_with('…'));
        assert_eq!(clip("short", DISCORD_MAX), "short");
    }

    #[test]
    fn slack_text_cannot_inject_links_or_mentions() {
        assert_eq!(
            slack_escape("<!channel> & <http://x|y>"),
            "&lt;!channel&gt; &amp; &lt;http://x|y&gt;"
        );
    }
}
