"""Compiled-in defaults, as nginx's configure flags would set them, and prefix resolution."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_PREFIX = "/etc/pyngx/"
DEFAULT_CONF_PATH = "/etc/pyngx/pyngx.conf"
DEFAULT_PID_PATH = "/run/pyngx.pid"
DEFAULT_ERROR_LOG = "stderr"


@dataclass(frozen=True, slots=True)
class Paths:
    """The prefix (`-p`), the main configuration file (`-c`) and its directory."""

    prefix: str
    conf_path: str

    @property
    def conf_prefix(self) -> str:
        return os.path.dirname(self.conf_path) + "/"

    def full(self, path: str) -> str:
        """A path from the configuration, relative to the prefix as nginx resolves it."""
        if path == "stderr" or os.path.isabs(path):
            return path
        return os.path.join(self.prefix, path)


def make_paths(prefix: str | None, conf: str | None) -> Paths:
    pfx = os.path.abspath(prefix) + "/" if prefix else DEFAULT_PREFIX
    if conf is None:
        conf_path = DEFAULT_CONF_PATH if prefix is None else os.path.join(pfx, "conf/pyngx.conf")
    else:
        conf_path = conf if os.path.isabs(conf) else os.path.join(pfx, conf)
    return Paths(pfx, os.path.normpath(conf_path))
