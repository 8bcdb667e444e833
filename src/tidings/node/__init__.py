"""The node: the composition root that wires the layers, and the public facade."""
