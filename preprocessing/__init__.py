"""Corpus pipelines (one module per source of the paper's Table 1) on Apache Beam.

Not built yet: see the README's status table.
"""
