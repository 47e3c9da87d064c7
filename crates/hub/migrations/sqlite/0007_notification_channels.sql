-- Notification channels (e-mail, Slack, Discord, Teams, Telegram, ntfy, generic webhook) are
-- delivery targets like managed webhooks: they share the webhooks table, the durable job queue,
-- the retries and the delivery log, so there is one delivery mechanism.
-- channel_kind is NULL for a managed webhook.
ALTER TABLE webhooks ADD COLUMN channel_kind TEXT;
-- Sealed JSON ("v1:" + base64): the kind's settings, secrets (URLs with tokens, bot tokens,
-- SMTP passwords) included.
ALTER TABLE webhooks ADD COLUMN channel_config TEXT;
-- JSON: minimum severity, server tags, grouping window, rate limit.
ALTER TABLE webhooks ADD COLUMN channel_routing TEXT;

-- A channel's job gathers the events of one group (rule or event type) until it falls due:
-- its payload is a JSON array of events. NULL for a managed webhook's job.
ALTER TABLE webhook_jobs ADD COLUMN group_key TEXT;
CREATE INDEX idx_webhook_jobs_open_groups ON webhook_jobs (webhook_id, group_key)
    WHERE group_key IS NOT NULL AND attempt = 0;

-- JSON array of channel ids an alert rule notifies; NULL means every channel subscribed to
-- alert events.
ALTER TABLE alert_rules ADD COLUMN channels TEXT;
