"""Stand-in for modules/modelloader.py (v1.10.1): ``load_models`` and ``load_upscalers``.

Checked: load_models(model_path, model_url=None, command_path=None, ext_filter=None, download_name=None,
ext_blacklist=None, hash_prefix=None) searches command_path (when it differs from model_path and exists), then
model_path; load_upscalers() makes one instance of each Upscaler subclass, passing it the command-line option
named ``<class name lower-cased, without 'upscaler'>_models_path``, and lists all their scalers sorted by name.
"""
import os

from modules import shared
from modules.upscaler import Upscaler


def load_models(model_path, model_url=None, command_path=None, ext_filter=None, download_name=None,
                ext_blacklist=None, hash_prefix=None):
    places = []
    if command_path is not None and command_path != model_path and os.path.exists(command_path):
        places.append(command_path)
    places.append(model_path)
    output = []
    for place in places:
        for full_path in shared.walk_files(place, allowed_extensions=ext_filter):
            if ext_blacklist is not None and any(full_path.endswith(x) for x in ext_blacklist):
                continue
            if full_path not in output:
                output.append(full_path)
    if model_url is not None and not output:
        output.append(model_url)
    return output


def load_upscalers():
    data = []
    options = vars(shared.cmd_opts)
    for cls in Upscaler.__subclasses__():
        option = f"{cls.__name__.lower().replace('upscaler', '')}_models_path"
        scaler = cls(options.get(option))
        scaler.user_path = options.get(option)
        scaler.model_download_path = options.get(option) or scaler.model_path
        data += scaler.scalers
    shared.sd_upscalers = sorted(data, key=lambda x: x.name.lower())
