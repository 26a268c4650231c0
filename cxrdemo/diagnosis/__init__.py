"""Diagnosis: one image -> prediction, quality gate, in-domain check, heatmaps. Imports runs, model, data, ground."""
