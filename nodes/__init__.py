"""ComfyUI nodes for FlowSR: ``spec`` describes them, ``host`` runs them, ``v3``/``v1`` register them."""
