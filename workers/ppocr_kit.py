"""PaddleOCR model folders made from the PP-OCR models that RapidOCR's wheel ships as ONNX.

A config names one of those files as `rapidocr:<file stem>` (rapidocr:PP-OCRv6_det_small,
rapidocr:PP-OCRv6_rec_small). `ensure_ppocr_model` converts it once per machine into the model cache
(`$PAIRFORGE_CACHE/ppocr-v1/rapidocr-<version>/<stem>`, atomic, file-locked) as the PaddleX inference
folder that PaddleOCR's `text_detection_model_dir` / `text_recognition_model_dir` load: inference.json +
inference.pdiparams (x2paddle: ONNX -> Paddle static graph) and inference.yml (model name, the
pre/post-processing RapidOCR runs the same model with, the recognizer's character dictionary from the
ONNX metadata). Same weights and processing, so PaddleOCR reads what RapidOCR reads, with nothing to download.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata, resources
from pathlib import Path

KIT_VERSION = 1
PREFIX = "rapidocr:"
_STEM = re.compile(r"(PP-OCRv\d+)_(det|rec)_([a-z]+)")


def rapidocr_models() -> Path:
    return Path(str(resources.files("rapidocr"))) / "models"


def rapidocr_config() -> dict:
    import yaml

    return yaml.safe_load((Path(str(resources.files("rapidocr"))) / "config.yaml").read_text())


def paddlex_model_name(stem: str) -> str:
    """RapidOCR's file stem -> the PaddleX model name PaddleOCR validates against inference.yml
    (PP-OCRv6_det_small -> PP-OCRv6_small_det)."""
    m = _STEM.fullmatch(stem)
    if not m or not (rapidocr_models() / f"{stem}.onnx").exists():
        shipped = [PREFIX + p.stem for p in sorted(rapidocr_models().glob("*.onnx")) if _STEM.fullmatch(p.stem)]
        raise ValueError(f"{PREFIX}{stem}: rapidocr {metadata.version('rapidocr')} ships no such PP-OCR detection or "
                         f"recognition model; it ships {', '.join(shipped)}")
    version, task, size = m.groups()
    return f"{version}_{size}_{task}"


def ensure_ppocr_model(stem: str) -> Path:
    """The PaddleOCR folder for RapidOCR's `<stem>.onnx`, converted on first use; concurrent callers wait on a lock."""
    from filelock import FileLock

    from workers.model_refs import default_cache_dir

    name, src = paddlex_model_name(stem), rapidocr_models() / f"{stem}.onnx"
    final = default_cache_dir() / f"ppocr-v{KIT_VERSION}" / f"rapidocr-{metadata.version('rapidocr')}" / stem
    if (final / "inference.yml").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if not (final / "inference.yml").exists():
            tmp = Path(tempfile.mkdtemp(prefix=f".{stem}-", dir=final.parent))
            try:
                build_ppocr_model(src, name, tmp)
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_ppocr_model(src: Path, name: str, out: Path) -> Path:
    _require_converter()
    import onnx
    import yaml

    model = onnx.load(str(src))
    meta = {p.key: p.value for p in model.metadata_props}
    work = out / "x2paddle"
    work.mkdir(parents=True)
    onnx.save(_nearest_resize_as_conv_transpose(model), str(work / "model.onnx"))
    _x2paddle(work / "model.onnx", work / "converted")
    for ext in ("json", "pdiparams"):
        os.replace(work / "converted" / "inference_model" / f"model.{ext}", out / f"inference.{ext}")
    shutil.rmtree(work)
    cfg = rapidocr_config()
    if name.endswith("_det"):
        det = cfg["Det"]
        spec = {"PreProcess": {"transform_ops": [
            {"DecodeImage": {"channel_first": False, "img_mode": "BGR"}},
            {"DetResizeForTest": {"limit_side_len": det["limit_side_len"], "limit_type": det["limit_type"]}},
            {"NormalizeImage": {"mean": det["mean"], "std": det["std"], "scale": 1 / 255, "order": "hwc"}},
            {"ToCHWImage": None}]},
            "PostProcess": {"name": "DBPostProcess", **{k: det[k] for k in (
                "thresh", "box_thresh", "max_candidates", "unclip_ratio", "use_dilation", "score_mode")}}}
    else:
        spec = {"PreProcess": {"transform_ops": [
            {"DecodeImage": {"channel_first": False, "img_mode": "BGR"}},
            {"RecResizeImg": {"image_shape": cfg["Rec"]["rec_img_shape"]}}]},
            "PostProcess": {"name": "CTCLabelDecode", "character_dict": meta["character"].splitlines()}}
    spec = {"Global": {"model_name": name, "source": f"rapidocr {metadata.version('rapidocr')}: {src.name}"}, **spec}
    (out / "inference.yml").write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False))
    return out


