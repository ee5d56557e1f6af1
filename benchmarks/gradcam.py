"""Time course_utils.gradcam against captum, pytorch-grad-cam, torch-cam and the floor, side by side.

The floor is the least any Grad-CAM can do: one forward pass that keeps the layer output, and
`torch.autograd.grad` of the target scores to it. Every method runs on the same model, inputs and
targets; rounds are interleaved so that drift of the machine hits all methods alike, and each
method's hooks exist only while it is being timed. Prints a Markdown table (median ms per call).

    make bench            # or: PYTHONPATH=. python benchmarks/gradcam.py [--quick]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import torch
import torchvision

from course_utils import gradcam

warnings.filterwarnings("ignore")  # the peers' deprecation chatter is not what we measure


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


def ours(model, x, layer, targets):
    return gradcam(model, x, layer, targets)


class Captum:
    def __init__(self, model, layer):
        from captum.attr import LayerGradCam
        self.method = LayerGradCam(model, layer)

    def __call__(self, model, x, layer, targets):
        return self.method.attribute(x, target=targets.tolist(), relu_attributions=True)

    def close(self):
        pass


class PytorchGradCam:
    def __init__(self, model, layer):
        from pytorch_grad_cam import GradCAM
        self.method = GradCAM(model=model, target_layers=[layer])

    def __call__(self, model, x, layer, targets):
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        return self.method(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])

    def close(self):  # not release(): its in-place detach_ fails on some activations (views)
        for handle in self.method.activations_and_grads.handles:
            handle.remove()


class TorchCam:
    def __init__(self, model, layer):
        from torchcam.methods import GradCAM
        self.method = GradCAM(model, target_layer=layer)

    def __call__(self, model, x, layer, targets):
        return self.method(class_idx=targets.tolist(), scores=model(x), normalized=False)

    def close(self):
        self.method.remove_hooks()


class Plain:
    """A method that is a plain function: nothing to set up or tear down."""
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)

    def close(self):
        pass


METHODS = {"floor": lambda m, l: Plain(floor), "course_utils": lambda m, l: Plain(ours),
           "captum": Captum, "pytorch-grad-cam": PytorchGradCam, "torch-cam": TorchCam}


def calls_per_sample(model, x, layer, targets, seconds: float = 0.1) -> int:
    """How many calls make one timing sample last about `seconds` (short calls are noisy)."""
    floor(model, x, layer, targets)
    start = time.perf_counter()
    floor(model, x, layer, targets)
    return max(1, round(seconds / (time.perf_counter() - start)))


def time_case(model, x, layer, targets, rounds: int) -> dict[str, float]:
    """Median seconds per call of every method, over interleaved rounds."""
    calls = calls_per_sample(model, x, layer, targets)
    samples = {name: [] for name in METHODS}
    for r in range(rounds + 1):                    # round 0 warms up and is discarded
        for name, make in METHODS.items():
            method = make(model, layer)
            try:
                start = time.perf_counter()
                for _ in range(calls):
                    method(model, x, layer, targets)
                elapsed = (time.perf_counter() - start) / calls
            finally:
                method.close()
                model.zero_grad(set_to_none=True)
            if r:
                samples[name].append(elapsed)
    return {name: statistics.median(s) for name, s in samples.items()}


def cases(quick: bool):
    from course_utils.model import get_learner
    learn = get_learner()
    default = learn.model.eval()
    size = learn.dls.one_batch()[0].shape[-1]
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=2).eval()
    yield f"default model, {size} px", default, size, [("last", default[0]), ("inner", default[0][-2])]
    if not quick:
        yield "resnet18, 224 px", resnet, 224, [("layer4", resnet.layer4), ("layer3", resnet.layer3)]


def overhead() -> None:
    """Fixed cost per call, on a model that computes almost nothing (one thread, 4x4 px input)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    toy = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    t = time_case(toy, torch.randn(1, 3, 4, 4), toy[0], torch.tensor([1]), rounds=15)
    print("fixed cost per call, microseconds (toy model, 1 thread): "
          + ", ".join(f"{name} {1e6 * sec:.0f}" for name, sec in t.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="default model only, fewer rounds")
    parser.add_argument("--overhead", action="store_true", help="only the fixed cost per call")
    args = parser.parse_args()
    if args.overhead:
        return overhead()
    names = list(METHODS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}; "
          "median ms per call")
    print()
    print("| model | layer | batch | " + " | ".join(names) + " | ours / floor | ours / fastest peer |")
    print("|---" * (len(names) + 5) + "|")
    for label, model, size, layers in cases(args.quick):
        for batch in (1, 16):
            torch.manual_seed(batch)
            x = torch.randn(batch, 3, size, size)
            targets = torch.arange(batch) % 2
            for lname, layer in layers:
                t = time_case(model, x, layer, targets, rounds=5 if args.quick else 15)
                peer = min(t["captum"], t["pytorch-grad-cam"], t["torch-cam"])
                cells = " | ".join(f"{1e3 * t[n]:.1f}" for n in names)
                print(f"| {label} | {lname} | {batch} | {cells} | "
                      f"{t['course_utils'] / t['floor']:.2f}× | {t['course_utils'] / peer:.2f}× |",
                      flush=True)


if __name__ == "__main__":
    main()
