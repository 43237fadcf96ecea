"""The data stages (ingest, text, bert, spec, stats, demo) and their libraries (audio, datasets).
Imports from `tasks.core` and `tasks.frontends` only.
"""
