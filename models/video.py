"""A CoCosNet translating a video of labels with one exemplar, the correspondence carried over.

At every level the model searches (``patch_match`` from the coarser level's upsampled matches),
frame t's search also starts from frame t-1's matches at that level, moved by the motion of the
query features between the frames (``cocosnet_ops.video.moved_matches``): the matches stay put
where the label stays put, so the warp and the output flicker less. The dense levels (1/8 by
default) are exact and need nothing carried. ``per_frame=True`` translates every frame anew, the
baseline.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from cocosnet_ops.video import moved_matches

from .cocosnet import CoCosNet, Translation


class VideoTranslator:
    """Feed label frames one at a time: ``translator(label)`` returns frame t's ``Translation``.

    ``exemplar`` (B, 3, H, W) and ``exemplar_label`` (B, label_nc, H, W): one exemplar per video
    of the batch. ``reset()`` starts a new video.
    """

    def __init__(
        self, model: CoCosNet, exemplar: Tensor, exemplar_label: Tensor, per_frame: bool = False
    ) -> None:
        if not isinstance(per_frame, bool):
            raise TypeError(f"per_frame: expected a bool, got {type(per_frame).__name__}")
        self.model, self.exemplar, self.exemplar_label = model, exemplar, exemplar_label
        self.per_frame = per_frame
        self.reset()

    def reset(self) -> None:
        self.previous: Translation | None = None
        self.motions: dict[int, Tensor] = {}

    @torch.no_grad()
    def __call__(self, label: Tensor) -> Translation:
        previous = None if self.per_frame else self.previous
        carried = None if previous is None else self._carried(previous)
        translation = self.model(label, self.exemplar, self.exemplar_label, carried=carried)
        self.previous = translation
        return translation

    def _carried(self, previous: Translation) -> Callable[[int, Tensor], Tensor]:
        motions = self.motions

        def carried(level: int, query: Tensor) -> Tensor:
            candidates, motions[level] = moved_matches(
                query, previous.features.query[level], previous.nnfs[level], motions.get(level)
            )
            return candidates

        return carried
