"""Services the node composes: counts, device queues, topics and replay, cluster membership,
republishing."""
