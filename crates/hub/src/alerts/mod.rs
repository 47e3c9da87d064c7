//! Threshold alerts: rules evaluated in memory on every committed report and status change,
//! with a duration ("for") and hysteresis; ok → pending → firing → resolved.

pub mod rule;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::events::{Event, EventType, Origin, Severity};
use crate::fleet::{FleetService, Observation, Observations};
use crate::store::{AlertFilter, AlertRecord, RuleRecord, ServerStatus, Store};
use crate::wire::{opt_rfc3339_millis, rfc3339_millis};
use rule::{AlertMetric, Rule, format_duration, parse_duration};

/// A rule to create, or the fields of one to change (absent fields stay).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleInput {
    pub name: Option<String>,
    /// cpu, memory, swap, disk, load (per core), net_rx, net_tx, temperature or offline.
    pub metric: Option<String>,
    /// Disk rules: one mount point; absent or `""` means the fullest filesystem.
    pub mount: Option<String>,
    /// `>`, `>=`, `<` or `<=` (default `>`).
    pub comparison: Option<String>,
    /// Percent for cpu, memory, swap and disk; load per core; bytes/s; °C. Not used by offline.
    pub threshold: Option<f64>,
    /// Where a firing alert resolves (hysteresis); `null` means the threshold.
    #[serde(default, deserialize_with = "crate::wire::present")]
    #[schema(value_type = Option<f64>)]
    pub recovery_threshold: Option<Option<f64>>,
    /// How long the threshold must be breached before the alert fires: seconds or `5m`.
    #[serde(rename = "for")]
    #[schema(value_type = Option<String>, example = "5m")]
    pub for_duration: Option<serde_json::Value>,
    /// info, warning (default), error or critical.
    pub severity: Option<Severity>,
    /// all (default), tag or server.
    pub scope: Option<String>,
    /// With scope tag.
    pub tag: Option<String>,
    /// With scope server.
    pub server_id: Option<String>,
    pub enabled: Option<bool>,
    /// Notification channel ids this rule's alerts go to (and only those); `null` for every
    /// channel subscribed to alert events.
    #[serde(default, deserialize_with = "crate::wire::present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub channels: Option<Option<Vec<String>>>,
}

/// A rule as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleView {
    pub id: String,
    pub name: String,
    pub metric: String,
    pub mount: Option<String>,
    pub comparison: String,
    pub threshold: f64,
    pub recovery_threshold: Option<f64>,
    #[serde(rename = "for")]
    pub for_duration: String,
    pub for_secs: u32,
    pub severity: Severity,
    pub scope: String,
    pub tag: Option<String>,
    pub server_id: Option<String>,
    pub enabled: bool,
    /// Notification channels this rule notifies; `null` means every subscribed channel.
    pub channels: Option<Vec<String>>,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String)]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String)]
    pub updated_at: DateTime<Utc>,
}

/// An alert as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertView {
    pub id: String,
    pub rule_id: String,
    pub rule_name: String,
    pub server_id: String,
    pub server_name: Option<String>,
    pub metric: String,
    pub severity: Severity,
    /// firing or resolved.
    pub status: String,
    /// The value that fired it.
    pub value: Option<f64>,
    pub threshold: f64,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String)]
    pub pending_since: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String)]
    pub fired_at: DateTime<Utc>,
    #[serde(serialize_with = "opt_rfc3339_millis")]
    #[schema(value_type = Option<String>)]
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_value: Option<f64>,
    pub resolution: Option<String>,
    pub acknowledged_by: Option<String>,
    #[serde(serialize_with = "opt_rfc3339_millis")]
    #[schema(value_type = Option<String>)]
    pub acknowledged_at: Option<DateTime<Utc>>,
}

/// How to list alerts.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    /// firing or resolved.
    pub status: Option<String>,
    pub server_id: Option<String>,
    pub rule_id: Option<String>,
    pub severity: Option<String>,
    /// 1–1000, default 50.
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

/// A page of alerts.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertList {
    pub alerts: Vec<AlertView>,
    pub count: usize,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

