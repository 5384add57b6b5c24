"""Released ReferFormer checkpoints (``checkpoint.pth`` of wjn922/ReferFormer and of the
methods that keep its layout) -> rvos checkpoints.

The official file is a pickle of ``{"model": state_dict, ...}`` (sometimes with optimizer and
scheduler entries); it is read with ``torch.load(weights_only=True)``, so nothing in it runs.
The architecture is read off the tensors' names and shapes (:func:`config_from_state`), the
names are mapped (:func:`convert_state`), and every key is accounted for: a key the model
does not have, a key it misses, or a shape it does not take is an error that lists them.

Name mapping (official -> rvos):
- ``backbone.0.body.*`` -> ``backbone.body.*`` (the official Joiner's position-encoding slot
  ``backbone.1`` has no weights);
- ``transformer.decoder.bbox_embed.*`` dropped: the same tensors as ``bbox_embed.*`` (the
  official code hangs the box heads on the decoder for box refinement);
- ``text_encoder.embeddings.position_ids`` dropped: a constant buffer older ``transformers``
  versions saved;
- every other key unchanged.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from rvos.errors import RVOSError
from rvos.models.referformer.config import ReferFormerConfig, ReferFormerTextConfig

# keys every ReferFormer-layout checkpoint has; a file without them is something else
SIGNATURE_KEYS = ("query_embed.weight", "transformer.level_embed", "controller.layers.0.weight",
                  "pixel_decoder.mask_features.weight", "text_encoder.embeddings.word_embeddings.weight")
DROPPED = (re.compile(r"^transformer\.decoder\.bbox_embed\."),
           re.compile(r"^text_encoder\.embeddings\.position_ids$"),
           re.compile(r"\.num_batches_tracked$"))


# Plain containers the official training pickles beside the weights: its command-line options
# (``args``) and the MultiStepLR state (milestones are a Counter). Allowed in the
# weights-only unpickler: they hold data only and run no code when restored.
SAFE_GLOBALS = [argparse.Namespace, collections.Counter]


def read_official_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The state dict of an official ``.pth`` (its ``model`` entry, SOC's
    ``model_state_dict``, or the file itself when it is a bare state dict), loaded with
    ``weights_only=True``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RVOSError("official checkpoint not found", path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # not a pickle, truncated, or holding objects beyond tensors
        raise RVOSError(f"cannot read the checkpoint with weights_only=True "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]})", path) from None
    state = None
    if isinstance(obj, dict):   # "model": ReferFormer's training; "model_state_dict": SOC's
        state = obj.get("model", obj.get("model_state_dict", obj))
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise RVOSError("the file holds no state dict (expected a dict with a 'model' or "
                        "'model_state_dict' entry of tensors, as the official trainings save)", path)
    return state


def count_children(state: dict[str, Tensor], prefix: str) -> int:
    """Number of consecutive indexed children ``prefix<i>.`` in the keys."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def backbone_name(state: dict[str, Tensor], source: Path | None) -> str:
    if "backbone.0.body.layer1.0.conv1.weight" in state:
        blocks = count_children(state, "backbone.0.body.layer3.")
        names = {6: "resnet50", 23: "resnet101"}
        if blocks not in names:
            raise RVOSError(f"a ResNet backbone with {blocks} blocks in layer3 is not one "
                            f"ReferFormer releases (resnet50: 6, resnet101: 23)", source)
        return names[blocks]
    patch = state.get("backbone.0.body.patch_embed.proj.weight")
    if patch is None:
        raise RVOSError("unknown backbone: neither ResNet (backbone.0.body.layer1...) nor Swin "
                        "(backbone.0.body.patch_embed...) keys", source)
    video = patch.dim() == 5
    embed = patch.shape[0]
    depths = tuple(count_children(state, f"backbone.0.body.layers.{i}.blocks.") for i in range(4))
    if video:
        from rvos.models.referformer.video_swin import VARIANTS
    else:
        from rvos.models.referformer.swin import VARIANTS
    bias_key = next(k for k in state if k.endswith("relative_position_bias_table"))
    table = state[bias_key].shape[0]
    for name, settings in VARIANTS.items():
        s = settings if isinstance(settings, dict) else dataclasses.asdict(settings)
        window = s["window_size"]
        window = tuple(window) if isinstance(window, (tuple, list)) else (window, window)
        size = 1
        for w in window:
            size *= 2 * w - 1
        if s["embed_dim"] == embed and tuple(s["depths"]) == depths and size == table:
            return name
    raise RVOSError(f"a {'Video ' if video else ''}Swin backbone with embed_dim {embed}, depths "
                    f"{list(depths)} and a {table}-entry position table is not one rvos knows "
                    f"(known: {', '.join(VARIANTS)})", source)


def dynamic_head_shape(num_params: int, mask_dim: int) -> tuple[int, int, bool]:
    """(controller_layers, dynamic_mask_channels, rel_coord) whose parameter count is
    ``num_params``; the official defaults (3, 8, True) first."""
    candidates = [(3, 8, True)] + [(layers, ch, rel) for rel in (True, False)
                                   for ch in (8, 16, 4, 32) for layers in (2, 3, 4, 5)]
    for layers, ch, rel in candidates:
        cin = mask_dim + 2 if rel else mask_dim
        if ch * cin + ch * ch * (layers - 2) + ch + ch * (layers - 1) + 1 == num_params:
            return layers, ch, rel
    raise RVOSError(f"the dynamic mask head's {num_params} generated parameters fit no "
                    f"(layers, channels, relative coordinates) setting")


