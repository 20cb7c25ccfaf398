"""Stand-in for ``comfy_api.latest`` (checked against Comfy-Org/ComfyUI a125cd84b054): the extension base
class and the ``io`` module that V3 nodes are written with."""
from __future__ import annotations

from abc import ABC, abstractmethod

from comfy_api.latest import _io as io


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        """Called when the extension is loaded."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """The nodes this extension provides."""


__all__ = ["ComfyExtension", "io"]
