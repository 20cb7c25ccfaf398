"""Stand-in for modules/api/models.py (v1.10.1): ``OptionsModel``, built once, when the module is first imported,
from the options registered at that moment, with the real code's field types: ``Optional[typemap(type of the
default)]``, ``Any`` where the default is falsy. A1111 imports it after loading every script (webui.py
create_api); Forge's built-in ControlNet imports it while scripts load, before other extensions' scripts."""
from typing import Any, Optional

from pydantic import Field, create_model

from modules.shared import opts

fields = {}
for key, metadata in opts.data_labels.items():
    optType = opts.typemap.get(type(metadata.default), type(metadata.default)) if metadata.default else Any
    fields[key] = (Optional[optType], Field(default=metadata.default, description=metadata.label))

OptionsModel = create_model("Options", **fields)
