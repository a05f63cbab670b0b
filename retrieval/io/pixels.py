"""Small helpers shared by the readers: colour to grey, one-line error text, quiet library calls."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as Pillow's "L" mode


def to_grey(image: np.ndarray, colour: bool) -> np.ndarray:
    """Float32 2D grey image; a colour image (…, H, W, 3 or 4) is reduced by BT.601 luma, alpha dropped."""
    if colour:
        return np.asarray(image[..., :3], dtype=np.float32) @ _LUMA
    return np.asarray(image, dtype=np.float32)


def one_line(exc: BaseException) -> str:
    """An exception as one short line: its message (or type), newlines folded, at most 200 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@contextmanager
def quiet() -> Iterator[None]:
    """Silence library warnings and pydicom/nibabel log records while reading: we report one line per file."""
    loggers = [logging.getLogger(name) for name in ("pydicom", "nibabel")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
