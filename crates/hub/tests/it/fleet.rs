//! The fleet: real agents against a real hub, report validation, history, inventory, servers.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::agent::{self, AgentProcess};
use crate::common::*;

/// Rows of metrics history and inventory in the hub's database, every server together.
async fn history_rows(hub: &TestHub) -> i64 {
    let mut rows = 0;
    for table in ["metrics_raw", "metrics_1m", "metrics_1h", "inventory"] {
        rows += hub.db_count(table).await;
    }
    rows
}

/// Wait until the server is online with metrics.
async fn wait_online(hub: &TestHub, id: &str, within: Duration) -> Value {
    eventually(within, "the server online with metrics", || async {
        let s = hub.server(id).await;
        (s["status"] == "online" && s["metrics"].is_object()).then_some(s)
    })
    .await
}

/// Raw cpu points of a server over the last `minutes`.
async fn raw_points(hub: &TestHub, id: &str, from: DateTime<Utc>) -> Vec<Value> {
    let (status, body) = hub
        .get(
            &format!(
                "/api/servers/{id}/metrics?metric=cpu&tier=raw&from={}",
                from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
            &hub.admin_token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["points"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_real_agent_brings_its_server_online_with_metrics_and_inventory() {
    let hub = TestHub::start().await;
    let operator = hub.token_for_role("operator").await;
    let (status, created) = hub
        .send_json(
            Method::POST,
            "/api/servers",
            &operator,
            json!({ "name": "db-1", "tags": ["Prod", "db"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["server_id"].as_str().unwrap().to_string();
    let token = created["agent_token"].as_str().unwrap().to_string();
    assert!(token.starts_with("smon_a_"));
    assert_eq!(
        created["agent_command"],
        format!("SMON_AGENT_TOKEN={token} smon-agent --hub {}", hub.base)
    );
    assert_eq!(created["server"]["tags"], json!(["prod", "db"]));
    assert_eq!(created["server"]["status"], "unknown");

    let started = Utc::now();
    let _agent = AgentProcess::start(&hub.base, &token, &[]);
    // Interval 1 s plus up to one interval of start jitter: online within two intervals, and
    // some slack for a loaded machine.
    let server = wait_online(&hub, &id, Duration::from_secs(6)).await;
    let m = &server["metrics"];
    assert!((0.0..=100.0).contains(&m["cpu_percent"].as_f64().unwrap()));
    assert!(m["memory_percent"].as_f64().unwrap() > 0.0);
    assert!(m["uptime_secs"].as_u64().unwrap() > 0);
    assert!(m["process_count"].as_u64().unwrap() > 0);
    assert!(
        !server["latest"]["filesystems"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(server["interval_secs"], 1);
    assert!(server["agent_version"].is_string());
    // The token is never shown again.
    assert!(!server.to_string().contains(&token));
    let (_, list) = hub.get("/api/servers", &hub.admin_token).await;
    assert!(!list.to_string().contains(&token));

    // The inventory is read from the database: there once the first report is committed.
    let inv = eventually(Duration::from_secs(5), "the inventory", || async {
        let (status, inv) = hub
            .get(
                &format!("/api/servers/{id}/inventory/latest"),
                &hub.admin_token,
            )
            .await;
        (status == StatusCode::OK).then_some(inv)
    })
    .await;
    assert!(!inv["inventory"]["hostname"].as_str().unwrap().is_empty());
    assert!(inv["inventory"]["cpu_threads"].as_u64().unwrap() >= 1);

    eventually(Duration::from_secs(5), "two raw points", || async {
        (raw_points(&hub, &id, started).await.len() >= 2).then_some(())
    })
    .await;
    let online = hub.events("event_type=server.online").await;
    assert_eq!(online.len(), 1);
    assert_eq!(online[0]["server_id"], id.as_str());
    assert_eq!(online[0]["server_name"], "db-1");
    assert_eq!(online[0]["meta"]["previous_status"], "unknown");
}

#[tokio::test]
async fn killing_the_agent_takes_the_server_offline_and_restarting_it_brings_it_back() {
    let hub = TestHub::start().await;
    let (id, token) = hub.create_server("web-1", &[]).await;
    let mut agent = AgentProcess::start(&hub.base, &token, &[]);
    wait_online(&hub, &id, Duration::from_secs(6)).await;
    agent.kill();
    let offline = eventually(Duration::from_secs(10), "server.offline", || async {
        hub.events("event_type=server.offline")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(offline["server_id"], id.as_str());
    assert_eq!(offline["severity"], "warning");
    assert_eq!(offline["meta"]["missed_intervals"], 3);
    assert_eq!(hub.server(&id).await["status"], "offline");
    let (_, overview) = hub.get("/api/stats/overview", &hub.admin_token).await;
    assert_eq!(overview["offline_servers"], 1);

    let _agent = AgentProcess::start(&hub.base, &token, &[]);
    wait_online(&hub, &id, Duration::from_secs(6)).await;
    // The status flips in memory as the report arrives; its event is in the log once the
    // report's batch is committed, a moment later.
    let online = eventually(
        Duration::from_secs(5),
        "online at first, and again after the outage",
        || async {
            let online = hub.events("event_type=server.online").await;
            (online.len() == 2).then_some(online)
        },
    )
    .await;
    assert_eq!(online[0]["meta"]["previous_status"], "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_hub_while_the_agent_runs_loses_no_samples() {
    let hub = TestHub::start().await;
    let addr = hub.base.trim_start_matches("http://").to_string();
    let (id, token) = hub.create_server("app-1", &[]).await;
    let started = Utc::now();
    let _agent = AgentProcess::start(&hub.base, &token, &[]);
    wait_online(&hub, &id, Duration::from_secs(6)).await;

    let stopped_at = Utc::now();
    let dir = hub.stop().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let hub = TestHub::start_in(dir, |c| c.listen = addr.clone()).await;
    let restarted_at = Utc::now();
    // The agent retries at least every second and then backfills what it kept: wait for a
    // point newer than the outage.
    let points = eventually(Duration::from_secs(10), "backfilled samples", || async {
        let points = raw_points(&hub, &id, started).await;
        let last = points.last()?["ts"]
            .as_str()?
            .parse::<DateTime<Utc>>()
            .ok()?;
        // The backlog goes oldest first: a point taken after the restart comes after it.
        (last > restarted_at).then_some(points)
    })
    .await;
    let times: Vec<DateTime<Utc>> = points
        .iter()
        .map(|p| p["ts"].as_str().unwrap().parse().unwrap())
        .collect();
    let widest = times
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds())
        .max()
        .unwrap();
    // One sample a second throughout, the 4 s outage included (jitter is ±2 %).
    assert!(widest < 1600, "a {widest} ms gap in {times:?}");
    assert!(
        times[0] < stopped_at && *times.last().unwrap() > restarted_at,
        "the samples cover the outage: {times:?}"
    );
}

#[tokio::test]
async fn every_bad_report_is_refused_with_a_4xx_and_nothing_is_written() {
    let hub = TestHub::start().await;
    let (id, token) = hub.create_server("edge-1", &[]).await;
    let now = Utc::now();
    let good = agent::report(vec![agent::sample(now, 10.0)], None);
    let with = |path: &[&str], value: Value| {
        let mut body = good.clone();
        let mut at = &mut body;
        for key in &path[..path.len() - 1] {
            at = match key.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*key],
            };
        }
        let last = path[path.len() - 1];
        match last.parse::<usize>() {
            Ok(i) => at[i] = value,
            Err(_) => at[last] = value,
        }
        body
    };
    let future = (now + chrono::Duration::minutes(6)).to_rfc3339();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "future timestamp",
            with(&["samples", "0", "ts"], json!(future)),
            "samples[0].ts",
        ),
        (
            "ancient timestamp",
            with(&["samples", "0", "ts"], json!("2001-01-01T00:00:00Z")),
            "samples[0].ts",
        ),
        (
            "negative rate",
            with(&["samples", "0", "disk_io", "read_bps"], json!(-1.0)),
            "samples[0].disk_io.read_bps",
        ),
        (
            "cpu over 100",
            with(&["samples", "0", "cpu_percent"], json!(150.0)),
            "samples[0].cpu_percent",
        ),
        (
            "used over total",
            with(&["samples", "0", "memory", "used"], json!(9_000)),
            "samples[0].memory.used",
        ),
        (
            "disk used over total",
            with(&["samples", "0", "filesystems", "0", "used"], json!(2_000)),
            "samples[0].filesystems[0].used",
        ),
        (
            "negative load",
            with(&["samples", "0", "load", "1"], json!(-0.5)),
            "samples[0].load[1]",
        ),
        (
            "a string for a number",
            with(&["samples", "0", "cpu_percent"], json!("NaN")),
            "cpu_percent",
        ),
        (
            "negative counter",
            with(&["samples", "0", "uptime_secs"], json!(-5)),
            "uptime_secs",
        ),
        (
            "impossible temperature",
            with(
                &["samples", "0", "temperatures"],
                json!([{ "label": "cpu", "celsius": 900.0 }]),
            ),
            "samples[0].temperatures[0].celsius",
        ),
        (
            "unknown protocol",
            with(&["protocol"], json!(99)),
            "protocol",
        ),
        ("no samples", with(&["samples"], json!([])), "samples"),
        (
            "missing field",
            {
                let mut b = good.clone();
                b["samples"][0].as_object_mut().unwrap().remove("memory");
                b
            },
            "memory",
        ),
    ];
    for (what, body, needle) in cases {
        let got = hub.post_report(&token, &body).await;
        assert_eq!(got.0, StatusCode::BAD_REQUEST, "{what}: {got:?}");
        let message = got.1["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{what}: {message:?} should name {needle}"
        );
    }
    // Bodies that are not JSON reports at all.
    let raw = |body: Vec<u8>, content_type: &'static str| {
        hub.client
            .post(hub.url(smon_proto::REPORT_PATH))
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body)
    };
    let nan = good.to_string().replace("10.0", "NaN");
    assert!(nan.contains("NaN"));
    for (what, req, status) in [
        (
            "malformed JSON",
            raw(b"{\"protocol\": 1,".to_vec(), "application/json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a NaN literal",
            raw(nan.into_bytes(), "application/json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "not JSON",
            raw(good.to_string().into_bytes(), "text/plain"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "over 256 KiB",
            raw(vec![b' '; 300 * 1024], "application/json"),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ] {
        let got = send(req).await;
        assert_eq!(got.0, status, "{what}: {got:?}");
        assert!(got.1["error"].is_string(), "{what}: {got:?}");
    }
    // A report with one good and one bad sample is refused whole.
    let mixed = agent::report(
        vec![
            agent::sample(now - chrono::Duration::seconds(5), 1.0),
            agent::sample(now, 101.0),
        ],
        None,
    );
    assert_eq!(
        hub.post_report(&token, &mixed).await.0,
        StatusCode::BAD_REQUEST
    );

    let server = hub.server(&id).await;
    assert_eq!(server["status"], "unknown");
    assert!(server["metrics"].is_null());
    let (_, history) = hub
        .get(
            &format!(
                "/api/servers/{id}/metrics?metric=cpu&from={}&tier=1h",
                (now - chrono::Duration::days(30))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            &hub.admin_token,
        )
        .await;
    assert_eq!(history["points"], json!([]));
    assert!(
        raw_points(&hub, &id, now - chrono::Duration::hours(1))
            .await
            .is_empty()
    );
    assert!(hub.events("event_type=server.online").await.is_empty());

    // The same hub takes the good report.
    let (status, body) = hub.post_report(&token, &good).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 1);
}

#[tokio::test]
async fn a_wrong_or_rotated_agent_token_gets_401() {
    let hub = TestHub::start().await;
    let (id, token) = hub.create_server("cache-1", &[]).await;
    let body = agent::report(vec![agent::sample(Utc::now(), 1.0)], None);
    assert_error(
        &hub.post_report("smon_a_wrong", &body).await,
        StatusCode::UNAUTHORIZED,
        "agent token",
    );
    let no_token = send(
        hub.client
            .post(hub.url(smon_proto::REPORT_PATH))
            .json(&body),
    )
    .await;
    assert_error(&no_token, StatusCode::UNAUTHORIZED, "agent token");
    // A user's session is not an agent token.
    assert_error(
        &hub.post_report(&hub.admin_token, &body).await,
        StatusCode::UNAUTHORIZED,
        "agent token",
    );
    assert_eq!(hub.post_report(&token, &body).await.0, StatusCode::OK);

    let (status, rotated) = send(hub.request(
        Method::POST,
        &format!("/api/servers/{id}/token"),
        Some(&hub.admin_token),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_token = rotated["agent_token"].as_str().unwrap();
    assert_ne!(new_token, token);
    assert!(
        rotated["agent_command"]
            .as_str()
            .unwrap()
            .contains(new_token)
    );
    let later = agent::report(
        vec![agent::sample(
            Utc::now() + chrono::Duration::seconds(1),
            1.0,
        )],
        None,
    );
    assert_error(
        &hub.post_report(&token, &later).await,
        StatusCode::UNAUTHORIZED,
        "agent token",
    );
    assert_eq!(hub.post_report(new_token, &later).await.0, StatusCode::OK);
    let updated = hub.events("event_type=server.updated").await;
    assert_eq!(updated[0]["meta"]["changes"], json!(["agent_token"]));
    assert!(!updated[0].to_string().contains(new_token));

    // A deleted server's token is refused too.
    let (status, _) = send(hub.request(
        Method::DELETE,
        &format!("/api/servers/{id}"),
        Some(&hub.admin_token),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &hub.post_report(new_token, &later).await,
        StatusCode::UNAUTHORIZED,
        "agent token",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_from_2000_servers_are_ingested_and_readable() {
    let hub = TestHub::start().await;
    let mut servers = Vec::new();
    for i in 0..2000 {
        let tag = if i % 2 == 0 { "even" } else { "odd" };
        servers.push((i, hub.create_server(&format!("sim-{i:04}"), &[tag]).await));
    }
    let now = Utc::now();
    let client = hub.client.clone();
    let url = hub.url(smon_proto::REPORT_PATH);
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in servers.chunks(63) {
        let chunk = chunk.to_vec();
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            for (i, (_, token)) in chunk {
                let cpu = (i % 100) as f64;
                let mut body = agent::report(vec![agent::sample(now, cpu)], None);
                // Long enough that no server goes offline before the checks, however slow
                // the machine.
                body["interval_secs"] = json!(600);
                let resp = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    resp.status(),
                    StatusCode::OK,
                    "{}",
                    resp.text().await.unwrap()
                );
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let (_, overview) = hub.get("/api/stats/overview", &hub.admin_token).await;
    assert_eq!(overview["total_servers"], 2000);
    assert_eq!(overview["online_servers"], 2000);
    assert_eq!(overview["tags"]["even"], 1000);
    let avg = overview["avg_cpu_percent"].as_f64().unwrap();
    assert!((avg - 49.5).abs() < 1e-6, "{avg}");

    let (status, page) = hub
        .get(
            "/api/servers?tag=odd&sort=-cpu&limit=5&offset=0",
            &hub.admin_token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 1000);
    assert_eq!(page["count"], 5);
    let top: Vec<f64> = page["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metrics"]["cpu_percent"].as_f64().unwrap())
        .collect();
    assert_eq!(top, vec![99.0; 5]);
    let (_, last_page) = hub
        .get(
            "/api/servers?status=online&limit=100&offset=1950",
            &hub.admin_token,
        )
        .await;
    assert_eq!(last_page["count"], 50);
    assert_eq!(last_page["servers"][49]["name"], "sim-1999");
    let (_, search) = hub
        .get("/api/servers?search=SIM-0042", &hub.admin_token)
        .await;
    assert_eq!(search["total"], 1);
    // Every report is also in the history.
    let (_, some) = servers[1234].clone();
    let points = raw_points(&hub, &some.0, now - chrono::Duration::minutes(1)).await;
    assert_eq!(points.len(), 1);
    assert_eq!(points[0]["avg"], 34.0);
}

#[tokio::test]
async fn history_rolls_up_into_minutes_and_hours_with_min_max_avg_last() {
    let hub = TestHub::start().await;
    let (id, token) = hub.create_server("roll-1", &[]).await;
    // Six samples in one minute of the past hour, sent as one backfill, out of order.
    let minute = Utc::now() - chrono::Duration::minutes(30);
    let base = Utc
        .timestamp_opt(minute.timestamp() - minute.timestamp() % 60, 0)
        .unwrap();
    let values = [30.0, 10.0, 50.0, 20.0, 40.0, 60.0];
    let mut samples: Vec<_> = values
        .iter()
        .enumerate()
        .map(|(i, v)| agent::sample(base + chrono::Duration::seconds(i as i64 * 10), *v))
        .collect();
    samples.swap(0, 5);
    let body = agent::report(samples, None);
    assert_eq!(hub.post_report(&token, &body).await.0, StatusCode::OK);
    // A retried report (its answer was lost) is not counted twice.
    assert_eq!(hub.post_report(&token, &body).await.0, StatusCode::OK);

    let from =
        (base - chrono::Duration::minutes(5)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to =
        (base + chrono::Duration::minutes(5)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for tier in ["1m", "1h"] {
        let (status, h) = hub
            .get(
                &format!("/api/servers/{id}/metrics?metric=cpu&from={from}&to={to}&tier={tier}"),
                &hub.admin_token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{h}");
        assert_eq!(h["tier"], tier);
        let points = h["points"].as_array().unwrap();
        assert_eq!(points.len(), 1, "{h}");
        let p = &points[0];
        assert_eq!(
            (
                p["min"].as_f64(),
                p["max"].as_f64(),
                p["avg"].as_f64(),
                p["last"].as_f64()
            ),
            (Some(10.0), Some(60.0), Some(35.0), Some(60.0)),
            "{tier}: {p}"
        );
    }
    // A ten-minute range is served raw, a day from 1-minute rollups, a month from 1-hour.
    let ranges = [
        (chrono::Duration::minutes(10), "raw"),
        (chrono::Duration::days(1), "1m"),
        (chrono::Duration::days(30), "1h"),
    ];
    for (span, tier) in ranges {
        let from = (Utc::now() - span).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let (status, h) = hub
            .get(
                &format!("/api/servers/{id}/metrics?metric=memory&from={from}"),
                &hub.admin_token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{h}");
        assert_eq!(h["tier"], tier, "{span}");
        assert_eq!(h["unit"], "percent");
    }
    let raw = raw_points(&hub, &id, base - chrono::Duration::minutes(1)).await;
    assert_eq!(raw.len(), 6);
    for (query, needle) in [
        ("metric=bogus", "metric"),
        ("metric=cpu&tier=5m", "tier"),
        ("metric=cpu&from=yesterday", "from"),
        (
            "metric=cpu&from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z",
            "from",
        ),
        (
            "metric=cpu&tier=raw&from=2020-01-01T00:00:00Z",
            "too many points",
        ),
    ] {
        let got = hub
            .get(
                &format!("/api/servers/{id}/metrics?{query}"),
                &hub.admin_token,
            )
            .await;
        assert_error(&got, StatusCode::BAD_REQUEST, needle);
    }
}

#[tokio::test]
async fn inventory_refresh_reaches_the_agent_and_is_limited_per_server() {
    let hub = TestHub::start().await;
    let (id, token) = hub.create_server("inv-1", &[]).await;
    let (other, _) = hub.create_server("inv-2", &[]).await;
    let path = format!("/api/servers/{id}/inventory/refresh");
    let (status, _) = hub
        .get(
            &format!("/api/servers/{id}/inventory/latest"),
            &hub.admin_token,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let resp = hub
        .request(Method::POST, &path, Some(&hub.admin_token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(resp.headers()["x-ratelimit-limit"], "10");
    let (_, answer) = hub
        .post_report(
            &token,
            &agent::report(vec![agent::sample(Utc::now(), 1.0)], None),
        )
        .await;
    assert_eq!(answer["requests"], json!(["inventory"]));
    let first = agent::inventory("inv-host");
    let (_, answer) = hub
        .post_report(
            &token,
            &agent::report(
                vec![agent::sample(
                    Utc::now() + chrono::Duration::milliseconds(10),
                    1.0,
                )],
                Some(first),
            ),
        )
        .await;
    assert_eq!(answer["requests"], json!([]), "asked once only");
    let (status, inv) = hub
        .get(
            &format!("/api/servers/{id}/inventory/latest"),
            &hub.admin_token,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(inv["inventory"]["hostname"], "inv-host");
    assert_eq!(inv["received_at"], inv["changed_at"]);
    let events = hub.events("event_type=inventory.refresh").await;
    assert_eq!(events[0]["server_id"], id.as_str());
    assert_eq!(events[0]["username"], "admin");

    for _ in 1..10 {
        assert_eq!(
            send(hub.request(Method::POST, &path, Some(&hub.admin_token)))
                .await
                .0,
            StatusCode::ACCEPTED
        );
    }
    let limited = send(hub.request(Method::POST, &path, Some(&hub.admin_token))).await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "too many requests");
    // The limit is per server.
    let (status, _) = send(hub.request(
        Method::POST,
        &format!("/api/servers/{other}/inventory/refresh"),
        Some(&hub.admin_token),
    ))
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let viewer = hub.token_for_role("viewer").await;
    assert_error(
        &send(hub.request(Method::POST, &path, Some(&viewer))).await,
        StatusCode::FORBIDDEN,
        "may not",
    );
}

#[tokio::test]
async fn servers_are_validated_renamed_and_deleted_with_their_history() {
    let hub = TestHub::start().await;
    let t = &hub.admin_token;
    let (id, token) = hub.create_server("api-1", &["prod"]).await;
    for (body, status, needle) in [
        (json!({ "name": "" }), StatusCode::BAD_REQUEST, "name"),
        (
            json!({ "name": "x".repeat(101) }),
            StatusCode::BAD_REQUEST,
            "name",
        ),
        (
            json!({ "name": "ok", "tags": ["no spaces"] }),
            StatusCode::BAD_REQUEST,
            "tags",
        ),
        (
            json!({ "name": "ok", "interval_secs": 0 }),
            StatusCode::BAD_REQUEST,
            "interval_secs",
        ),
        (
            json!({ "name": "ok", "token": "mine" }),
            StatusCode::BAD_REQUEST,
            "token",
        ),
        (
            json!({ "name": "api-1" }),
            StatusCode::CONFLICT,
            "already exists",
        ),
    ] {
        let got = hub
            .send_json(Method::POST, "/api/servers", t, body.clone())
            .await;
        assert_error(&got, status, needle);
    }
    let (_, overview) = hub.get("/api/stats/overview", t).await;
    assert_eq!(overview["total_servers"], 1, "no partial write");

    let path = format!("/api/servers/{id}");
    let (status, body) = hub
        .send_json(
            Method::PUT,
            &path,
            t,
            json!({ "name": "api-one", "tags": ["prod", "eu"], "interval_secs": 30 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["server"]["name"], "api-one");
    assert_eq!(body["server"]["interval_secs"], 30);
    // The agent is told the interval the hub wants.
    let (_, answer) = hub
        .post_report(
            &token,
            &agent::report(vec![agent::sample(Utc::now(), 1.0)], None),
        )
        .await;
    assert_eq!(answer["interval_secs"], 30);
    let updated = hub.events("event_type=server.updated").await;
    assert_eq!(
        updated[0]["meta"]["changes"],
        json!(["name", "tags", "interval_secs"])
    );
    assert_eq!(updated[0]["server_name"], "api-one");
    assert_error(
        &hub.send_json(Method::PUT, &path, t, json!({ "tags": "prod" }))
            .await,
        StatusCode::BAD_REQUEST,
        "tags",
    );
    let (status, cleared) = hub
        .send_json(Method::PUT, &path, t, json!({ "interval_secs": null }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        cleared["server"]["interval_secs"], 1,
        "back to the agent's own interval"
    );

    let rows_before = history_rows(&hub).await;
    assert!(rows_before > 0, "the report left history to delete");
    let (status, _) = send(hub.request(Method::DELETE, &path, Some(t))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(hub.get(&path, t).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        send(hub.request(Method::DELETE, &path, Some(t))).await.0,
        StatusCode::NOT_FOUND
    );
    let deleted = hub.events("event_type=server.deleted").await;
    assert_eq!(deleted[0]["target_id"], id.as_str());
    // Its history, rollups and inventory went with it.
    assert_eq!(history_rows(&hub).await, 0);
    // Recreating the name starts with an empty history.
    let (again, _) = hub.create_server("api-one", &[]).await;
    let (_, h) = hub
        .get(&format!("/api/servers/{again}/metrics?metric=cpu"), t)
        .await;
    assert_eq!(h["points"], json!([]));
}

#[tokio::test]
async fn an_agent_enrolls_itself_once_with_the_enrollment_token() {
    let hub = TestHub::start_with(|c| c.enrollment_token = "enroll-me-please-0123".into()).await;
    let state_dir = tempfile::tempdir().unwrap();
    let state_file = state_dir.path().join("state.json");
    let state_arg = state_file.to_str().unwrap();
    let args = [
        "--hub",
        &hub.base,
        "--interval",
        "1",
        "--state-file",
        state_arg,
        "--name",
        "self-1",
        "--tag",
        "auto",
    ];

    // The hub runs on this test's runtime: wait for the agent off it.
    let mut cmd = AgentProcess::start_bare(&args);
    cmd.args(["--enroll", "wrong-token-0000000"]);
    let wrong = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("wrong enrollment token"),
        "{wrong:?}"
    );
    assert!(!state_file.exists());

    let child = AgentProcess::start_bare(&args)
        .args(["--enroll", "enroll-me-please-0123"])
        .spawn()
        .unwrap();
    let mut agent = AgentProcess { child };
    let server = eventually(
        Duration::from_secs(8),
        "the enrolled server online",
        || async {
            let (_, page) = hub
                .get("/api/servers?search=self-1", &hub.admin_token)
                .await;
            let s = page["servers"].get(0)?.clone();
            (s["status"] == "online").then_some(s)
        },
    )
    .await;
    assert_eq!(server["tags"], json!(["auto"]));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&state_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the state file holds a token: owner only");
    }
    agent.kill();
    // Restarted, it uses the token it kept instead of enrolling again.
    let child = AgentProcess::start_bare(&args)
        .args(["--enroll", "enroll-me-please-0123"])
        .spawn()
        .unwrap();
    let _agent = AgentProcess { child };
    let restarted = Utc::now();
    let server_id = server["id"].as_str().unwrap().to_string();
    eventually(
        Duration::from_secs(8),
        "a report after the restart",
        || async {
            let s = hub.server(&server_id).await;
            let seen: DateTime<Utc> = s["last_seen"].as_str()?.parse().ok()?;
            (seen > restarted).then_some(())
        },
    )
    .await;
    let (_, page) = hub.get("/api/servers", &hub.admin_token).await;
    assert_eq!(page["total"], 1, "it reported as the same server");
    let created = hub.events("event_type=server.created").await;
    assert_eq!(created.len(), 1);

    let off = TestHub::start().await;
    let refused = send(
        off.client
            .post(off.url(smon_proto::ENROLL_PATH))
            .json(&json!({ "enrollment_token": "enroll-me-please-0123", "name": "x" })),
    )
    .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "enrollment is turned off");
}

#[tokio::test]
async fn the_hub_monitors_its_own_machine_by_default() {
    let hub = TestHub::start_with(|c| c.local_agent = true).await;
    let (_, page) = hub.get("/api/servers", &hub.admin_token).await;
    assert_eq!(page["total"], 1);
    let id = page["servers"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(page["servers"][0]["local"], true);
    assert_eq!(page["servers"][0]["tags"], json!(["hub"]));
    let server = wait_online(&hub, &id, Duration::from_secs(5)).await;
    assert!(server["metrics"]["memory_percent"].as_f64().unwrap() > 0.0);
    let (status, _) = hub
        .get(
            &format!("/api/servers/{id}/inventory/latest"),
            &hub.admin_token,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // A restart keeps the same server rather than adding one.
    let dir = hub.stop().await;
    let hub = TestHub::start_in(dir, |c| c.local_agent = true).await;
    let (_, page) = hub.get("/api/servers", &hub.admin_token).await;
    assert_eq!(page["total"], 1);
    assert_eq!(page["servers"][0]["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smon_serve_shows_this_machine_online_out_of_the_box() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base, _) = crate::common::process::spawn_serve_with(
        dir.path(),
        &[
            ("SMON_LOCAL_AGENT", "true"),
            ("SMON_FLEET_LOCAL_AGENT_INTERVAL_SECS", "1"),
            ("SMON_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ],
    );
    let (client, token) = crate::common::process::admin_session(&base, ADMIN_PASSWORD).await;
    let server = eventually(Duration::from_secs(8), "this machine online", || async {
        let page: Value = client
            .get(format!("{base}/api/servers"))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let s = page["servers"].get(0)?.clone();
        (s["status"] == "online" && s["metrics"].is_object()).then_some(s)
    })
    .await;
    assert_eq!(server["local"], true);
    crate::common::process::sigterm(&child);
    assert!(crate::common::process::wait_exit(&mut child, Duration::from_secs(10)).success());
}

#[tokio::test]
async fn servers_without_a_value_sort_last_both_ways() {
    let hub = TestHub::start().await;
    let (_, low) = hub.create_server("low", &[]).await;
    let (_, high) = hub.create_server("high", &[]).await;
    hub.create_server("silent", &[]).await;
    for (token, cpu) in [(&low, 10.0), (&high, 90.0)] {
        let body = agent::report(vec![agent::sample(Utc::now(), cpu)], None);
        assert_eq!(hub.post_report(token, &body).await.0, StatusCode::OK);
    }
    for (sort, expected) in [
        ("cpu", ["low", "high", "silent"]),
        ("-cpu", ["high", "low", "silent"]),
        ("last_seen", ["low", "high", "silent"]),
        ("-name", ["silent", "low", "high"]),
    ] {
        let (status, page) = hub
            .get(&format!("/api/servers?sort={sort}"), &hub.admin_token)
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let names: Vec<&str> = page["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, expected, "sort={sort}");
    }
    assert_error(
        &hub.get("/api/servers?sort=bogus", &hub.admin_token).await,
        StatusCode::BAD_REQUEST,
        "sort",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_the_database_cannot_take_gets_503_and_its_retry_brings_the_server_online() {
    let hub = TestHub::start().await;
    let (id, token) = hub.create_server("busy-1", &[]).await;
    let body = agent::report(vec![agent::sample(Utc::now(), 3.0)], None);
    let mut locker = crate::common::process::hold_write_lock(&hub.data_dir());
    let got = hub.post_report(&token, &body).await;
    assert_error(&got, StatusCode::SERVICE_UNAVAILABLE, "retry later");
    // Nothing the agent was not told was kept: the server is still waiting for its first report.
    assert_eq!(hub.server(&id).await["status"], "unknown");
    locker.kill().unwrap();
    locker.wait().unwrap();

    let (status, _) = hub.post_report(&token, &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(hub.server(&id).await["status"], "online");
    let online = hub.events("event_type=server.online").await;
    assert_eq!(
        online.len(),
        1,
        "the retry emitted the event the failed write lost"
    );
    assert_eq!(
        raw_points(&hub, &id, Utc::now() - chrono::Duration::minutes(1))
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn clearing_a_servers_interval_returns_the_agent_to_its_own() {
    let hub = TestHub::start().await;
    let (id, token) = hub.create_server("iv-1", &[]).await;
    let path = format!("/api/servers/{id}");
    hub.send_json(
        Method::PUT,
        &path,
        &hub.admin_token,
        json!({ "interval_secs": 30 }),
    )
    .await;
    // The agent now runs at 30 s; its own configuration says 10 s.
    let mut body = agent::report(vec![agent::sample(Utc::now(), 1.0)], None);
    body["interval_secs"] = json!(30);
    body["default_interval_secs"] = json!(10);
    let (_, answer) = hub.post_report(&token, &body).await;
    assert_eq!(answer["interval_secs"], 30);
    hub.send_json(
        Method::PUT,
        &path,
        &hub.admin_token,
        json!({ "interval_secs": null }),
    )
    .await;
    body["samples"][0]["ts"] = json!(Utc::now() + chrono::Duration::milliseconds(5));
    let (_, answer) = hub.post_report(&token, &body).await;
    assert_eq!(answer["interval_secs"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_hangs_up_mid_report_still_goes_offline_when_silent() {
    let hub = TestHub::start().await;
    let (id, token) = hub.create_server("gone-mid-report", &[]).await;
    let body = agent::report(vec![agent::sample(Utc::now(), 3.0)], None);
    let mut locker = crate::common::process::hold_write_lock(&hub.data_dir());
    // The agent gives up while its report waits for the database.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let sent = impatient
        .post(hub.url(smon_proto::REPORT_PATH))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await;
    assert!(sent.is_err(), "the request should have timed out: {sent:?}");
    locker.kill().unwrap();
    locker.wait().unwrap();
    eventually(Duration::from_secs(15), "the server offline", || async {
        (hub.server(&id).await["status"] == "offline").then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_agent_command_never_carries_shell_syntax_from_the_host_header() {
    let hub = TestHub::start().await;
    let (status, created) = send(
        hub.request(Method::POST, "/api/servers", Some(&hub.admin_token))
            .header("host", "x;touch$IFS/tmp/pwned")
            .json(&json!({ "name": "hosty" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let command = created["agent_command"].as_str().unwrap();
    assert!(
        !command.contains(';') && !command.contains('$'),
        "{command}"
    );
    // The configured listen address stands in for a Host it cannot trust.
    assert!(command.ends_with("--hub http://127.0.0.1:0"), "{command}");
}
