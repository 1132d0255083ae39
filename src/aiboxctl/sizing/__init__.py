"""Sizing: memory and throughput models, profiles, planner (model facts live in models/)."""
