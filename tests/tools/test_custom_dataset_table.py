"""tools/custom_dataset_table.py: arguments, the rows' overrides, running rows, the table."""
import json
import sys

import pytest

from conftest import load_tool


def _dataset(tmp_path):
    d = tmp_path / "data"
    (d / "images").mkdir(parents=True)
    for name in ("train.json", "val.json"):
        (d / name).write_text("{}")
    return d


def _fake_run(path, metrics, iterations=100):
    path.mkdir(parents=True, exist_ok=True)
    rows = [{"iteration": i, "total_loss": 1.0} for i in range(iterations)] + [dict(iteration=iterations - 1, **metrics)]
    (path / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (path / "log.txt").write_text(f"Overall training speed: {iterations} iterations in 0:11:02 (6 s / it)\n")
    (path / "model_final.pth").write_bytes(b"x")


def test_arguments_name_what_is_missing_or_unknown(tmp_path, capsys):
    tool = load_tool("custom_dataset_table")
    with pytest.raises(SystemExit):
        tool.parse_args(["--dataset-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert "--train-json" in err and str(tmp_path / "nowhere" / "train.json") in err and "does not exist" in err
    d = _dataset(tmp_path)
    with pytest.raises(SystemExit):
        tool.parse_args(["--dataset-dir", str(d), "--rows", "fcis,maskrcnn"])
    assert "unknown ['maskrcnn']" in capsys.readouterr().err
    args = tool.parse_args(["--dataset-dir", str(d), "--output", str(tmp_path / "out"), "SOLVER.BASE_LR", "0.01"])
    assert [r.key for r in args.row_list] == ["mask_rcnn", "fcis", "biseg", "instance_fcn"]
    assert args.train_json == str(d / "train.json") and args.image_root == str(d / "images")


def test_rows_share_the_dataset_and_the_detectors_share_scales_and_detections(tmp_path):
    tool = load_tool("custom_dataset_table")
    d = _dataset(tmp_path)
    args = tool.parse_args(["--dataset-dir", str(d), "--output", str(tmp_path / "out"), "--detections-per-image", "250",
                            "SOLVER.BASE_LR", "0.01"])
    rows = {r.key: r for r in args.row_list}
    fcis = tool.row_opts(rows["fcis"], args)
    pairs = dict(zip(fcis[::2], fcis[1::2]))
    assert pairs["DATASETS.COCO_JSON_TRAIN"] == str(d / "train.json")
    assert pairs["DATASETS.COCO_JSON_TEST"] == str(d / "val.json")
    assert pairs["MODEL.FCIS.DETECTIONS_PER_IMAGE"] == "250" and pairs["INPUT.MIN_SIZE_TRAIN"] == "(320,352,384,)"
    assert pairs["OUTPUT_DIR"] == str(tmp_path / "out" / "fcis") and pairs["SOLVER.BASE_LR"] == "0.01"
    mrcnn = dict(zip(*[iter(tool.row_opts(rows["mask_rcnn"], args))] * 2))
    assert mrcnn["TEST.DETECTIONS_PER_IMAGE"] == "250"
    ifcn = dict(zip(*[iter(tool.row_opts(rows["instance_fcn"], args))] * 2))
    assert "INPUT.MIN_SIZE_TRAIN" not in ifcn and "DATASETS.COCO_JSON_TRAIN" in ifcn  # its own scales
    assert ifcn["MODEL.INSTANCE_FCN.DETECTIONS_PER_IMAGE"] == "250" and ifcn["MODEL.INSTANCE_FCN.PRE_NMS_TOPK_TEST"] == "1000"
    assert tool.command(rows["fcis"], args)[-len(fcis):] == fcis


def test_rows_run_in_parallel_finished_ones_are_read_and_a_failure_is_reported(tmp_path, monkeypatch, capsys):
    tool = load_tool("custom_dataset_table")
    d = _dataset(tmp_path)
    out = tmp_path / "out"
    _fake_run(out / "fcis", {"segm/AP": 20.0, "segm/AP50": 50.0, "bbox/AP": 21.0})  # finished before: not rerun

    fake_train = tmp_path / "fake_train.py"  # what a finished training leaves in its OUTPUT_DIR
    fake_train.write_text(
        "import json, pathlib, sys\n"
        "out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)\n"
        "rows = [{'iteration': i, 'total_loss': 1.0} for i in range(100)]\n"
        "rows.append({'iteration': 99, 'segm/AP': 40.0, 'segm/AP50': 70.0, 'segm/APs': 36.8, 'segm/APm': 57.0, "
        "'bbox/AP': 31.5})\n"
        "(out / 'metrics.json').write_text(''.join(json.dumps(r) + '\\n' for r in rows))\n"
        "(out / 'log.txt').write_text('Overall training speed: 100 iterations in 0:11:02 (6 s / it)\\n')\n"
        "(out / 'model_final.pth').write_bytes(b'x')\n"
    )

    def fake_command(row, args):
        if row.key == "biseg":
            return [sys.executable, "-c", "raise SystemExit(3)"]
        return [sys.executable, str(fake_train), str(out / row.key)]

    monkeypatch.setattr(tool, "command", fake_command)
    code = tool.main(["--dataset-dir", str(d), "--output", str(out), "--rows", "mask_rcnn,fcis,biseg"])
    printed = capsys.readouterr()
    assert code == 1 and "FAILED rows: ['biseg']" in printed.err
    assert "start fcis" not in printed.out and "start mask_rcnn" in printed.out
    table = (out / "table.md").read_text()
    assert "| 100 | 0:11:02 | 40.0 | 70.0 | 36.8 | 57.0 | 31.5 | - |" in table  # Mask R-CNN, just trained
    assert "| 20.0 | 50.0 | - | - | 21.0 | - |" in table  # FCIS, read from before
    assert "fcis 0.50x" in table and "biseg" not in table.split("Commands")[0]
    assert (out / "mask_ap.png").stat().st_size > 0


def test_auto_rows_take_scales_anchors_and_stride_from_the_training_set(tmp_path):
    tool = load_tool("custom_dataset_table")
    d = _dataset(tmp_path)
    # 40 objects of side 6 px on 200-px images: scale 2 (capped), 8 / 16 px anchors, stride 8
    images = [{"id": i, "file_name": f"{i}.png", "height": 200, "width": 240} for i in range(4)]
    anns = [{"id": j, "image_id": j % 4, "category_id": 1, "area": 36.0, "bbox": [0, 0, 6, 6], "iscrowd": 0}
            for j in range(40)]
    (d / "train.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1}]}))
    args = tool.parse_args(["--dataset-dir", str(d), "--rows", "fcis_auto,mask_rcnn_auto", "--output", str(tmp_path)])
    fcis, mrcnn = (dict(zip(*[iter(tool.row_opts(r, args))] * 2)) for r in args.row_list)
    assert fcis["INPUT.MIN_SIZE_TEST"] == "384" and fcis["INPUT.MIN_SIZE_TRAIN"] == "(320,352,384,)"
    assert fcis["MODEL.ANCHOR_GENERATOR.SIZES"] == "[[8,16]]"
    assert (fcis["MODEL.DILATED_RESNET.RES4_DILATION"], fcis["MODEL.DILATED_RESNET.RES5_DILATION"]) == ("2", "4")
    assert mrcnn["MODEL.ANCHOR_GENERATOR.SIZES"] == "[[8],[16],[32],[64],[128]]"
    assert "MODEL.DILATED_RESNET.RES4_DILATION" not in mrcnn
    assert "instance_fcn_auto" not in {r.key for r in tool.ROWS}
    args = tool.parse_args(["--dataset-dir", str(d), "--rows", "biseg_auto_anchors_stride", "--output", str(tmp_path)])
    biseg = dict(zip(*[iter(tool.row_opts(args.row_list[0], args))] * 2))
    assert biseg["INPUT.MIN_SIZE_TEST"] == "384" and biseg["INPUT.MIN_SIZE_TRAIN"] == "(320,352,384,)"  # shared
    assert biseg["MODEL.ANCHOR_GENERATOR.SIZES"] == "[[8,16]]" and biseg["MODEL.DILATED_RESNET.RES5_DILATION"] == "4"


def test_custom_rows_ablate_one_setting_of_their_config_and_compare_with_both_baselines(tmp_path):
    tool = load_tool("custom_dataset_table")
    d = _dataset(tmp_path)
    out = tmp_path / "out"
    args = tool.parse_args(["--dataset-dir", str(d), "--output", str(out), "--rows",
                            "fcis_custom,fcis_custom_p3,biseg_custom_sem_3x3_no_prior,mask_rcnn_custom"])
    rows = {r.key: r for r in args.row_list}
    assert rows["fcis_custom"].config == rows["fcis_custom_p3"].config == "configs/custom/fcis_R18_FPN_cpu.yaml"
    base, p3 = tool.row_opts(rows["fcis_custom"], args), tool.row_opts(rows["fcis_custom_p3"], args)
    assert p3[:2] == ["MODEL.ROI_HEADS.IN_FEATURES", '["p3"]'] and p3[2:] == [
        v.replace("fcis_custom", "fcis_custom_p3") for v in base]  # the ablation first, the rest shared
    no_prior = dict(zip(*[iter(tool.row_opts(rows["biseg_custom_sem_3x3_no_prior"], args))] * 2))
    assert no_prior["MODEL.BISEG.PRIOR_MODE"] == "none" and no_prior["MODEL.BISEG.SEM_SEG_CONV_DIM"] == "128" and no_prior["MODEL.FCIS.DETECTIONS_PER_IMAGE"] == "300"
    for key, ap in (("mask_rcnn", 20.0), ("mask_rcnn_custom", 40.0), ("fcis_custom", 32.0), ("biseg_custom", 36.0)):
        _fake_run(out / key, {"segm/AP": ap})
    args = tool.parse_args(["--dataset-dir", str(d), "--output", str(out), "--rows",
                            "mask_rcnn,mask_rcnn_custom,fcis_custom,biseg_custom"])
    text = tool.table(args.row_list, args)
    assert "relative to mask_rcnn: fcis_custom 1.60x, biseg_custom 1.80x" in text
    assert "relative to mask_rcnn_custom: fcis_custom 0.80x, biseg_custom 0.90x" in text


def test_builtin_rows_train_on_their_configs_datasets(tmp_path, capsys):
    """--builtin: no dataset keys or shared scales, each config's own DATASETS; the shapes recipe
    rows state the whole recipe; a dataset flag or an '_auto' row with it is refused."""
    tool = load_tool("custom_dataset_table")
    rows = "mask_rcnn,fcis_shapes_recipe_before,fcis_shapes_recipe_box_conv,instance_fcn_shapes_recipe_window_sum"
    args = tool.parse_args(["--builtin", "--output", str(tmp_path / "out"), "--rows", rows])
    commands = {r.key: tool.command(r, args) for r in args.row_list}
    for key, cmd in commands.items():
        assert not any(a.startswith("DATASETS.") or a.startswith("INPUT.") for a in cmd), key
        assert cmd[cmd.index("OUTPUT_DIR") + 1] == str(tmp_path / "out" / key)
    box_conv = commands["fcis_shapes_recipe_box_conv"]
    assert box_conv[box_conv.index("--config-file") + 1] == "configs/shapes/fcis_R18_cpu.yaml"
    # the later of two values of a key wins: the row's change over the recipe before
    assert box_conv[len(box_conv) - 1 - box_conv[::-1].index("MODEL.FCIS.BBOX_REG_WEIGHTS") + 1] == "(5.0, 5.0, 2.0, 2.0)"
    assert "MODEL.FCIS.MASK_LOSS_NORMALIZATION" in box_conv
    window_sum = commands["instance_fcn_shapes_recipe_window_sum"]
    assert window_sum[window_sum.index("MODEL.INSTANCE_FCN.MASK_LOSS_REDUCTION") + 1] == "window_sum"
    with pytest.raises(SystemExit):
        tool.parse_args(["--builtin", "--dataset-dir", str(_dataset(tmp_path))])
    assert "--builtin trains on the configs' own datasets; drop --dataset-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.parse_args(["--builtin", "--rows", "fcis_auto"])
    assert "cannot run with --builtin" in capsys.readouterr().err


def test_several_classes_get_a_per_class_table_and_the_levels_row_reads_every_level(tmp_path):
    tool = load_tool("custom_dataset_table")
    d = _dataset(tmp_path)
    out = tmp_path / "out"
    args = tool.parse_args(["--dataset-dir", str(d), "--output", str(out), "--rows", "mask_rcnn_custom,fcis_custom_levels"])
    levels = dict(zip(*[iter(tool.row_opts(args.row_list[1], args))] * 2))
    assert levels["MODEL.ROI_HEADS.IN_FEATURES"] == '["p2", "p3", "p4", "p5"]'
    _fake_run(out / "mask_rcnn_custom", {"segm/AP": 4.0, "segm/AP-window": 19.5, "segm/AP-facade": 14.8})
    _fake_run(out / "fcis_custom_levels", {"segm/AP": 2.0, "segm/AP-window": 3.9, "segm/AP-facade": 0.07})
    text = tool.table(args.row_list, args)
    assert "| model | facade | window |" in text
    assert "| mask_rcnn_custom | 14.8 | 19.5 |" in text and "| fcis_custom_levels | 0.1 | 3.9 |" in text
