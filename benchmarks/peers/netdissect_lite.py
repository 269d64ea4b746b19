"""Run the original NetDissect-Lite on a Broden-format directory, on CPU, as a timed peer.

NetDissect-Lite (github.com/CSAILVision/NetDissect-Lite) is the reference PyTorch
implementation of Network Dissection. Its code is never part of this repository: this
script exports it at run time (``git archive HEAD`` of a git directory, or a copy of a plain
folder) into ``OUTDIR/src``, applies the small compatibility patches in ``PATCHES`` (plain
string replacements that fail loudly if upstream text is not found exactly as expected),
and writes next to it:

* ``settings.py``: Lite's configuration for this run (model, layer, Broden directory,
  categories, ``OUTPUT_FOLDER=OUTDIR``, ``GPU=False`` unless ``--gpu``, ``CLEAN=False``; thresholds, batch
  sizes and worker counts are Lite's defaults);
* ``torchvision/``: a stand-in package with ``resnet18`` and ``alexnet`` written in plain
  torch with exactly torchvision's module structure and state_dict keys (the torchvision
  wheel does not load with the torch in use; Lite only calls
  ``torchvision.models.<name>(num_classes=...)``);
* ``scipy_misc_compat.py``: ``imread``/``imresize``/``imsave`` as SciPy <= 1.2 implemented
  them on top of Pillow (``scipy.misc`` lost them in SciPy 1.2/1.3);
* ``OUTDIR/model.pth``: a torch state_dict converted from the ``--weights`` safetensors file
  (BatchNorm ``num_batches_tracked`` buffers are added as 0 if the file lacks them; they do
  not affect eval-mode outputs).

Then it runs ``python -u main.py`` in ``OUTDIR/src`` with the same interpreter, times the
whole process, stamps Lite's own progress lines to split the time into phases, and prints
one JSON line: ``{"seconds", "tally", "quantile", "html", "peak_rss_mb", "phases", ...}``.
``peak_rss_mb`` is ``ru_maxrss`` of ``RUSAGE_CHILDREN``: the largest single process among
Lite and its prefetch workers. Lite's output is kept in ``OUTDIR/lite.log``.

Phases (seconds, from the first line of each kind; a batch line is printed after its
batch is loaded, so loading the first batch of a phase counts to the phase before it):
``startup`` (imports, Broden index, model) until the first "extracting feature";
``extract`` until "calculating quantile threshold"; ``quantile`` until the first
"labelprobe"; ``tally`` until "Generating html summary"; ``report`` until the process
exits.

Patches (the algorithm -- feature extraction, quantile sketch, tally loop, IoU scoring,
report -- is untouched; each patch below restores what the code did with the libraries of
its time, Python 3.6 / NumPy 1.x / SciPy 1.0 / PyTorch 0.3 / Pillow 4-5):

* ``scipy.misc`` imports -> ``scipy_misc_compat`` (removed from SciPy; the shim is SciPy's
  own Pillow-based code: ``imresize`` builds a mode-'F' or byte-scaled image, resizes it to
  ``(w, h)`` with resample 2 = bilinear and reads it back; ``imread`` is ``np.array`` of the
  opened image, palette images converted to RGB/RGBA as SciPy did);
* ``scipy.ndimage.interpolation`` / ``scipy.ndimage.filters`` -> ``scipy.ndimage``
  (deprecated namespaces);
* ``numpy.NaN`` -> ``numpy.nan`` (removed in NumPy 2);
* ``raise StopIteration`` in the prefetcher generators -> ``return`` (PEP 479: a
  RuntimeError since Python 3.7);
* ``SegmentationData.onehot`` indexes with ``tuple(...)`` instead of a list of index arrays
  (since NumPy 1.23 a list is one fancy index over the first axis, which silently sets
  every entry of the label-category matrix to 1 and corrupts every IoU);
* ``torch.load(MODEL_FILE)`` -> ``torch.load(MODEL_FILE, weights_only=True)`` (explicit
  modern default; the file is a plain state_dict);
* ``model._modules.get(name)`` -> ``model.get_submodule(name)`` (so a dotted layer name
  such as AlexNet's ``features.11`` can be hooked; identical for top-level names);
* ``V(input, volatile=True)`` -> ``input`` inside ``@torch.no_grad()`` on
  ``feature_extraction`` (``volatile`` was removed in PyTorch 0.4; no_grad is its
  replacement).
* label PNG decoding ``png[:,:,0] + png[:,:,1] * 256`` casts the green channel to uint16
  first (NumPy 2 / NEP 50 raises OverflowError for ``uint8 * 256``; NumPy 1 promoted the
  product to uint16, which is what the cast reproduces).

One patch is not about library drift but guards an upstream crash that would otherwise
abort the run after tally.csv and quantile.npy are written: ``bargraph.make_svg_bargraph``
takes ``max(heights)`` of an empty list when no unit reaches IoU 0.04; it now draws an
empty bar graph instead (``max(heights or [1])``). Known upstream failure left as is
(it is in the tally loop): an image whose selected categories have only image-level
labels (scene/texture, no label PNG) raises UnboundLocalError on ``tally_cat`` if it is the
first such case, and otherwise silently reuses the previous ``tally_cat`` value. Real Broden
images always carry a color PNG, so with the color category selected this cannot happen.

Run (from the repository root)::

    /tmp/peer-venv/bin/python benchmarks/peers/netdissect_lite.py \\
        --source /work/.mirror/CSAILVision+NetDissect-Lite/repo/.git \\
        --broden DIR --weights W.safetensors --model resnet18 --layer layer4 --out OUTDIR \\
        [--categories object,part,scene,material,texture,color] [--img-size N] [--overwrite]

Uses only the standard library plus numpy, safetensors and torch (those three only to
write ``model.pth``); Lite itself additionally needs scipy and Pillow. Lite sizes its
prefetch pools with ``cpu_count()`` (its ``WORKERS`` setting is unused).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ALL_CATEGORIES = ("object", "part", "scene", "material", "texture", "color")
DEFAULT_IMG_SIZE = {"resnet18": 224, "alexnet": 227}

# (file, old text, new text, expected number of occurrences, reason)
PATCHES: list[tuple[str, str, str, int, str]] = [
    (
        "feature_operation.py",
        "from scipy.misc import imresize",
        "from scipy_misc_compat import imresize",
        1,
        "scipy.misc.imresize was removed in SciPy 1.3; shim reproduces it with Pillow",
    ),
    (
        "loader/data_loader.py",
        "from scipy.misc import imread",
        "from scipy_misc_compat import imread",
        1,
        "scipy.misc.imread was removed in SciPy 1.2; shim reproduces it with Pillow",
    ),
    (
        "visualize/report.py",
        "from scipy.misc import imread, imresize, imsave",
        "from scipy_misc_compat import imread, imresize, imsave",
        1,
        "scipy.misc image I/O was removed in SciPy 1.2/1.3; shim reproduces it with Pillow",
    ),
    (
        "loader/data_loader.py",
        "from scipy.ndimage.interpolation import zoom",
        "from scipy.ndimage import zoom",
        1,
        "scipy.ndimage.interpolation is a deprecated namespace",
    ),
    (
        "util/upsample.py",
        "from scipy.ndimage.filters import gaussian_filter",
        "from scipy.ndimage import gaussian_filter",
        1,
        "scipy.ndimage.filters is a deprecated namespace",
    ),
    (
        "util/upsample.py",
        "from scipy.ndimage.interpolation import zoom",
        "from scipy.ndimage import zoom",
        1,
        "scipy.ndimage.interpolation is a deprecated namespace",
    ),
    (
        "util/vecquantile.py",
        "numpy.NaN",
        "numpy.nan",
        1,
        "numpy.NaN was removed in NumPy 2.0",
    ),
    (
        "loader/data_loader.py",
        "raise StopIteration",
        "return",
        2,
        "PEP 479: StopIteration raised inside a generator is a RuntimeError since Python 3.7",
    ),
    (
        "loader/data_loader.py",
        "result[list(np.indices(arr.shape)) + [arr]] = 1",
        "result[tuple(list(np.indices(arr.shape)) + [arr])] = 1",
        1,
        "NumPy >= 1.23 reads a list index as one array index (would set all of labelcat to 1)",
    ),
    (
        "loader/data_loader.py",
        "rgb[:,:,0] + rgb[:,:,1] * 256",
        "rgb[:,:,0] + rgb[:,:,1].astype(numpy.uint16) * 256",
        1,
        "NumPy 2 (NEP 50): uint8 * 256 overflows; NumPy 1 promoted it to uint16",
    ),
    (
        "loader/data_loader.py",
        "png[:,:,0] + png[:,:,1] * 256",
        "png[:,:,0] + png[:,:,1].astype(numpy.uint16) * 256",
        3,
        "NumPy 2 (NEP 50): uint8 * 256 overflows; NumPy 1 promoted it to uint16",
    ),
    (
        "visualize/bargraph.py",
        "max(heights)",
        "max(heights or [1])",
        4,
        "upstream crash (max of empty list) when no unit reaches IoU 0.04; report-only guard",
    ),
    (
        "loader/model_loader.py",
        "torch.load(settings.MODEL_FILE)",
        "torch.load(settings.MODEL_FILE, weights_only=True)",
        1,
        "modern torch.load: explicit weights_only for a plain state_dict",
    ),
    (
        "loader/model_loader.py",
        "model._modules.get(name).register_forward_hook",
        "model.get_submodule(name).register_forward_hook",
        1,
        "hook dotted layer names such as features.11 (same module for top-level names)",
    ),
    (
        "feature_operation.py",
        "    def feature_extraction(self, model=None, memmap=True):",
        "    @torch.no_grad()\n    def feature_extraction(self, model=None, memmap=True):",
        1,
        "Variable(volatile=True) was removed in PyTorch 0.4; torch.no_grad replaces it",
    ),
    (
        "feature_operation.py",
        "input_var = V(input,volatile=True)",
        "input_var = input",
        1,
        "Variable(volatile=True) was removed in PyTorch 0.4; a plain tensor under no_grad",
    ),
]

SCIPY_MISC_COMPAT = '''\
"""scipy.misc.imread / imresize / imsave as SciPy <= 1.2 implemented them (pilutil.py).

