"""InfluxDB 1.x `/write` (README.md beside this file documents every option)."""
