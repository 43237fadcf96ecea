"""Evaluation: free-running synthesis of the val split, its metrics, judges and the promotion gate.
"""
