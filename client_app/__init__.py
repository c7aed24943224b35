"""Flower ClientApp of FLEX-MoE."""
