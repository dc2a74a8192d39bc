"""Measuring and inspection tools: ``make perf`` (perf.py), ``make gpu-check`` (gpu_check.py), ``ssl-bench
diagnose`` (diagnostics.py) and the tensor-operator count they use (operator_count.py)."""
