"""pytest runs with --import-mode=importlib, which does not put test directories on sys.path; the tests
here import their helper module (h2rig) by name."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
