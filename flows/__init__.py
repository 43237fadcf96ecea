"""Prefect flows (thin wrappers over `tasks`) and the `vitsflow` CLI."""
