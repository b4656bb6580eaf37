"""The Evaluation job: measurements of a trained model, and whether they pass the thresholds."""
