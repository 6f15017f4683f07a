"""Pictures of plans and benchmarks (matplotlib): pure functions of a Plan and its documents."""
