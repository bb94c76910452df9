"""Compatibility shims for third-party libraries, applied explicitly (never on import).

* :mod:`cptcore.compat.colossalai_cpu`: completes ColossalAI 0.5.0's CPU accelerator so
  every Booster plugin except Gemini's auto placement trains on CPU with gloo (the
  patches live in ``cpu_accelerator``, ``cpu_zero``, ``cpu_pipeline``, ``cpu_fsdp``).
"""
