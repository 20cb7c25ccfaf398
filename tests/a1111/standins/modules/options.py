"""Stand-in for modules/options.py (v1.10.1): OptionInfo, options_section and the Options lookups.

Checked: ``OptionInfo(default, label, component, component_args, onchange, section, refresh, comment_before,
comment_after, infotext, restrict_api, category_id)`` and ``.info()``; ``options_section`` takes a 2- or
3-tuple (the third item is the category); ``Options.__getattr__`` returns the saved value, else the
registered default, else raises AttributeError; ``add_option(key, info)`` registers and sets the default;
``typemap``; ``set(key, value, is_api, run_callbacks)`` as the real one (the freeze and restricted checks of
``__setattr__`` left out: this stand-in has no such flags): unchanged -> False; set the value, then call
``info.onchange()``; if that raises, ``errors.display(e, "changing setting KEY to VALUE")``, the old value back,
False. The web UI's Apply, its quicksettings and POST /sdapi/v1/options all go through ``set``.
"""
from modules import errors


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.refresh = refresh
        self.do_not_save = False
        self.comment_before = comment_before
        self.comment_after = comment_after
        self.infotext = infotext
        self.restrict_api = restrict_api

    def info(self, info):
        self.comment_after += f"<span class='info'>({info})</span>"
        return self


def options_section(section_identifier, options_dict):
    for info in options_dict.values():
        info.section = tuple(section_identifier[:2])
        if len(section_identifier) == 3:
            info.category_id = section_identifier[2]
    return options_dict


class Options:
    typemap = {int: float}

    def __init__(self, data_labels):
        object.__setattr__(self, "data_labels", data_labels)
        object.__setattr__(self, "data", {k: v.default for k, v in data_labels.items()})

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key, value):
        if key in self.data or key in self.data_labels:
            self.data[key] = value
            return
        object.__setattr__(self, key, value)

    def add_option(self, key, info):
        self.data_labels[key] = info
        if key not in self.data and not info.do_not_save:
            self.data[key] = info.default

    def set(self, key, value, is_api=False, run_callbacks=True):
        oldval = self.data.get(key, None)
        if oldval == value:
            return False
        option = self.data_labels[key]
        if option.do_not_save:
            return False
        if is_api and option.restrict_api:
            return False
        setattr(self, key, value)
        if run_callbacks and option.onchange is not None:
            try:
                option.onchange()
            except Exception as e:
                errors.display(e, f"changing setting {key} to {value}")
                setattr(self, key, oldval)
                return False
        return True
