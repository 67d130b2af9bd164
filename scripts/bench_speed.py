"""Speed and memory of prediction and training on this machine (issue 8), optimised vs a plain reference.

Prints, with the core count and the torch / OpenCV thread settings:

* end-to-end seconds per radiograph (read DICOM, detect, crop, keypoints with MC dropout, map back,
  measurements, write JSON + markups + overlay): median over ``--n`` synthetic radiographs, for the
  regressor, the heatmap model and both, for the optimised code and the plain reference (one crop at
  a time, ``T`` MC passes one by one, patches cut one by one, eager network), and their ratio;
* where the time of one radiograph goes (cProfile of the optimised "both" run: read, detect, crop, MC
  dropout, patches, FCN, corners, writes);
* crops per second per network at batch 1 and at the best batch size, forward only and with ``T``
  MC passes, optimised and reference, and the cost of ``T`` MC passes relative to one pass;
* training samples per second per network (the bundle's own training dataloader, network, loss and
  optimizer) and the share of a step spent waiting for data, for the bundle's dataset as configured
  and with MONAI's ``CacheDataset`` caching the radiograph reads;
* peak resident memory of prediction and of training (a subprocess per measurement; ``--quick``
  measures in-process).

Networks have random weights (timing does not depend on training); the detector network runs on
every radiograph but its (untrained) detections are replaced by the annotated boxes and centres, so
every vertebra is predicted. ``--sizes bench`` (default) uses the sizes of ``docs/results.md``'s
whole-radiograph bench (512 px images; detector input 64, features 8-8-16-32-64-8; BayeCBAM width 0.25,
fc 256, crop 112x224; FCN width 8); ``--sizes bundle`` the bundle's defaults (1024 px images; detector
256, features 16-16-32-64-128-16; BayeCBAM width 1.0, fc 1024, crop 224x448; FCN width 64: slow on a CPU,
use a small ``--n``).

Default run (2 CPU cores, quiet machine)::

    python scripts/bench_speed.py --out runs/bench-speed

Smoke run::

    python scripts/bench_speed.py --quick --out /tmp/bench-speed
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

__all__ = ["SIZES", "Sizes", "build_parser", "main", "run_benchmark", "E2E_COLUMNS", "CROP_COLUMNS", "TRAIN_COLUMNS",
           "MEMORY_COLUMNS", "SPLIT_COLUMNS"]

E2E_COLUMNS = ("model", "optimised s", "optimised p90 s", "reference s", "reference / optimised", "target s", "met")
SPLIT_COLUMNS = ("stage", "s / radiograph", "share")
CROP_COLUMNS = ("network", "impl", "batch 1 /s", "best batch", "best /s", "MC T batch 1 /s", "MC T best /s",
                "MC T cost / 1 pass")
TRAIN_COLUMNS = ("network", "dataset", "batch", "samples /s", "data wait share", "steps")
MEMORY_COLUMNS = ("run", "peak RSS MB", "how")


@dataclass
class Sizes:
    """Model and data sizes of one benchmark profile (see the module docstring)."""

    image_px: int = 512
    detector_input: int = 64
    detector_features: tuple[int, ...] = (8, 8, 16, 32, 64, 8)
    regressor_width: float = 0.25
    fc_features: int = 256
    crop_hw: tuple[int, int] = (112, 224)
    fcn_width: int = 8
    train_batch_regressor: int = 16
    train_batch_images: int = 4
    heatmap_patches_per_image: int = 24

    def describe(self) -> str:
        return (f"images {self.image_px} px; detector input {self.detector_input}, features "
                f"{'-'.join(map(str, self.detector_features))}; regressor bayecbam width {self.regressor_width}, "
                f"fc {self.fc_features}, crop {self.crop_hw[0]}x{self.crop_hw[1]}; heatmap FCN width {self.fcn_width}")


SIZES: dict[str, Sizes] = {
    "bench": Sizes(),
    "bundle": Sizes(image_px=1024, detector_input=256, detector_features=(16, 16, 32, 64, 128, 16),
                    regressor_width=1.0, fc_features=1024, crop_hw=(224, 448), fcn_width=64,
                    train_batch_regressor=96, train_batch_images=4, heatmap_patches_per_image=64),
    "quick": Sizes(image_px=256, detector_input=32, detector_features=(4, 4, 8, 8, 16, 4), regressor_width=0.125,
                   fc_features=32, crop_hw=(64, 128), fcn_width=2, train_batch_regressor=4, train_batch_images=2,
                   heatmap_patches_per_image=8),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", choices=sorted(SIZES), default="bench", help="model/data size profile (default bench)")
    p.add_argument("--n", type=int, default=20, help="synthetic radiographs for the end-to-end median (default 20)")
    p.add_argument("--mc-samples", type=int, default=10, help="MC-dropout passes T (default 10)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--batches", default="1,2,4,8,16,32,64", help="batch sizes tried for crops/s")
    p.add_argument("--train-steps", type=int, default=12, help="timed training steps per network (default 12)")
    p.add_argument("--skip", default="", help="comma list of sections to skip: e2e,split,crops,train,memory")
    p.add_argument("--memory", choices=("subprocess", "inprocess"), default="subprocess",
                   help="peak RSS per measurement in a subprocess (default) or of this process")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: sizes quick, n 2, T 2, few batches/steps")
    p.add_argument("--out", default=str(REPO / "runs" / "bench-speed"), help="output folder (data, predictions, table)")
    p.add_argument("--json", default=None, help="also write all figures as JSON here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: memory measurement run
    return p


# ---------------------------------------------------------------------------------------------- helpers
def _settings(args: argparse.Namespace) -> argparse.Namespace:
    if args.quick:
        args.sizes, args.n, args.mc_samples = "quick", min(args.n, 2), min(args.mc_samples, 2)
        args.batches, args.train_steps, args.memory = "1,4", min(args.train_steps, 2), "inprocess"
    return args


def _thread_info() -> dict[str, Any]:
    import cv2
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count()
    return {"cpu_count": os.cpu_count(), "usable_cores": cores, "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(), "cv2_threads": cv2.getNumThreads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
            "mkldnn": bool(torch.backends.mkldnn.is_available()), "device": "cpu"}


def _timeit(fn: Callable[[], Any], repeat: int = 3, min_time: float = 0.2) -> float:
    """Best-of-``repeat`` seconds of one call (each repeat loops until ``min_time``), after a warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            el = time.perf_counter() - t0
            if el >= min_time:
                break
        best = min(best, el / n)
    return best


