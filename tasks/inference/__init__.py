"""Inference: synthesis and voice conversion from checkpoints or exports, and the export bundle.
"""
