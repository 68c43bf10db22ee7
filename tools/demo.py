#!/usr/bin/env python
"""Run a trained model on images, a video or a webcam and draw its predictions.

detectron2's ``demo/demo.py`` for this project's models (InstanceFCN, FCIS, BiSeg) and for the
Mask R-CNN baselines, with the same flags, built on detectron2's ``DefaultPredictor``,
``Visualizer`` / ``VideoVisualizer`` and ``read_image``.

Examples (PY=.venv/bin/python, W=a trained checkpoint such as
output/shapes/fcis_R18_cpu/model_final.pth)::

  # images (several paths, a folder or a quoted glob): one PNG per image in vis/
  $PY tools/demo.py --config-file configs/shapes/fcis_R18_cpu.yaml \\
      --input 'images/*.jpg' --output vis/ --opts MODEL.WEIGHTS $W

  # one image to one file, detections scored 0.3 or more, drawn at twice the image size
  $PY tools/demo.py --config-file configs/shapes/mask_rcnn_R18_FPN_GN_cpu.yaml \\
      --input a.jpg --output a_pred.png --confidence-threshold 0.3 --scale 2 \\
      --opts MODEL.WEIGHTS output/main_job/model_final.pth

  # BiSeg: the instances, and with --semantic also its semantic segmentation (vis/<name>_sem_seg.png)
  $PY tools/demo.py --config-file configs/shapes/biseg_fused_7_9_R18_cpu.yaml --semantic \\
      --input images/ --output vis/ --opts MODEL.WEIGHTS $W

  # InstanceFCN: class-agnostic segment proposals, labelled "proposal"
  $PY tools/demo.py --config-file configs/shapes/instance_fcn_R18_cpu.yaml \\
      --input 'images/*.png' --output vis/ --opts MODEL.WEIGHTS $W

  # a video, frame by frame, to vis/clip.mp4 (codec mp4v)
  $PY tools/demo.py --config-file configs/shapes/fcis_R18_cpu.yaml \\
      --video-input clip.mp4 --output vis/ --opts MODEL.WEIGHTS $W

  # the webcam, shown in a window (needs a display); Esc quits
  $PY tools/demo.py --config-file configs/shapes/fcis_R18_cpu.yaml --webcam --opts MODEL.WEIGHTS $W

What it does beyond detectron2's demo:

* ``--confidence-threshold`` (default 0.5) is written, before the model is built, into the score
  threshold of the config's ``MODEL.META_ARCHITECTURE``: ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``
  (Mask R-CNN), ``MODEL.FCIS.SCORE_THRESH_TEST`` (FCIS, BiSeg),
  ``MODEL.INSTANCE_FCN.SCORE_THRESH_TEST`` (InstanceFCN); the drawn instances are filtered by it
  as well.
* ``MODEL.WEIGHTS`` is required: a randomly initialised model draws meaningless masks.
  ``--allow-random-weights`` runs one anyway (to try the tool out). The checkpoint is loaded
  strictly: one that does not fit the model built from the config is an error, not a warning.
* ``--output`` is a folder (it exists, ends with ``/`` or has no extension; it is created), where
  each image ``<name>.<ext>`` gives ``<name>.png`` and a video ``<name>.mp4``; or, for a single
  input, a file name. Without ``--output`` the results are shown in a window, which needs a
  display and an OpenCV with GUI support.
* Class names come from the metadata of the config's first ``DATASETS.TEST`` (``class <i>`` when
  it has none that fit ``MODEL.ROI_HEADS.NUM_CLASSES``).
"""
import argparse
import glob
import os
import sys
import time

import cv2
import numpy as np

DEFAULT_CONFIG = "configs/shapes/fcis_R18_cpu.yaml"
WINDOW_NAME = "instfcn-d2 demo"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_FPS_FALLBACK = 25.0
VIDEO_PROGRESS_EVERY = 25  # frames

