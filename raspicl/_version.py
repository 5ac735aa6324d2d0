"""raspicl's version, in a module of its own: the package (`raspicl.__version__`), the command
line (`raspicl --version`) and the packaging metadata (pyproject.toml) read it here, so that
none of them has to import the package's other modules for it."""

__version__ = "0.1.0"
