//! Talking to the hub over HTTP.

use std::time::Duration;

use reqwest::StatusCode;
use smon_proto::{
    ENROLL_PATH, EnrollRequest, EnrollResponse, ErrorBody, REPORT_PATH, Report, ReportResponse,
    TaskUpdate, task_update_path,
};

use anyhow::Context;

use crate::config::AgentConfig;
use crate::push::{HubLink, PushError};

/// Reports over HTTP with the agent token.
pub struct HttpLink {
    client: reqwest::Client,
    hub: String,
    report_url: String,
    authorization: String,
}

/// The HTTP client of the configuration: its timeout, and its CA file besides the built-in
/// roots.
pub fn client(config: &AgentConfig) -> anyhow::Result<reqwest::Client> {
    let timeout = Duration::from_secs(config.request_timeout_secs);
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("smon-agent/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)));
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("ca_file: cannot read {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|c| !c.is_empty())
            .with_context(|| format!("ca_file: {} holds no PEM certificate", path.display()))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

fn endpoint(hub: &str, path: &str) -> String {
    format!("{}{path}", hub.trim_end_matches('/'))
}

impl HttpLink {
    /// A link to the hub at `hub` (its base URL).
    pub fn new(config: &AgentConfig, token: &str) -> anyhow::Result<Self> {
        let hub = config.hub.as_str();
        Ok(Self {
            client: client(config)?,
            hub: hub.to_string(),
            report_url: endpoint(hub, REPORT_PATH),
            authorization: format!("Bearer {token}"),
        })
    }
}

/// The hub's `{"error"}` message, or the status when the body is not one.
async fn error_message(response: reqwest::Response) -> String {
    let status = response.status();
    match response.json::<ErrorBody>().await {
        Ok(body) => format!("{status}: {}", body.error),
        Err(_) => status.to_string(),
    }
}

impl HttpLink {
    /// POST `body` to `url`; a success answer is handed back, an error mapped to what the
    /// agent should do about it.
    async fn post(
        &self,
        url: &str,
        body: &impl serde::Serialize,
    ) -> Result<reqwest::Response, PushError> {
        let response = self
            .client
            .post(url)
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .json(body)
            .send()
            .await
            .map_err(|e| PushError::Unavailable(without_url(e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let message = error_message(response).await;
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => PushError::Unauthorized(message),
            StatusCode::BAD_REQUEST
            | StatusCode::NOT_FOUND
            | StatusCode::CONFLICT
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNSUPPORTED_MEDIA_TYPE
            | StatusCode::UNPROCESSABLE_ENTITY => PushError::Rejected(message),
            _ => PushError::Unavailable(message),
        })
    }
}

impl HubLink for HttpLink {
    async fn report(&self, report: &Report) -> Result<ReportResponse, PushError> {
        self.post(&self.report_url, report)
            .await?
            .json()
            .await
            .map_err(|e| PushError::Unavailable(format!("unreadable answer: {}", without_url(e))))
    }

    async fn task_update(&self, task_id: &str, update: &TaskUpdate) -> Result<(), PushError> {
        self.post(&endpoint(&self.hub, &task_update_path(task_id)), update)
            .await
            .map(drop)
    }
}

/// reqwest errors name the URL; ours carry nothing secret, but keep log lines short.
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut message = kind.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    message
}

/// Register this machine with the hub's enrollment token; returns its server and agent token.
pub async fn enroll(
    config: &AgentConfig,
    request: &EnrollRequest,
) -> anyhow::Result<EnrollResponse> {
    let response = client(config)?
        .post(endpoint(&config.hub, ENROLL_PATH))
        .json(request)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("enrollment: {}", without_url(e)))?;
    if !response.status().is_success() {
        anyhow::bail!("enrollment refused: {}", error_message(response).await);
    }
    Ok(response.json().await?)
}
