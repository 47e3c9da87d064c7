//! The web UI over HTTP: sessions, CSRF, CSP, escaping, pages. The browser suite
//! (tests/browser, run by .ci/run) drives the same pages in Chromium.

use std::collections::HashMap;

use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::agent;
use crate::common::*;

/// A browser-like client: keeps cookies, does not follow redirects.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookies: HashMap<String, String>,
}

struct Page {
    status: StatusCode,
    location: Option<String>,
    csp: Option<String>,
    body: String,
}

impl Browser {
    fn new(hub: &TestHub) -> Browser {
        Browser {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: hub.base.clone(),
            cookies: HashMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let res = req
            .header(COOKIE, self.cookie_header())
            .send()
            .await
            .unwrap();
        for c in res.headers().get_all(SET_COOKIE) {
            let c = c.to_str().unwrap();
            let (pair, _) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = pair.split_once('=').unwrap();
            if v.is_empty() {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), v.to_string());
            }
        }
        let header = |name: &str| {
            res.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        Page {
            status: res.status(),
            location: header(LOCATION.as_str()),
            csp: header("content-security-policy"),
            body: res.text().await.unwrap(),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.client.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let req = self
            .client
            .request(Method::POST, format!("{}{path}", self.base))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        self.send(req).await
    }

    fn csrf(&self) -> String {
        self.cookies
            .get("smon_csrf")
            .cloned()
            .expect("a CSRF cookie")
    }

    async fn log_in(&mut self, username: &str, password: &str) -> Page {
        self.get("/login").await;
        let csrf = self.csrf();
        self.post(
            "/login",
            &[
                ("username", username),
                ("password", password),
                ("csrf", &csrf),
                ("next", "/"),
            ],
        )
        .await
    }
}

#[tokio::test]
async fn pages_need_a_session_and_logging_in_leads_back_to_the_page_asked_for() {
    let hub = TestHub::start().await;
    let mut b = Browser::new(&hub);
    let page = b.get("/servers/abc?range=24h").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(
        page.location.as_deref(),
        Some("/login?next=%2Fservers%2Fabc%3Frange%3D24h")
    );

    let login = b.get("/login?next=/servers/abc").await;
    assert_eq!(login.status, StatusCode::OK);
    let csp = login.csp.expect("a CSP header");
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(login.body.contains(r#"name="next" value="/servers/abc""#));
    let csrf = b.csrf();
    let done = b
        .post(
            "/login",
            &[
                ("username", "admin"),
                ("password", ADMIN_PASSWORD),
                ("csrf", &csrf),
                ("next", "//evil.example/"),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    assert_eq!(
        done.location.as_deref(),
        Some("/"),
        "no redirect off the site"
    );
    assert!(b.cookies.contains_key("smon_session"));

    let fleet = b.get("/").await;
    assert_eq!(fleet.status, StatusCode::OK);
    assert!(fleet.body.contains("<h1>Fleet</h1>"), "{}", fleet.body);
    assert!(fleet.body.contains("admin (admin)"));

    // Logging out ends the session: the cookie no longer opens pages.
    let session = b.cookies["smon_session"].clone();
    let out = b.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    b.cookies.insert("smon_session".into(), session);
    assert_eq!(b.get("/").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn form_posts_without_the_csrf_token_or_from_another_site_are_refused() {
    let hub = TestHub::start().await;
    let (server, _) = hub.create_server("web-1", &[]).await;
    let mut b = Browser::new(&hub);
    assert_eq!(
        b.log_in("admin", ADMIN_PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );

    let no_token = b
        .post(
            &format!("/servers/{server}/tasks"),
            &[("command", "uptime")],
        )
        .await;
    assert_eq!(no_token.status, StatusCode::FORBIDDEN);
    let wrong = b
        .post(
            &format!("/servers/{server}/tasks"),
            &[("command", "uptime"), ("csrf", &"0".repeat(64))],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    let csrf = b.csrf();
    let req = b
        .client
        .post(format!("{}/servers/{server}/tasks", b.base))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("origin", "https://evil.example")
        .body(format!("command=uptime&csrf={csrf}"));
    assert_eq!(b.send(req).await.status, StatusCode::FORBIDDEN);
    let (_, tasks) = hub.get("/api/tasks", &hub.admin_token).await;
    assert_eq!(tasks["total"], 0, "no task was created: {tasks}");

    // With the token the same form works.
    let ok = b
        .post(
            &format!("/servers/{server}/tasks"),
            &[
                ("command", "uptime"),
                ("timeout_seconds", "30"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    let (_, tasks) = hub.get("/api/tasks", &hub.admin_token).await;
    assert_eq!(tasks["total"], 1);
    assert_eq!(tasks["tasks"][0]["timeout_seconds"], 30);
    let detail = b.get(&format!("/servers/{server}")).await;
    assert!(detail.body.contains("<code>uptime</code>"));
}

#[tokio::test]
async fn names_and_commands_are_escaped_on_every_page() {
    let hub = TestHub::start().await;
    let evil = "<script>alert(1)</script>";
    let (server, token) = hub.create_server(evil, &[]).await;
    let sample = agent::sample(chrono::Utc::now(), 12.0);
    hub.post_report(
        &token,
        &agent::report(vec![sample], Some(agent::inventory(evil))),
    )
    .await;
    hub.send_json(
        Method::POST,
        &format!("/api/servers/{server}/tasks"),
        &hub.admin_token,
        json!({ "command": format!("echo '{evil}'") }),
    )
    .await;
    let mut b = Browser::new(&hub);
    b.log_in("admin", ADMIN_PASSWORD).await;
    for path in ["/".to_string(), format!("/servers/{server}")] {
        let page = b.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(
            page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{path}: {}",
            page.body
        );
        assert!(!page.body.contains(evil), "{path} holds the raw name");
    }
}

#[tokio::test]
async fn a_wrong_password_and_too_many_attempts_are_explained_on_the_login_page() {
    let hub = TestHub::start_with(|c| c.auth.login_user_attempts = 2).await;
    let mut b = Browser::new(&hub);
    let wrong = b.log_in("admin", "nope").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        wrong.body.contains("Wrong username or password"),
        "{}",
        wrong.body
    );
    assert!(
        wrong.body.contains(r#"value="admin""#),
        "the username stays filled in"
    );
    b.log_in("admin", "nope").await;
    let limited = b.log_in("admin", ADMIN_PASSWORD).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        limited.body.contains("Too many login attempts"),
        "{}",
        limited.body
    );
}

#[tokio::test]
async fn the_server_page_draws_each_range_from_its_tier() {
    let hub = TestHub::start().await;
    let (server, token) = hub.create_server("db-1", &["prod"]).await;
    let now = chrono::Utc::now();
    let samples = (0..20)
        .map(|i| agent::sample(now - chrono::Duration::seconds(20 - i), 10.0 + i as f64))
        .collect();
    let (status, _) = hub
        .post_report(
            &token,
            &agent::report(samples, Some(agent::inventory("db-1"))),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut b = Browser::new(&hub);
    b.log_in("admin", ADMIN_PASSWORD).await;
    let hour = b.get(&format!("/servers/{server}?range=1h")).await;
    assert_eq!(hour.status, StatusCode::OK);
    assert!(hour.body.contains("Tier: raw, 20 points"), "{}", hour.body);
    for chart in [
        "chart-cpu",
        "chart-memory",
        "chart-disk",
        "chart-net",
        "chart-load",
    ] {
        assert!(hour.body.contains(&format!(r#"id="{chart}""#)), "{chart}");
    }
    assert!(hour.body.contains("<polyline"), "a line is drawn");
    assert!(
        hour.body.contains("CPU: now 29 %, peak 29 %"),
        "{}",
        hour.body
    );
    assert!(
        hour.body.contains("Debian GNU/Linux"),
        "the inventory is shown"
    );
    let month = b.get(&format!("/servers/{server}?range=30d")).await;
    assert!(month.body.contains("Tier: 1h, 1 points"), "{}", month.body);
    let fleet = b.get("/?tag=prod&sort=-cpu").await;
    assert!(fleet.body.contains(">db-1</a>"));
    let partial = b.get("/?tag=prod&partial=1").await;
    assert!(
        partial.body.starts_with("<section id=\"fleet\""),
        "{}",
        partial.body
    );
    let none = b.get("/?q=nothing-like-this").await;
    assert!(none.body.contains("No server matches."));
}

#[tokio::test]
async fn each_role_sees_only_the_pages_it_may_open() {
    let hub = TestHub::start().await;
    hub.create_user("vera", "viewer").await;
    hub.create_user("aude", "auditor").await;
    let mut viewer = Browser::new(&hub);
    viewer.log_in("vera", USER_PASSWORD).await;
    let fleet = viewer.get("/").await;
    assert!(fleet.body.contains(r#"href="/alerts""#));
    assert!(!fleet.body.contains(r#"href="/settings/webhooks""#));
    assert!(!fleet.body.contains(r#"href="/settings/users""#));
    for path in [
        "/settings/webhooks",
        "/settings/users",
        "/settings/agents",
        "/settings/plugins",
    ] {
        let page = viewer.get(path).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}");
        assert!(page.body.contains("Your role (viewer) may not"), "{path}");
    }
    let events = viewer.get("/events").await;
    assert!(events.body.contains("<h1>Recent activity</h1>"));
    assert!(
        !events.body.contains(">From<"),
        "no client addresses for viewers"
    );
    let mut auditor = Browser::new(&hub);
    auditor.log_in("aude", USER_PASSWORD).await;
    let audit = auditor.get("/events?event_type=user.login").await;
    assert!(audit.body.contains("<h1>Audit log</h1>"));
    assert!(audit.body.contains(">From<"));
    assert!(audit.body.contains("<code>user.login</code>"));
    assert!(
        !audit.body.contains("<code>user.created</code>"),
        "the filter applies"
    );
}

#[tokio::test]
async fn the_agent_page_adds_a_server_whose_one_time_command_works() {
    let hub = TestHub::start().await;
    let mut b = Browser::new(&hub);
    b.log_in("admin", ADMIN_PASSWORD).await;
    b.get("/settings/agents").await;
    let csrf = b.csrf();
    let page = b
        .post(
            "/settings/agents",
            &[("name", "edge-1"), ("tags", "Edge, lab"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(page.status, StatusCode::CREATED, "{}", page.body);
    let start = page.body.find("SMON_AGENT_TOKEN=").expect("the command") + 17;
    let token: String = page.body[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    assert!(
        page.body
            .contains(&format!("smon-agent --hub {}", hub.base))
    );
    let sample = agent::sample(chrono::Utc::now(), 5.0);
    let (status, _) = hub
        .post_report(&token, &agent::report(vec![sample], None))
        .await;
    assert_eq!(status, StatusCode::OK, "the shown token is the server's");
    let (_, servers) = hub.get("/api/servers?tag=edge", &hub.admin_token).await;
    assert_eq!(servers["servers"][0]["name"], "edge-1");
    assert_eq!(servers["servers"][0]["status"], "online");
    assert!(
        !b.get("/settings/agents").await.body.contains(&token),
        "shown once"
    );
}

#[tokio::test]
async fn dialogs_show_the_api_messages_and_keep_what_was_typed() {
    let hub = TestHub::start().await;
    let mut b = Browser::new(&hub);
    b.log_in("admin", ADMIN_PASSWORD).await;
    b.get("/alerts/rules").await;
    let csrf = b.csrf();
    let rule = b
        .post(
            "/alerts/rules",
            &[
                ("csrf", &csrf),
                ("name", "disk-full"),
                ("metric", "disk"),
                ("comparison", ">"),
                ("threshold", "ninety"),
                ("severity", "critical"),
            ],
        )
        .await;
    assert_eq!(rule.status, StatusCode::BAD_REQUEST);
    assert!(
        rule.body.contains("threshold: must be a number"),
        "{}",
        rule.body
    );
    assert!(
        rule.body
            .contains(r#"id="rule-new" aria-labelledby="rule-new-title" data-open-on-load"#)
    );
    assert!(
        rule.body.contains(r#"value="disk-full""#),
        "the name is kept"
    );

    let hook = b
        .post(
            "/settings/webhooks",
            &[
                ("csrf", &csrf),
                ("name", "internal"),
                ("url", "http://10.0.0.5/hook"),
                ("event_types", "server.offline"),
                ("event_types", "alert.triggered"),
            ],
        )
        .await;
    assert_eq!(hook.status, StatusCode::BAD_REQUEST);
    assert!(hook.body.contains("url: "), "{}", hook.body);
    assert!(hook.body.contains("private"), "the guard's reason is shown");
    assert!(
        hook.body.contains(r#"value="server.offline" checked"#),
        "ticked types stay ticked"
    );
    let (_, list) = hub.get("/api/webhooks", &hub.admin_token).await;
    assert_eq!(list["count"], 0);

    // A valid rule through the same form.
    let ok = b
        .post(
            "/alerts/rules",
            &[
                ("csrf", &csrf),
                ("name", "disk-full"),
                ("metric", "disk"),
                ("comparison", ">"),
                ("threshold", "90"),
                ("for", "5m"),
                ("severity", "critical"),
                ("enabled", "on"),
            ],
        )
        .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    let (_, rules) = hub.get("/api/alerts/rules", &hub.admin_token).await;
    let created = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "disk-full")
        .expect("the rule");
    assert_eq!(created["for_secs"], 300);
    assert_eq!(created["severity"], "critical");
}

#[tokio::test]
async fn a_notification_channel_is_created_tested_and_deleted_from_its_pages() {
    let receiver = crate::common::receiver::Receiver::start(&[]).await;
    let hub = TestHub::start_with(|c| c.webhooks.allow_cidrs = vec!["127.0.0.1/32".into()]).await;
    let mut b = Browser::new(&hub);
    b.log_in("admin", ADMIN_PASSWORD).await;
    b.get("/settings/notifications").await;
    let csrf = b.csrf();
    let url = format!("{}/services/T0/B0/pagesecret", receiver.base());
    let refused = b
        .post(
            "/settings/notifications",
            &[
                ("csrf", &csrf),
                ("name", "ops chat"),
                ("kind", "slack"),
                ("slack.url", "http://hooks.slack.com/services/x"),
                ("event_types", "alert.triggered"),
            ],
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused.body.contains("config.url: must be an https URL"),
        "{}",
        refused.body
    );
    assert!(refused.body.contains(r#"value="ops chat""#));
    let created = b
        .post(
            "/settings/notifications",
            &[
                ("csrf", &csrf),
                ("name", "ops chat"),
                ("kind", "slack"),
                ("slack.url", &url),
                // Another kind's fields are ignored.
                ("telegram.chat_id", "42"),
                ("event_types", "alert.triggered"),
                ("min_severity", "warning"),
                ("group_window_secs", "5"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::SEE_OTHER, "{}", created.body);
    let path = created.location.unwrap();
    let detail = b.get(&path).await;
    assert!(detail.body.contains("5 s window"), "{}", detail.body);
    assert!(
        !detail.body.contains("pagesecret"),
        "the URL's token is never shown"
    );
    // Edit in the dialog: the URL (a secret) left blank stays; a bad window is explained.
    let bad = b
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("kind", "slack"),
                ("name", "ops room"),
                ("event_types", "alert.triggered"),
                ("group_window_secs", "5000"),
            ],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.body
            .contains("group_window_secs: must be between 0 and 3600"),
        "{}",
        bad.body
    );
    assert!(
        bad.body.contains(r#"value="ops room""#),
        "what was typed stays"
    );
    let edited = b
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("kind", "slack"),
                ("name", "ops room"),
                ("event_types", "alert.triggered"),
                ("event_types", "alert.resolved"),
                ("min_severity", "error"),
                ("group_window_secs", "10"),
            ],
        )
        .await;
    assert_eq!(edited.status, StatusCode::SEE_OTHER, "{}", edited.body);
    let detail = b.get(&path).await;
    assert!(detail.body.contains("<h1>ops room"), "{}", detail.body);
    assert!(detail.body.contains("10 s window"));
    let tested = b.post(&format!("{path}/test"), &[("csrf", &csrf)]).await;
    assert!(tested.body.contains("Test sent: 200"), "{}", tested.body);
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/services/T0/B0/pagesecret");
    assert!(
        tested.body.contains("notification_channel.test"),
        "the log shows it"
    );
    let gone = b.post(&format!("{path}/delete"), &[("csrf", &csrf)]).await;
    assert_eq!(gone.status, StatusCode::SEE_OTHER);
    let (_, list) = hub
        .get("/api/notifications/channels", &hub.admin_token)
        .await;
    assert_eq!(list["count"], 0);
}
