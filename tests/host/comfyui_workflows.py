"""Checks ComfyUI workflow files against node definitions in the format of ComfyUI's ``/object_info``.

Shared by the CI validator (``tests/comfyui/test_workflows.py``: our nodes' schema plus :data:`CORE_NODES`)
and the real-host driver (``comfyui_driver.py``: a running ComfyUI's ``/object_info``, which it also compares
with :data:`CORE_NODES`). Standard library only, so the driver runs in ComfyUI's own environment.

UI-format workflows (what the frontend saves and the template browser opens) store widget values as a list
in input order; API-format prompts (``POST /prompt``) store inputs by name, links as ``[node_id, slot]``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

#: The ComfyUI core nodes our workflows use, described as ``/object_info`` describes them (inputs in
#: order, with the options that matter for checking values; outputs). Checked against Comfy-Org/ComfyUI
#: a125cd84b054: nodes.py (LoadImage, SaveImage, PreviewImage, ImageScaleBy, CheckpointLoaderSimple, CLIPTextEncode)
#: and comfy_extras/nodes_images.py (ImageStitch). LoadImage's choices are the files in ComfyUI's input folder
#: (ComfyUI ships example.png); Load Checkpoint's those in models/checkpoints, here SD 2.1-base as users keep it.
CORE_NODES: dict[str, dict] = {
    "LoadImage": {
        "display_name": "Load Image",
        "input": {"required": {"image": [["example.png"], {"image_upload": True}]}},
        "output": ["IMAGE", "MASK"],
    },
    "SaveImage": {
        "display_name": "Save Image",
        "input": {"required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}},
        "output": [],
    },
    "PreviewImage": {"display_name": "Preview Image", "input": {"required": {"images": ["IMAGE", {}]}}, "output": []},
    "ImageScaleBy": {
        "display_name": "Upscale Image By",
        "input": {"required": {
            "image": ["IMAGE", {}],
            "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"], {}],
            "scale_by": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}]}},
        "output": ["IMAGE"],
    },
    "CheckpointLoaderSimple": {
        "display_name": "Load Checkpoint",
        "input": {"required": {"ckpt_name": [["v2-1_512-ema-pruned.safetensors"], {}]}},
        "output": ["MODEL", "CLIP", "VAE"],
    },
    "CLIPTextEncode": {
        "display_name": "CLIP Text Encode (Prompt)",
        "input": {"required": {"text": ["STRING", {"multiline": True, "dynamicPrompts": True}], "clip": ["CLIP", {}]}},
        "output": ["CONDITIONING"],
    },
    "ImageStitch": {
        "display_name": "Image Stitch",
        "input": {
            "required": {
                "image1": ["IMAGE", {}],
                "direction": [["right", "down", "left", "up"], {"default": "right"}],
                "match_image_size": ["BOOLEAN", {"default": True}],
                "spacing_width": ["INT", {"default": 0, "min": 0, "max": 1024, "step": 2}],
                "spacing_color": [["white", "black", "red", "green", "blue"], {"default": "white"}]},
            "optional": {"image2": ["IMAGE", {}]}},
        "output": ["IMAGE"],
    },
}

#: The model files our workflows name, as a ComfyUI that has them lists them: (node, input) -> choices.
MODEL_FILES = {("FlowSRApply", "flowsr_weights"): ["flowsr.safetensors"],
               ("CheckpointLoaderSimple", "ckpt_name"): ["v2-1_512-ema-pruned.safetensors"]}

#: Our nodes that upscale, each with a progress bar.
UPSCALE_NODES = ("FlowSRUpscale", "FlowSRRefine", "FlowSRUpscaleModel")

#: Node types that live only in the frontend: saved in UI workflows, never sent to the server.
FRONTEND_ONLY = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
#: The frontend adds a randomize/increment widget to INT inputs with these names unless told not to.
SEED_NAMES = {"seed", "noise_seed"}


def inputs_of(info: dict) -> list[tuple[str, str, dict, bool]]:
    """``(name, type, options, required)`` in the order the frontend lays them out; COMBO options under
    ``"options"`` whichever of the two ``/object_info`` spellings the node used."""
    found = []
    for section in ("required", "optional"):
        order = info.get("input_order", {}).get(section) or list(info.get("input", {}).get(section, {}))
        for name in order:
            kind, options = (list(info["input"][section][name]) + [{}])[:2]
            options = dict(options or {})
            if isinstance(kind, list):
                kind, options["options"] = "COMBO", kind
            found.append((name, kind, options, section == "required"))
    return found


def is_widget(kind: str, options: dict) -> bool:
    return kind in WIDGET_TYPES and not options.get("forceInput")


def widget_slots(info: dict) -> list[tuple[str, Optional[tuple]]]:
    """The entries of a node's ``widgets_values``: ``(name, (type, options))`` for an input's value, and
    ``(name, None)`` for the extra widgets the frontend adds (seed control, image upload button)."""
    slots = []
    for name, kind, options, _ in inputs_of(info):
        if not is_widget(kind, options):
            continue
        slots.append((name, (kind, options)))
        control = options.get("control_after_generate")
        if kind == "INT" and (control or (control is None and name in SEED_NAMES)):
            slots.append((f"{name} control_after_generate", None))
        if options.get("image_upload"):
            slots.append(("upload", None))
    return slots


def value_problem(kind: str, options: dict, value: Any) -> Optional[str]:
    """Why ComfyUI would refuse ``value`` for an input of this kind (None when it takes it)."""
    if kind == "COMBO":
        return None if value in options.get("options", []) else f"{value!r} is not one of {options.get('options')}"
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and value != int(value)):
            return f"{value!r} is not {kind}"
        if "min" in options and value < options["min"]:
            return f"{value} is below the minimum {options['min']}"
        if "max" in options and value > options["max"]:
            return f"{value} is above the maximum {options['max']}"
        return None
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not BOOLEAN"
    if kind == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not STRING"
    return f"{kind} takes a link, not the value {value!r}"


def check_ui_workflow(workflow: dict, object_info: dict) -> list[str]:
    """Everything in a UI-format workflow that ComfyUI's frontend or server would not accept."""
    problems: list[str] = []
    nodes = {node["id"]: node for node in workflow["nodes"]}
    if len(nodes) != len(workflow["nodes"]):
        problems.append("node ids repeat")
    links = {link[0]: link for link in workflow.get("links", [])}
    if len(links) != len(workflow.get("links", [])):
        problems.append("link ids repeat")
    if workflow.get("last_node_id", 0) < max(nodes, default=0) or \
            workflow.get("last_link_id", 0) < max(links, default=0):
        problems.append("last_node_id/last_link_id are smaller than ids in use")
    for node in nodes.values():
        where = f"node {node['id']} ({node['type']})"
        if node["type"] in FRONTEND_ONLY:
            continue
        info = object_info.get(node["type"])
        if info is None:
            problems.append(f"{where}: no such node type")
            continue
        problems += [f"{where}: {p}" for p in _check_node(node, info, links)]
    for link_id, origin, origin_slot, target, target_slot, kind in links.values():
        where = f"link {link_id}"
        if origin not in nodes or target not in nodes:
            problems.append(f"{where}: joins a node that does not exist")
            continue
        outputs, inputs = nodes[origin].get("outputs", []), nodes[target].get("inputs", [])
        if origin_slot >= len(outputs) or link_id not in (outputs[origin_slot].get("links") or []):
            problems.append(f"{where}: node {origin} output {origin_slot} does not list it")
        elif outputs[origin_slot]["type"] != kind:
            problems.append(f"{where}: carries {kind} from an output of type {outputs[origin_slot]['type']}")
        if target_slot >= len(inputs) or inputs[target_slot].get("link") != link_id:
            problems.append(f"{where}: node {target} input {target_slot} does not hold it")
        elif inputs[target_slot]["type"] != kind:
            problems.append(f"{where}: carries {kind} into an input of type {inputs[target_slot]['type']}")
    return problems


