"""Time course_utils.gradcam against captum, pytorch-grad-cam, torch-cam and the floor, side by side
(and, with --method, Grad-CAM++, LayerCAM or Score-CAM against pytorch-grad-cam's and torch-cam's).

The floor is what a plain Grad-CAM must do: one forward pass that keeps the layer output, and
`torch.autograd.grad` of the target scores to it. Every method runs on the same model, inputs and
targets, in rounds that visit the methods in a rotating order, so that drift of the machine hits
them alike. Each method's hooks exist only during its own sample. Before a sample, free memory is
handed back to the system (`malloc_trim`) and one call runs untimed: each method is then timed in
the steady state its own allocations leave, not in a heap that another method (pytorch-grad-cam
back-propagates into every weight) has already grown. Each sample repeats calls for about 50 ms.
The table shows the median over rounds, and the ratios as medians of the ratios within a round
(the methods of a round ran back to back, so this cancels the drift of the machine, whose speed
moves by up to 2x within a second on our VM). The median, not the best sample: a method's own
cost varies from call to call (page faults when its graph holds more memory), and the best
sample would hide exactly that. A second table gives each method's peak memory.

    make bench            # or: PYTHONPATH=. python benchmarks/gradcam.py [--quick] [--overhead]
    PYTHONPATH=. python benchmarks/gradcam.py --method gradcampp layercam scorecam   # or all

For the other methods the floor is the same forward and `autograd.grad` (what any gradient CAM
must do); Score-CAM has no floor. Score-CAM runs one forward pass per channel and image, so it is
timed on the default model only, one call a sample.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import math
import os
import platform
import statistics
import time
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")   # before torch imports tqdm: pytorch-grad-cam's Score-CAM draws bars
import torch  # noqa: E402

warnings.filterwarnings("ignore")  # the peers' deprecation chatter is not what we measure

NAMES = ["floor", "course_utils", "captum", "pytorch-grad-cam", "torch-cam"]
PEERS = ["captum", "pytorch-grad-cam", "torch-cam"]
# CAM method -> the implementations timed side by side (captum has only Grad-CAM)
FAMILY = {"gradcam": NAMES,
          "gradcampp": ["floor", "course_utils", "pytorch-grad-cam", "torch-cam"],
          "layercam": ["floor", "course_utils", "pytorch-grad-cam", "torch-cam"],
          "scorecam": ["course_utils", "pytorch-grad-cam", "torch-cam"]}
PGC = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "layercam": "LayerCAM", "scorecam": "ScoreCAM"}
TORCHCAM = {"gradcam": "GradCAM", "gradcampp": "GradCAMpp", "layercam": "LayerCAM", "scorecam": "ScoreCAM"}
SAMPLE_SECONDS = 0.05   # short samples: this machine's speed drifts within a second


# ---------------------------------------------------------------- the methods
def floor(model, x, layer, targets):
    """One forward keeping the layer output, then autograd.grad of the target scores to it."""
    kept = []
    handle = layer.register_forward_hook(lambda m, i, o: kept.append(o))
    try:
        scores = model(x)
    finally:
        handle.remove()
    grad, = torch.autograd.grad(scores.gather(1, targets[:, None]).sum(), kept[0])
    return grad


def make_method(name: str, model, layer, cam: str = "gradcam"):
    """`(call, close)`: `call(x, targets)` computes the `cam` maps as each library's documentation
    shows; `close()` removes whatever hooks the setup left on the model."""
    if cam not in FAMILY or name not in FAMILY[cam]:
        raise ValueError(f"no {name!r} for {cam!r}; choose a method from {list(FAMILY)} "
                         f"and an implementation from {FAMILY.get(cam, NAMES)}")
    if name == "floor":
        return (lambda x, t: floor(model, x, layer, t)), (lambda: None)
    if name == "course_utils":
        import course_utils
        ours = getattr(course_utils, cam)       # the method's name in course_utils
        return (lambda x, t: ours(model, x, layer, t)), (lambda: None)
    if name == "captum":
        from captum.attr import LayerGradCam
        method = LayerGradCam(model, layer)
        return (lambda x, t: method.attribute(x, target=t.tolist(), relu_attributions=True)), (lambda: None)
    if name == "pytorch-grad-cam":
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        method = getattr(pytorch_grad_cam, PGC[cam])(model=model, target_layers=[layer])

        def close():  # not release(): its in-place detach_ fails on some activations (views)
            for handle in method.activations_and_grads.handles:
                handle.remove()
        return (lambda x, t: method(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t])), close
    if name == "torch-cam":
        import torchcam.methods
        method = getattr(torchcam.methods, TORCHCAM[cam])(model, target_layer=layer)
        return (lambda x, t: method(class_idx=t.tolist(), scores=model(x), normalized=False)), method.remove_hooks
    raise AssertionError(name)



# ---------------------------------------------------------------- the cases
@functools.lru_cache(maxsize=1)
def default_model():
    from course_utils.model import get_learner
    return get_learner().model.eval()


def build_case(model_name: str, layer_name: str, batch: int):
    """The model, layer, input batch and targets of one row, shared by every method."""
    torch.manual_seed(0)
    if model_name == "default":
        from course_utils.data import DEFAULT_SIZE
        model, size = default_model(), DEFAULT_SIZE
        layer = {"last": model[0], "inner": model[0][-2]}[layer_name]
    elif model_name == "resnet18":
        import torchvision
        model, size = torchvision.models.resnet18(num_classes=2).eval(), 224
        layer = getattr(model, layer_name)
    else:  # "toy": a model that computes almost nothing, so what is left is the cost per call
        model, size = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.AdaptiveAvgPool2d(1),
                                          torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval(), 4
        layer = model[0]
    torch.manual_seed(batch)
    return model, layer, torch.randn(batch, 3, size, size), torch.arange(batch) % 2


LABELS = {"default": "default model, 128 px", "resnet18": "resnet18, 224 px", "toy": "toy, 4 px"}


def cases(quick: bool):
    for batch in (1, 16):
        for layer in ("last", "inner"):
            yield "default", layer, batch
    if not quick:          # (Score-CAM on resnet18 at 224 px: 8,192 forward passes a call)
        for batch in (1, 16):
            for layer in ("layer4", "layer3"):
                yield "resnet18", layer, batch


# ---------------------------------------------------------------- timing
def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return libc if hasattr(libc, "malloc_trim") else None
    except (OSError, TypeError):   # no C library found by that name (Windows)
        return None


LIBC = _libc()  # glibc: malloc_trim exists; elsewhere the heap is left as it is


def release_free_memory() -> None:
    """Hand the heap's free memory back to the system, so the next method starts from cold."""
    if LIBC is not None:
        LIBC.malloc_trim(0)


