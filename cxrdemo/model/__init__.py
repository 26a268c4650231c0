"""Model: backbone registry, training loop, metrics. Imports data and the ground floor."""
