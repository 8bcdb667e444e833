"""The multi-channel pipeline: messages, deliveries, channels, templates, workers."""
