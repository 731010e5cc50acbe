"""The errors of ``tether inject``: one root, and the user-caused ones that exit 2."""

from __future__ import annotations

from typing import ClassVar

from tether.shared.errors import FatalError


class InjectError(FatalError):
    """``tether inject`` cannot do its job (the root of this package's errors; exit 1 unless narrower)."""


class InvalidInput(InjectError):
    """The input is not what it must be: YAML that does not parse, an annotation or file that is invalid."""

    exit_code: ClassVar[int] = 2


class BadTrustAnchors(InjectError):
    """The trust anchors file (or ConfigMap) cannot be read or holds no certificate (not a document's fault,
    so never reported as one)."""

    exit_code: ClassVar[int] = 2
