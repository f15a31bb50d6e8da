"""The `make demo` showcase: driver (runs the CLIs), report (tables and PNGs), layout (settings and paths)."""
