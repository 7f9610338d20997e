"""The paper's two scenarios (health: sequential; urban: parallel) and their testbed."""