def reset_peak_memory() -> None:
    """Start a new high-water mark of resident memory (Linux >= 4.0; elsewhere peaks read NaN)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def memory_mb(field: str) -> float:
    """`VmRSS` (now) or `VmHWM` (peak since `reset_peak_memory`) of this process, in MB."""
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith(field + ":"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return float("nan")


def sample(name: str, model, layer, x, targets, calls: int, cam: str = "gradcam") -> tuple[float, float]:
    """Seconds per call of one method over `calls` calls, and its peak memory above the start (MB)."""
    model.zero_grad(set_to_none=True)       # pytorch-grad-cam writes .grad; start every method clean
    release_free_memory()
    reset_peak_memory()
    base = memory_mb("VmRSS")
    call, close = make_method(name, model, layer, cam)
    try:
        call(x, targets)                     # untimed: brings this method to its steady state
        start = time.perf_counter()
        for _ in range(calls):
            call(x, targets)
        elapsed = (time.perf_counter() - start) / calls
    finally:
        close()
    return elapsed, memory_mb("VmHWM") - base


def calls_per_sample(model, layer, x, targets) -> int:
    """How many calls make a sample last about SAMPLE_SECONDS (short calls are noisy)."""
    floor(model, x, layer, targets)
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < SAMPLE_SECONDS / 5:
        floor(model, x, layer, targets)
        n += 1
    return max(1, round(SAMPLE_SECONDS * n / (time.perf_counter() - start)))


def time_case(case: tuple, rounds: int, cam: str = "gradcam") -> tuple[list[dict], dict]:
    """Per-round seconds per call of every implementation of `cam`, and each one's largest peak
    memory (MB)."""
    names = FAMILY[cam]
    model, layer, x, targets = build_case(*case)
    calls = calls_per_sample(model, layer, x, targets) if cam != "scorecam" else 1
    per_round, peaks = [], {name: [] for name in names}
    for r in range(rounds + 1):              # round 0 warms up and is discarded
        times = {}
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name], peak = sample(name, model, layer, x, targets, calls, cam)
            peaks[name].append(peak)
        if r:
            per_round.append(times)
    return per_round, {name: max(p) if not any(map(math.isnan, p)) else math.nan
                       for name, p in peaks.items()}


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median: the order statistics k+1 and n-k, with the
    largest k whose binomial tail keeps the coverage (the whole range when n is too small)."""
    v, n = sorted(values), len(values)
    k, tail = -1, 0.0
    while k + 1 < n // 2:
        tail += math.comb(n, k + 1) / 2 ** n
        if 2 * tail > 1 - confidence:
            break
        k += 1
    return (v[0], v[-1]) if k < 0 else (v[k], v[n - 1 - k])


