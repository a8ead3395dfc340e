"""The InfluxDB v2 write API (README.md beside this file documents every option)."""