def _check_node(node: dict, info: dict, links: dict) -> list[str]:
    problems = []
    slots = widget_slots(info)
    values = node.get("widgets_values", [])
    if len(values) != len(slots):
        problems.append(f"{len(values)} widget values for the widgets {[name for name, _ in slots]}")
    for (name, spec), value in zip(slots, values):
        problem = spec and value_problem(spec[0], spec[1], value)
        if problem:
            problems.append(f"{name}: {problem}")
    sockets = {name: (kind, required) for name, kind, options, required in inputs_of(info)
               if not is_widget(kind, options)}
    connected = set()
    for entry in node.get("inputs", []):
        if entry["name"] not in sockets:
            if "widget" not in entry:  # a widget turned into a socket carries a "widget" entry
                problems.append(f"input {entry['name']!r} does not exist")
            continue
        if entry["type"] != sockets[entry["name"]][0]:
            problems.append(f"input {entry['name']!r} is {sockets[entry['name']][0]}, not {entry['type']}")
        if entry.get("link") is not None:
            if entry["link"] not in links:
                problems.append(f"input {entry['name']!r} holds link {entry['link']}, which does not exist")
            connected.add(entry["name"])
    problems += [f"required input {name!r} is not connected"
                 for name, (_, required) in sockets.items() if required and name not in connected]
    outputs = [entry["type"] for entry in node.get("outputs", [])]
    if outputs != list(info["output"]):
        problems.append(f"outputs {outputs} differ from the node's {list(info['output'])}")
    return problems


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API-format prompt that ComfyUI's frontend queues for a UI-format workflow."""
    origins = {link[0]: (str(link[1]), link[2]) for link in workflow.get("links", [])}
    prompt = {}
    for node in sorted(workflow["nodes"], key=lambda n: n["id"]):
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) != 0:
            continue
        info = object_info[node["type"]]
        inputs = {name: value for (name, spec), value in zip(widget_slots(info), node.get("widgets_values", []))
                  if spec is not None}
        inputs.update({entry["name"]: list(origins[entry["link"]]) for entry in node.get("inputs", [])
                       if entry.get("link") is not None})
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"],
                                   "_meta": {"title": node.get("title", info.get("display_name", node["type"]))}}
    return prompt


