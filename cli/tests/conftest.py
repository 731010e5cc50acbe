"""The CLI tests import each other's helpers by name (pytest's importlib mode does not put this directory
on sys.path)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
