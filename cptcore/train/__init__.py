"""The training engine: loop, strategy interface, data loading, optimizer and schedule,
checkpoints, metrics, launch. Import submodules explicitly (they import torch)."""