# The config key(s) holding each meta-architecture's test-time score threshold.
SCORE_THRESH_KEYS = {
    "GeneralizedRCNN": ("MODEL.ROI_HEADS.SCORE_THRESH_TEST",),
    "FCIS": ("MODEL.FCIS.SCORE_THRESH_TEST",),
    "BiSeg": ("MODEL.FCIS.SCORE_THRESH_TEST",),
    "InstanceFCN": ("MODEL.INSTANCE_FCN.SCORE_THRESH_TEST",),
    "RetinaNet": ("MODEL.RETINANET.SCORE_THRESH_TEST",),
    "PanopticFPN": ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH"),
}
# Meta-architectures known to give no "sem_seg" output (--semantic is refused before building them).
WITHOUT_SEM_SEG = ("GeneralizedRCNN", "FCIS", "InstanceFCN", "RetinaNet")


class DemoError(RuntimeError):
    """A problem with the command line or the inputs, reported as one clear line."""


def get_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"path to config file (default: {DEFAULT_CONFIG})")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--webcam", action="store_true", help="take inputs from the webcam (needs a display)")
    source.add_argument("--video-input", metavar="FILE", help="path to a video file")
    source.add_argument("--input", nargs="+", metavar="PATH",
                        help="input images: files, folders (their images) or glob patterns such as 'dir/*.jpg' (quoted)")
    parser.add_argument("--output", metavar="PATH",
                        help="a folder for the drawn images / video, or a file name when there is one input; "
                             "without it the results are shown in a window (needs a display)")
    parser.add_argument("--confidence-threshold", type=_unit_float, default=0.5,
                        help="minimum score of the instances kept, set as the model's own score threshold (default: 0.5)")
    parser.add_argument("--semantic", action="store_true",
                        help="BiSeg: also draw the sem_seg output (argmax; label 0, background, left undrawn), "
                             "as <name>_sem_seg.png / <name>_sem_seg.mp4 or a second window")
    parser.add_argument("--scale", type=_positive_float, default=1.0,
                        help="size of the drawn output relative to the input (default: 1.0)")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="run even without MODEL.WEIGHTS (a randomly initialised model: meaningless output)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs, e.g. --opts MODEL.WEIGHTS model_final.pth MODEL.DEVICE cuda")
    return parser


