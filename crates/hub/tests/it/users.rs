//! User management by admins, with last-admin protection and events.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn an_admin_creates_reads_updates_and_deletes_a_user() {
    let hub = TestHub::start().await;
    let t = &hub.admin_token;
    let (status, created) = hub
        .send_json(
            Method::POST,
            "/api/users",
            t,
            json!({ "username": "alice", "password": "alice-password", "role": "operator", "email": "alice@example.com" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["success"], true);
    let id = created["user_id"].as_str().unwrap().to_string();
    assert_eq!(created["user"]["role"], "operator");
    assert!(!created.to_string().contains("alice-password"));

    let (status, list) = hub.get("/api/users", t).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["count"], 2);
    let names: Vec<&str> = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "alice"]);
    assert!(
        !list.to_string().contains("argon2"),
        "hashes never leave the hub"
    );

    let (status, updated) = hub
        .send_json(
            Method::PUT,
            &format!("/api/users/{id}"),
            t,
            json!({ "role": "viewer", "email": null }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["user"]["role"], "viewer");
    assert_eq!(updated["user"]["email"], serde_json::Value::Null);
    let (_, fetched) = hub.get(&format!("/api/users/{id}"), t).await;
    assert_eq!(fetched["role"], "viewer");
    assert_eq!(fetched["username"], "alice");

    let alice = hub.login("alice", "alice-password").await;
    let (_, verify) = hub.get("/api/auth/verify", &alice).await;
    assert_eq!(verify["role"], "viewer");

    let (status, _) = send(hub.request(Method::DELETE, &format!("/api/users/{id}"), Some(t))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        hub.get(&format!("/api/users/{id}"), t).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        hub.get("/api/auth/verify", &alice).await.0,
        StatusCode::UNAUTHORIZED,
        "sessions go with the user"
    );

    let created = hub.events("event_type=user.created&target_type=user").await;
    assert!(
        created
            .iter()
            .any(|e| e["target_id"] == id.as_str() && e["username"] == "admin")
    );
    let updated = hub
        .events(&format!("event_type=user.updated&target_id={id}"))
        .await;
    assert_eq!(updated[0]["meta"]["changes"], json!(["email", "role"]));
    assert_eq!(updated[0]["meta"]["old_role"], "operator");
    assert_eq!(
        hub.events(&format!("event_type=user.deleted&target_id={id}"))
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn the_last_admin_cannot_be_deleted_demoted_or_disabled() {
    let hub = TestHub::start().await;
    let t = &hub.admin_token;
    let (_, me) = hub.get("/api/users/me", t).await;
    let admin_id = me["id"].as_str().unwrap().to_string();
    let path = format!("/api/users/{admin_id}");

    let delete = send(hub.request(Method::DELETE, &path, Some(t))).await;
    assert_error(&delete, StatusCode::CONFLICT, "last enabled admin");
    let demote = hub
        .send_json(Method::PUT, &path, t, json!({ "role": "viewer" }))
        .await;
    assert_error(&demote, StatusCode::CONFLICT, "last enabled admin");
    let disable = hub
        .send_json(Method::PUT, &path, t, json!({ "enabled": false }))
        .await;
    assert_error(&disable, StatusCode::CONFLICT, "last enabled admin");
    let (_, still) = hub.get(&path, t).await;
    assert_eq!(
        (still["role"].as_str(), still["enabled"].as_bool()),
        (Some("admin"), Some(true))
    );
    assert!(
        hub.events("event_type=user.updated").await.is_empty(),
        "refused changes leave no event"
    );

    // With a second admin the first may step down.
    hub.create_user("second", "admin").await;
    let demote = hub
        .send_json(Method::PUT, &path, t, json!({ "role": "operator" }))
        .await;
    assert_eq!(demote.0, StatusCode::OK, "{}", demote.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_demoting_each_other_at_once_leave_one_admin() {
    let hub = TestHub::start().await;
    let (_, me) = hub.get("/api/users/me", &hub.admin_token).await;
    let first = me["id"].as_str().unwrap().to_string();
    let second = hub.create_user("second", "admin").await;
    let second_token = hub.login("second", USER_PASSWORD).await;
    let a = hub
        .request(
            Method::PUT,
            &format!("/api/users/{second}"),
            Some(&hub.admin_token),
        )
        .json(&json!({ "role": "viewer" }));
    let b = hub
        .request(
            Method::PUT,
            &format!("/api/users/{first}"),
            Some(&second_token),
        )
        .json(&json!({ "role": "viewer" }));
    let (ra, rb) = tokio::join!(send(a), send(b));
    let statuses = [ra.0, rb.0];
    assert!(statuses.contains(&StatusCode::OK), "{statuses:?}");
    let (_, list) = hub
        .get(
            "/api/users",
            if ra.0 == StatusCode::OK {
                &hub.admin_token
            } else {
                &second_token
            },
        )
        .await;
    let admins = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["role"] == "admin")
        .count();
    assert_eq!(admins, 1, "{list}");
}

#[tokio::test]
async fn bad_user_input_is_refused_with_the_field_named_and_nothing_written() {
    let hub = TestHub::start().await;
    let t = &hub.admin_token;
    let cases = [
        (
            json!({ "username": "", "password": "long-enough", "role": "viewer" }),
            "username",
        ),
        (
            json!({ "username": "has space", "password": "long-enough", "role": "viewer" }),
            "username",
        ),
        (
            json!({ "username": "<script>", "password": "long-enough", "role": "viewer" }),
            "username",
        ),
        (
            json!({ "username": "bob", "password": "short", "role": "viewer" }),
            "password",
        ),
        (
            json!({ "username": "bob", "password": "x".repeat(300), "role": "viewer" }),
            "password",
        ),
        (
            json!({ "username": "bob", "password": "long-enough", "role": "root" }),
            "role",
        ),
        (
            json!({ "username": "bob", "password": "long-enough" }),
            "role",
        ),
        (
            json!({ "username": "bob", "password": "long-enough", "role": "viewer", "email": "nope" }),
            "email",
        ),
        (
            json!({ "username": "bob", "password": "long-enough", "role": "viewer", "is_admin": true }),
            "is_admin",
        ),
        (
            json!({ "username": 7, "password": "long-enough", "role": "viewer" }),
            "username",
        ),
    ];
    for (body, field) in cases {
        let got = hub
            .send_json(Method::POST, "/api/users", t, body.clone())
            .await;
        assert_error(&got, StatusCode::BAD_REQUEST, field);
    }
    let (_, list) = hub.get("/api/users", t).await;
    assert_eq!(list["count"], 1, "no partial writes: {list}");

    hub.create_user("bob", "viewer").await;
    let dup = hub
        .send_json(
            Method::POST,
            "/api/users",
            t,
            json!({ "username": "bob", "password": "long-enough", "role": "viewer" }),
        )
        .await;
    assert_error(&dup, StatusCode::CONFLICT, "already taken");
    let (_, bob) = hub.get("/api/users", t).await;
    let bob_id = bob["users"][1]["id"].as_str().unwrap().to_string();
    let rename = hub
        .send_json(
            Method::PUT,
            &format!("/api/users/{bob_id}"),
            t,
            json!({ "username": "admin" }),
        )
        .await;
    assert_error(&rename, StatusCode::CONFLICT, "already taken");
    let unknown = hub
        .send_json(
            Method::PUT,
            &format!("/api/users/{bob_id}"),
            t,
            json!({ "colour": "red" }),
        )
        .await;
    assert_error(&unknown, StatusCode::BAD_REQUEST, "colour");
    let missing = hub
        .send_json(
            Method::PUT,
            "/api/users/does-not-exist",
            t,
            json!({ "role": "viewer" }),
        )
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "user");
}

#[tokio::test]
async fn disabling_a_user_ends_their_sessions_and_blocks_login() {
    let hub = TestHub::start().await;
    let id = hub.create_user("carol", "operator").await;
    let carol = hub.login("carol", USER_PASSWORD).await;
    let (status, _) = hub
        .send_json(
            Method::PUT,
            &format!("/api/users/{id}"),
            &hub.admin_token,
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        hub.get("/api/auth/verify", &carol).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_error(
        &hub.try_login("carol", USER_PASSWORD).await,
        StatusCode::FORBIDDEN,
        "disabled",
    );
    // Re-enabling does not revive the old session.
    hub.send_json(
        Method::PUT,
        &format!("/api/users/{id}"),
        &hub.admin_token,
        json!({ "enabled": true }),
    )
    .await;
    assert_eq!(
        hub.get("/api/auth/verify", &carol).await.0,
        StatusCode::UNAUTHORIZED
    );
    hub.login("carol", USER_PASSWORD).await;
}

#[tokio::test]
async fn an_admin_reset_password_works_and_the_old_one_stops() {
    let hub = TestHub::start().await;
    let id = hub.create_user("dave", "viewer").await;
    let (status, _) = hub
        .send_json(
            Method::PUT,
            &format!("/api/users/{id}"),
            &hub.admin_token,
            json!({ "password": "brand-new-password" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        hub.try_login("dave", USER_PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
    hub.login("dave", "brand-new-password").await;
    let event = &hub
        .events(&format!("event_type=user.updated&target_id={id}"))
        .await[0];
    assert_eq!(event["meta"]["changes"], json!(["password"]));
    assert!(!event.to_string().contains("brand-new-password"));
}

#[tokio::test]
async fn usernames_are_case_insensitive() {
    let hub = TestHub::start().await;
    let (status, created) = hub
        .send_json(
            Method::POST,
            "/api/users",
            &hub.admin_token,
            json!({ "username": "Mallory", "password": USER_PASSWORD, "role": "viewer" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["user"]["username"], "mallory");
    hub.login("MALLORY", USER_PASSWORD).await;
    let twin = hub
        .send_json(
            Method::POST,
            "/api/users",
            &hub.admin_token,
            json!({ "username": "mallory", "password": USER_PASSWORD, "role": "admin" }),
        )
        .await;
    assert_error(&twin, StatusCode::CONFLICT, "already taken");
}
