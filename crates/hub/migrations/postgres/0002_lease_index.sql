-- The jobs leased now, found without reading the whole queue: the claim counts them per
-- webhook once per claim to skip webhooks at their concurrency limit.
CREATE INDEX idx_webhook_jobs_locked ON webhook_jobs (locked_until) WHERE locked_until IS NOT NULL;
