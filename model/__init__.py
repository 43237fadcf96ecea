"""Bert-VITS2 as a pure PyTorch library: imports nothing from `tasks` or `flows`."""
