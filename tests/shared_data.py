"""Where the tests find the full data: the CS224N files, the Quora stand-in train set, the SST trees.

Tests pass this folder explicitly (nothing in mtbert knows it). It is `../shared/data` beside the
repository, or $MTBERT_TEST_DATA; a test that needs it is skipped, with the reason, where it is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("MTBERT_TEST_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
CS224N = DATA / "cs224n"
QQP = DATA / "quora-full" / "qqp-extra-labelled.csv"

needs_shared = pytest.mark.skipif(not CS224N.is_dir(), reason=f"the full data is not at {CS224N} "
                                  "(set MTBERT_TEST_DATA to the folder holding cs224n/ and quora-full/)")
