"""``python -m tether.proxy.init`` — the same as ``tether-proxy init``."""

import sys

from tether.proxy.init.cli import main

# Guarded: a tool that imports every module (a test's import walk, pydoc) must never rewrite the host's
# iptables by importing this one.
if __name__ == "__main__":
    sys.exit(main())