def _maxrss_mb() -> float:
    """Peak resident memory of this process in MB.

    Linux: ``VmHWM`` of ``/proc/self/status`` (per address space, so a subprocess starts from zero);
    ``ru_maxrss`` is not used there because Linux carries the parent's high-water mark into a child
    across fork + exec (both children reported the parent's 1176 MB before this was changed).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


def _fmt(v: Any, f: str = "{:.3f}") -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f.format(v)
    return str(v)


def format_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of ``rows`` (dicts keyed by ``columns``)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- models and data
def make_data(out: Path, sizes: Sizes, n: int) -> list[tuple[Path, Path]]:
    """``n`` synthetic cervical radiographs (DICOM + annotation) in ``out/data-<px>`` (reused when present)."""
    from monai_spine.data.synthetic import generate_dataset

    d = out / f"data-{sizes.image_px}"
    index = d / "dataset.json"
    ok = index.is_file() and len(json.loads(index.read_text())["data"]) >= n
    if not ok:
        generate_dataset(d, "cervical", n, seed=0, hard_case_rate=0.0, size=sizes.image_px)
    items = json.loads(index.read_text())["data"][:n]
    return [(d / it["image"], d / it["label"]) for it in items]


class OracleDetector:
    """Runs the (untrained) detector network on the radiograph, then returns the annotated vertebrae."""

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        self.spec = detector.spec
        self.annotation: Any = None

    def detect(self, image: Any, spacing_mm: Any = None, spacing_source: Any = None) -> Any:
        import numpy as np

        from monai_spine.data.keypoints import get_scheme
        from monai_spine.data.patches import vertebra_geometry
        from monai_spine.inference.detector import Detections

        self.detector.detect(image, spacing_mm, spacing_source)  # timed, result discarded
        a = self.annotation
        kp = np.asarray(a.keypoints_px, dtype=np.float64)
        corners = kp[:, list(get_scheme(a.scheme).corner_indices)]
        centres = vertebra_geometry(corners).centre
        boxes = np.concatenate([np.nanmin(corners, 1), np.nanmax(corners, 1)], axis=1)
        return Detections(list(a.levels), centres, boxes, np.ones(len(boxes)), spacing_mm, spacing_source or "unknown")


def build_models(sizes: Sizes, mc_samples: int, seed: int = 0) -> dict[str, Any]:
    """Random-weight detector, regressor and FCN at ``sizes`` (batch norms get non-trivial statistics)."""
    import numpy as np
    import torch

    from monai_spine.inference.corners import CornerPrior
    from monai_spine.inference.detector import DetectorSpec, VertebraDetector
    from monai_spine.inference.heatmap import HeatmapModelSpec
    from monai_spine.networks.regressor import build_regressor

    torch.manual_seed(seed)
    dspec = DetectorSpec(spatial_size=(sizes.detector_input, sizes.detector_input), features=sizes.detector_features)
    detector = VertebraDetector(dspec.build_network(), dspec)
    regressor = build_regressor("bayecbam", 5, width=sizes.regressor_width, fc_features=sizes.fc_features,
                                spatial_size=sizes.crop_hw, logvar_bias_init=-7.0).eval()
    hspec = HeatmapModelSpec(network={"width": sizes.fcn_width, "multipliers": [1, 2, 4, 8, 12]})
    hspec.prior = CornerPrior(np.array([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]]),
                              np.tile(np.eye(2) * 0.01, (4, 1, 1)), 10)
    fcn = hspec.build_network().eval()
    with torch.no_grad():
        for m in fcn.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return {"detector": detector, "regressor": regressor, "fcn": fcn, "heatmap_spec": hspec, "mc_samples": mc_samples,
            "sizes": sizes}


def build_pipeline(models: dict[str, Any], model: str, reference: bool, out: Path) -> Any:
    """A :class:`SpinePipeline` for ``model`` (regressor / heatmap / both), optimised or reference."""
    from monai_spine.inference.heatmap import CornerPredictor
    from monai_spine.inference.pipeline import SpinePipeline
    from monai_spine.inference.regressor import KeypointPredictor

    reg = corners = None
    if model in ("regressor", "both"):
        reg = KeypointPredictor(models["regressor"], scheme="lateral5", spatial_size=models["sizes"].crop_hw,
                                num_samples=models["mc_samples"], reference=reference)
    if model in ("heatmap", "both"):
        corners = CornerPredictor(models["fcn"], models["heatmap_spec"], optimize=not reference,
                                  batch_size=1 if reference else 256)
    return SpinePipeline(OracleDetector(models["detector"]), reg, corners, overlays=True)


def predict_all(pipe: Any, cases: Sequence[tuple[Path, Path]], out: Path) -> list[float]:
    """Seconds of ``predict_file`` per case (one warm-up call first)."""
    from monai_spine.data.annotation import read_annotation

    anns = [read_annotation(lbl) for _, lbl in cases]
    pipe.detector.annotation = anns[0]
    pipe.predict_file(cases[0][0], out)  # warm-up (lazy imports, caches, allocator)
    times = []
    for (img, _), ann in zip(cases, anns):
        pipe.detector.annotation = ann
        t0 = time.perf_counter()
        pipe.predict_file(img, out)
        times.append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------------------------------------- sections
TARGETS_S = {"regressor": 0.5, "heatmap": None, "both": 1.0}


def bench_end_to_end(models: dict[str, Any], cases: Sequence[tuple[Path, Path]], out: Path) -> list[dict[str, Any]]:
    rows = []
    for model in ("regressor", "heatmap", "both"):
        opt = predict_all(build_pipeline(models, model, False, out), cases, out / f"pred-{model}")
        ref = predict_all(build_pipeline(models, model, True, out), cases, out / f"pred-{model}-ref")
        mo, mr = statistics.median(opt), statistics.median(ref)
        p90 = sorted(opt)[min(len(opt) - 1, int(round(0.9 * (len(opt) - 1))))]
        tgt = TARGETS_S[model]
        rows.append({"model": model, "optimised s": mo, "optimised p90 s": p90, "reference s": mr,
                     "reference / optimised": mr / mo if mo > 0 else None, "target s": tgt,
                     "met": None if tgt is None else bool(mo <= tgt), "n": len(opt)})
    return rows


#: stages of the time split: label -> (file suffix, function name) of the profiled function
STAGES = {
    "read image": ("readers.py", "read_xray"),
    "detect (network + decode)": ("detector.py", "detect"),
    "regressor crops": ("regressor.py", "<listcomp>|crop"),
    "MC dropout (T passes)": ("mc_dropout.py", "mc_dropout_predict"),
    "heatmap patches": ("heatmap.py", "make_patches"),
    "heatmap FCN": ("heatmap.py", "predict_maps"),
    "heatmap corners": ("heatmap.py", "localize"),
    "results JSON": ("regressor.py", "to_json"),
    "write outputs": ("pipeline.py", "_write_outputs"),
    "total predict_file": ("pipeline.py", "predict_file"),
}


def bench_split(models: dict[str, Any], cases: Sequence[tuple[Path, Path]], out: Path) -> list[dict[str, Any]]:
    """cProfile cumulative seconds per radiograph of the main stages (optimised, both models)."""
    from monai_spine.data.annotation import read_annotation

    pipe = build_pipeline(models, "both", False, out)
    pipe.detector.annotation = read_annotation(cases[0][1])
    pipe.predict_file(cases[0][0], out / "pred-split")
    prof = cProfile.Profile()
    for img, lbl in cases:
        pipe.detector.annotation = read_annotation(lbl)
        prof.enable()
        pipe.predict_file(img, out / "pred-split")
        prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    found: dict[str, float] = {}
    crop_t = 0.0
    for (fname, _, func), (_, _, _, ct, _) in stats.items():
        for label, (suffix, name) in STAGES.items():
            if label == "regressor crops":
                continue
            if fname.endswith(suffix) and func == name:
                found[label] = max(found.get(label, 0.0), ct)
        if fname.endswith(("transforms/crop.py", "transforms" + os.sep + "crop.py")) and func == "__call__":
            crop_t = max(crop_t, ct)
    found["regressor crops"] = crop_t
    n = len(cases)
    total = found.get("total predict_file", 0.0)
    rows = []
    for label in STAGES:
        s = found.get(label, 0.0) / n
        rows.append({"stage": label, "s / radiograph": s, "share": f"{100 * s * n / total:.0f} %" if total else None})
    return rows


def _crop_rates(fn_for_batch: Callable[[int], Callable[[], Any]], batches: Sequence[int]) -> tuple[float, int, float]:
    rates = {}
    for b in batches:
        rates[b] = b / _timeit(fn_for_batch(b), repeat=2, min_time=0.1)
    best = max(rates, key=rates.get)  # type: ignore[arg-type]
    return rates[batches[0]], best, rates[best]


def bench_crops(models: dict[str, Any], batches: Sequence[int]) -> list[dict[str, Any]]:
    import torch

    from monai_spine.inference.heatmap import inference_network
    from monai_spine.uncertainty.mc_dropout import mc_dropout_predict, mc_dropout_reference

    sizes, t = models["sizes"], models["mc_samples"]
    reg = models["regressor"]
    h, w = sizes.crop_hw
    xs = torch.rand(max(batches), 1, h, w)
    rows = []
    with torch.inference_mode():
        fwd = lambda b: (lambda: reg(xs[:b]))  # noqa: E731
        mc = lambda b: (lambda: mc_dropout_predict(reg, xs[:b], num_samples=t))  # noqa: E731
        b1, bb, rb = _crop_rates(fwd, batches)
        m1, mb, rmb = _crop_rates(mc, batches)
        rows.append({"network": f"regressor bayecbam w={sizes.regressor_width}", "impl": "optimised (batched, trunk once)",
                     "batch 1 /s": b1, "best batch": bb, "best /s": rb, "MC T batch 1 /s": m1, "MC T best /s": rmb,
                     "MC T cost / 1 pass": rb / rmb})
        ref1 = 1.0 / _timeit(lambda: reg(xs[:1]), repeat=2, min_time=0.1)
        refmc = 1.0 / _timeit(lambda: mc_dropout_reference(reg, xs[:1], num_samples=t), repeat=2, min_time=0.1)
        rows.append({"network": f"regressor bayecbam w={sizes.regressor_width}", "impl": "reference (1 crop, T passes)",
                     "batch 1 /s": ref1, "best batch": 1, "best /s": ref1, "MC T batch 1 /s": refmc,
                     "MC T best /s": refmc, "MC T cost / 1 pass": ref1 / refmc})
        fcn = models["fcn"]
        fast = inference_network(fcn)
        s = models["heatmap_spec"].out_size
        ps = torch.randn(max(batches), 1, s, s)
        pcl = ps.contiguous(memory_format=torch.channels_last)
        e1, eb, reb = _crop_rates(lambda b: (lambda: fcn(ps[:b])), batches)
        f1, fb, rfb = _crop_rates(lambda b: (lambda: fast(pcl[:b])), batches)
        name = f"heatmap FCN w={sizes.fcn_width} ({s} px patches)"
        rows.append({"network": name, "impl": "optimised (BN folded, channels-last)", "batch 1 /s": f1, "best batch": fb,
                     "best /s": rfb})
        rows.append({"network": name, "impl": "reference (eager)", "batch 1 /s": e1, "best batch": eb, "best /s": reb})
        det = models["detector"].network
        d = sizes.detector_input
        img = torch.rand(1, 1, d, d)
        r = 1.0 / _timeit(lambda: det(img), repeat=2, min_time=0.1)
        rows.append({"network": f"detector {d} px", "impl": "eager", "batch 1 /s": r, "best batch": 1, "best /s": r})
    return rows


def _bundle_parser(kind: str, sizes: Sizes, out: Path, cached: bool, steps: int) -> Any:
    from monai.bundle import ConfigParser

    cfg = REPO / "bundle" / "configs"
    files = {"regressor": ["train.json"], "heatmap": ["train.json", "heatmap_train.json"],
             "detector": ["train.json", "detector_train.json"]}[kind]
    parser = ConfigParser()
    parser.read_config([str(cfg / f) for f in files])
    n_img = max(4, 2 * sizes.train_batch_images)
    ov: dict[str, Any] = {
        "bundle_root": str(out / "bundle"), "device": "$torch.device('cpu')",
        "synthetic#n": n_img * 2, "synthetic#size": [sizes.image_px, sizes.image_px], "synthetic#hard_case_rate": 0.0,
        "max_cases": None, "num_workers": 0,
    }
    if kind == "regressor":
        ov.update({"network_width": sizes.regressor_width, "fc_features": sizes.fc_features,
                   "spatial_size": list(sizes.crop_hw), "batch_size": sizes.train_batch_regressor})
        if cached:
            ov["train#dataset"] = {"_target_": "CacheDataset", "data": "$@datalists['training']",
                                   "transform": "@train#preprocessing", "cache_rate": 1.0, "progress": False}
    elif kind == "heatmap":
        ov.update({"fcn_width": sizes.fcn_width, "batch_size": sizes.train_batch_images,
                   "patches#per_image": sizes.heatmap_patches_per_image})
        if not cached:
            ov["cache_rate"] = 0.0
    else:
        ov.update({"detector#spatial_size": [sizes.detector_input] * 2,
                   "detector#features": list(sizes.detector_features), "batch_size": sizes.train_batch_images})
        if not cached:
            ov["cache_rate"] = 0.0
    for k, v in ov.items():
        parser[k] = v
    return parser


def train_rate(kind: str, sizes: Sizes, out: Path, cached: bool, steps: int) -> dict[str, Any]:
    """Samples/s and data-wait share of ``steps`` training steps with the bundle's own components."""
    parser = _bundle_parser(kind, sizes, out, cached, steps)
    loader = parser.get_parsed_content("train#dataloader")
    net = parser.get_parsed_content("network").train()
    loss_fn = parser.get_parsed_content("loss")
    opt = parser.get_parsed_content("optimizer")
    wait = comp = 0.0
    samples = done = 0
    it = iter(loader)
    first = True
    while done < steps:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        t1 = time.perf_counter()
        x, y = batch["image"], batch["label"]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if first:  # warm-up step (first batch also fills the cache)
            first = False
            continue
        wait += t1 - t0
        comp += t2 - t1
        samples += int(x.shape[0])
        done += 1
    total = wait + comp
    what = {"regressor": "Dataset (bundle)", "heatmap": "CacheDataset (bundle)", "detector": "CacheDataset (bundle)"}
    if kind == "regressor":
        label = "CacheDataset (override)" if cached else what[kind]
    else:
        label = what[kind] if cached else "Dataset (cache_rate 0)"
    return {"network": kind, "dataset": label, "batch": int(x.shape[0]), "samples /s": samples / total,
            "data wait share": f"{100 * wait / total:.0f} %", "wait_share": wait / total, "steps": done}


