"""The same nodes for ComfyUI versions without ``comfy_api.latest`` (the V1 ``NODE_CLASS_MAPPINGS`` API)."""
from __future__ import annotations

from .spec import CATEGORY, NODES, NodeSpec, Param


def _input(param: Param) -> tuple:
    options = {key: value for key, value in dict(
        default=param.default, min=param.min, max=param.max, step=param.step, tooltip=param.tooltip,
        control_after_generate=param.control_after_generate).items() if value is not None}
    if param.type == "COMBO":
        return param.options(), options
    return param.type, options


def _node(spec: NodeSpec) -> type:
    def INPUT_TYPES(cls) -> dict:
        return {"required": {p.name: _input(p) for p in spec.inputs}}

    def run(self, **inputs) -> tuple:
        return (spec.run(**inputs),)

    return type(spec.node_id, (), {
        "__doc__": spec.description, "__module__": __name__,
        "INPUT_TYPES": classmethod(INPUT_TYPES), "RETURN_TYPES": (spec.output.type,),
        "RETURN_NAMES": (spec.output.name,), "OUTPUT_TOOLTIPS": (spec.output.tooltip,), "FUNCTION": "run",
        "CATEGORY": CATEGORY, "DESCRIPTION": spec.description, "run": run})


NODE_CLASS_MAPPINGS = {spec.node_id: _node(spec) for spec in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {spec.node_id: spec.display_name for spec in NODES}
