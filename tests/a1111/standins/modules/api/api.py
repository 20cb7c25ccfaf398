"""Stand-in for the /sdapi/v1/options handlers of modules/api/api.py (v1.10.1), without FastAPI.

``get_config`` and ``set_config`` are the real bodies (less the checkpoint check and the save). The GET route is
registered with ``response_model=models.OptionsModel``, read when ``Api()`` is made, after the scripts loaded:
FastAPI validates the answer with that model, so keys it lacks are left out and a value of the wrong type fails
the request for every client (HTTP 500). ``get_options`` does what that route answers, with pydantic.
"""
from modules import shared
from modules.api import models


def get_config():
    options = {}
    for key in shared.opts.data.keys():
        metadata = shared.opts.data_labels.get(key)
        if metadata is not None:
            options.update({key: shared.opts.data.get(key, shared.opts.data_labels.get(key).default)})
        else:
            options.update({key: shared.opts.data.get(key, None)})
    return options


def set_config(req):
    for k, v in req.items():
        shared.opts.set(k, v, is_api=True)


def get_options():
    """The JSON body of GET /sdapi/v1/options; pydantic's ValidationError where FastAPI answers 500."""
    model = models.OptionsModel
    validated = model.model_validate(get_config()) if hasattr(model, "model_validate") else model.parse_obj(get_config())
    return validated.model_dump() if hasattr(validated, "model_dump") else validated.dict()
