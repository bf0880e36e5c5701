"""Throughput and kernel benchmarks; each prints one JSON object per measurement.

Not built yet: see the README's status table.
"""
