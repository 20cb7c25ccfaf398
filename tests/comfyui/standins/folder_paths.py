"""Stand-in for ComfyUI's ``folder_paths`` (checked against Comfy-Org/ComfyUI a125cd84b054, folder_paths.py).

Same names, signatures and registration rules as the real module; the file lists are uncached and the base
path is a temporary folder that tests set with :func:`reset`.
"""
from __future__ import annotations

import os
import tempfile

supported_pt_extensions: set[str] = {'.ckpt', '.pt', '.pt2', '.bin', '.pth', '.safetensors', '.pkl', '.sft'}

folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}
base_path = ""
models_dir = ""


def reset(new_base_path: str) -> None:
    """Test hook (not in ComfyUI): start over as a fresh ComfyUI installed at ``new_base_path``."""
    global base_path, models_dir
    base_path = new_base_path
    models_dir = os.path.join(base_path, "models")
    folder_names_and_paths.clear()
    folder_names_and_paths["checkpoints"] = ([os.path.join(models_dir, "checkpoints")], supported_pt_extensions)
    folder_names_and_paths["diffusers"] = ([os.path.join(models_dir, "diffusers")], ["folder"])
    folder_names_and_paths["upscale_models"] = ([os.path.join(models_dir, "upscale_models")], supported_pt_extensions)
    folder_names_and_paths["custom_nodes"] = ([os.path.join(base_path, "custom_nodes")], set())


def map_legacy(folder_name: str) -> str:
    return {"unet": "diffusion_models", "clip": "text_encoders"}.get(folder_name, folder_name)


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    """As in ComfyUI: a known folder gains the path (first when ``is_default``); a new one gets ``set()`` extensions."""
    folder_name = map_legacy(folder_name)
    if folder_name in folder_names_and_paths:
        paths, _extensions = folder_names_and_paths[folder_name]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[map_legacy(folder_name)][0][:]


def filter_files_extensions(files, extensions) -> list[str]:
    return sorted(f for f in files if os.path.splitext(f)[-1].lower() in extensions or len(extensions) == 0)


def get_filename_list(folder_name: str) -> list[str]:
    """Files under every path of the folder, relative to that path, filtered by the folder's extensions."""
    paths, extensions = folder_names_and_paths[map_legacy(folder_name)]
    found = set()
    for root in paths:
        for directory, subdirs, files in os.walk(root, followlinks=True):
            subdirs[:] = [d for d in subdirs if d != ".git"]
            found.update(os.path.relpath(os.path.join(directory, f), root) for f in files)
    return sorted(filter_files_extensions(found, extensions))


def get_full_path(folder_name: str, filename: str) -> str | None:
    folder_name = map_legacy(folder_name)
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for root in folder_names_and_paths[folder_name][0]:
        full_path = os.path.join(root, filename)
        if os.path.isfile(full_path):
            return full_path
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    full_path = get_full_path(folder_name, filename)
    if full_path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full_path


reset(tempfile.mkdtemp(prefix="comfyui-standin-"))
