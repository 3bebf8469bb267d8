"""Built-in method plugins. Each registers through the ``bench.methods`` entry-point group in
pyproject.toml, exactly as a third-party plugin would, so that path is exercised by our own methods."""