def bench_train(sizes: Sizes, out: Path, steps: int) -> list[dict[str, Any]]:
    rows = []
    for kind in ("regressor", "heatmap", "detector"):
        for cached in (False, True):
            try:
                rows.append(train_rate(kind, sizes, out, cached, steps))
            except Exception as e:  # report and go on: one network's failure should not hide the others
                rows.append({"network": kind, "dataset": f"failed: {type(e).__name__}: {e}"[:120]})
    return rows


def bench_memory(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    rows = []
    for what in ("predict", "train"):
        if args.memory == "inprocess":
            rows.append({"run": what, "peak RSS MB": _maxrss_mb(), "how": "this process so far (peak RSS)"})
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", what, "--sizes", args.sizes, "--n",
               str(args.n), "--mc-samples", str(args.mc_samples), "--out", str(out), "--train-steps", str(args.train_steps)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if r.returncode != 0 or not line:
            rows.append({"run": what, "peak RSS MB": None, "how": f"subprocess failed: {r.stderr.strip()[-200:]}"})
            continue
        rows.append({"run": what, "peak RSS MB": json.loads(line[-1])["maxrss_mb"],
                     "how": "subprocess peak RSS, VmHWM (imports included)"})
    return rows


def _child(args: argparse.Namespace, out: Path) -> int:
    sizes = SIZES[args.sizes]
    if args.child == "predict":
        models = build_models(sizes, args.mc_samples)
        cases = make_data(out, sizes, args.n)
        predict_all(build_pipeline(models, "both", False, out), cases, out / "pred-memory")
    else:
        for kind in ("regressor", "heatmap", "detector"):
            train_rate(kind, sizes, out, True, args.train_steps)
    print(json.dumps({"maxrss_mb": _maxrss_mb()}))
    return 0


# ---------------------------------------------------------------------------------------------- main
def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run every section not skipped; returns ``{"info", "e2e", "split", "crops", "train", "memory"}``."""
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MONAI_SPINE_CACHE", str(out / "cache"))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    sizes = SIZES[args.sizes]
    res: dict[str, Any] = {"info": {**_thread_info(), "sizes_profile": args.sizes, "sizes": asdict(sizes),
                                    "n": args.n, "mc_samples": args.mc_samples}}
    models = build_models(sizes, args.mc_samples)
    cases = make_data(out, sizes, args.n) if not {"e2e", "split"} <= skip else []
    if "e2e" not in skip:
        res["e2e"] = bench_end_to_end(models, cases, out)
    if "split" not in skip:
        res["split"] = bench_split(models, cases[: max(1, min(5, len(cases)))], out)
    if "crops" not in skip:
        res["crops"] = bench_crops(models, [int(b) for b in args.batches.split(",")])
    if "train" not in skip:
        res["train"] = bench_train(sizes, out, args.train_steps)
    if "memory" not in skip:
        res["memory"] = bench_memory(args, out)
    return res


def format_report(res: dict[str, Any], command: Sequence[str]) -> str:
    i = res["info"]
    sz = SIZES[i["sizes_profile"]]
    head = [
        f"command: {' '.join(command)}",
        f"cores: {i['usable_cores']} usable ({i['cpu_count']} in the machine); torch {i['torch']} threads "
        f"{i['torch_threads']} (inter-op {i['torch_interop_threads']}), OMP_NUM_THREADS={i['OMP_NUM_THREADS']}, "
        f"OpenCV threads {i['cv2_threads']}, oneDNN {'on' if i['mkldnn'] else 'off'}, device {i['device']}",
        f"sizes ({i['sizes_profile']}): {sz.describe()}; MC dropout T={i['mc_samples']}; random weights",
    ]
    parts = ["\n".join(head)]
    if "e2e" in res:
        parts.append(f"End to end, seconds per radiograph (median over {i['n']} synthetic radiographs):\n\n"
                     + format_table(E2E_COLUMNS, res["e2e"]))
    if "split" in res:
        parts.append("Where the time goes (optimised, both models; cProfile, so slower than above):\n\n"
                     + format_table(SPLIT_COLUMNS, res["split"]))
    if "crops" in res:
        parts.append(f"Crops per second (forward only; MC with T={i['mc_samples']} passes):\n\n"
                     + format_table(CROP_COLUMNS, res["crops"]))
    if "train" in res:
        parts.append("Training (bundle dataloader, network, loss, optimizer; num_workers 0):\n\n"
                     + format_table(TRAIN_COLUMNS, res["train"]))
    if "memory" in res:
        parts.append("Peak resident memory:\n\n" + format_table(MEMORY_COLUMNS, res["memory"]))
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _settings(build_parser().parse_args(argv))
    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if args.child:
        return _child(args, Path(args.out).resolve())
    res = run_benchmark(args)
    text = format_report(res, ["python", "scripts/bench_speed.py", *(argv if argv is not None else sys.argv[1:])])
    print(text)
    out = Path(args.out).resolve()
    (out / "table.md").write_text(text, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
