"""Sizing: model facts, memory and throughput models, planner."""
