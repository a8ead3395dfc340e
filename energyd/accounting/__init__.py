"""Accounting: pure functions over plain data, no clock and no sockets inside."""