def text_config_from_state(state: dict[str, Tensor], prefix: str = "text_encoder."
                           ) -> ReferFormerTextConfig:
    """RoBERTa's size from its tensors under ``prefix`` (head count: 64 channels a head, as in
    every RoBERTa; it is not in the shapes)."""
    words = state[prefix + "embeddings.word_embeddings.weight"]
    return ReferFormerTextConfig(
        vocab_size=words.shape[0], hidden_size=words.shape[1],
        num_layers=count_children(state, prefix + "encoder.layer."),
        num_heads=max(1, words.shape[1] // 64),
        intermediate_size=state[prefix + "encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_positions=state[prefix + "embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state[prefix + "embeddings.token_type_embeddings.weight"].shape[0])


def detector_fields(state: dict[str, Tensor]) -> dict:
    """The :class:`ReferFormerConfig` fields of the parts every family keeps under the
    official names (queries, class heads, the deformable transformer), read from the tensors.
    The attention head count is not in the shapes (sampling offsets are heads x points): the
    official 8."""
    heads = 8
    levels = state["transformer.level_embed"].shape[0]
    points = lambda key: state[key].shape[0] // (heads * levels)  # noqa: E731
    return dict(
        num_classes=state["class_embed.0.weight"].shape[0],
        hidden_dim=state["query_embed.weight"].shape[1], nheads=heads,
        enc_layers=count_children(state, "transformer.encoder.layers."),
        dec_layers=count_children(state, "transformer.decoder.layers."),
        dim_feedforward=state["transformer.encoder.layers.0.linear1.weight"].shape[0],
        num_queries=state["query_embed.weight"].shape[0], num_feature_levels=levels,
        enc_n_points=points("transformer.encoder.layers.0.self_attn.attention_weights.weight"),
        dec_n_points=points("transformer.decoder.layers.0.cross_attn.attention_weights.weight"),
        with_box_refine="transformer.decoder.bbox_embed.0.layers.0.weight" in state)


def config_from_state(state: dict[str, Tensor], source: Path | None = None) -> ReferFormerConfig:
    """The architecture of an official state dict, read from its names and shapes."""
    missing = [k for k in SIGNATURE_KEYS if k not in state]
    if missing:
        raise RVOSError(f"not a ReferFormer-layout checkpoint: it lacks {', '.join(missing)}",
                        source)
    mask_dim = state["pixel_decoder.mask_features.weight"].shape[0]
    last = count_children(state, "controller.layers.") - 1
    layers, channels, rel = dynamic_head_shape(state[f"controller.layers.{last}.weight"].shape[0], mask_dim)
    return ReferFormerConfig(
        backbone=backbone_name(state, source), **detector_fields(state),
        mask_dim=mask_dim, controller_layers=layers, dynamic_mask_channels=channels,
        rel_coord=rel, text=text_config_from_state(state))


def rename_backbone(key: str) -> str:
    """``backbone.0.*`` -> ``backbone.*`` (the official Joiner's position-encoding slot
    ``backbone.1`` has no weights); every other key unchanged."""
    return "backbone." + key[len("backbone.0."):] if key.startswith("backbone.0.") else key


def map_official_state(state: dict[str, Tensor], expected: dict[str, Tensor],
                       source: Path | None = None, rename: Callable[[str], str] = rename_backbone,
                       dropped: tuple[re.Pattern, ...] = DROPPED,
                       model_name: str = "ReferFormer") -> dict[str, Tensor]:
    """Official names -> rvos names for any family: keys matching ``dropped`` are left out
    (the decoder's duplicate box heads only after a check that they equal ``bbox_embed.*``),
    the others renamed by ``rename``; the result is checked against the model's own state dict
    ``expected``: every key mapped, none left over, every shape equal (an RVOSError lists what
    is not, naming ``model_name``). Tensors take the model's dtypes."""
    out = {rename(k): v for k, v in state.items() if not any(p.search(k) for p in dropped)}
    for key, value in state.items():   # the dropped duplicate must really be a duplicate
        if key.startswith("transformer.decoder.bbox_embed."):
            twin = key[len("transformer.decoder."):]
            if twin in state and not torch.equal(state[twin], value):
                raise RVOSError(f"{key} differs from {twin}: not the official box refinement "
                                f"layout", source)
    unexpected = sorted(set(out) - set(expected))
    missing = sorted(set(expected) - set(out))
    if unexpected or missing:
        parts = []
        if unexpected:
            parts.append(f"{len(unexpected)} keys rvos's {model_name} does not have "
                         f"(another architecture?): {', '.join(unexpected[:12])}"
                         + (" ..." if len(unexpected) > 12 else ""))
        if missing:
            parts.append(f"{len(missing)} keys missing: {', '.join(missing[:12])}"
                         + (" ..." if len(missing) > 12 else ""))
        raise RVOSError("; ".join(parts), source)
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
             for k, v in out.items() if v.shape != expected[k].shape]
    if wrong:
        raise RVOSError(f"{len(wrong)} tensors of the wrong shape: {', '.join(wrong[:8])}"
                        + (" ..." if len(wrong) > 8 else ""), source)
    return {k: v.to(expected[k].dtype) for k, v in out.items()}


def convert_state(state: dict[str, Tensor], expected: dict[str, Tensor],
                  source: Path | None = None) -> dict[str, Tensor]:
    """ReferFormer's official names -> rvos names (the mapping of this module's docstring),
    checked against the model's own state dict ``expected``."""
    return map_official_state(state, expected, source)
