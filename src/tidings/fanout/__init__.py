"""Fan-out: the sans-I/O wire codec, the per-socket connection and the node-local registry."""
