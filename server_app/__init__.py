"""Flower ServerApp of FLEX-MoE."""
