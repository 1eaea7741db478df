"""Benchmarks: redun-modal-executor against redun's own LocalExecutor, in the same run."""