def summarize(per_round: list[dict]) -> dict:
    """Median seconds per call of every method over the rounds, and ours / floor and ours /
    fastest peer as medians (with 95 % intervals) of the ratios within each round: the methods of
    a round ran back to back, so the ratio cancels the machine's drift. (No floor in the rounds:
    NaN ratios to it.)"""
    names = list(per_round[0])
    peers = [n for n in names if n in PEERS]
    t = {n: statistics.median(r[n] for r in per_round) for n in names}
    ratios = {"ours/peer": [r["course_utils"] / min(r[p] for p in peers) for r in per_round],
              "ours/floor": [r["course_utils"] / r["floor"] if "floor" in r else math.nan
                             for r in per_round]}
    for key, values in ratios.items():
        t[key], t[key + " interval"] = statistics.median(values), median_interval(values)
    return t


def ratio_cell(t: dict, key: str) -> str:
    lo, hi = t[key + " interval"]
    if math.isnan(t[key]):
        return "–"
    return f"{t[key]:.2f}× ({lo:.2f}–{hi:.2f})"


# ---------------------------------------------------------------- reports
def overhead(rounds: int) -> None:
    """Fixed cost per call, on a model that computes almost nothing (one thread, 4x4 px input)."""
    torch.set_num_threads(1)
    per_round, _ = time_case(("toy", "last", 1), rounds)
    t = summarize(per_round)
    print("fixed cost per call, median microseconds (toy model, 1 thread, "
          f"{rounds} rounds): " + ", ".join(f"{name} {1e6 * t[name]:.0f}" for name in NAMES))


def table(quick: bool, rounds: int, cam: str = "gradcam") -> None:
    names = FAMILY[cam]
    threads = torch.get_num_threads()
    print(f"{cam}: torch {torch.__version__}, {threads} threads, {platform.machine()}; median ms per call "
          f"over {rounds} interleaved rounds; ratios with their 95 % intervals")
    print()
    head = "| model | layer | batch | " + " | ".join(names)
    print(head + " | ours / floor | ours / fastest peer |")
    print("|---" * (len(names) + 5) + "|")
    memory, slower, far = [], [], []
    for case in cases(quick or cam == "scorecam"):
        per_round, peaks = time_case(case, rounds, cam)
        t = summarize(per_round)
        row = f"| {LABELS[case[0]]} | {case[1]} | {case[2]} | "
        print(row + " | ".join(f"{1e3 * t[n]:.1f}" for n in names)
              + f" | {ratio_cell(t, 'ours/floor')} | {ratio_cell(t, 'ours/peer')} |", flush=True)
        memory.append(row + " | ".join(f"{peaks[n]:.0f}" for n in names) + " |")
        label = f"{LABELS[case[0]]} {case[1]} batch {case[2]}"
        if t["ours/peer interval"][0] > 1:
            slower.append(label)
        if t["ours/floor interval"][1] > 1.15:
            far.append(label)
    print()
    print("Measurably slower than the fastest peer (whole interval above 1): "
          + (", ".join(slower) or "no row"))
    print("Possibly above 1.15x the floor (interval reaches past it): " + (", ".join(far) or "no row"))
    print()
    print("Peak resident memory during a sample, above the level before it, MB (largest over rounds)")
    print()
    print(head + " |")
    print("|---" * (len(names) + 3) + "|")
    print("\n".join(memory))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="default model only, 5 rounds")
    parser.add_argument("--overhead", action="store_true", help="only the fixed cost per call")
    parser.add_argument("--rounds", type=int, help="rounds per row (default 21, or 5 with --quick)")
    parser.add_argument("--method", nargs="+", choices=[*FAMILY, "all"], default=["gradcam"],
                        help="which CAM method(s) to time, one after the other (default gradcam; all: every method)")
    args = parser.parse_args()
    rounds = args.rounds if args.rounds is not None else (5 if args.quick else 21)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.overhead:
        return overhead(rounds)
    for cam in FAMILY if "all" in args.method else dict.fromkeys(args.method):
        table(args.quick, rounds, cam)
        print()


if __name__ == "__main__":
    main()
