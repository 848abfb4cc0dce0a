"""Model-diffing methods, side by side; none imports another."""
