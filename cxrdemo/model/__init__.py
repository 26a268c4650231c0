"""Model: backbone registry, model.pt (checkpoint), training loop, device policy, metrics, calibration, conformal sets.

Imports data and the ground floor.
"""
