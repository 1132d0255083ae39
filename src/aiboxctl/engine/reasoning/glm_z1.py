"""GLM-Z1-0414 (Zhipu): GLM-4's ``[gMASK]<sop>`` chat format with ``<think>…</think>``; the
template opens the thinking after ``<|assistant|>`` and the model always thinks. The reply's
thinking has no newline after the tag (``<think>Okay…</think>answer``), which the shared
splitter does not care about."""

from __future__ import annotations

from aiboxctl.engine.reasoning.base import ThinkTagParser


class GLMZ1Parser(ThinkTagParser):
    name = "glm_z1"
