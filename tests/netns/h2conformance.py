"""h2spec's case list, one to one, in h2spec's order: the table and verdicts (h2verdicts) and the cases
(h2spec_generic, h2spec_http2, h2spec_hpack; importing them registers their cases)."""

from __future__ import annotations

import h2spec_generic
import h2spec_hpack
import h2spec_http2
from h2verdicts import CASES, H2SPEC_REVISION, INAPPLICABLE, Case, h2spec_ids, run_case

__all__ = ["CASES", "H2SPEC_REVISION", "INAPPLICABLE", "Case", "h2spec_ids", "run_case"]

_REGISTERED = (h2spec_generic, h2spec_http2, h2spec_hpack)
_ORDER = {case_id: n for n, case_id in enumerate(h2spec_ids())}
CASES.sort(key=lambda entry: _ORDER[entry.id])
