"""The nodes for ComfyUI's V3 API (``comfy_api.latest``): one ``io.ComfyNode`` class per spec."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .spec import CATEGORY, MODEL_TYPE, NODES, NodeSpec, Param

FlowSRModelType = io.Custom(MODEL_TYPE)
_SOCKETS = {"IMAGE": io.Image, "MODEL": io.Model, "VAE": io.Vae, "CONDITIONING": io.Conditioning,
            MODEL_TYPE: FlowSRModelType}


def _input(param: Param) -> io.Input:
    common = dict(tooltip=param.tooltip)
    if param.type == "INT":
        return io.Int.Input(param.name, default=param.default, min=param.min, max=param.max, step=param.step,
                            control_after_generate=param.control_after_generate, **common)
    if param.type == "FLOAT":
        return io.Float.Input(param.name, default=param.default, min=param.min, max=param.max, step=param.step,
                              **common)
    if param.type == "BOOLEAN":
        return io.Boolean.Input(param.name, default=param.default, **common)
    if param.type == "COMBO":
        return io.Combo.Input(param.name, options=param.options(), default=param.default, **common)
    return _SOCKETS[param.type].Input(param.name, **common)


def _node(spec: NodeSpec) -> type[io.ComfyNode]:
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=spec.node_id, display_name=spec.display_name, category=CATEGORY,
            description=spec.description, inputs=[_input(p) for p in spec.inputs],
            outputs=[_SOCKETS[spec.output.type].Output(display_name=spec.output.name,
                                                       tooltip=spec.output.tooltip)])

    def execute(cls, **inputs) -> io.NodeOutput:
        return io.NodeOutput(spec.run(**inputs))

    return type(spec.node_id, (io.ComfyNode,), {
        "__doc__": spec.description, "__module__": __name__,
        "define_schema": classmethod(define_schema), "execute": classmethod(execute)})


NODE_LIST = [_node(spec) for spec in NODES]


class FlowSRExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODE_LIST


async def comfy_entrypoint() -> FlowSRExtension:
    return FlowSRExtension()
