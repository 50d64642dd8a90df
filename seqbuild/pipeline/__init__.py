"""The whole chain: pipeline configs, executors (local, Ray), the run command and the dataset report."""
