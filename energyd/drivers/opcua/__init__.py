"""The OPC UA driver (README.md in this folder)."""

# The config assembles this driver's options model, and the options model is made of the
# config's types: the config goes first, whichever of the two is imported first.
import energyd.config  # noqa: F401
