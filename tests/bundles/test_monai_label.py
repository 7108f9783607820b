# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Each segmentation bundle loads into the real MONAI Label ``BundleInferTask`` and segments a phantom.

MONAI Label (``monailabel`` 0.8.5, the ``monaibundle`` app's task) is installed by the test into its own folder with
``pip install --target ... --no-deps`` (its pinned dependency set would replace our MONAI/NumPy; the project's
environment is never touched) together with the modules that ``monailabel.tasks.infer.bundle`` imports. One shim:
``monailabel.transform.post`` imports ``make_grid``/``save_image`` from ``torchvision`` at module level (for 2D
image writing, unused by 3D segmentation), and the only ``torchvision`` wheel on PyPI for torch 2.13 is the CUDA
build, whose C extension cannot load next to the CPU torch of this machine; the test puts a two-function
``torchvision`` stub on the path instead. Everything else is MONAI Label's own code: it reads ``inference.json`` and
``metadata.json`` from a bundle folder whose ``models/model.pt`` comes from a short training run, builds the network,
pre/post transforms and inferer from the config, runs inference on a phantom NIfTI file and writes the label file.
One known incompatibility of MONAI Label 0.8.5 with MONAI 1.6.1, not specific to these bundles, is worked around in
the task (see ``SCRIPT``): ``Spacingd`` writes meta data into every ``image_*`` key, including MONAI Label's
``image_path`` string.

The learned-augmentation bundle's ``inferer`` is the package's ``LearnedTTAInferer`` (a MONAI ``Inferer``) when
``models/test_time_policy.pt`` is there: MONAI Label builds it from ``inference.json`` like any inferer (without
running the config's ``initialize``) and calls it with ``(inputs, network)``; the policy file is read on that first
call, and the test checks that the inferer MONAI Label called used the file's top-K transforms.

Skipped (with the pip error) when the packages cannot be installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigWorkflow

from monai_imbalance.augment import TestTimeTransformPool, load_policy
from monai_imbalance.data import make_phantom_dataset

pytestmark = pytest.mark.slow  # bundle configs end to end

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
SEGMENTATION_BUNDLES = [
    "asymmetric_segmentation",
    "context_label_segmentation",
    "learned_augmentation_segmentation",
    "performance_estimation",
]
#: monailabel and what ``import monailabel.tasks.infer.bundle`` needs beyond this project's requirements
PACKAGES = [
    "monailabel==0.8.5",
    "expiring_dict",
    "sortedcontainers",
    "pydantic",
    "pydantic_core",
    "typing_inspection",
    "pydantic-settings",
    "annotated_types",
    "python-dotenv",
    "pynrrd",
    "itk-core",
    "itk-io",
    "scikit-image",
    "lazy_loader",
    "shapely",
]
TORCHVISION_STUB = '''"""Stub: monailabel.transform.post imports these for 2D image writing (unused here)."""


def make_grid(*args, **kwargs):
    raise NotImplementedError("torchvision stub")


def save_image(*args, **kwargs):
    raise NotImplementedError("torchvision stub")
'''

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import nibabel as nib, numpy as np
    from monailabel.tasks.infer.bundle import BundleInferTask

    class Task(BundleInferTask):
        # MONAI 1.6.1's Spacingd updates every "image_*" key of the dict with the image's meta data, which fails on
        # the string MONAI Label 0.8.5 keeps under "image_path" ('str' object has no attribute 'update'): hide it
        # from the pre-transforms and put it back for the writer. Nothing else is changed.
        def run_pre_transforms(self, data, transforms):
            path = data.pop("image_path", None)
            data = super().run_pre_transforms(data, transforms)
            if path is not None:
                data["image_path"] = path
            return data

    bundle, image = sys.argv[1], sys.argv[2]
    task = Task(bundle, conf={})
    assert task.is_valid()
    label_file, result = task({"image": image, "device": "cpu"})
    seg = np.asarray(nib.load(label_file).dataobj)
    inferer = task.inferer({"device": "cpu"})  # the object MONAI Label built from the config and called
    loaded = getattr(inferer, "loaded", None)  # read before transform_names, which would load a policy file
    print("RESULT " + json.dumps({"labels": task.labels, "shape": list(seg.shape),
                                  "values": sorted(int(v) for v in np.unique(seg)), "type": str(task.type),
                                  "inferer": type(inferer).__name__, "loaded": loaded,
                                  "tta": inferer.transform_names if loaded else None}))
    """
)


@pytest.fixture(scope="module")
def monailabel_path(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("monailabel_env")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), *PACKAGES]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        pytest.skip(f"cannot install monailabel here: {out.stderr[-1000:]}")
    stub = target / "torchvision"
    shutil.rmtree(stub, ignore_errors=True)
    stub.mkdir()
    (stub / "__init__.py").write_text('"""Stub (see tests/bundles/test_monai_label.py)."""\n')
    (stub / "utils.py").write_text(TORCHVISION_STUB)
    return target


@pytest.mark.parametrize("name", SEGMENTATION_BUNDLES)
def test_bundle_infer_task_segments_a_phantom(name, monailabel_path, tmp_path, tiny_overrides):
    data = make_phantom_dataset(tmp_path / "data", num_training=2, num_validation=1, num_test=1, num_external=0)
    bundle = tmp_path / name
    shutil.copytree(BUNDLES / name, bundle, ignore=shutil.ignore_patterns("eval", "*.pt", "*.ts"))
    configs = bundle / "configs"
    # the user's inference.json after a (tiny) training: same patch and network sizes as the training run
    inference = json.loads((configs / "inference.json").read_text())
    inference.update(patch_size=tiny_overrides["patch_size"], filters=tiny_overrides["filters"])
    inference["dataloader"]["num_workers"] = 0
    (configs / "inference.json").write_text(json.dumps(inference, indent=4))
    wf = ConfigWorkflow(
        config_file=str(configs / "train.json"),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="train",
        dataset_dir=str(data),
        bundle_root=str(bundle),
        **{**tiny_overrides, "epochs": 1},
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    assert (bundle / "models" / "model.pt").is_file()
    image = sorted((data / "imagesTs").glob("*.nii.gz"))[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(monailabel_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(bundle), str(image)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    assert out.returncode == 0 and lines, (out.stdout + out.stderr)[-4000:]
    result = json.loads(lines[0][len("RESULT ") :])
    assert result["labels"] == {"deep_grey_matter": 1}  # channel_def without the background (and context) channels
    assert result["shape"] == list(nib.load(image).shape[:3])  # restored to the input image's grid
    assert set(result["values"]) <= {0, 1}  # only the bundle's classes (no context channel leaks)
    assert "segmentation" in result["type"].lower()
    assert np.isfinite(result["shape"]).all()
    if name == "learned_augmentation_segmentation":  # training (joint) wrote a test-time policy: the learned TTA
        top_k = inference["tta_top_k"]
        indices, _ = load_policy(bundle / "models" / "test_time_policy").top_k(top_k)
        assert result["inferer"] == "LearnedTTAInferer" and result["loaded"] is True  # read on MONAI Label's call
        assert result["tta"] == [TestTimeTransformPool().names[i] for i in indices]
    else:
        assert result["inferer"] == "SlidingWindowInferer"