def pipeline_kwargs(task: str) -> dict:
    """PaddleOCR pipeline settings (they override a model's inference.yml) for a `task` ("detection" or
    "recognition") model from this kit: as RapidOCR runs it (it keeps lines read with score >= text_score)."""
    cfg = rapidocr_config()
    if task == "recognition":
        return {"text_rec_score_thresh": cfg["Global"]["text_score"]}
    det = cfg["Det"]
    return {"text_det_limit_side_len": det["limit_side_len"], "text_det_limit_type": det["limit_type"],
            "text_det_thresh": det["thresh"], "text_det_box_thresh": det["box_thresh"],
            "text_det_unclip_ratio": det["unclip_ratio"]}


def declared_model_name(folder: str | os.PathLike) -> str:
    """The model name a PaddleOCR model folder declares (inference.yml Global.model_name)."""
    import yaml

    spec = Path(folder) / "inference.yml"
    try:
        return yaml.safe_load(spec.read_text())["Global"]["model_name"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as e:
        raise ValueError(f"{folder}: not a PaddleOCR model folder ({spec.name} with Global.model_name: {e})") from e


def _nearest_resize_as_conv_transpose(model):
    """Integer nearest-neighbour upsampling (ONNX Resize) -> a depthwise ConvTranspose with a ones kernel,
    which computes the same values. x2paddle maps the Resize to a nearest_interp whose float64 `scale`
    attribute Paddle's oneDNN executor rejects ("ConvertPirAttribute2RuntimeAttribute not support"), and
    oneDNN is PaddleOCR's default on CPU (~3x faster here)."""
    import numpy as np
    from onnx import helper, numpy_helper, shape_inference

    channels = {v.name: v.type.tensor_type.shape.dim[1].dim_value
                for v in shape_inference.infer_shapes(model).graph.value_info if len(v.type.tensor_type.shape.dim) == 4}
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes, dropped = [], set()
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        scales = consts.get(node.input[2]) if node.op_type == "Resize" and len(node.input) == 3 else None
        k = int(scales[2]) if scales is not None and scales.shape == (4,) else 0
        if (k > 0 and list(scales) == [1, 1, k, k] and channels.get(node.input[0])
                and attrs.get("mode") == b"nearest" and attrs.get("coordinate_transformation_mode") == b"asymmetric"
                and attrs.get("nearest_mode", b"round_prefer_floor") == b"floor"):
            c, kernel = channels[node.input[0]], f"{node.output[0]}.nearest_kernel"
            model.graph.initializer.append(numpy_helper.from_array(np.ones((c, 1, k, k), np.float32), kernel))
            nodes.append(helper.make_node("ConvTranspose", [node.input[0], kernel], list(node.output),
                                          group=c, kernel_shape=[k, k], strides=[k, k]))
            dropped.update(node.input[1:])
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    keep = [i for i in model.graph.initializer if i.name not in dropped or i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model


def _require_converter() -> None:
    hint = "converting RapidOCR's models for PaddleOCR needs x2paddle and onnx<1.17: pip install 'pairforge[ppocr-kit]'"
    try:
        metadata.version("x2paddle")
        onnx_version = tuple(int(v) for v in metadata.version("onnx").split(".")[:2])
    except metadata.PackageNotFoundError as e:
        raise ImportError(hint) from e
    if onnx_version >= (1, 17):  # x2paddle 1.6 imports onnx.mapping, which onnx 1.17 removed
        raise ImportError(f"{hint} (onnx {metadata.version('onnx')} is installed)")


def _x2paddle(onnx_path: Path, out: Path) -> None:
    """x2paddle's CLI in a subprocess: it imports its generated code from sys.path and may exit() on errors."""
    cmd = [sys.executable, "-m", "x2paddle.convert", "--framework=onnx", f"--model={onnx_path}",
           f"--save_dir={out}", "--disable_feedback=True"]  # feedback = a network call home
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent)
    if not (out / "inference_model" / "model.pdiparams").exists():
        raise RuntimeError(f"x2paddle could not convert {onnx_path}:\n"
                           + (proc.stdout + proc.stderr)[-3000:])
