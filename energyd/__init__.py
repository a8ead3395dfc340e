"""energyd: energy-meter telemetry daemon for plant gateways."""

from energyd.model import QUANTITIES, Quality, Quantity, Reading

__version__ = "0.1.0"
__all__ = ["QUANTITIES", "Quality", "Quantity", "Reading", "__version__"]