Only the call forms NetDissect-Lite uses are supported.
"""
import numpy
from PIL import Image


def fromimage(im):
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    return numpy.array(im)


def imread(name):
    return fromimage(Image.open(name))


def bytescale(data, high=255, low=0):
    if data.dtype == numpy.uint8:
        return data
    cmin = data.min()
    cmax = data.max()
    cscale = cmax - cmin
    if cscale == 0:
        cscale = 1
    scale = float(high - low) / cscale
    bytedata = (data - cmin) * scale + low
    return (bytedata.clip(low, high) + 0.5).astype(numpy.uint8)


def toimage(arr, mode=None):
    data = numpy.asarray(arr)
    if data.ndim == 2:
        if mode == "F":
            return Image.fromarray(data.astype(numpy.float32), mode="F")
        if mode is None:
            return Image.fromarray(bytescale(data), mode="L")
    elif data.ndim == 3 and data.shape[2] in (3, 4) and mode is None:
        return Image.fromarray(bytescale(data), mode="RGB" if data.shape[2] == 3 else "RGBA")
    raise NotImplementedError("toimage: shape %s mode %s" % (data.shape, mode))


def imresize(arr, size, interp="bilinear", mode=None):
    im = toimage(arr, mode=mode)
    size = (int(size[1]), int(size[0]))  # (h, w) -> PIL (w, h)
    func = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "cubic": 3}
    return fromimage(im.resize(size, resample=func[interp]))


def imsave(name, arr, format=None):
    im = toimage(arr)
    if format is None:
        im.save(name)
    else:
        im.save(name, format)
'''

TORCHVISION_INIT = '''\
"""Stand-in for torchvision: only the models NetDissect-Lite needs here."""
from . import models  # noqa: F401
'''

TORCHVISION_MODELS = '''\
"""resnet18 and alexnet with torchvision's exact module structure and state_dict keys."""
import torch
from torch import nn

