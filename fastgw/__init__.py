"""fastgw: an HTTP/1.1 API gateway on uvloop and httptools."""

__version__ = "0.1.0"
