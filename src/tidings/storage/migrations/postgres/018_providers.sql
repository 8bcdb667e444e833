-- Email and SMS providers (docs/pipeline.md, "Email and SMS providers"): a provider's callback
-- finds its deliveries by the provider's message id.
CREATE INDEX IF NOT EXISTS pipeline_deliveries_provider ON pipeline_deliveries (provider_id, channel)
    WHERE provider_id IS NOT NULL;
