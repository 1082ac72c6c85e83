# Makes configs/ importable as the package data `hfreg.configs` (see pyproject.toml); no code lives here.
