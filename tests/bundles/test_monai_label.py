# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""A real MONAI Label server runs every segmentation bundle's ``inference.json`` unchanged.

The test starts ``monailabel start_server`` (MONAI Label 0.8.5, its own ``monaibundle`` sample app, copied with
``monailabel apps --download``) on 127.0.0.1 in a subprocess, with each bundle under ``<app>/model/<name>`` holding a
``models/model.pt`` from a one-epoch training on phantoms, and a studies folder with one image on a grid that the
bundles resample (LPI orientation, 1.5 x 1.75 x 2.5 mm voxels, the bundles work in RAS at 2 mm). Over HTTP it reads
``/info/`` and calls ``POST /infer/<name>?image=<id>`` for every bundle, then stops the server by its PID (its own
process group). The returned label map must be on the input image's grid (shape and affine), hold only the classes
MONAI Label lists for the bundle, and equal, voxel for voxel, what ``python -m monai.bundle run`` of the same
``inference.json`` writes for the same image: MONAI Label builds the network, pre/post transforms and inferer from
the config, so both must agree. For the learned-augmentation bundle, whose training wrote
``models/test_time_policy.pt``, the reference runs the learned TTA, and the test also checks that plain
sliding-window inference (the policy file hidden) gives a different map, so the server's match shows that MONAI
Label ran the learned TTA.

Install (the README's test command): MONAI Label and what it needs beyond ``requirements.txt`` are installed from
``requirements-monailabel.txt`` with ``pip install --no-deps --ignore-installed --prefix "$VIRTUAL_ENV/monailabel"``
(``$MONAILABEL_PREFIX`` names another prefix); that file says why they stay out of the project's own environment. The
server runs on this environment's Python with that prefix on its ``PYTHONPATH``.

One shim, for the server process only: ``monailabel.transform.post`` imports ``make_grid`` and ``save_image`` from
``torchvision.utils`` at module level (2D image writing, unused by 3D segmentation), and the only ``torchvision``
wheel on PyPI for torch 2.13 is the CUDA build, whose C extension does not load next to the CPU torch (``import
torchvision`` fails with ``operator torchvision::nms does not exist``). The test puts a ``torchvision`` package with
those two functions (raising ``NotImplementedError``) first on the server's ``PYTHONPATH``. On a machine with the
CUDA torch, ``pip install torchvision==0.28.0`` (built for torch 2.13.0) would take its place. Everything else is
MONAI Label's own code, unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage, Orientation, Spacing

from monai_imbalance.data import make_phantom_dataset

pytestmark = pytest.mark.slow  # a real server and four short trainings

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
SEGMENTATION_BUNDLES = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "inference.json").is_file())
PREFIX = Path(os.environ.get("MONAILABEL_PREFIX", Path(sys.prefix) / "monailabel"))
INSTALL = 'pip install --no-deps --ignore-installed --prefix "$VIRTUAL_ENV/monailabel" -r requirements-monailabel.txt'
STUDY = "case"  # the image id in the studies folder
STARTUP_TIMEOUT = 180.0  # seconds until /info/ answers
REQUEST_TIMEOUT = 300.0
TORCHVISION_STUB = '''"""Stub for the MONAI Label server in tests/bundles/test_monai_label.py (see its docstring)."""


def make_grid(*args, **kwargs):
    raise NotImplementedError("torchvision stub: no CPU torchvision wheel for torch 2.13 on PyPI")


def save_image(*args, **kwargs):
    raise NotImplementedError("torchvision stub: no CPU torchvision wheel for torch 2.13 on PyPI")
'''


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(url: str, timeout: float = REQUEST_TIMEOUT) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else "(no server log)"


def _write_study(source: Path, *paths: Path) -> None:
    """The phantom ``source`` resampled to LPI at 1.5 x 1.75 x 2.5 mm, saved to each of ``paths``."""
    image = LoadImage(image_only=True, ensure_channel_first=True)(str(source))
    image = Spacing(pixdim=(1.5, 1.75, 2.5), mode="bilinear")(Orientation(axcodes="LPI")(image))
    study = nib.Nifti1Image(image[0].numpy().astype(np.float32), image.affine.numpy())
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(study, path)


def _bundle_inference(bundle: Path, input_dir: Path, output_dir: Path, env: dict, **override: str) -> np.ndarray:
    """``python -m monai.bundle run`` of ``bundle``'s inference.json on ``input_dir``: the one label map it writes."""
    configs = bundle / "configs"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs / "inference.json")]
    cmd += ["--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf")]
    cmd += ["--bundle_root", str(bundle), "--input_dir", str(input_dir), "--output_dir", str(output_dir)]
    for key, value in override.items():
        cmd += [f"--{key}", value]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    (written,) = output_dir.glob("*.nii.gz")
    return np.asarray(nib.load(written).dataobj)


@pytest.fixture(scope="module")
def monailabel_prefix() -> tuple[Path, Path]:
    """The ``monailabel`` script and the site-packages folder of the MONAI Label install (fails when absent)."""
    script = PREFIX / "bin" / "monailabel"
    site = Path(sysconfig.get_path("purelib", vars={"base": str(PREFIX), "platbase": str(PREFIX)}))
    if not script.is_file() or not (site / "monailabel").is_dir():
        pytest.fail(f"MONAI Label is not installed under {PREFIX}; in the activated environment run: {INSTALL}")
    return script, site