def _unit_float(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


# ----------------------------------------------------------------------------------------------
# config, weights, model
# ----------------------------------------------------------------------------------------------
def setup_cfg(args):
    """The config of ``--config-file`` + ``--opts`` with ``--confidence-threshold`` mapped onto the
    meta-architecture's score threshold key(s); frozen."""
    from instfcn_d2.config import get_instfcn_cfg

    try:
        cfg = get_instfcn_cfg(args.config_file, args.opts)
    except (KeyError, ValueError, FileNotFoundError) as e:  # misspelt key, odd overrides, missing file
        raise DemoError(str(e)) from None
    arch = cfg.MODEL.META_ARCHITECTURE
    keys = SCORE_THRESH_KEYS.get(arch)
    if keys is None:
        print(f"[demo] note: no score threshold key known for META_ARCHITECTURE {arch}; "
              f"--confidence-threshold only filters the drawn instances", flush=True)
    for key in keys or ():
        node = cfg
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = args.confidence_threshold
    cfg.freeze()
    return cfg


def check_weights(cfg, allow_random_weights):
    """The project's weights check (``instfcn_d2.checkpoint.require_trained_weights``), as a
    :class:`DemoError`."""
    from instfcn_d2.checkpoint import MissingWeightsError, require_trained_weights

    try:
        require_trained_weights(cfg, allow_random_weights, example="--opts MODEL.WEIGHTS path/to/model_final.pth")
    except MissingWeightsError as e:
        raise DemoError(str(e)) from None


def build_predictor(cfg):
    """detectron2's ``DefaultPredictor`` with the checkpoint loaded strictly
    (``instfcn_d2.engine.build_predictor``; detectron2's own loader only warns about parameters
    that do not fit, leaving them random)."""
    from instfcn_d2.checkpoint import CheckpointMismatchError
    from instfcn_d2.engine import build_predictor as build

    try:
        return build(cfg)
    except CheckpointMismatchError as e:
        raise DemoError(f"{e}\nMODEL.WEIGHTS must be a checkpoint of the model that --config-file and --opts "
                        "build (the same MODEL.* settings as in training)") from None


def _num_classes(cfg):
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == "RetinaNet":
        return cfg.MODEL.RETINANET.NUM_CLASSES
    if arch in ("GeneralizedRCNN", "FCIS", "BiSeg", "PanopticFPN"):
        return cfg.MODEL.ROI_HEADS.NUM_CLASSES
    return None


def demo_metadata(cfg):
    """Class names and colours to draw with: the metadata of ``cfg.DATASETS.TEST[0]``, checked
    against the model: InstanceFCN's proposals (class 0) are named "proposal"; thing classes that
    do not fit the model's number of classes become ``class <i>``; ``stuff_classes`` (the sem_seg
    labels, background first) are ``["background"] + thing_classes`` unless the dataset's fit."""
    from detectron2.data import MetadataCatalog
    from detectron2.data.catalog import Metadata

    base = MetadataCatalog.get(cfg.DATASETS.TEST[0]).as_dict() if len(cfg.DATASETS.TEST) else {}
    fields = {k: v for k, v in base.items() if k in ("thing_classes", "thing_colors", "stuff_classes", "stuff_colors")}
    if cfg.MODEL.META_ARCHITECTURE == "InstanceFCN":
        fields = {"thing_classes": ["proposal"]}
    else:
        n = _num_classes(cfg)
        if n is not None and len(fields.get("thing_classes") or ()) != n:
            fields = {"thing_classes": [f"class {i}" for i in range(n)]}
    things = fields.get("thing_classes")
    if things and len(fields.get("stuff_classes") or ()) != len(things) + 1:
        fields.pop("stuff_colors", None)
        fields["stuff_classes"] = ["background"] + list(things)
    return Metadata(name="instfcn_demo", **fields)


# ----------------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------------
def _instances(outputs, threshold):
    """The predicted instances on the CPU with score >= threshold (None when the model gives none)."""
    instances = outputs.get("instances")
    if instances is None:
        return None
    instances = instances.to("cpu")
    if instances.has("scores"):
        instances = instances[instances.scores >= threshold]
    return instances


def _sem_metadata(metadata, num_labels):
    """``metadata`` with ``stuff_classes`` covering ``num_labels`` sem_seg labels."""
    from detectron2.data.catalog import Metadata

    stuff = list(metadata.get("stuff_classes", []))
    if len(stuff) == num_labels:
        return metadata
    fields = dict(metadata.as_dict())
    fields.pop("name", None)
    fields.pop("stuff_colors", None)
    fields["stuff_classes"] = (stuff + [f"label {i}" for i in range(len(stuff), num_labels)])[:num_labels]
    return Metadata(name="instfcn_demo_sem_seg", **fields)


def draw_image(rgb, instances, metadata, scale):
    from detectron2.utils.visualizer import ColorMode, Visualizer

    vis = Visualizer(rgb, metadata, scale=scale, instance_mode=ColorMode.IMAGE)
    if instances is None:
        return vis.output.get_image()
    return vis.draw_instance_predictions(instances).get_image()


def draw_sem_seg(rgb, labels, metadata, scale):
    from detectron2.utils.visualizer import Visualizer

    return Visualizer(rgb, metadata, scale=scale).draw_sem_seg(labels, alpha=0.6).get_image()


def _predict(predictor, bgr, metadata, args):
    """Run the model on one BGR image: (instances or None, sem_seg labels or None, metadata for
    drawing the labels, seconds)."""
    start = time.perf_counter()
    outputs = predictor(bgr)
    seconds = time.perf_counter() - start
    instances = _instances(outputs, args.confidence_threshold)
    sem_labels, sem_meta = None, metadata
    if args.semantic:
        if "sem_seg" not in outputs:
            raise DemoError(f"--semantic: {predictor.cfg.MODEL.META_ARCHITECTURE} gives no sem_seg output (BiSeg does)")
        sem_seg = outputs["sem_seg"].to("cpu")
        sem_meta = _sem_metadata(metadata, int(sem_seg.shape[0]))
        sem_labels = sem_seg.argmax(dim=0).numpy().astype(np.int32)
        sem_labels[sem_labels == 0] = 255  # background, left undrawn (draw_sem_seg skips unnamed labels)
    return instances, sem_labels, sem_meta, seconds


# ----------------------------------------------------------------------------------------------
# inputs and outputs
# ----------------------------------------------------------------------------------------------
def resolve_inputs(patterns):
    """Image paths from ``--input``: files, folders (their images, sorted) and glob patterns
    (sorted matches); duplicates dropped. A pattern matching nothing or a missing path is an error."""
    paths = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            matches = sorted(p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
            if not matches:
                raise DemoError(f"--input: the pattern {pattern!r} matches no file")
            paths += matches
        elif os.path.isdir(expanded):
            matches = sorted(
                os.path.join(expanded, f) for f in os.listdir(expanded)
                if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(expanded, f))
            )
            if not matches:
                raise DemoError(f"--input: the folder {pattern} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
            paths += matches
        elif os.path.isfile(expanded):
            paths.append(expanded)
        else:
            raise DemoError(f"--input: image not found: {pattern}")
    seen = set()
    return [p for p in paths if not (os.path.realpath(p) in seen or seen.add(os.path.realpath(p)))]


def _output_is_folder(output):
    return os.path.isdir(output) or output.endswith(("/", os.sep)) or not os.path.splitext(output)[1]


def _with_suffix(path, suffix):
    stem, ext = os.path.splitext(path)
    return f"{stem}{suffix}{ext}"


def plan_image_outputs(inputs, output, semantic):
    """``[(input, output file, sem_seg file or None)]``; output files are None without ``--output``."""
    if output is None:
        return [(p, None, None) for p in inputs]
    if _output_is_folder(output):
        targets, used = [], set()
        for path in inputs:
            stem = os.path.splitext(os.path.basename(path))[0]
            name, k = stem, 1
            while name in used:  # same name in two input folders
                k += 1
                name = f"{stem}_{k}"
            used.add(name)
            targets.append(os.path.join(output, name + ".png"))
    else:
        if len(inputs) != 1:
            raise DemoError(f"--output {output} is a file name but there are {len(inputs)} input images: give a folder")
        if not output.lower().endswith(IMAGE_EXTENSIONS):
            raise DemoError(f"--output {output}: not an image file name ({', '.join(IMAGE_EXTENSIONS)}); "
                            "for a folder, end it with '/'")
        targets = [output]
    plan = []
    for path, target in zip(inputs, targets):
        sem_target = _with_suffix(target, "_sem_seg") if semantic else None
        for t in (target, sem_target):
            if t and os.path.realpath(t) == os.path.realpath(path):
                raise DemoError(f"--output: drawing {path} would overwrite it; choose another --output")
        plan.append((path, target, sem_target))
    return plan


def video_output_path(video, output):
    if _output_is_folder(output):
        path = os.path.join(output, os.path.splitext(os.path.basename(video))[0] + ".mp4")
    else:
        path = output
    if os.path.realpath(path) == os.path.realpath(video):
        raise DemoError(f"--output: the drawn video would overwrite {video}; choose another --output")
    return path


def _ensure_parent(path):
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)


def _save_png(rgb, path):
    from PIL import Image

    _ensure_parent(path)
    Image.fromarray(rgb).save(path)


def display_problem():
    """Why no window can be shown here (a sentence), or None when one can."""
    gui = [line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines() if line.strip().startswith("GUI:")]
    if gui and gui[0].upper() == "NONE":
        return "this OpenCV has no GUI support (opencv-python-headless)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "there is no display (DISPLAY is not set)"
    return None


def _show(window, bgr, wait_ms):
    """Show a frame; False when Esc was pressed."""
    cv2.namedWindow(window, cv2.WINDOW_NORMAL)
    cv2.imshow(window, bgr)
    return cv2.waitKey(wait_ms) != 27


# ----------------------------------------------------------------------------------------------
# the three sources
# ----------------------------------------------------------------------------------------------
def run_images(predictor, metadata, plan, args):
    """Draw each image of ``plan``; returns the files written."""
    from detectron2.data.detection_utils import read_image

    written = []
    for i, (path, target, sem_target) in enumerate(plan, 1):
        try:
            bgr = read_image(path, format="BGR")
        except Exception as e:  # PIL: unidentified or truncated file, permission, ...
            raise DemoError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
        instances, sem_labels, sem_meta, seconds = _predict(predictor, bgr, metadata, args)
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        vis = draw_image(rgb, instances, metadata, args.scale)
        sem_vis = draw_sem_seg(rgb, sem_labels, sem_meta, args.scale) if sem_labels is not None else None
        n = 0 if instances is None else len(instances)
        where = ""
        if target:
            _save_png(vis, target)
            written.append(target)
            if sem_vis is not None:
                _save_png(sem_vis, sem_target)
                written.append(sem_target)
            where = f" -> {target}" + (f", {sem_target}" if sem_vis is not None else "")
        print(f"[demo] {i}/{len(plan)} {path}: {n} instances in {seconds:.2f} s{where}", flush=True)
        if not target:
            go_on = _show(WINDOW_NAME, vis[:, :, ::-1], 1 if sem_vis is not None else 0)
            if sem_vis is not None:
                go_on = _show(WINDOW_NAME + " sem_seg", sem_vis[:, :, ::-1], 0) and go_on
            if not go_on:
                break
    return written


def draw_frames(predictor, metadata, frames, args):
    """For each BGR frame: (drawn BGR frame, drawn sem_seg BGR frame or None, instances, seconds).
    Instances are drawn with ``VideoVisualizer`` (colours kept across frames)."""
    from detectron2.utils.video_visualizer import VideoVisualizer
    from detectron2.utils.visualizer import ColorMode

    video_visualizer = VideoVisualizer(metadata, ColorMode.IMAGE)
    for bgr in frames:
        instances, sem_labels, sem_meta, seconds = _predict(predictor, bgr, metadata, args)
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        if instances is None:
            vis = rgb
        else:
            vis = video_visualizer.draw_instance_predictions(rgb, instances).get_image()
        sem_vis = draw_sem_seg(rgb, sem_labels, sem_meta, 1.0) if sem_labels is not None else None
        out = []
        for image in (vis, sem_vis):
            if image is not None and args.scale != 1.0:
                size = (round(rgb.shape[1] * args.scale), round(rgb.shape[0] * args.scale))
                image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            out.append(None if image is None else np.ascontiguousarray(image[:, :, ::-1]))
        yield out[0], out[1], 0 if instances is None else len(instances), seconds


def _read_frames(capture):
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


def _open_writer(path, fps, frame):
    _ensure_parent(path)
    height, width = frame.shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height), isColor=True)
    if not writer.isOpened():
        raise DemoError(f"cannot write the video {path} (OpenCV VideoWriter, codec mp4v)")
    return writer


