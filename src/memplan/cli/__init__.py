"""Command-line interface: one module per command; ``main`` registers them."""
