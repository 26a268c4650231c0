"""Diagnosis: one image -> prediction, quality gate, heatmaps."""
