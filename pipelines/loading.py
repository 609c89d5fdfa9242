"""Loading a HeadHunter pipeline from what a user types: a tiny offline model name, a local pipeline folder or a hub
id; with the device and dtype checked before any weight is read."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MODULAR_FAMILIES", "BuiltinDefaults", "builtin_defaults", "check_device", "default_device", "is_tiny",
           "load_pipeline", "model_family", "resolve_dtype"]

#: Families the command line runs through diffusers' modular pipelines and HeadHunterGuidance.
MODULAR_FAMILIES = ("flux2", "qwenimage", "zimage", "wan")
_TINY_MODULAR = {f"tiny-{family}": family for family in MODULAR_FAMILIES}
# model_index.json class names (checked in this order: "Flux2..." before "Flux...") and their families
_CLASS_FAMILIES = (("Flux2", "flux2"), ("Flux", "flux"), ("Chroma", "chroma"), ("StableDiffusion3", "sd3"),
                   ("QwenImage", "qwenimage"), ("ZImage", "zimage"), ("WanPipeline", "wan"))
# Wan's other pipelines (image-to-video, VACE, ...) need inputs the command line does not give
_PYTHON_ONLY = (("Wan", "Wan"),)
_COMMAND_LINE_MODELS = "SD3, SD3.5, FLUX.1, Chroma, FLUX.2 Klein base, Qwen-Image, Z-Image and Wan text-to-video"

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "bfloat16": "bfloat16",
          "bf16": "bfloat16"}


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | None) -> str:
    """``device`` (default: cuda when present, else cpu), checked to exist on this machine (ValueError otherwise)."""
    import torch

    if device is None:
        return default_device()
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine (torch {torch.__version__}); "
                             "use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use --device cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        try:
            torch.empty(0, device=parsed)
        except (RuntimeError, AssertionError) as err:
            raise ValueError(f"device {device!r} is not usable here ({str(err).splitlines()[0]})") from None
    return device


def resolve_dtype(name: str, device: str, family: str) -> Any:
    """``auto`` is fp32 on CPU, fp16 for SD3 and bf16 for the others (FLUX, Chroma, ...) on an accelerator."""
    import torch

    if name == "auto":
        if device.startswith("cpu"):
            return torch.float32
        return torch.float16 if family == "sd3" else torch.bfloat16
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto, float32, float16 or bfloat16")
    return getattr(torch, DTYPES[name])


def is_tiny(model: str) -> bool:
    """Whether ``model`` names one of the tiny random-weight models (``tiny-sd3``, ``tiny-flux``, ``tiny-qwenimage``...)."""
    from headhunter.testing import TINY_MODELS

    return model.lower() in TINY_MODELS or model.lower() in _TINY_MODULAR


@dataclass(frozen=True)
class BuiltinDefaults:
    """What a built-in offline model is made for: its image size, a sensible number of steps, pipeline arguments
    beyond the common ones (short text encoders) and a prompt it understands."""

    size: int
    steps: int
    prompt: str
    call: dict[str, Any] = field(default_factory=dict)


def builtin_defaults(model: str) -> BuiltinDefaults | None:
    """The defaults of a tiny or toy model name; None for any other model."""
    from headhunter.testbed import WORLDS
    from headhunter.testing import TINY_MODULAR_CALL, TOY_CALL

    name = model.lower()
    if name in WORLDS:
        call = dict(TOY_CALL)
        return BuiltinDefaults(size=32, steps=call.pop("num_inference_steps"), prompt=WORLDS[name].prompts[0], call=call)
    if not is_tiny(name):
        return None
    family = model_family(name)
    call = {"max_sequence_length": 48} if family in ("flux", "chroma") else dict(TINY_MODULAR_CALL.get(family, {}))
    return BuiltinDefaults(size=32, steps=2, prompt="a red fox in the snow", call=call)


def model_family(model: str) -> str:
    """``"sd3"``, ``"flux"``, ``"chroma"``, ``"flux2"``, ``"qwenimage"``, ``"zimage"`` or ``"wan"`` for a tiny or toy model name,
    a local pipeline folder or a hub id (read from its model_index.json; needs the hub or the local cache)."""
    from headhunter.testing import TINY_MODELS, TOY_MODELS

    if model.lower() in TOY_MODELS:
        return "sd3"
    if model.lower() in TINY_MODELS:
        return "flux" if "flux" in model.lower() else "chroma" if "chroma" in model.lower() else "sd3"
    if model.lower() in _TINY_MODULAR:
        return _TINY_MODULAR[model.lower()]
    index = Path(model) / "model_index.json"
    if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().exists():
        raise ValueError(f"model folder {model!r} does not exist")
    try:
        if index.is_file():
            class_name = json.loads(index.read_text()).get("_class_name", "")
        elif Path(model).exists():
            raise ValueError(f"{model} is not a diffusers pipeline folder (no model_index.json)")
        else:
            from diffusers import DiffusionPipeline

            class_name = DiffusionPipeline.load_config(model).get("_class_name", "")
    except Exception as err:  # hub errors come in many classes; the user needs one line
        raise ValueError(
            f"cannot read model {model!r}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
            "Pass a local pipeline folder, or a hub id that is cached or reachable (unset HF_HUB_OFFLINE)."
        ) from None
    for prefix, family in _CLASS_FAMILIES:
        if prefix in class_name:
            return family
    for prefix, name in _PYTHON_ONLY:
        if prefix in class_name:
            raise ValueError(f"model {model!r} is a {class_name}: the command line runs {_COMMAND_LINE_MODELS}; for "
                             f"{name} use headhunter.perturb or HeadHunterGuidance from Python")
    raise ValueError(f"model {model!r} is a {class_name or 'unknown pipeline'}; the command line runs "
                     f"{_COMMAND_LINE_MODELS}")


def load_pipeline(model: str, device: str | None = None, dtype: str = "auto", offload: bool = False) -> Any:
    """A HeadHunter pipeline for a tiny or toy model name (``tiny-sd3``, ``toy-shapes``...), a local folder or a hub
    id."""
    from headhunter.testing import TINY_MODELS, TOY_MODELS, tiny_pipeline, toy_pipeline

    from .chroma import HeadHunterChromaPipeline
    from .flux import HeadHunterFluxPipeline
    from .sd3 import HeadHunterSD3Pipeline

    family = model_family(model)
    device = check_device(device)
    torch_dtype = resolve_dtype(dtype, device, family)
    if offload and device.startswith("cpu"):
        raise ValueError("--offload needs an accelerator device (e.g. --device cuda)")
    if family in MODULAR_FAMILIES:
        if offload:
            raise ValueError("--offload is not supported for FLUX.2, Qwen-Image, Z-Image and Wan (modular pipelines) "
                             "yet")
        return _load_modular(model, family, torch_dtype).to(device)
    if model.lower() in TINY_MODELS or model.lower() in TOY_MODELS:
        if model.lower() in TOY_MODELS:
            pipe = toy_pipeline(model.lower(), dtype=torch_dtype)
        else:
            pipe = tiny_pipeline(model.lower())
        if torch_dtype != pipe.transformer.dtype:
            pipe.to(dtype=torch_dtype)
    else:
        cls = {"flux": HeadHunterFluxPipeline, "chroma": HeadHunterChromaPipeline}.get(family, HeadHunterSD3Pipeline)
        try:
            pipe = cls.from_pretrained(model, dtype=torch_dtype)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot load {model!r}: {str(err).splitlines()[0]}") from None
    if offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def _load_modular(model: str, family: str, torch_dtype: Any) -> Any:
    """A diffusers modular pipeline for ``model``, wrapped for head-level guidance."""
    from headhunter.testing import tiny_modular_pipeline

    from .modular import HeadHunterModularPipeline

    if model.lower() in _TINY_MODULAR:
        pipe = tiny_modular_pipeline(family)
        if torch_dtype != pipe.transformer.dtype:
            pipe.modular.to(dtype=torch_dtype)
        return pipe
    from diffusers import ModularPipeline

    try:
        modular = ModularPipeline.from_pretrained(model)
        modular.load_components(dtype=torch_dtype)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load {model!r}: {str(err).splitlines()[0]}") from None
    return HeadHunterModularPipeline(modular, name_or_path=model)
