"""Runs: the run store, the run lifecycle, the queue, jobs, workers and the Ray backend. Imports model, data, ground.

The job side (lifecycle, slots, jobs, store) does not import torch at module level: a waiting worker and
`jobs list` load it; only the worker that trains imports model/train.
"""
