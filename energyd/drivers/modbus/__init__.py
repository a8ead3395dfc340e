"""The Modbus driver (TCP, RTU, RTU over TCP): README.md here documents its options."""
