"""``python -m tether.proxy.init`` — the same as ``tether-proxy init``."""

import sys

from tether.proxy.init.cli import main

sys.exit(main())
