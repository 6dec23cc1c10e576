"""The lorita-bench harness: registry, data, models, budget, training, measurement, records, CLI."""