@pytest.fixture(scope="module")
def server(monailabel_prefix, bundle_harness, tiny_overrides, tmp_path_factory):
    """A running ``monailabel start_server`` with every segmentation bundle, and the reference label maps.

    Yields:
        A dict: ``url`` (the server), ``image`` (the study's path), ``reference`` (name -> label map of
        ``python -m monai.bundle run``) and ``plain`` (the learned-augmentation bundle without its TTA policy).
    """
    script, site = monailabel_prefix
    root = tmp_path_factory.mktemp("monailabel_server")
    data = make_phantom_dataset(root / "data", num_training=2, num_validation=1, num_test=1, num_external=0)
    image = root / "studies" / f"{STUDY}.nii.gz"
    _write_study(sorted((data / "imagesTs").glob("*.nii.gz"))[0], image, root / "input" / image.name)
    stub = root / "shim" / "torchvision"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('"""Stub (see tests/bundles/test_monai_label.py)."""\n')
    (stub / "utils.py").write_text(TORCHVISION_STUB)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MONAILABEL_PYEXE": sys.executable}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(stub.parent), str(site), os.environ.get("PYTHONPATH")) if p)

    # MONAI Label's own sample app, as `monailabel apps` ships it
    apps = root / "apps"
    out = subprocess.run(
        [str(script), "apps", "--download", "--name", "monaibundle", "--output", str(apps), "--prefix", str(PREFIX)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    app = apps / "monaibundle"
    assert out.returncode == 0 and (app / "main.py").is_file(), (out.stdout + out.stderr)[-4000:]

    reference, plain = {}, None
    for name in SEGMENTATION_BUNDLES:
        bundle = app / "model" / name
        shutil.copytree(BUNDLES / name, bundle, ignore=shutil.ignore_patterns("eval", "runs", "*.pt", "*.ts"))
        # the user's inference.json after a (tiny) training: the training's patch and network sizes
        path = bundle / "configs" / "inference.json"
        inference = json.loads(path.read_text())
        inference.update(patch_size=tiny_overrides["patch_size"], filters=tiny_overrides["filters"])
        inference["dataloader"]["num_workers"] = 0
        path.write_text(json.dumps(inference, indent=4))
        bundle_harness(name).run(["train.json"], data, bundle, epochs=1, val_interval=1)
        assert (bundle / "models" / "model.pt").is_file()
        reference[name] = _bundle_inference(bundle, root / "input", root / "reference" / name, env)
        if name == "learned_augmentation_segmentation":
            assert (bundle / "models" / "test_time_policy.pt").is_file()  # training (joint) wrote a TTA policy
            missing = str(root / "no_policy.pt")
            plain = _bundle_inference(bundle, root / "input", root / "plain", env, tta_policy_file=missing)

    port = _free_port()
    cmd = [str(script), "start_server", "--app", str(app), "--studies", str(image.parent)]
    cmd += ["--conf", "models", ",".join(SEGMENTATION_BUNDLES)]
    # any zoo source but the default "monaihosting" (which first lists the zoo over the network) uses the folders
    # under <app>/model as they are; a missing one fails ("local" is no download source) instead of downloading
    cmd += ["--conf", "zoo_source", "local", "--host", "127.0.0.1", "--port", str(port)]
    env["MONAI_LABEL_SESSION_PATH"] = str(root / "sessions")
    log = root / "server.log"
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"monailabel start_server exited with {proc.returncode}:\n{_tail(log)}")
            try:
                status, _ = _get(f"{url}/info/", timeout=5)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"monailabel start_server did not answer /info/ in {STARTUP_TIMEOUT:.0f} s:\n{_tail(log)}")
            time.sleep(0.5)
        yield {"url": url, "image": image, "reference": reference, "plain": plain, "log": log}
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server started with ``start_new_session``: SIGTERM to its process group (its PID), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the group is gone already
            break
        try:
            proc.wait(timeout=30)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait(timeout=30)


def test_info_lists_every_bundle_with_its_classes(server):
    status, body = _get(f"{server['url']}/info/")
    assert status == 200, body[-2000:]
    models = json.loads(body)["models"]
    assert sorted(models) == SEGMENTATION_BUNDLES
    for name, model in models.items():
        # channel_def without the background (and CoLab's context channels, named background too)
        assert model["labels"] == {"deep_grey_matter": 1}, name
        assert model["type"] == "segmentation" and model["dimension"] == 3, name


@pytest.mark.parametrize("name", SEGMENTATION_BUNDLES)
def test_infer_returns_the_bundles_label_map_on_the_input_grid(server, name, tmp_path):
    query = urllib.parse.urlencode({"image": STUDY, "output": "image"})
    status, body = _post(f"{server['url']}/infer/{name}?{query}")
    assert status == 200, f"HTTP {status}: {body[-2000:]!r}\n{_tail(server['log'])}"
    label_file = tmp_path / "label.nii.gz"
    label_file.write_bytes(body)
    label, image = nib.load(label_file), nib.load(server["image"])
    assert label.shape == image.shape  # restored to the input image's grid ...
    assert np.allclose(label.affine, image.affine, atol=1e-4)  # ... not the bundle's RAS 2 mm grid
    seg = np.asarray(label.dataobj)
    assert set(np.unique(seg).tolist()) <= {0, 1}  # background + deep grey matter, no context channel
    reference = server["reference"][name]
    assert np.array_equal(seg, reference), f"{int((seg != reference).sum())} voxels differ from monai.bundle run"
    if name == "learned_augmentation_segmentation":
        assert not np.array_equal(seg, server["plain"])  # so the match above shows the learned TTA ran
