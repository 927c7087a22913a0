"""pyngx: nginx's configuration language and behaviour, in Python."""

__version__ = "0.1.0"
# The nginx release whose documented behaviour pyngx follows; reported by -v/-V so that
# tools probing `nginx -V` keep working.
NGINX_COMPAT_VERSION = "1.31.4"
NAME = "pyngx"
