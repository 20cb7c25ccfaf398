"""Average the weights of small models that share an architecture and a starting point (a "model soup").

    python -m train.average_weights --out soup.safetensors runs/a.safetensors runs/b.safetensors --weights 0.75 0.25

Two continuations of the same model (the built-in versions are) sit in one basin of the loss, so their weighted
mean is a model too, usually between them and sometimes better than both; built-in versions 5 and 6 are such means
(flowsr/weights/MODEL_CARD.md). Inputs are files in the small model's format (``train.models.export_model``
writes them); the output records each input and its weight in the header key ``flowsr_average``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors import safe_open

from flowsr.errors import CheckpointError
from flowsr.models.tiny import TinyFlowSR, load_tiny
from flowsr.weights_file import FLOWSR_MODEL_KEY

from .models import EXPORT_DTYPES, BuiltModel, export_model

AVERAGE_KEY = "flowsr_average"


def average_models(models: list[TinyFlowSR], weights: list[float]) -> TinyFlowSR:
    """A new model whose every tensor is ``sum(w_i * tensor_i)``; weights are normalised to sum to 1."""
    if len(models) != len(weights) or not models or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"need one non-negative weight per model, not all zero (got {weights})")
    if any(model.config != models[0].config for model in models):
        raise ValueError("the models have different architectures; only the same architecture can be averaged")
    total = sum(weights)
    states = [model.state_dict() for model in models]
    averaged = {name: sum(w / total * state[name].float() for w, state in zip(weights, states))
                for name in states[0]}
    soup = TinyFlowSR(models[0].config)
    soup.load_state_dict(averaged)
    return soup.eval()


def input_record(path: Path, weight: float) -> dict:
    """One input of the average: its name, weight and header (how it was trained), less the shared architecture."""
    with safe_open(str(path), framework="pt") as f:
        header = {key: value for key, value in (f.metadata() or {}).items() if key != FLOWSR_MODEL_KEY}
    return {"file": path.name, "weight": weight, "metadata": header}


def average_metadata(paths: list[Path], weights: list[float]) -> dict[str, str]:
    return {AVERAGE_KEY: json.dumps({"inputs": [input_record(p, w) for p, w in zip(paths, weights)]})}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", type=Path, nargs="+", help="small-model files (.safetensors), same architecture")
    parser.add_argument("--weights", type=float, nargs="+", help="one per input (default: equal)")
    parser.add_argument("--out", type=Path, required=True, help="the averaged model (written atomically)")
    parser.add_argument("--dtype", choices=sorted(EXPORT_DTYPES), default="fp16",
                        help="floating tensors of the output (fp16: as the built-in model ships)")
    args = parser.parse_args(argv)
    weights = args.weights or [1.0] * len(args.inputs)
    if len(weights) != len(args.inputs):
        parser.error(f"{len(args.inputs)} inputs but {len(weights)} weights")
    try:
        soup = average_models([load_tiny(path) for path in args.inputs], weights)
    except (ValueError, CheckpointError) as error:
        parser.error(str(error))
    export_model(BuiltModel(soup), args.out, args.dtype, average_metadata(args.inputs, weights))
    print(f"wrote {args.out}: " + ", ".join(f"{w:g} x {p.name}" for w, p in zip(weights, args.inputs)))


if __name__ == "__main__":
    main()