__all__ = ["AlexNet", "ResNet", "alexnet", "resnet18"]


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class AlexNet(nn.Module):
    def __init__(self, num_classes=1000, dropout=0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _no_pretrained(pretrained):
    if pretrained:
        raise RuntimeError("stand-in torchvision: pass MODEL_FILE, no pretrained downloads")


def resnet18(pretrained=False, num_classes=1000, **kwargs):
    _no_pretrained(pretrained)
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, **kwargs)


def alexnet(pretrained=False, num_classes=1000, **kwargs):
    _no_pretrained(pretrained)
    return AlexNet(num_classes=num_classes, **kwargs)
'''

SETTINGS = """\
# Generated by cnnvis_jax benchmarks/peers/netdissect_lite.py for this run.
GPU = {gpu!r}
TEST_MODE = False
CLEAN = False
MODEL = {model!r}
DATASET = 'imagenet'
QUANTILE = 0.005
SEG_THRESHOLD = 0.04
SCORE_THRESHOLD = 0.04
TOPN = 10
PARALLEL = 1
CATAGORIES = {categories!r}
OUTPUT_FOLDER = {output_folder!r}
DATA_DIRECTORY = {data_directory!r}
IMG_SIZE = {img_size!r}
NUM_CLASSES = 1000
FEATURE_NAMES = [{layer!r}]
MODEL_FILE = {model_file!r}
MODEL_PARALLEL = False
WORKERS = 12
BATCH_SIZE = 128
TALLY_BATCH_SIZE = 16
TALLY_AHEAD = 4
INDEX_FILE = 'index.csv'
"""

# Lite's first output line of each phase, in order.
MARKERS = (
    ("extract", "extracting feature"),
    ("quantile", "calculating quantile threshold"),
    ("tally", "labelprobe"),
    ("report", "Generating html summary"),
)

# What a previous run leaves in OUTDIR (removed by --overwrite; nothing else is touched).
OWN_OUTPUTS = ("src", "model.pth", "lite.log", "feature_size.npy", "quantile.npy", "tally.csv")
OWN_DIRS = ("html", "image")


def is_git_dir(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def export_source(source: Path, dest: Path) -> str:
    """Copy the peer's source into ``dest``; returns a description (commit or folder)."""
    if is_git_dir(source):
        git = ["git", f"--git-dir={source}"]
        commit = subprocess.run(
            [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()
        archive = subprocess.run(
            [*git, "archive", "--format=tar", commit], check=True, capture_output=True
        ).stdout
        dest.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(dest, filter="data")
        return commit
    if not (source / "main.py").is_file():
        raise SystemExit(f"--source {source}: neither a git directory nor a NetDissect-Lite folder")
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".git", "__pycache__"))
    return str(source.resolve())


def apply_patches(src: Path) -> None:
    for rel, old, new, expected, reason in PATCHES:
        path = src / rel
        text = path.read_text()
        found = text.count(old)
        if found != expected:
            raise SystemExit(
                f"patch for {rel} ({reason}): expected {expected} x {old!r}, found {found}"
            )
        path.write_text(text.replace(old, new))


def write_support(src: Path) -> None:
    (src / "scipy_misc_compat.py").write_text(SCIPY_MISC_COMPAT)
    (src / "torchvision" / "models").mkdir(parents=True)
    (src / "torchvision" / "__init__.py").write_text(TORCHVISION_INIT)
    (src / "torchvision" / "models" / "__init__.py").write_text(TORCHVISION_MODELS)


def write_state_dict(weights: Path, model: str, layer: str, dest: Path) -> int:
    """safetensors (torchvision keys and layouts) -> torch state_dict file; returns its size.

    The state is first loaded (strict) into the stand-in model, and ``layer`` looked up in
    it, so that a wrong key, layout (e.g. HWIO kernels) or layer name fails here with
    torch's message rather than inside Lite.
    """
    import numpy as np
    import torch
    from safetensors.numpy import load_file

    arrays = load_file(str(weights))
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    for key in list(state):
        if key.endswith(".running_mean"):
            nbt = key[: -len("running_mean")] + "num_batches_tracked"
            state.setdefault(nbt, torch.tensor(0, dtype=torch.long))
    standin: dict = {}
    exec(compile(TORCHVISION_MODELS, "torchvision/models/__init__.py", "exec"), standin)
    net = standin[model](num_classes=1000)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise SystemExit(f"--weights {weights} do not fit torchvision {model}: {err}") from err
    try:
        net.get_submodule(layer)
    except AttributeError as err:
        raise SystemExit(f"--layer {layer}: not a module of {model}: {err}") from err
    torch.save(state, dest)
    return len(state)


def prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SystemExit(f"--out {out} is not empty (pass --overwrite to replace a run)")
        for name in OWN_OUTPUTS + OWN_DIRS:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for p in out.glob("*.mmap"):
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def run_lite(src: Path, log_path: Path) -> tuple[int, float, dict[str, float | None]]:
    """Run main.py; return (exit code, wall seconds, per-phase seconds)."""
    stamps: dict[str, float] = {}
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-u", "main.py"],
            cwd=src,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.monotonic() - t0
            for phase, marker in MARKERS:
                if phase not in stamps and line.startswith(marker):
                    stamps[phase] = now
            log.write(f"[{now:9.3f}] {line}")
        rc = proc.wait()
    total = time.monotonic() - t0
    edges = [("startup", 0.0)] + [(p, stamps.get(p)) for p, _ in MARKERS] + [("end", total)]
    phases: dict[str, float | None] = {}
    for (name, start), (_, stop) in zip(edges[:-1], edges[1:]):
        if start is None or stop is None:
            phases[name] = None
        else:
            phases[name] = round(stop - start, 3)
    return rc, total, phases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, required=True, help="NetDissect-Lite git dir or folder")
    ap.add_argument("--broden", type=Path, required=True, help="Broden-format directory")
    ap.add_argument("--weights", type=Path, required=True, help="torchvision-keyed safetensors")
    ap.add_argument("--model", choices=sorted(DEFAULT_IMG_SIZE), required=True)
    ap.add_argument("--layer", required=True, help="module name, e.g. layer4 or features.11")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--categories", default=",".join(ALL_CATEGORIES))
    ap.add_argument("--img-size", type=int, default=None, help="Lite IMG_SIZE (224 / 227)")
    ap.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    ap.add_argument("--gpu", action="store_true", help="Lite's GPU=True: model and batches on CUDA")
    args = ap.parse_args(argv)

    categories = [c for c in args.categories.split(",") if c]
    unknown = sorted(set(categories) - set(ALL_CATEGORIES))
    if unknown or not categories:
        raise SystemExit(f"--categories: unknown {unknown} (choose from {ALL_CATEGORIES})")
    if not (args.broden / "index.csv").is_file():
        raise SystemExit(f"--broden {args.broden}: no index.csv")
    out = args.out.resolve()
    prepare_out(out, args.overwrite)

    model_file = out / "model.pth"
    write_state_dict(args.weights, args.model, args.layer, model_file)
    src = out / "src"
    revision = export_source(args.source, src)
    apply_patches(src)
    write_support(src)
    settings = SETTINGS.format(
        model=args.model,
        categories=categories,
        output_folder=str(out),
        data_directory=str(args.broden.resolve()),
        img_size=args.img_size or DEFAULT_IMG_SIZE[args.model],
        layer=args.layer,
        model_file=str(model_file),
        gpu=bool(args.gpu),
    )
    (src / "settings.py").write_text(settings)

    log_path = out / "lite.log"
    rc, seconds, phases = run_lite(src, log_path)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    html = out / "html" / (re.sub(r"[-/#?*!\s]+", "-", args.layer).strip("-") + ".html")
    result = {
        "seconds": round(seconds, 3),
        "tally": str(out / "tally.csv"),
        "quantile": str(out / "quantile.npy"),
        "html": str(html),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "phases": phases,
        "returncode": rc,
        "log": str(log_path),
        "source": revision,
        "model": args.model,
        "layer": args.layer,
        "categories": categories,
        "patches": len(PATCHES),
    }
    if rc != 0:
        tail = log_path.read_text().splitlines()[-25:]
        print("NetDissect-Lite failed; last lines of " + str(log_path), file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)
    for key in ("tally", "quantile", "html"):
        if not os.path.exists(result[key]):
            result[key] = None
    print(json.dumps(result))
    return rc


if __name__ == "__main__":
    sys.exit(main())
