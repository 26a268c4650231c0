"""Runs: the run store, the run lifecycle, jobs, workers and the Ray backend."""