fn rule_view(r: &RuleRecord) -> RuleView {
    RuleView {
        id: r.id.clone(),
        name: r.name.clone(),
        metric: r.metric.clone(),
        mount: r.mount.clone(),
        comparison: r.comparison.clone(),
        threshold: r.threshold,
        recovery_threshold: r.recovery_threshold,
        for_duration: format_duration(r.for_secs),
        for_secs: r.for_secs,
        severity: r.severity,
        scope: r.scope.clone(),
        tag: (r.scope == "tag").then(|| r.scope_value.clone()).flatten(),
        server_id: (r.scope == "server")
            .then(|| r.scope_value.clone())
            .flatten(),
        enabled: r.enabled,
        channels: r.channels.clone(),
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

fn alert_view(a: AlertRecord) -> AlertView {
    AlertView {
        id: a.id,
        rule_id: a.rule_id,
        rule_name: a.rule_name,
        server_id: a.server_id,
        server_name: a.server_name,
        metric: a.metric,
        severity: a.severity,
        status: a.status,
        value: a.value,
        threshold: a.threshold,
        pending_since: a.pending_since,
        fired_at: a.fired_at,
        resolved_at: a.resolved_at,
        resolved_value: a.resolved_value,
        resolution: a.resolution,
        acknowledged_by: a.acknowledged_by,
        acknowledged_at: a.acknowledged_at,
    }
}

/// Where one rule stands for one server. Absent means ok.
#[derive(Debug, Clone)]
enum Phase {
    /// Breached since then, not yet for long enough.
    Pending {
        since: DateTime<Utc>,
        /// The latest breaching sample: a silence after it starts the duration over.
        last: DateTime<Utc>,
        value: f64,
        server_name: String,
    },
    Firing(Box<AlertRecord>),
}

/// The in-memory evaluator: compiled rules and every (rule, server) phase.
#[derive(Default)]
struct Engine {
    rules: Vec<Rule>,
    phases: HashMap<(String, String), Phase>,
}

/// Alert rules and alerts.
#[derive(Clone)]
pub struct AlertService {
    store: Arc<dyn Store>,
    fleet: FleetService,
    engine: Arc<Mutex<Engine>>,
}

impl AlertService {
    /// Load the rules and the alerts still firing.
    pub async fn load(store: Arc<dyn Store>, fleet: FleetService) -> Result<Self> {
        let mut engine = Engine::default();
        for r in store.list_rules().await? {
            match Rule::compile(r) {
                Ok(rule) => engine.rules.push(rule),
                Err(e) => {
                    tracing::error!(error = %e, "an alert rule in the database is invalid; skipped")
                }
            }
        }
        for a in store.firing_alerts().await? {
            engine.phases.insert(
                (a.rule_id.clone(), a.server_id.clone()),
                Phase::Firing(Box::new(a)),
            );
        }
        Ok(AlertService {
            store,
            fleet,
            engine: Arc::new(Mutex::new(engine)),
        })
    }

    /// Several hubs on one database: take in the rules other hubs created, edited or deleted,
    /// and the alerts they fired or resolved (a previous leader's, or those a rule deleted
    /// elsewhere took with it). Read under the engine's lock, so no evaluation of this hub
    /// falls between the read and the merge.
    pub async fn sync_from_store(&self) -> Result<()> {
        let mut engine = self.engine.lock().await;
        let records = self.store.list_rules().await?;
        let firing = self.store.firing_alerts().await?;
        engine.rules = records
            .into_iter()
            .filter_map(|r| match Rule::compile(r) {
                Ok(rule) => Some(rule),
                Err(e) => {
                    tracing::error!(error = %e, "an alert rule in the database is invalid; skipped");
                    None
                }
            })
            .collect();
        let firing_ids: std::collections::HashSet<String> =
            firing.iter().map(|a| a.id.clone()).collect();
        engine.phases.retain(|_, phase| match phase {
            Phase::Firing(a) => firing_ids.contains(&a.id),
            _ => true,
        });
        for a in firing {
            let key = (a.rule_id.clone(), a.server_id.clone());
            if !matches!(engine.phases.get(&key), Some(Phase::Firing(_))) {
                engine.phases.insert(key, Phase::Firing(Box::new(a)));
            }
        }
        Ok(())
    }

    /// Every rule, by name.
    pub async fn rules(&self) -> Vec<RuleView> {
        let engine = self.engine.lock().await;
        let mut rules: Vec<RuleView> = engine.rules.iter().map(|r| rule_view(&r.record)).collect();
        rules.sort_by(|a, b| a.name.cmp(&b.name));
        rules
    }

    /// One rule.
    pub async fn rule(&self, id: &str) -> Result<RuleView> {
        let engine = self.engine.lock().await;
        engine
            .rules
            .iter()
            .find(|r| r.record.id == id)
            .map(|r| rule_view(&r.record))
            .ok_or_else(|| Error::NotFound(format!("alert rule {id}")))
    }

    fn merge(&self, mut r: RuleRecord, input: RuleInput) -> Result<Rule> {
        if let Some(v) = input.name {
            r.name = v.trim().to_string();
        }
        if let Some(v) = input.metric {
            r.metric = v;
        }
        if let Some(v) = input.mount {
            r.mount = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = input.comparison {
            r.comparison = v;
        }
        if let Some(v) = input.threshold {
            r.threshold = v;
        }
        if let Some(v) = input.recovery_threshold {
            r.recovery_threshold = v;
        }
        if let Some(v) = &input.for_duration {
            r.for_secs = parse_duration(v)?;
        }
        if let Some(v) = input.severity {
            r.severity = v;
        }
        if let Some(v) = input.scope {
            r.scope = v;
            r.scope_value = None;
        }
        match (input.tag, input.server_id) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid("scope", "give tag or server_id, not both"));
            }
            (Some(t), None) => {
                // Stored as servers' tags are, so that it matches them.
                let tag = crate::fleet::validate::tags(&[t])?.pop();
                r.scope = "tag".into();
                r.scope_value = tag;
            }
            (None, Some(s)) => {
                if self.fleet.server_name(&s).is_none() {
                    return Err(Error::invalid("server_id", format!("no server {s}")));
                }
                r.scope = "server".into();
                r.scope_value = Some(s);
            }
            (None, None) => {}
        }
        if let Some(v) = input.enabled {
            r.enabled = v;
        }
        if let Some(v) = input.channels {
            r.channels = v.map(|ids| {
                let mut unique: Vec<String> = Vec::with_capacity(ids.len());
                for id in ids {
                    if !unique.contains(&id) {
                        unique.push(id);
                    }
                }
                unique
            });
        }
        Rule::compile(r)
    }

    /// Every channel a rule names must exist (an empty list would silence the rule: refused).
    async fn check_channels(&self, input: &RuleInput) -> Result<()> {
        let Some(Some(ids)) = &input.channels else {
            return Ok(());
        };
        if ids.is_empty() || ids.len() > 50 {
            return Err(Error::invalid(
                "channels",
                "must list 1 to 50 channel ids, or be null for every subscribed channel",
            ));
        }
        let channels = self.store.list_channels().await?;
        for id in ids {
            if !channels.iter().any(|c| &c.id == id) {
                return Err(Error::invalid(
                    "channels",
                    format!("{id:?} is not a notification channel"),
                ));
            }
        }
        Ok(())
    }

    /// Create a rule.
    pub async fn create(&self, origin: &Origin, input: RuleInput) -> Result<RuleView> {
        let this = self.clone();
        let origin = origin.clone();
        crate::to_completion(async move { this.create_now(&origin, input).await }).await
    }

    /// The change itself (see the public method).
    async fn create_now(&self, origin: &Origin, input: RuleInput) -> Result<RuleView> {
        self.check_channels(&input).await?;
        if input.name.is_none() {
            return Err(Error::invalid("name", "is required"));
        }
        if input.metric.is_none() {
            return Err(Error::invalid("metric", "is required"));
        }
        let offline = input.metric.as_deref() == Some("offline");
        if input.threshold.is_none() && !offline {
            return Err(Error::invalid("threshold", "is required"));
        }
        let now = Utc::now();
        let blank = RuleRecord {
            id: Uuid::now_v7().to_string(),
            name: String::new(),
            metric: String::new(),
            mount: None,
            comparison: ">".into(),
            threshold: 0.0,
            recovery_threshold: None,
            for_secs: 0,
            severity: Severity::Warning,
            scope: "all".into(),
            scope_value: None,
            enabled: true,
            channels: None,
            created_by: origin.user_id.clone(),
            created_at: now,
            updated_at: now,
        };
        let rule = self.merge(blank, input)?;
        let event = Event::new(EventType::AlertRuleCreated, origin)
            .target("alert_rule", &rule.record.id)
            .meta("name", rule.record.name.clone())
            .meta("metric", rule.record.metric.clone());
        let mut engine = self.engine.lock().await;
        self.store.insert_rule(&rule.record, &event).await?;
        let view = rule_view(&rule.record);
        engine.rules.push(rule);
        Ok(view)
    }

    /// Change a rule. Pending evaluations start over; a rule disabled resolves its alerts.
    pub async fn update(&self, origin: &Origin, id: &str, input: RuleInput) -> Result<RuleView> {
        let this = self.clone();
        let (origin, id) = (origin.clone(), id.to_string());
        crate::to_completion(async move { this.update_now(&origin, &id, input).await }).await
    }

    /// The change itself (see the public method).
    async fn update_now(&self, origin: &Origin, id: &str, input: RuleInput) -> Result<RuleView> {
        self.check_channels(&input).await?;
        let mut engine = self.engine.lock().await;
        let index = engine
            .rules
            .iter()
            .position(|r| r.record.id == id)
            .ok_or_else(|| Error::NotFound(format!("alert rule {id}")))?;
        let before = engine.rules[index].record.clone();
        let mut rule = self.merge(before.clone(), input)?;
        rule.record.updated_at = Utc::now();
        let changes: Vec<&str> = [
            ("name", before.name != rule.record.name),
            ("metric", before.metric != rule.record.metric),
            ("mount", before.mount != rule.record.mount),
            ("comparison", before.comparison != rule.record.comparison),
            ("threshold", before.threshold != rule.record.threshold),
            (
                "recovery_threshold",
                before.recovery_threshold != rule.record.recovery_threshold,
            ),
            ("for", before.for_secs != rule.record.for_secs),
            ("severity", before.severity != rule.record.severity),
            (
                "scope",
                before.scope != rule.record.scope || before.scope_value != rule.record.scope_value,
            ),
            ("enabled", before.enabled != rule.record.enabled),
            ("channels", before.channels != rule.record.channels),
        ]
        .into_iter()
        .filter_map(|(field, changed)| changed.then_some(field))
        .collect();
        if changes.is_empty() {
            return Ok(rule_view(&before));
        }
        let event = Event::new(EventType::AlertRuleUpdated, origin)
            .target("alert_rule", id)
            .meta("name", rule.record.name.clone())
            .meta("changes", changes);
        self.store.update_rule(&rule.record, &event).await?;
        let view = rule_view(&rule.record);
        let enabled = rule.record.enabled;
        let channels = rule.record.channels.clone();
        engine.rules[index] = rule;
        engine
            .phases
            .retain(|(r, _), p| r != id || matches!(p, Phase::Firing(_)));
        if !enabled {
            self.resolve_rule(&mut engine, id, "rule disabled", channels)
                .await;
        }
        Ok(view)
    }

    /// Delete a rule; its firing alerts resolve.
    pub async fn delete(&self, origin: &Origin, id: &str) -> Result<()> {
        let this = self.clone();
        let (origin, id) = (origin.clone(), id.to_string());
        crate::to_completion(async move { this.delete_now(&origin, &id).await }).await
    }

    /// The change itself (see the public method).
    async fn delete_now(&self, origin: &Origin, id: &str) -> Result<()> {
        let mut engine = self.engine.lock().await;
        let rule = engine
            .rules
            .iter()
            .find(|r| r.record.id == id)
            .ok_or_else(|| Error::NotFound(format!("alert rule {id}")))?;
        let event = Event::new(EventType::AlertRuleDeleted, origin)
            .target("alert_rule", id)
            .meta("name", rule.record.name.clone());
        let channels = rule.record.channels.clone();
        self.store.delete_rule(id, &event).await?;
        engine.rules.retain(|r| r.record.id != id);
        self.resolve_rule(&mut engine, id, "rule deleted", channels)
            .await;
        engine.phases.retain(|(r, _), _| r != id);
        Ok(())
    }

    async fn resolve_rule(
        &self,
        engine: &mut Engine,
        rule_id: &str,
        why: &str,
        channels: Option<Vec<String>>,
    ) {
        let firing: Vec<(String, String)> = engine
            .phases
            .iter()
            .filter(|((r, _), p)| r == rule_id && matches!(p, Phase::Firing(_)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in firing {
            if let Some(Phase::Firing(alert)) = engine.phases.remove(&key) {
                // The rule is gone from memory either way; a failed write is retried by the
                // sweep, which finds the alert firing in the database at the next start.
                self.resolve(*alert, None, why, channels.clone()).await;
            }
        }
    }

    /// Alerts matching the query, newest first.
    pub async fn list(&self, q: &AlertQuery) -> Result<AlertList> {
        let limit = q.limit.unwrap_or(50);
        if !(1..=1000).contains(&limit) {
            return Err(Error::invalid("limit", "must be between 1 and 1000"));
        }
        if let Some(s) = &q.status {
            if s != "firing" && s != "resolved" {
                return Err(Error::invalid("status", "must be firing or resolved"));
            }
        }
        let severity = q
            .severity
            .as_deref()
            .map(|s| {
                Severity::parse(s).ok_or_else(|| {
                    Error::invalid("severity", "must be info, warning, error or critical")
                })
            })
            .transpose()?;
        let filter = AlertFilter {
            status: q.status.clone(),
            server_id: q.server_id.clone(),
            rule_id: q.rule_id.clone(),
            severity,
            limit,
            offset: q.offset.unwrap_or(0),
        };
        let (alerts, total) = self.store.list_alerts(&filter).await?;
        let alerts: Vec<AlertView> = alerts.into_iter().map(alert_view).collect();
        Ok(AlertList {
            count: alerts.len(),
            alerts,
            total,
            limit,
            offset: filter.offset,
        })
    }

    /// One alert.
    pub async fn get(&self, id: &str) -> Result<AlertView> {
        self.store
            .alert(id)
            .await?
            .map(alert_view)
            .ok_or_else(|| Error::NotFound(format!("alert {id}")))
    }

    /// Acknowledge an alert: someone is on it. Acknowledging twice changes nothing.
    pub async fn acknowledge(&self, origin: &Origin, id: &str) -> Result<AlertView> {
        let alert = self
            .store
            .alert(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("alert {id}")))?;
        let by = origin.username.clone().unwrap_or_default();
        let mut event = Event::new(EventType::AlertAcknowledged, origin)
            .target("alert", id)
            .meta("rule_id", alert.rule_id.clone())
            .meta("rule_name", alert.rule_name.clone())
            .meta("alert_severity", alert.severity.as_str());
        event.server_id = Some(alert.server_id.clone());
        event.server_name = alert.server_name.clone();
        self.store
            .acknowledge_alert(id, &by, Utc::now(), &event)
            .await?;
        self.get(id).await
    }

    /// Judge one observation against every rule.
    async fn observe(&self, observation: Observation) {
        let mut engine = self.engine.lock().await;
        match observation {
            Observation::Removed { server_id } => {
                let keys: Vec<(String, String)> = engine
                    .phases
                    .keys()
                    .filter(|(_, s)| *s == server_id)
                    .cloned()
                    .collect();
                for key in keys {
                    let channels = engine
                        .rules
                        .iter()
                        .find(|r| r.record.id == key.0)
                        .and_then(|r| r.record.channels.clone());
                    if let Some(Phase::Firing(alert)) = engine.phases.remove(&key) {
                        if !self
                            .resolve(*alert.clone(), None, "server deleted", channels)
                            .await
                        {
                            engine.phases.insert(key, Phase::Firing(alert));
                        }
                    }
                }
            }
            Observation::Report {
                server_id,
                server_name,
                tags,
                sample,
            } => {
                // A backfilled sample tells of a past condition; alerts are about now.
                if Utc::now() - sample.ts > chrono::Duration::minutes(STALE_MINUTES) {
                    return;
                }
                let judged: Vec<(usize, Option<f64>)> = engine
                    .rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.covers(&server_id, &tags))
                    .map(|(i, r)| match r.metric {
                        // A report means the server is up.
                        AlertMetric::Offline => (i, Some(0.0)),
                        m => (i, m.value(&sample, r.record.mount.as_deref())),
                    })
                    .collect();
                for (i, value) in judged {
                    self.judge(&mut engine, i, &server_id, &server_name, value, sample.ts)
                        .await;
                }
            }
            Observation::Status {
                server_id,
                server_name,
                tags,
                status,
                at,
            } => {
                let value = if status == ServerStatus::Offline {
                    1.0
                } else {
                    0.0
                };
                let offline_rules: Vec<usize> = engine
                    .rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| {
                        r.metric == AlertMetric::Offline && r.covers(&server_id, &tags)
                    })
                    .map(|(i, _)| i)
                    .collect();
                for i in offline_rules {
                    self.judge(&mut engine, i, &server_id, &server_name, Some(value), at)
                        .await;
                }
            }
        }
    }

    /// Move one (rule, server) along ok → pending → firing → resolved.
    async fn judge(
        &self,
        engine: &mut Engine,
        rule_index: usize,
        server_id: &str,
        server_name: &str,
        value: Option<f64>,
        at: DateTime<Utc>,
    ) {
        let rule = engine.rules[rule_index].clone();
        let key = (rule.record.id.clone(), server_id.to_string());
        // Offline is judged on 1 (offline) or 0 (online), whatever the rule's threshold says.
        let breached = |v: f64| {
            if rule.metric == AlertMetric::Offline {
                v > 0.0
            } else {
                rule.breached(v)
            }
        };
        let recovered = |v: f64| {
            if rule.metric == AlertMetric::Offline {
                v == 0.0
            } else {
                rule.recovered(v)
            }
        };
        match (engine.phases.get(&key).cloned(), value) {
            (Some(Phase::Firing(alert)), Some(v)) if recovered(v) => {
                // Kept firing when the resolution cannot be recorded: the next value retries.
                let channels = rule.record.channels.clone();
                if self.resolve(*alert, Some(v), "recovered", channels).await {
                    engine.phases.remove(&key);
                }
            }
            (Some(Phase::Firing(_)), _) => {}
            (
                Some(Phase::Pending {
                    since,
                    last,
                    server_name,
                    ..
                }),
                Some(v),
            ) if breached(v) => {
                // After a silence the breach has not been seen to last: start over.
                let stale = at - last > chrono::Duration::minutes(STALE_MINUTES);
                let since = if stale { at } else { since };
                if at - since >= rule.for_duration {
                    self.fire(engine, &rule, server_id, &server_name, since, v)
                        .await;
                } else {
                    engine.phases.insert(
                        key,
                        Phase::Pending {
                            since,
                            last: at.max(last),
                            value: v,
                            server_name,
                        },
                    );
                }
            }
            (Some(Phase::Pending { .. }), _) => {
                engine.phases.remove(&key);
            }
            (None, Some(v)) if breached(v) => {
                if rule.for_duration.is_zero() {
                    self.fire(engine, &rule, server_id, server_name, at, v)
                        .await;
                } else {
                    engine.phases.insert(
                        key,
                        Phase::Pending {
                            since: at,
                            last: at,
                            value: v,
                            server_name: server_name.to_string(),
                        },
                    );
                }
            }
            (None, _) => {}
        }
    }

    /// Fire pending offline alerts whose duration has passed: no further observation comes
    /// for a server that stopped reporting.
    async fn tick(&self, now: DateTime<Utc>) {
        let mut engine = self.engine.lock().await;
        let due: Vec<(usize, String, String, DateTime<Utc>, f64)> = engine
            .phases
            .iter()
            .filter_map(|((rule_id, server_id), phase)| {
                let Phase::Pending {
                    since,
                    value,
                    server_name,
                    ..
                } = phase
                else {
                    return None;
                };
                let i = engine.rules.iter().position(|r| &r.record.id == rule_id)?;
                let rule = &engine.rules[i];
                let in_scope = self
                    .fleet
                    .server_tags(server_id)
                    .is_some_and(|tags| rule.covers(server_id, &tags));
                (rule.metric == AlertMetric::Offline
                    && in_scope
                    && now - *since >= rule.for_duration)
                    .then(|| (i, server_id.clone(), server_name.clone(), *since, *value))
            })
            .collect();
        for (i, server_id, server_name, since, value) in due {
            let rule = engine.rules[i].clone();
            self.fire(&mut engine, &rule, &server_id, &server_name, since, value)
                .await;
        }
    }

    async fn fire(
        &self,
        engine: &mut Engine,
        rule: &Rule,
        server_id: &str,
        server_name: &str,
        since: DateTime<Utc>,
        value: f64,
    ) {
        let r = &rule.record;
        let alert = AlertRecord {
            id: Uuid::now_v7().to_string(),
            rule_id: r.id.clone(),
            rule_name: r.name.clone(),
            server_id: server_id.to_string(),
            server_name: Some(server_name.to_string()),
            metric: r.metric.clone(),
            severity: r.severity,
            status: "firing".into(),
            value: Some(value),
            threshold: r.threshold,
            pending_since: since,
            fired_at: Utc::now(),
            resolved_at: None,
            resolved_value: None,
            resolution: None,
            acknowledged_by: None,
            acknowledged_at: None,
        };
        let mut event = Event::new(EventType::AlertTriggered, &Origin::default())
            .target("alert", &alert.id)
            .meta("rule_id", r.id.clone())
            .meta("rule_name", r.name.clone())
            .meta("metric", r.metric.clone())
            .meta("value", value)
            .meta("comparison", r.comparison.clone())
            .meta("threshold", r.threshold)
            .meta("for_secs", r.for_secs);
        if let Some(channels) = &r.channels {
            event = event.meta("channels", channels.clone());
        }
        if let Some(m) = &r.mount {
            event = event.meta("mount", m.clone());
        }
        event.severity = r.severity;
        event.server_id = Some(server_id.to_string());
        event.server_name = Some(server_name.to_string());
        let key = (r.id.clone(), server_id.to_string());
        match self.store.insert_alert(&alert, &event).await {
            Ok(true) => {
                tracing::info!(rule = %r.name, server = %server_name, value, "alert triggered");
                engine.phases.insert(key, Phase::Firing(Box::new(alert)));
            }
            Ok(false) => {
                // Already firing in the database: adopt that alert.
                if let Ok(firing) = self.store.firing_alerts().await {
                    if let Some(a) = firing
                        .into_iter()
                        .find(|a| a.rule_id == r.id && a.server_id == server_id)
                    {
                        engine.phases.insert(key, Phase::Firing(Box::new(a)));
                    }
                }
            }
            Err(e) => {
                // Stays pending: the next observation tries again.
                tracing::warn!(error = %e, rule = %r.name, "cannot record a triggered alert");
                engine.phases.insert(
                    key,
                    Phase::Pending {
                        since,
                        // The breach was just seen: a retry must not read it as a silence.
                        last: Utc::now(),
                        value,
                        server_name: server_name.to_string(),
                    },
                );
            }
        }
    }

    /// Record a resolution; false when it could not be recorded (the caller keeps it firing).
    /// `channels` are the rule's notification channels, carried in the event so that a
    /// resolution still reaches them after the rule is gone.
    async fn resolve(
        &self,
        mut alert: AlertRecord,
        value: Option<f64>,
        why: &str,
        channels: Option<Vec<String>>,
    ) -> bool {
        let now = Utc::now();
        alert.status = "resolved".into();
        alert.resolved_at = Some(now);
        alert.resolved_value = value;
        alert.resolution = Some(why.to_string());
        let mut event = Event::new(EventType::AlertResolved, &Origin::default())
            .target("alert", &alert.id)
            .meta("rule_id", alert.rule_id.clone())
            .meta("rule_name", alert.rule_name.clone())
            .meta("metric", alert.metric.clone())
            .meta("value", value)
            .meta("threshold", alert.threshold)
            .meta("fired_for_secs", (now - alert.fired_at).num_seconds())
            .meta("alert_severity", alert.severity.as_str())
            .meta("resolution", why);
        if let Some(channels) = channels {
            event = event.meta("channels", channels);
        }
        event.server_id = Some(alert.server_id.clone());
        event.server_name = alert.server_name.clone();
        match self.store.resolve_alert(&alert, &event).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, rule = %alert.rule_name, "cannot record a resolved alert");
                false
            }
        }
    }

    /// Whether a firing metric alert has gone without its value (a mount removed, a sensor
    /// gone) for longer than a stale breach: its server reports, just not this value.
    fn no_data(&self, rule: &Rule, server_id: &str, phase: Option<&Phase>) -> bool {
        let Some(Phase::Firing(alert)) = phase else {
            return false;
        };
        if rule.metric == AlertMetric::Offline {
            return false;
        }
        let Some(sample) = self.fleet.latest(server_id) else {
            return false;
        };
        rule.metric
            .value(&sample, rule.record.mount.as_deref())
            .is_none()
            && sample.ts - alert.pending_since > chrono::Duration::minutes(STALE_MINUTES)
    }

    /// Reconcile the phases with the rules and the fleet as they are now: alerts of deleted or
    /// disabled rules, of servers gone or out of a rule's scope resolve, as do firing alerts
    /// without data; pending ones are
    /// dropped; offline rules are judged on every server's current status, so nothing hangs
    /// on one observation having arrived.
    async fn sweep(&self) {
        let statuses = self.fleet.statuses();
        let mut engine = self.engine.lock().await;
        let keys: Vec<(String, String)> = engine.phases.keys().cloned().collect();
        for key in keys {
            let (rule_id, server_id) = &key;
            let rule = engine.rules.iter().find(|r| &r.record.id == rule_id);
            let why = match (rule, self.fleet.server_tags(server_id)) {
                (None, _) => "rule deleted",
                (_, None) => "server deleted",
                (Some(r), _) if !r.record.enabled => "rule disabled",
                (Some(r), Some(tags)) if !r.covers(server_id, &tags) => "out of scope",
                (Some(r), Some(_)) if self.no_data(r, server_id, engine.phases.get(&key)) => {
                    "no data"
                }
                _ => continue,
            };
            let channels = rule.and_then(|r| r.record.channels.clone());
            if let Some(Phase::Firing(alert)) = engine.phases.remove(&key) {
                if !self.resolve(*alert.clone(), None, why, channels).await {
                    engine.phases.insert(key, Phase::Firing(alert));
                }
            }
        }
        drop(engine);
        for status in statuses {
            self.observe(status).await;
        }
    }
}

/// Evaluate what the fleet observes, every second the offline durations, and every few
/// seconds a sweep against the rules and the fleet, until shutdown.
pub async fn run_evaluator(
    alerts: AlertService,
    mut observations: Observations,
    leadership: std::sync::Arc<crate::leader::Leadership>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut sweep = tokio::time::interval(std::time::Duration::from_secs(SWEEP_SECS));
    loop {
        // Not biased: a backlog of reports must not starve the sweep and the offline tick.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // Another hub leads: what this one observes is read and left to it.
            Some(o) = observations.changes.recv() => if leadership.is_leader() {
                alerts.observe(o).await
            },
            Some(o) = observations.reports.recv() => if leadership.is_leader() {
                alerts.observe(o).await
            },
            // Leadership is asked at each tick (not as a `select!` guard, read only once).
            _ = sweep.tick() => if leadership.is_leader() {
                alerts.sweep().await
            },
            _ = tick.tick() => if leadership.is_leader() {
                alerts.tick(Utc::now()).await
            },
        }
    }
}

/// Seconds between sweeps (the first runs at start).
const SWEEP_SECS: u64 = 5;
/// A sample older than this is not judged, and a pending breach not seen again for this long
/// starts over.
const STALE_MINUTES: i64 = 10;
