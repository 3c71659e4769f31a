"""Volume-level evaluation: DeLong statistics, baselines, operating points, reports."""
