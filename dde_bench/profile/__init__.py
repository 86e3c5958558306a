"""Profiling one model of a suite with torch.profiler (`dde-bench profile`); see profiler.py."""
