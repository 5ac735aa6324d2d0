"""The runtime contract's public names, under the module path they had before it became the
raspicl.contract package (kept so that code written against raspicl.monitor still runs)."""

from raspicl.contract import *  # noqa: F403
from raspicl.contract import __all__  # noqa: F401
