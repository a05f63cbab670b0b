"""Small pixel helpers shared by the readers: colour to grey, one-line error text."""

from __future__ import annotations

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
