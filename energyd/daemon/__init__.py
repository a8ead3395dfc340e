"""Wiring: the clock, the scheduler, the lifecycle, sd_notify, health and metrics."""
