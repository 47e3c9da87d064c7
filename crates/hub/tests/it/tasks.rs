//! Remote tasks: real agents run them (or refuse), time them out, cancel them; the hub's
//! policy, rate limit, visibility and reconciliation after restarts.

use std::time::Duration;

use chrono::Utc;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::agent::{self, AgentProcess};
use crate::common::*;

/// Create a task on a server as `token`; returns the answer.
async fn run(hub: &TestHub, token: &str, server: &str, body: Value) -> (StatusCode, Value) {
    hub.send_json(
        Method::POST,
        &format!("/api/servers/{server}/tasks"),
        token,
        body,
    )
    .await
}

/// Wait until the task reaches `status`.
async fn wait_status(hub: &TestHub, id: &str, status: &str, within: Duration) -> Value {
    eventually(within, &format!("task {status}"), || async {
        let (_, t) = hub.get(&format!("/api/tasks/{id}"), &hub.admin_token).await;
        (t["status"] == status).then_some(t)
    })
    .await
}

#[tokio::test]
async fn a_real_agent_runs_a_task_and_the_output_comes_back() {
    let hub = TestHub::start().await;
    let (server, token) = hub.create_server("web-1", &[]).await;
    let _agent = AgentProcess::start(&hub.base, &token, &["--allow-tasks", "true"]);
    let operator = hub.token_for_role("operator").await;
    let (status, created) = run(
        &hub,
        &operator,
        &server,
        json!({ "command": "echo hi; echo warn >&2" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["task"]["status"], "queued");
    assert_eq!(created["task"]["timeout_seconds"], 60);
    let id = created["task_id"].as_str().unwrap();

    let task = wait_status(&hub, id, "finished", Duration::from_secs(10)).await;
    assert_eq!(task["exit_code"], 0);
    assert_eq!(task["stdout"], "hi\n");
    assert_eq!(task["stderr"], "warn\n");
    assert_eq!(task["server_name"], "web-1");
    assert!(task["started_at"].is_string() && task["finished_at"].is_string());
    let types: Vec<String> = hub
        .events(&format!("target_id={id}"))
        .await
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["task.finished", "task.started", "task.created"]);
    let finished = &hub.events("event_type=task.finished").await[0];
    assert_eq!(finished["server_id"], server.as_str());
    assert_eq!(finished["meta"]["exit_code"], 0);
    assert!(
        finished["username"]
            .as_str()
            .unwrap()
            .starts_with("operator"),
        "the creator"
    );

    // Without store_output the result is kept, the output is not.
    let (_, quiet) = run(
        &hub,
        &operator,
        &server,
        json!({ "command": "echo secret; exit 4", "store_output": false }),
    )
    .await;
    let quiet = wait_status(
        &hub,
        quiet["task_id"].as_str().unwrap(),
        "failed",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(quiet["exit_code"], 4);
    assert_eq!(quiet["error"], "exited with code 4");
    assert!(quiet["stdout"].is_null());
}

#[tokio::test]
async fn an_agent_without_allow_tasks_rejects_them() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("should-not-exist");
    let hub = TestHub::start().await;
    let (server, token) = hub.create_server("locked-1", &[]).await;
    let _agent = AgentProcess::start(&hub.base, &token, &[]);
    let (_, created) = run(
        &hub,
        &hub.admin_token,
        &server,
        json!({ "command": format!("touch {}", marker.display()) }),
    )
    .await;
    let task = wait_status(
        &hub,
        created["task_id"].as_str().unwrap(),
        "failed",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("rejected by agent policy"),
        "{task}"
    );
    assert!(task["started_at"].is_null(), "it never ran");
    assert!(!marker.exists(), "the refused command ran");
    let failed = hub.events("event_type=task.failed").await;
    assert!(
        failed[0]["meta"]["error"]
            .as_str()
            .unwrap()
            .contains("rejected by agent policy")
    );
}

#[tokio::test]
async fn a_timeout_kills_the_task_and_cancel_stops_a_running_one() {
    let hub = TestHub::start().await;
    let (server, token) = hub.create_server("slow-1", &[]).await;
    let _agent = AgentProcess::start(&hub.base, &token, &["--allow-tasks", "true"]);
    let t = &hub.admin_token;
    let (_, slow) = run(
        &hub,
        t,
        &server,
        json!({ "command": "sleep 100", "timeout_seconds": 1 }),
    )
    .await;
    let slow = wait_status(
        &hub,
        slow["task_id"].as_str().unwrap(),
        "timeout",
        Duration::from_secs(10),
    )
    .await;
    assert!(slow["error"].as_str().unwrap().contains("killed after 1 s"));
    let took = slow["finished_at"]
        .as_str()
        .unwrap()
        .parse::<chrono::DateTime<Utc>>()
        .unwrap()
        - slow["started_at"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<Utc>>()
            .unwrap();
    assert!(
        took < chrono::Duration::seconds(10),
        "killed, not waited for: {took}"
    );

    let (_, long) = run(
        &hub,
        t,
        &server,
        json!({ "command": "sleep 100", "timeout_seconds": 300 }),
    )
    .await;
    let id = long["task_id"].as_str().unwrap().to_string();
    wait_status(&hub, &id, "running", Duration::from_secs(10)).await;
    let (status, cancelling) =
        send(hub.request(Method::POST, &format!("/api/tasks/{id}/cancel"), Some(t))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelling["cancel_requested"], true);
    wait_status(&hub, &id, "cancelled", Duration::from_secs(10)).await;
    let again = send(hub.request(Method::POST, &format!("/api/tasks/{id}/cancel"), Some(t))).await;
    assert_error(&again, StatusCode::CONFLICT, "already cancelled");
}

#[tokio::test]
async fn a_queued_task_is_cancelled_at_once_and_never_runs() {
    let hub = TestHub::start().await;
    let (server, token) = hub.create_server("later-1", &[]).await;
    let (_, created) = run(
        &hub,
        &hub.admin_token,
        &server,
        json!({ "command": "echo never" }),
    )
    .await;
    let id = created["task_id"].as_str().unwrap();
    let (status, task) = send(hub.request(
        Method::POST,
        &format!("/api/tasks/{id}/cancel"),
        Some(&hub.admin_token),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(task["status"], "cancelled");
    // The agent, reporting now, is not handed it.
    let (_, answer) = hub
        .post_report(
            &token,
            &agent::report(vec![agent::sample(Utc::now(), 1.0)], None),
        )
        .await;
    assert_eq!(answer["tasks"], json!([]));
    assert_eq!(hub.events("event_type=task.cancelled").await.len(), 1);
    // An agent that was handed it before the cancel is told not to run it.
    let running = json!({ "outcome": "running", "at": Utc::now() });
    let got = send(
        hub.client
            .post(hub.url(&smon_proto::task_update_path(id)))
            .bearer_auth(&token)
            .json(&running),
    )
    .await;
    assert_error(&got, StatusCode::CONFLICT, "do not run it");
    assert_eq!(task["cancelled_by"], "admin");
}

#[tokio::test]
async fn the_policy_refuses_bad_commands_and_bad_requests_get_400() {
    let hub = TestHub::start().await;
    let (server, _) = hub.create_server("p-1", &[]).await;
    let t = &hub.admin_token;
    for command in ["rm -rf /", "shutdown -h now", "dd if=/dev/zero of=/dev/sda"] {
        let got = run(&hub, t, &server, json!({ "command": command })).await;
        assert_error(
            &got,
            StatusCode::FORBIDDEN,
            "task policy refuses this command",
        );
    }
    for (body, needle) in [
        (json!({ "command": "" }), "command"),
        (json!({ "command": "x".repeat(10_001) }), "command"),
        (
            json!({ "command": "echo", "timeout_seconds": 0 }),
            "timeout_seconds",
        ),
        (
            json!({ "command": "echo", "timeout_seconds": 601 }),
            "timeout_seconds",
        ),
        (json!({ "command": "echo", "shell": "bash" }), "shell"),
    ] {
        assert_error(
            &run(&hub, t, &server, body).await,
            StatusCode::BAD_REQUEST,
            needle,
        );
    }
    assert_error(
        &run(
            &hub,
            t,
            "00000000-0000-7000-8000-000000000000",
            json!({ "command": "echo" }),
        )
        .await,
        StatusCode::NOT_FOUND,
        "server",
    );
    let viewer = hub.token_for_role("viewer").await;
    assert_error(
        &run(&hub, &viewer, &server, json!({ "command": "echo" })).await,
        StatusCode::FORBIDDEN,
        "may not run tasks",
    );
    let (_, list) = hub.get("/api/tasks", t).await;
    assert_eq!(list["total"], 0, "nothing was created");
    assert!(hub.events("event_type=task.created").await.is_empty());
}

#[tokio::test]
async fn task_creation_is_limited_per_user() {
    let hub = TestHub::start().await;
    let (server, _) = hub.create_server("r-1", &[]).await;
    let operator = hub.token_for_role("operator").await;
    for i in 0..20 {
        let (status, body) = run(
            &hub,
            &operator,
            &server,
            json!({ "command": format!("echo {i}") }),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{i}: {body}");
    }
    let limited = run(&hub, &operator, &server, json!({ "command": "echo 21" })).await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "too many requests");
    let (_, mine) = hub.get("/api/tasks", &operator).await;
    assert_eq!(mine["total"], 20, "the refused task was not created");
    // Another user has their own allowance.
    let (status, _) = run(
        &hub,
        &hub.admin_token,
        &server,
        json!({ "command": "echo admin" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn fleet_tasks_target_a_tag_and_users_see_their_own_tasks() {
    let hub = TestHub::start().await;
    let (a, _) = hub.create_server("a", &["web"]).await;
    let (b, _) = hub.create_server("b", &["web"]).await;
    let (c, _) = hub.create_server("c", &["db"]).await;
    let alice = hub.token_for_role("operator").await;
    let (status, created) = hub
        .send_json(
            Method::POST,
            "/api/tasks",
            &alice,
            json!({ "command": "uptime", "tag": "web" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["count"], 2);
    let (status, by_id) = hub
        .send_json(
            Method::POST,
            "/api/tasks",
            &hub.admin_token,
            json!({ "command": "uptime", "server_ids": [c, c] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(by_id["count"], 1, "a server named twice gets one task");
    for (body, needle) in [
        (json!({ "command": "uptime" }), "server_ids"),
        (
            json!({ "command": "uptime", "tag": "web", "server_ids": [a] }),
            "server_ids",
        ),
        (json!({ "command": "uptime", "tag": "nope" }), "tag"),
        (
            json!({ "command": "uptime", "server_ids": [] }),
            "server_ids",
        ),
    ] {
        assert_error(
            &hub.send_json(Method::POST, "/api/tasks", &alice, body)
                .await,
            StatusCode::BAD_REQUEST,
            needle,
        );
    }

    let (_, mine) = hub.get("/api/tasks", &alice).await;
    assert_eq!(mine["total"], 2);
    assert!(
        mine["tasks"][0]["stdout"].is_null(),
        "lists leave output out"
    );
    // The command is in the audit log, not in every viewer's recent activity.
    let viewer = hub.token_for_role("viewer").await;
    let (_, recent) = hub.get("/api/activity/recent?limit=10", &viewer).await;
    let created = recent["activities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "task.created")
        .expect("task.created in recent activity");
    assert!(created["meta"]["command"].is_null(), "{created}");
    let audit = hub.events("event_type=task.created").await;
    assert_eq!(audit[0]["meta"]["command"], "uptime");
    let servers: Vec<&str> = mine["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["server_id"].as_str().unwrap())
        .collect();
    assert!(servers.contains(&a.as_str()) && servers.contains(&b.as_str()));
    let (_, all) = hub.get("/api/tasks?limit=10", &hub.admin_token).await;
    assert_eq!(all["total"], 3);
    let (_, filtered) = hub
        .get(
            &format!("/api/tasks?server_id={c}&status=queued"),
            &hub.admin_token,
        )
        .await;
    assert_eq!(filtered["total"], 1);
    assert_error(
        &hub.get("/api/tasks?status=bogus", &alice).await,
        StatusCode::BAD_REQUEST,
        "status",
    );
    // Another operator neither sees nor cancels alice's task.
    let bob = hub.token_for_role("operator").await;
    let alices = mine["tasks"][0]["id"].as_str().unwrap();
    assert_eq!(
        hub.get(&format!("/api/tasks/{alices}"), &bob).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(hub.request(
            Method::POST,
            &format!("/api/tasks/{alices}/cancel"),
            Some(&bob)
        ))
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    let (_, none) = hub.get("/api/tasks", &bob).await;
    assert_eq!(none["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_running_across_a_hub_restart_is_reconciled_from_the_agent() {
    let hub = TestHub::start().await;
    let addr = hub.base.trim_start_matches("http://").to_string();
    let (server, token) = hub.create_server("long-1", &[]).await;
    let _agent = AgentProcess::start(&hub.base, &token, &["--allow-tasks", "true"]);
    let (_, created) = run(
        &hub,
        &hub.admin_token,
        &server,
        json!({ "command": "sleep 3; echo done", "timeout_seconds": 30 }),
    )
    .await;
    let id = created["task_id"].as_str().unwrap().to_string();
    wait_status(&hub, &id, "running", Duration::from_secs(10)).await;
    let dir = hub.stop().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let hub = TestHub::start_in(dir, |c| c.listen = addr.clone()).await;
    let task = wait_status(&hub, &id, "finished", Duration::from_secs(15)).await;
    assert_eq!(task["stdout"], "done\n");
}

#[tokio::test]
async fn a_running_task_whose_agent_vanished_is_marked_interrupted() {
    let hub = TestHub::start_with(|c| c.tasks.result_grace_secs = 1).await;
    let (server, token) = hub.create_server("gone-1", &[]).await;
    let (_, created) = run(
        &hub,
        &hub.admin_token,
        &server,
        json!({ "command": "sleep 100", "timeout_seconds": 1 }),
    )
    .await;
    let id = created["task_id"].as_str().unwrap();
    // The agent says it started, then is never heard of again.
    let started = json!({ "outcome": "running", "at": Utc::now() });
    let (status, _) = send(
        hub.client
            .post(hub.url(&smon_proto::task_update_path(id)))
            .bearer_auth(&token)
            .json(&started),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let task = wait_status(&hub, id, "interrupted", Duration::from_secs(10)).await;
    assert!(task["error"].as_str().unwrap().starts_with("interrupted"));
    let failed = hub.events("event_type=task.failed").await;
    assert_eq!(failed[0]["meta"]["error"], "interrupted");
    // A result that arrives after all still counts.
    let done = json!({ "outcome": "exited", "exit_code": 0, "stdout": "late\n", "at": Utc::now() });
    let (status, _) = send(
        hub.client
            .post(hub.url(&smon_proto::task_update_path(id)))
            .bearer_auth(&token)
            .json(&done),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, task) = hub.get(&format!("/api/tasks/{id}"), &hub.admin_token).await;
    assert_eq!(task["status"], "finished");
}

#[tokio::test]
async fn task_results_are_checked_against_the_agent_that_sends_them() {
    let hub = TestHub::start().await;
    let (server, _) = hub.create_server("mine", &[]).await;
    let (_, other_token) = hub.create_server("other", &[]).await;
    let (_, created) = run(
        &hub,
        &hub.admin_token,
        &server,
        json!({ "command": "echo" }),
    )
    .await;
    let path = smon_proto::task_update_path(created["task_id"].as_str().unwrap());
    let update = json!({ "outcome": "exited", "exit_code": 0, "at": Utc::now() });
    let got = send(
        hub.client
            .post(hub.url(&path))
            .bearer_auth(&other_token)
            .json(&update),
    )
    .await;
    assert_error(&got, StatusCode::NOT_FOUND, "task");
    let got = send(
        hub.client
            .post(hub.url(&path))
            .bearer_auth("smon_a_nope")
            .json(&update),
    )
    .await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "agent token");
    let got = send(
        hub.client
            .post(hub.url(&path))
            .bearer_auth(&other_token)
            .json(&json!({ "outcome": "exploded", "at": Utc::now() })),
    )
    .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "outcome");
    // None of the refused updates touched the task.
    let (_, task) = hub
        .get(
            &format!("/api/tasks/{}", created["task_id"].as_str().unwrap()),
            &hub.admin_token,
        )
        .await;
    assert_eq!(task["status"], "queued");
    assert!(task["exit_code"].is_null());
    assert!(hub.events("event_type=task.finished").await.is_empty());
}
