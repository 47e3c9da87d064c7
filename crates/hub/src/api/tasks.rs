//! Remote tasks: `/api/servers/{id}/tasks`, `/api/tasks` (operators and admins run them;
//! everyone lists their own, admins all).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::ErrorBody;
use crate::api::extract::{ApiJson, ApiQuery, Authorized, need};
use crate::api::ratelimit::Allowance;
use crate::app::AppState;
use crate::error::Result;
use crate::tasks::{NewFleetTask, NewTask, TaskList, TaskQuery, TaskView};

/// A created task.
#[derive(Serialize, ToSchema)]
pub struct TaskCreated {
    pub success: bool,
    pub task_id: String,
    pub task: TaskView,
}

/// Tasks created for several servers.
#[derive(Serialize, ToSchema)]
pub struct FleetTaskCreated {
    pub success: bool,
    pub task_ids: Vec<String>,
    pub count: usize,
}

/// Run a command on a server. The hub's command policy may refuse it (403 with the reason);
/// the agent runs it only if its own configuration allows tasks. Limited per user
/// (`rate_limits.task_create_per_minute`).
#[utoipa::path(post, path = "/api/servers/{id}/tasks", tag = "tasks", params(("id" = String, Path)), request_body = NewTask,
    responses((status = 201, body = TaskCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn create_task(
    State(state): State<AppState>,
    caller: Authorized<need::RunTasks>,
    Path(id): Path<String>,
    ApiJson(new): ApiJson<NewTask>,
) -> Result<(StatusCode, Allowance, Json<TaskCreated>)> {
    state.fleet.exists(&id)?;
    let allowance = state.limits.task_create.check(&caller.user_id)?;
    let mut created = state
        .tasks
        .create(
            &caller,
            &[id],
            new.command,
            new.timeout_seconds,
            new.store_output,
        )
        .await?;
    let task = created.remove(0);
    Ok((
        StatusCode::CREATED,
        allowance,
        Json(TaskCreated {
            success: true,
            task_id: task.id.clone(),
            task,
        }),
    ))
}

/// Run a command on several servers, named by `server_ids` or by `tag`: one task each.
#[utoipa::path(post, path = "/api/tasks", tag = "tasks", request_body = NewFleetTask,
    responses((status = 201, body = FleetTaskCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn create_fleet_task(
    State(state): State<AppState>,
    caller: Authorized<need::RunTasks>,
    ApiJson(new): ApiJson<NewFleetTask>,
) -> Result<(StatusCode, Allowance, Json<FleetTaskCreated>)> {
    let targets = state.tasks.targets(new.server_ids, new.tag)?;
    let allowance = state.limits.task_create.check(&caller.user_id)?;
    let created = state
        .tasks
        .create(
            &caller,
            &targets,
            new.command,
            new.timeout_seconds,
            new.store_output,
        )
        .await?;
    let task_ids: Vec<String> = created.into_iter().map(|t| t.id).collect();
    Ok((
        StatusCode::CREATED,
        allowance,
        Json(FleetTaskCreated {
            success: true,
            count: task_ids.len(),
            task_ids,
        }),
    ))
}

/// List tasks, newest first: admins see every task, others the tasks they created.
#[utoipa::path(get, path = "/api/tasks", tag = "tasks", params(TaskQuery),
    responses((status = 200, body = TaskList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_tasks(
    State(state): State<AppState>,
    caller: Authorized<need::ReadFleet>,
    ApiQuery(query): ApiQuery<TaskQuery>,
) -> Result<Json<TaskList>> {
    Ok(Json(state.tasks.list(&caller, &query).await?))
}

/// One task with its output.
#[utoipa::path(get, path = "/api/tasks/{id}", tag = "tasks", params(("id" = String, Path)),
    responses((status = 200, body = TaskView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_task(
    State(state): State<AppState>,
    caller: Authorized<need::ReadFleet>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>> {
    Ok(Json(state.tasks.get(&caller, &id).await?))
}

/// Cancel a task: a queued one at once, a running one once its agent has killed it
/// (`cancel_requested` meanwhile). 409 when it is already over.
#[utoipa::path(post, path = "/api/tasks/{id}/cancel", tag = "tasks", params(("id" = String, Path)),
    responses((status = 200, body = TaskView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_task(
    State(state): State<AppState>,
    caller: Authorized<need::RunTasks>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>> {
    Ok(Json(state.tasks.cancel(&caller, &id).await?))
}
