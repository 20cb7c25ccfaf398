"""Stand-in for modules/upscaler.py (v1.10.1): the Upscaler base class and UpscalerData.

What the extension relies on, as checked in v1.10.1:
- ``Upscaler.__init__(create_dirs=False)`` reads opts.ESRGAN_tile / ESRGAN_tile_overlap and cmd_opts.no_half,
  sets ``model_path = <models_path>/<name>`` when unset and a name is, and creates it with create_dirs;
- ``upscale(img, scale, selected_model=None)`` sets ``self.scale``, aims at ``int(size * scale) // 8 * 8``
  per side, and calls ``do_upscale(img, selected_model)`` up to 3 times while the image is smaller than that
  (stopping early when interrupted or when a call leaves the size unchanged), then resizes to the target
  exactly with LANCZOS;
- ``find_models(ext_filter=None)`` is modelloader.load_models over model_path and user_path;
- ``UpscalerData(name, path, upscaler=None, scale=4, model=None)`` keeps the path as ``data_path``.
"""
import os

from PIL import Image

from modules import modelloader, shared

LANCZOS = Image.Resampling.LANCZOS


class Upscaler:
    name = None
    model_path = None
    model_name = None
    model_url = None
    enable = True
    filter = None
    model = None
    user_path = None
    scalers: list
    tile = True

    def __init__(self, create_dirs=False):
        self.tile_size = shared.opts.ESRGAN_tile
        self.tile_pad = shared.opts.ESRGAN_tile_overlap
        self.device = shared.device
        self.scale = 1
        self.half = not shared.cmd_opts.no_half
        self.model_download_path = None
        if self.model_path is None and self.name:
            self.model_path = os.path.join(shared.models_path, self.name)
        if self.model_path and create_dirs:
            os.makedirs(self.model_path, exist_ok=True)

    def do_upscale(self, img, selected_model):
        return img

    def upscale(self, img, scale, selected_model=None):
        self.scale = scale
        target = (int((img.width * scale) // 8 * 8), int((img.height * scale) // 8 * 8))
        for attempt in range(3):
            big_enough = img.width >= target[0] and img.height >= target[1]
            if big_enough and (attempt > 0 or scale != 1):
                break
            if shared.state.interrupted:
                break
            size_before = img.size
            img = self.do_upscale(img, selected_model)
            if img.size == size_before:
                break
        if img.size != target:
            img = img.resize(target, resample=LANCZOS)
        return img

    def load_model(self, path):
        pass

    def find_models(self, ext_filter=None):
        return modelloader.load_models(model_path=self.model_path, model_url=self.model_url,
                                       command_path=self.user_path, ext_filter=ext_filter)


class UpscalerData:
    name = None
    data_path = None
    scale: int = 4
    scaler: Upscaler = None

    def __init__(self, name, path, upscaler=None, scale=4, model=None):
        self.name = name
        self.data_path = path
        self.local_data_path = path
        self.scaler = upscaler
        self.scale = scale
        self.model = model
