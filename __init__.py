"""ComfyUI entry point of the FlowSR node pack (nodes in ``nodes/``, the method in ``flowsr/``).

ComfyUI imports this folder as a package and reads ``NODE_CLASS_MAPPINGS`` before ``comfy_entrypoint``, so
exactly one is defined: the V3 extension where ``comfy_api.latest`` exists, the V1 mappings on older
ComfyUI. Imported anywhere else (pytest collecting the repository root, an editor) it registers nothing:
without ComfyUI's ``folder_paths``, or not as a package, as pytest does from a folder named like ``a.b``.
"""
import importlib.util


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a missing parent package
        return False


if __package__ and _importable("folder_paths"):
    from .nodes import host

    host.register_model_folder()
    if _importable("comfy_api.latest"):
        from .nodes.v3 import comfy_entrypoint
    else:
        from .nodes.v1 import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
