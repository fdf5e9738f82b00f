"""pytest plugin: per-test network reports and budgets (inactive unless asked)."""