def check_api_prompt(prompt: dict, object_info: dict) -> list[str]:
    """Everything in an API-format prompt that ``POST /prompt`` would refuse."""
    problems = []
    for node_id, node in prompt.items():
        where = f"node {node_id} ({node.get('class_type')})"
        info = object_info.get(node.get("class_type"))
        if info is None:
            problems.append(f"{where}: no such node type")
            continue
        known = {name for name, *_ in inputs_of(info)}
        problems += [f"{where}: input {name!r} does not exist" for name in node["inputs"] if name not in known]
        for name, kind, options, required in inputs_of(info):
            value = node["inputs"].get(name)
            if value is None:
                if required:
                    problems.append(f"{where}: required input {name!r} is missing")
            elif isinstance(value, list):
                origin = prompt.get(str(value[0]))
                produced = object_info.get(origin["class_type"], {}).get("output", []) if origin else []
                if len(value) != 2 or value[1] >= len(produced) or produced[value[1]] != kind:
                    problems.append(f"{where}: {name!r} ({kind}) is linked to {value}, which gives no {kind}")
            elif is_widget(kind, options):
                problem = value_problem(kind, options, value)
                if problem:
                    problems.append(f"{where}: {name}: {problem}")
            else:
                problems.append(f"{where}: {name!r} ({kind}) needs a link")
    return problems


def node_types(path: Path) -> list[str]:
    return [node["type"] for node in json.loads(path.read_text())["nodes"]]


def simplest_workflow(workflows: list[Path]) -> Path:
    """The workflow of fewest nodes that loads an image, upscales it and saves it. Every shipped workflow
    runs with the built-in model (the driver runs them all in a ComfyUI without weights files)."""
    suitable = [p for p in workflows if {"LoadImage", "FlowSRUpscale", "SaveImage"} <= set(node_types(p))]
    return min(suitable, key=lambda path: len(node_types(path)))
