"""Examples: `python -m eventic.examples.demo` runs the seed README's demo."""
