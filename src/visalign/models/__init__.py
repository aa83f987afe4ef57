"""Model builders: tiny models made offline from configs (tests, benchmarks, shipped demo policies)."""