def run_video(predictor, metadata, video, target, args):
    """Draw every frame of ``video`` into ``target`` (and ``<target>_sem_seg.mp4`` with
    ``--semantic``), or show them without a target; returns the files written."""
    capture = cv2.VideoCapture(video)
    if not capture.isOpened():
        raise DemoError(f"cannot read the video {video}")
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and fps > 0 and np.isfinite(fps) else VIDEO_FPS_FALLBACK
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    sem_target = _with_suffix(target, "_sem_seg") if target and args.semantic else None
    writers = [None, None]
    frames = 0
    start = time.perf_counter()
    try:
        for frames, (vis, sem_vis, n, seconds) in enumerate(draw_frames(predictor, metadata, _read_frames(capture), args), 1):
            if target:
                for k, (image, path) in enumerate(((vis, target), (sem_vis, sem_target))):
                    if image is None:
                        continue
                    if writers[k] is None:
                        writers[k] = _open_writer(path, fps, image)
                    writers[k].write(image)
            else:
                go_on = _show(WINDOW_NAME, vis, 1)
                if sem_vis is not None:
                    go_on = _show(WINDOW_NAME + " sem_seg", sem_vis, 1) and go_on
                if not go_on:
                    break
            if frames == 1 or frames % VIDEO_PROGRESS_EVERY == 0 or frames == total:
                of = f"/{total}" if total > 0 else ""
                print(f"[demo] {video}: frame {frames}{of}: {n} instances in {seconds:.2f} s", flush=True)
    finally:
        capture.release()
        for writer in writers:
            if writer is not None:
                writer.release()
    if frames == 0:
        raise DemoError(f"the video {video} has no readable frame")
    written = [p for p, w in zip((target, sem_target), writers) if w is not None]
    elapsed = time.perf_counter() - start
    print(f"[demo] {video}: {frames} frames in {elapsed:.1f} s" + (f" -> {', '.join(written)}" if written else ""),
          flush=True)
    return written


