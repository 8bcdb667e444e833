-- A message's escalate step (docs/pipeline.md): {"after", "unless", "channels"} or NULL.
ALTER TABLE pipeline_messages ADD COLUMN escalate TEXT;
