"""The MQTT driver (JSON, bare values, Sparkplug B): README.md here documents its options."""