def run_webcam(predictor, metadata, args):
    capture = cv2.VideoCapture(0)
    if not capture.isOpened():
        raise DemoError("cannot open the webcam (cv2.VideoCapture(0))")
    try:
        for vis, sem_vis, _, _ in draw_frames(predictor, metadata, _read_frames(capture), args):
            go_on = _show(WINDOW_NAME, vis, 1)
            if sem_vis is not None:
                go_on = _show(WINDOW_NAME + " sem_seg", sem_vis, 1) and go_on
            if not go_on:
                break
    finally:
        capture.release()
        cv2.destroyAllWindows()
    return []


def main(argv=None):
    """Run the demo; returns the files written. Problems raise :class:`DemoError`."""
    args = get_parser().parse_args(argv)
    if args.webcam and args.output:
        raise DemoError("--webcam shows its frames in a window; --output is not supported with it")
    if args.output is None:
        problem = display_problem()
        if problem:
            source = "--webcam" if args.webcam else "without --output"
            raise DemoError(f"{source} the results are shown in a window, but {problem}: "
                            "give --output FOLDER (or a file name for a single input)")

    import instfcn_d2  # noqa: F401  (registers datasets and models)

    cfg = setup_cfg(args)
    if args.semantic and cfg.MODEL.META_ARCHITECTURE in WITHOUT_SEM_SEG:
        raise DemoError(f"--semantic: {cfg.MODEL.META_ARCHITECTURE} gives no sem_seg output (BiSeg does)")
    check_weights(cfg, args.allow_random_weights)

    # inputs and outputs are checked before the model is built
    if args.input:
        plan = plan_image_outputs(resolve_inputs(args.input), args.output, args.semantic)
    elif args.video_input:
        if not os.path.isfile(args.video_input):
            raise DemoError(f"--video-input: video not found: {args.video_input}")
        target = video_output_path(args.video_input, args.output) if args.output else None

    predictor = build_predictor(cfg)
    metadata = demo_metadata(cfg)
    if args.input:
        return run_images(predictor, metadata, plan, args)
    if args.video_input:
        return run_video(predictor, metadata, args.video_input, target, args)
    return run_webcam(predictor, metadata, args)


if __name__ == "__main__":
    try:
        main()
    except DemoError as e:
        sys.exit(f"[demo] error: {e}")
