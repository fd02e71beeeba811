"""Seconds and peak memory per LoRA training step, torch reference vs MindSpore, through the trainers' own step code.

    python benchmarks/step_time.py [--framework torch|mindspore|both] [--size tiny|small|full]
        [--precision fp32|bf16|fp16] [--device cpu|cuda|ascend] [--resolution 512] [--rank 4]
        [--gradient_checkpointing] [--steps 5] [--warmup 2] [--rounds 2] [--json FILE]

A step is what each trainer's loop does once its inputs are ready: `step.loss_and_grads` (forward and
backward, prompt embeddings cached as the trainers cache them) then `step.clip_and_step` (clip and
AdamW). Each framework runs in its own subprocess, so the two memory peaks stay apart, and the runs
alternate in rounds (torch, mindspore, torch, mindspore, ...) so drift of a shared machine hits both.

Two ways to build the models:
* pipeline (tiny and small): the trainer's own `train.build(args, device)` on the cached FLUX-shaped
  checkpoint, the bundled images, a VAE encode per step (unless --cache_latents).
* transformer only (`--transformer_only`, always for full): the transformer built from its config in
  memory with random weights (full FLUX.1-dev is never written to disk), LoRA added and dtypes placed
  by the trainer's own functions, random prompt embeddings and VAE posterior passed to the step as the
  trainers pass cached ones. This is exactly the scope of benchmarks/memory_model.py.

Memory: the peak above a baseline taken right before the models are built (on CPU the peak resident
set size, reset after building through /proc/self/clear_refs; on CUDA/Ascend the framework's peak
allocated bytes), split into frozen weights, trainable weights + gradients + optimizer state (byte
counts of the actual tensors) and the rest (activations, working memory and allocator slack).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script: make fluxlora, the trainers and benchmarks importable

from benchmarks import memory_model  # noqa: E402

FRAMEWORKS = ("torch", "mindspore")
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
PACKAGES = ("torch", "diffusers", "transformers", "peft", "mindspore", "mindone", "numpy", "psutil")
LATENT_CHANNELS = 16
REASON_LENGTH = 300
MIB = 2**20
GIB = 2**30


# ============================================================================ command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--framework", default="both", choices=("torch", "mindspore", "both"))
    a("--size", default="small", choices=("tiny", "small", "full"))
    a("--precision", default=None, choices=tuple(MIXED_PRECISION),
      help="weight/compute dtype (LoRA weights stay fp32); default fp32 on cpu, bf16 elsewhere")
    a("--device", default="cpu", choices=("cpu", "cuda", "ascend"))
    a("--resolution", type=int, default=512)
    a("--rank", type=int, default=4)
    a("--batch_size", type=int, default=1)
    a("--max_sequence_length", type=int, default=512, help="T5 tokens (FLUX.1-dev trains with 512)")
    a("--gradient_checkpointing", action="store_true")
    a("--cache_latents", action="store_true", help="pipeline mode: encode each image once, as --cache_latents does")
    a("--transformer_only", action="store_true", help="transformer from config, random inputs (forced for full)")
    a("--mindspore_mode", default="pynative", choices=("pynative", "graph"))
    a("--steps", type=int, default=5, help="timed steps per run")
    a("--warmup", type=int, default=2, help="untimed steps before them, per run")
    a("--rounds", type=int, default=2, help="runs per framework, alternating frameworks")
    a("--malloc_mmap_threshold", type=int, default=None, metavar="BYTES",
      help="CPU: give the runs glibc's MALLOC_MMAP_THRESHOLD_ so freed tensors go back to the OS at once and "
           "peak RSS follows live memory (e.g. 65536; used to validate the memory model)")
    a("--child_timeout", type=float, default=3600.0, help="seconds before one run is abandoned")
    a("--json", default=None, help="write every figure, machine info and package versions here")
    a("--child", default=None, choices=FRAMEWORKS, help=argparse.SUPPRESS)
    a("--child_output", default=None, help=argparse.SUPPRESS)
    return p


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    options = build_parser().parse_args(argv)
    if options.precision is None:
        options.precision = "fp32" if options.device == "cpu" else "bf16"
    if options.size == "full":
        options.transformer_only = True
    if options.steps < 1 or options.warmup < 0 or options.rounds < 1:
        raise SystemExit("--steps and --rounds must be at least 1, --warmup at least 0")
    return options


def describe(options) -> str:
    mode = "transformer only" if options.transformer_only else (
        "pipeline, latents cached" if options.cache_latents else "pipeline")
    return (f"size {options.size}, {mode}, resolution {options.resolution}, rank {options.rank}, batch "
            f"{options.batch_size}, {options.max_sequence_length} text tokens, {options.precision}, device "
            f"{options.device}, gradient checkpointing {'on' if options.gradient_checkpointing else 'off'}; "
            f"{options.rounds} round(s) x {options.steps} timed steps after {options.warmup} warm-up"
            + (f"; glibc MALLOC_MMAP_THRESHOLD_={options.malloc_mmap_threshold}"
               if options.malloc_mmap_threshold is not None else ""))


# ============================================================================ parent: run, alternate, report


def unrunnable_reason(framework: str, options) -> str | None:
    """Combinations known in advance not to run; anything else is tried and its error reported."""
    if framework == "mindspore" and options.device == "cpu" and options.precision == "bf16":
        return ("MindSpore on CPU has no bf16 arithmetic (MatMul/Conv2D: 'Unsupported data type'); "
                "bf16 needs Ascend. Use --precision fp32 or fp16 on CPU")
    if framework == "torch" and options.device == "ascend":
        return "the torch reference runs on cpu or cuda only"
    return None


def child_command(framework: str, options, output: str) -> list[str]:
    argv = strip_options(options.argv, ("--framework", "--precision", "--json", "--child", "--child_output"))
    return [sys.executable, str(Path(__file__).resolve()), *argv, "--framework", framework,
            "--precision", options.precision, "--child", framework, "--child_output", output]


def strip_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """Drop `--name value` / `--name=value` pairs the parent sets itself."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not any(arg.startswith(name + "=") for name in names):
            kept.append(arg)
    return kept


def child_environment(options) -> dict[str, str]:
    env = dict(os.environ)
    if options.malloc_mmap_threshold is not None:
        # glibc otherwise keeps freed blocks (and raises this threshold as it goes) for reuse, so peak RSS
        # would include memory the program no longer uses; read by glibc at process start
        env["MALLOC_MMAP_THRESHOLD_"] = str(options.malloc_mmap_threshold)
    return env


def run_child(framework: str, options) -> dict:
    with tempfile.TemporaryDirectory(prefix="step_time_") as folder:
        output = os.path.join(folder, "result.json")
        try:
            done = subprocess.run(child_command(framework, options, output), cwd=REPO, capture_output=True,
                                  text=True, timeout=options.child_timeout, env=child_environment(options))
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": f"no result within --child_timeout {options.child_timeout:.0f} s"}
        if os.path.exists(output):
            with open(output) as f:
                return json.load(f)
        last = [line for line in done.stderr.strip().splitlines() if line.strip()][-3:]
        return {"status": "failed", "reason": f"exit code {done.returncode}: {' | '.join(last) or 'no output'}"}


def run_rounds(options) -> dict[str, dict]:
    frameworks = list(FRAMEWORKS) if options.framework == "both" else [options.framework]
    results = {fw: {"status": "skipped", "reason": reason, "runs": []}
               for fw in frameworks if (reason := unrunnable_reason(fw, options))}
    active = [fw for fw in frameworks if fw not in results]
    results.update({fw: {"status": "ok", "runs": []} for fw in active})
    if not options.transformer_only:
        from fluxlora.tiny import cached_checkpoint

        cached_checkpoint(options.size, seed=0)  # written once, before any run is timed
    for round_index in range(options.rounds):
        for fw in [fw for fw in active if results[fw]["status"] == "ok"]:
            print(f"round {round_index + 1}/{options.rounds}: {fw} ...", file=sys.stderr, flush=True)
            run = run_child(fw, options)
            if run["status"] != "ok":
                results[fw].update(status=run["status"], reason=run["reason"])  # no point repeating it
                continue
            results[fw]["runs"].append(run)
    for result in results.values():
        if result["runs"]:
            result["summary"] = summarize(result["runs"])
    return results


def summarize(runs: list[dict]) -> dict:
    times = [t for run in runs for t in run["step_seconds"]]
    peaks = [run["memory"]["peak_above_baseline"] for run in runs]
    worst = runs[peaks.index(max(peaks))]["memory"]
    tensor_peaks = [run["memory"]["tensor_peak"] for run in runs if run["memory"].get("tensor_peak")]
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "steps": len(times),
            "peak_bytes": max(peaks), "peak_bytes_per_run": peaks, **{k: worst[k] for k in MEMORY_PARTS},
            "tensor_peak": max(tensor_peaks) if tensor_peaks else None,
            "predicted_bytes": runs[0]["memory_model"]["predicted"]}


MEMORY_PARTS = ("frozen_weights", "trainable_state", "activations_and_other")


def ratio(torch_value, mindspore_value) -> str:
    if torch_value is None or mindspore_value is None or torch_value == 0:
        return "-"
    return f"{mindspore_value / torch_value:.2f}"


TABLE_ROWS = (("median s/step", "median_s"), ("min s/step", "min_s"), ("max s/step", "max_s"),
              ("peak above baseline MiB", "peak_bytes"), ("  frozen weights MiB", "frozen_weights"),
              ("  LoRA weights+grads+AdamW MiB", "trainable_state"),
              ("  activations+other MiB", "activations_and_other"),
              ("live-tensor peak MiB (profiler)", "tensor_peak"), ("memory model prediction MiB", "predicted_bytes"))


def table(results: dict[str, dict]) -> str:
    def value(fw: str, key: str):
        return results.get(fw, {}).get("summary", {}).get(key)

    def cell(fw: str, key: str) -> str:
        v = value(fw, key)
        return "n/a" if v is None else f"{v:.3f}" if key.endswith("_s") else f"{v / MIB:.1f}"

    lines = [f"{'':32}{'torch':>12}{'mindspore':>12}{'ms/torch':>10}"]
    for label, key in TABLE_ROWS:
        lines.append(f"{label:32}{cell('torch', key):>12}{cell('mindspore', key):>12}"
                     f"{ratio(value('torch', key), value('mindspore', key)):>10}")
    for fw, result in results.items():
        if result["status"] != "ok":
            lines.append(f"{fw}: {result['status']}: {result['reason']}")
    return "\n".join(lines)


def model_check(results: dict[str, dict]) -> str:
    """The memory model's prediction next to each run's measured peaks."""
    lines = []
    for fw, result in results.items():
        for i, run in enumerate(result["runs"]):
            check = run["memory_model"]
            line = (f"memory model vs {fw} run {i + 1} ({check['scope']}): predicted {check['predicted'] / MIB:.1f} "
                    f"MiB; process peak {check['process_peak'] / MIB:.1f} MiB ({check['process_error']:+.1%})")
            if "tensor_peak" in check:
                line += f"; live-tensor peak {check['tensor_peak'] / MIB:.1f} MiB ({check['tensor_error']:+.1%})"
            lines.append(line)
    return "\n".join(lines)


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "logical_cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                                 if line.startswith("model name"))
        info["ram_bytes"] = proc_kib("/proc/meminfo", "MemTotal")
    except (OSError, StopIteration):
        pass
    return info


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def parent_main(options) -> dict:
    started = machine_info()
    print(describe(options))
    results = run_rounds(options)
    print(table(results))
    check = model_check(results)
    if check:
        print(check)
    report = {"command": " ".join([Path(sys.executable).name, "benchmarks/step_time.py", *options.argv]),
              "options": {k: v for k, v in vars(options).items() if not k.startswith("child") and k != "argv"},
              "machine": {**started, "load_average_after": machine_info().get("load_average")},
              "packages": package_versions(), "results": results}
    if options.json:
        Path(options.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {options.json}")
    return report


# ============================================================================ child: one framework, one run


def proc_kib(path: str, field: str) -> int:
    """A `Field:  N kB` line of a /proc file, in bytes."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class HostMemory:
    """Resident set size of this process; its peak is reset after the models are built so that loading
    (files read, dtype casts) does not count as training-step memory."""

    description = "host (MemAvailable)"

    def current(self) -> int:
        return proc_kib("/proc/self/status", "VmRSS")

    def reset_peak(self) -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: the high-water mark restarts from the current RSS

    def peak(self) -> int:
        return proc_kib("/proc/self/status", "VmHWM")

    def file_backed(self) -> int:
        """Library pages faulted in on first use of a kernel: resident, but not training memory."""
        return proc_kib("/proc/self/status", "RssFile")

    def capacity(self) -> int:
        return proc_kib("/proc/meminfo", "MemAvailable")


class TorchCudaMemory:
    description = "GPU"

    def __init__(self, torch):
        self.cuda = torch.cuda

    def current(self) -> int:
        return self.cuda.memory_allocated()

    def reset_peak(self) -> None:
        self.cuda.synchronize()
        self.cuda.reset_peak_memory_stats()

    def peak(self) -> int:
        self.cuda.synchronize()
        return self.cuda.max_memory_allocated()

    def file_backed(self) -> int:
        return 0

    def capacity(self) -> int:
        return self.cuda.mem_get_info()[1]


class MindSporeDeviceMemory:
    description = "device"

    def __init__(self, ms):
        self.runtime = ms.runtime

    def current(self) -> int:
        return int(self.runtime.memory_allocated())

    def reset_peak(self) -> None:
        self.runtime.synchronize()
        self.runtime.reset_peak_memory_stats()

    def peak(self) -> int:
        self.runtime.synchronize()
        return int(self.runtime.max_memory_allocated())

    def file_backed(self) -> int:
        return 0

    def capacity(self) -> int | None:
        return None  # no portable query; the run is attempted


class TorchBench:
    """torch_reference's functions, and the few things torch and MindSpore spell differently."""

    name = "torch"

    def __init__(self, options):
        import torch

        from fluxlora.args import UsageError
        from torch_reference import models as models_module
        from torch_reference import step, train

        self.torch, self.train, self.step, self.models_module = torch, train, step, models_module
        if options.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda: torch sees no CUDA device on this machine")
        self.device = train.select_device(options.device)
        self.memory = TorchCudaMemory(torch) if self.device.type == "cuda" else HostMemory()

    def tensor(self, array: np.ndarray, mixed_precision: str = "no"):
        from torch_reference.precision import weight_dtype

        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device, weight_dtype(mixed_precision))

    def optimizer(self, groups: list[dict], args):
        from torch_reference.optim import OPTIMIZERS

        return OPTIMIZERS[args.optimizer](groups, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)

    def cached_prompt(self, models, inputs, cache: dict):
        return self.train.cached_prompt(models, inputs, cache, self.device)

    def cached_posterior(self, models, inputs, cache: dict):
        return self.train.cached_posterior(models, inputs, cache, self.device)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def parameters(self, models) -> list:
        return [p for model in models.named_modules().values() for p in model.parameters()]

    def nbytes(self, tensor) -> int:
        return tensor.numel() * tensor.element_size()

    def optimizer_tensors(self, optimizer) -> list:
        return [v for state in optimizer.state.values() for v in state.values()
                if isinstance(v, self.torch.Tensor) and v.dim() > 0]  # moments, not the step counters

    def schedule(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        from fluxlora.tiny import SCHEDULER_CONFIG

        return self.models_module.schedule_tables(FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG))

    def transformer(self, config: dict, mixed_precision: str):
        """FLUX's transformer with random weights, allocated once in the weight dtype (no fp32 detour)."""
        from diffusers import FluxTransformer2DModel

        from torch_reference.precision import weight_dtype

        torch = self.torch
        with torch.device("meta"):
            transformer = FluxTransformer2DModel(**config)
        transformer.to(dtype=weight_dtype(mixed_precision))
        transformer.to_empty(device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(0)
        with torch.no_grad():
            for name, p in transformer.named_parameters():
                if p.dim() > 1:
                    p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()), generator=generator)  # activations stay O(1)
                else:
                    p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)  # RMSNorm gains, biases
        return transformer

    def lora_tools(self):
        from torch_reference.lora import add_lora
        from torch_reference.models import freeze
        from torch_reference.precision import place_dtypes

        return freeze, add_lora, place_dtypes

    def tensor_peak(self, run_step, resident: list) -> int | None:
        """Peak bytes of live tensors over one extra, untimed step, from the profiler's allocation events
        (signed sizes in time order) on top of the tensors resident before it. None on CUDA, where the
        process figure already is the allocator's peak."""
        if self.device.type != "cpu":
            return None
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run_step()
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]")
        live = peak = 0
        for _, nbytes in events:
            live += nbytes
            peak = max(peak, live)
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in resident}
        return sum(storages.values()) + peak

    def device_info(self) -> dict:
        info = {"torch_threads": self.torch.get_num_threads()}
        if self.device.type == "cuda":
            info["gpu"] = self.torch.cuda.get_device_name()
        return info


class MindSporeBench:
    """mindspore_impl's functions (the same contract as torch_reference's)."""

    name = "mindspore"

    def __init__(self, options):
        import mindspore as ms

        # train imports lora, optim and precision lazily: import them now, so the baseline RSS includes them
        from mindspore_impl import lora, optim, precision, step, train  # noqa: F401
        from mindspore_impl import models as models_module

        self.ms, self.train, self.step, self.models_module = ms, train, step, models_module
        self.device = train.select_device(options.device, options.mindspore_mode)
        self.memory = HostMemory() if self.device == "CPU" else MindSporeDeviceMemory(ms)

    def tensor(self, array: np.ndarray, mixed_precision: str = "no"):
        from mindspore_impl.precision import weight_dtype

        return self.ms.Tensor(np.ascontiguousarray(array)).astype(weight_dtype(mixed_precision))

    def optimizer(self, groups: list[dict], args):
        from mindspore_impl.optim import OPTIMIZERS

        return OPTIMIZERS[args.optimizer](groups, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)

    def cached_prompt(self, models, inputs, cache: dict):
        return self.train.cached_prompt(models, inputs, cache)

    def cached_posterior(self, models, inputs, cache: dict):
        return self.train.cached_posterior(models, inputs, cache)

    def synchronize(self) -> None:
        if self.device != "CPU" and hasattr(self.ms, "runtime"):
            self.ms.runtime.synchronize()

    def parameters(self, models) -> list:
        return [p for model in models.named_modules().values() for p in model.get_parameters()]

    def nbytes(self, tensor) -> int:
        return int(tensor.size) * tensor.itemsize

    def optimizer_tensors(self, optimizer) -> list:
        if hasattr(optimizer, "exp_avg"):  # mindspore_impl.optim.AdamW
            return [*optimizer.exp_avg.values(), *optimizer.exp_avg_sq.values()]
        inner = getattr(optimizer, "optimizer", None)  # AdamWeightDecay wraps nn.AdamWeightDecay
        return [*inner.moments1, *inner.moments2] if inner is not None else []

    def schedule(self):
        from mindone.diffusers import FlowMatchEulerDiscreteScheduler

        from fluxlora.tiny import SCHEDULER_CONFIG

        return self.models_module.schedule_tables(FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG))

    def transformer(self, config: dict, mixed_precision: str):
        """Parameters created uninitialized, cast, then initialized: allocated once in the weight dtype."""
        from mindone.diffusers import FluxTransformer2DModel
        from mindspore.nn.utils import no_init_parameters

        from mindspore_impl.precision import weight_dtype

        with no_init_parameters():
            transformer = FluxTransformer2DModel(**config)
        transformer.to(dtype=weight_dtype(mixed_precision))
        transformer.init_parameters_data()
        return transformer

    def lora_tools(self):
        from mindspore_impl.lora import add_lora
        from mindspore_impl.models import freeze
        from mindspore_impl.precision import place_dtypes

        return freeze, add_lora, place_dtypes

    def tensor_peak(self, run_step, resident: list) -> int | None:
        return None  # no allocator-level figure on CPU; on Ascend the process figure is the allocator's

    def device_info(self) -> dict:
        return {"device_target": self.device, "mode": self.ms.get_context("mode")}


BENCHES = {"torch": TorchBench, "mindspore": MindSporeBench}
# a framework, or its trainer, that is not there (yet): the row says "not available"
MISSING_MEANS_NOT_AVAILABLE = {"torch", "torch_reference", "diffusers", "peft", "mindspore", "mindspore_impl",
                               "mindone"}


def trainer_argv(options, output_dir: str, checkpoint: Path | None) -> list[str]:
    from fluxlora.args import BUNDLED_IMAGES, DEMO_PROMPT

    argv = ["--instance_data_dir", str(BUNDLED_IMAGES), "--instance_prompt", DEMO_PROMPT,
            "--resolution", str(options.resolution), "--rank", str(options.rank),
            "--mixed_precision", MIXED_PRECISION[options.precision], "--train_batch_size", str(options.batch_size),
            "--repeats", str(math.ceil(options.batch_size / len(list(BUNDLED_IMAGES.glob("*.png"))))),
            "--max_sequence_length", str(options.max_sequence_length), "--seed", "0", "--output_dir", output_dir,
            "--device", options.device, "--mindspore_mode", options.mindspore_mode]
    if checkpoint is not None:
        argv += ["--pretrained_model_name_or_path", str(checkpoint)]
    if options.gradient_checkpointing:
        argv.append("--gradient_checkpointing")
    if options.cache_latents:
        argv.append("--cache_latents")
    return argv


class TransformerOnly:
    """The slice of the trainers' model bundle their step touches when prompts and latents come cached."""

    def __init__(self, transformer):
        from fluxlora.tiny import VAE_FACTORS

        self.transformer = transformer
        self.vae = SimpleNamespace(config=SimpleNamespace(**VAE_FACTORS))  # sample_latents' shift and scale

    def named_modules(self) -> dict:
        return {"transformer": self.transformer}


def build_transformer_only(bench, args, size: str):
    """The trainer's build() steps (freeze, LoRA, checkpointing, dtypes) on an in-memory transformer."""
    from fluxlora.args import transformer_targets
    from fluxlora.tiny import transformer_config

    freeze, add_lora, place_dtypes = bench.lora_tools()
    models = TransformerOnly(bench.transformer(transformer_config(size), args.mixed_precision))
    freeze(models.transformer)
    add_lora(models.transformer, args.rank, args.lora_alpha, transformer_targets(args), args.lora_dropout)
    if args.gradient_checkpointing:
        bench.models_module.enable_gradient_checkpointing(models.transformer)
    place_dtypes(models, args.mixed_precision, [models.transformer])
    return models, [models.transformer]


class PipelineInputs:
    """Inputs as the trainer's loop makes them: bundled images, tokenized prompts, numpy draws."""

    def __init__(self, bench, models, args):
        from fluxlora.data import DreamBoothData

        self.bench, self.models, self.args = bench, models, args
        self.data = DreamBoothData(args)
        self.schedule = bench.models_module.schedule_tables(models.noise_scheduler)
        self.prompts, self.posteriors = {}, {}

    def __call__(self, step: int):
        from fluxlora.inputs import make_step_inputs

        epoch, index = divmod(step, self.data.batches_per_epoch)
        batch = self.data.batch(self.args.seed, epoch, index)
        inputs = make_step_inputs(batch, self.models.tokenizers, self.args, self.args.seed, step, 0,
                                  self.models.vae.config, self.schedule)
        cached = {"prompt_embeddings": self.bench.cached_prompt(self.models, inputs, self.prompts)}
        if self.args.cache_latents:
            cached["posterior"] = self.bench.cached_posterior(self.models, inputs, self.posteriors)
        return inputs, cached


class RandomInputs:
    """Pre-made random prompt embeddings and VAE posterior, fresh noise and timesteps every step."""

    def __init__(self, bench, config: dict, args):
        rng = np.random.default_rng(0)
        b, side = args.train_batch_size, args.resolution // 8
        self.args, self.schedule = args, bench.schedule()
        self.latent_shape = (LATENT_CHANNELS, side, side)
        pooled = rng.standard_normal((b, config["pooled_projection_dim"]), dtype=np.float32)
        prompt = rng.standard_normal((b, args.max_sequence_length, config["joint_attention_dim"]), dtype=np.float32)
        mean = rng.standard_normal((b, *self.latent_shape), dtype=np.float32)
        std = np.full_like(mean, 0.05)
        # in the weight dtype, as the trainers' caches hold the frozen encoders' outputs
        as_weights = lambda array: bench.tensor(array, args.mixed_precision)  # noqa: E731
        self.cached = {"prompt_embeddings": (as_weights(pooled), as_weights(prompt)),
                       "posterior": (as_weights(mean), as_weights(std))}

    def __call__(self, step: int):
        from fluxlora.draws import step_draws
        from fluxlora.inputs import StepInputs

        b = self.args.train_batch_size
        draws = step_draws(self.args.seed, step, list(range(b)), self.latent_shape, *self.schedule)
        inputs = StepInputs(pixel_values=np.zeros((b, 3, 1, 1), np.float32),
                            clip_ids=np.zeros((b, 77), np.int64),
                            t5_ids=np.zeros((b, self.args.max_sequence_length), np.int64),
                            num_instance=b, draws=draws, prompts=[""] * b)
        return inputs, self.cached


class StepRunner:
    """One training step exactly as the trainers' loops take it, inputs prepared off the clock."""

    def __init__(self, bench, models, groups: list[dict], optimizer, make_inputs, args):
        self.bench, self.models, self.optimizer, self.args = bench, models, optimizer, args
        self.make_inputs = make_inputs
        self.params = {n: p for g in groups for n, p in g["params"].items()}
        self.lrs = [g["lr"] for g in groups]
        self.losses: list[tuple[float, float]] = []

    def __call__(self, step: int) -> float:
        bench, args = self.bench, self.args
        inputs, cached = self.make_inputs(step)
        bench.synchronize()
        began = time.perf_counter()
        loss, grads, _ = bench.step.loss_and_grads(self.models, self.params, inputs, args.guidance_scale,
                                                   args.prior_loss_weight, **cached)
        grad_norm = bench.step.clip_and_step(self.optimizer, self.params, grads, self.lrs, args.max_grad_norm)
        bench.synchronize()
        seconds = time.perf_counter() - began
        self.losses.append((float(loss), grad_norm))  # a diverged (NaN) run shows in the JSON
        return seconds  # loss and grads go out of scope: the next step starts as a trainer's would

    def resident_tensors(self, step: int) -> list:
        """What is alive between steps: every parameter, the optimizer's moments, the cached inputs."""
        _, cached = self.make_inputs(step)
        inputs = [t for pair in cached.values() for t in pair]
        return [*self.bench.parameters(self.models), *self.bench.optimizer_tensors(self.optimizer), *inputs]


def memory_split(bench, models, optimizer, baseline: int, peak: int) -> dict:
    params = bench.parameters(models)
    frozen = sum(bench.nbytes(p) for p in params if not p.requires_grad)
    frozen_transformer = sum(bench.nbytes(p) for p in bench.parameters(TransformerOnly(models.transformer))
                             if not p.requires_grad)
    trainable = sum(bench.nbytes(p) for p in params if p.requires_grad)
    moments = sum(bench.nbytes(t) for t in bench.optimizer_tensors(optimizer))
    gradients = trainable  # one gradient per LoRA parameter, same dtype, alive through the backward pass
    above = peak - baseline
    return {"baseline": baseline, "peak": peak, "peak_above_baseline": above, "frozen_weights": frozen,
            "frozen_outside_transformer": frozen - frozen_transformer, "trainable_weights": trainable,
            "gradients": gradients, "optimizer_state": moments, "trainable_state": trainable + gradients + moments,
            "activations_and_other": above - frozen - trainable - gradients - moments}


def attention_kind(options) -> str:
    """mindspore_impl's CPU kernels replace flash attention with math attention (L x S matrices, fp32)."""
    return "math" if options.child == "mindspore" and options.device == "cpu" else "flash"


def predicted_peak(options, args) -> memory_model.MemoryEstimate:
    from fluxlora.args import transformer_targets
    from fluxlora.tiny import transformer_config

    return memory_model.estimate_peak(transformer_config(options.size), options.resolution, options.rank,
                                      transformer_targets(args), options.precision, options.gradient_checkpointing,
                                      options.batch_size, options.max_sequence_length, attention_kind(options),
                                      options.device)


def too_big(bench, estimate: memory_model.MemoryEstimate) -> str | None:
    capacity = bench.memory.capacity()
    if capacity is not None and estimate.total > capacity:
        return (f"needs about {estimate.total / GIB:.1f} GiB by the memory model "
                f"({estimate.frozen_weights / GIB:.1f} GiB of frozen weights alone); "
                f"{capacity / GIB:.1f} GiB available on this {bench.memory.description}")
    return None


def model_comparison(estimate, memory: dict, options) -> dict:
    """The model's total against the measured peaks. In pipeline mode the other models' weights are added
    as counted (the model covers the transformer); the VAE encode's own transient is not modelled."""
    predicted = estimate.total + memory["frozen_outside_transformer"]
    process = memory["peak_above_baseline"] - memory["library_pages_faulted_in"]
    comparison = {"predicted": predicted, "process_peak": process, "process_error": (predicted - process) / process,
                  "estimate": estimate.as_dict(),
                  "scope": "transformer step: the model's own scope" if options.transformer_only else
                  "pipeline: transformer modelled, other weights counted, VAE encode and tokenizers not modelled"}
    tensor_peak = memory.get("tensor_peak")
    if tensor_peak:
        comparison.update(tensor_peak=tensor_peak, tensor_error=(predicted - tensor_peak) / tensor_peak)
    return comparison


def measure(bench, runner: StepRunner, options, baseline: int, files_before: int) -> tuple[list[float], dict]:
    """Timed steps, then the memory figures (the peak covers warm-up and timed steps, not the build)."""
    bench.memory.reset_peak()
    seconds = [runner(step) for step in range(options.warmup + options.steps)][options.warmup:]
    memory = memory_split(bench, runner.models, runner.optimizer, baseline, bench.memory.peak())
    memory["library_pages_faulted_in"] = bench.memory.file_backed() - files_before
    step = options.warmup + options.steps
    memory["tensor_peak"] = bench.tensor_peak(lambda: runner(step), runner.resident_tensors(step))
    return seconds, memory


def child_run(options) -> dict:
    from fluxlora.args import UsageError, parse_args
    from fluxlora.tiny import cached_checkpoint

    try:
        bench = BENCHES[options.child](options)
    except UsageError as error:  # the trainer's own device check: this machine cannot run the combination
        return {"status": "skipped", "reason": str(error)}
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in MISSING_MEANS_NOT_AVAILABLE:
            raise  # a broken import inside the project is a failure, not an absent framework
        return {"status": "not available", "reason": f"{type(error).__name__}: {error}"}
    with tempfile.TemporaryDirectory(prefix="step_time_out_") as output_dir:
        checkpoint = None if options.transformer_only else cached_checkpoint(options.size, seed=0)
        args = parse_args(trainer_argv(options, output_dir, checkpoint))
        estimate = predicted_peak(options, args)
        reason = too_big(bench, estimate)
        if reason:
            return {"status": "skipped", "reason": reason, "memory_model": estimate.as_dict()}
        baseline, files_before = bench.memory.current(), bench.memory.file_backed()
        if options.transformer_only:
            models, _ = build_transformer_only(bench, args, options.size)
        else:
            models, _ = bench.train.build(args, bench.device)
        groups = bench.train.param_groups(models, args)
        make_inputs = RandomInputs(bench, models.transformer.config, args) if options.transformer_only \
            else PipelineInputs(bench, models, args)
        runner = StepRunner(bench, models, groups, bench.optimizer(groups, args), make_inputs, args)
        after_build = bench.memory.current() - baseline
        seconds, memory = measure(bench, runner, options, baseline, files_before)
        return {"status": "ok", "step_seconds": seconds, "loss_and_grad_norm": runner.losses,
                "memory": {**memory, "after_build_above_baseline": after_build},
                "memory_model": model_comparison(estimate, memory, options), "device": bench.device_info()}


def child_main(options) -> None:
    try:
        result = child_run(options)
    except Exception as error:  # one row that says why, not a traceback in the table
        import traceback

        traceback.print_exc()
        result = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
    if "reason" in result:
        result["reason"] = " ".join(result["reason"].split())[:REASON_LENGTH]  # one table line, not a log
    Path(options.child_output).write_text(json.dumps(result, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict | None:
    options = parse_options(argv)
    options.argv = list(sys.argv[1:] if argv is None else argv)
    if options.child:
        child_main(options)
        return None
    return parent_main(options)


if __name__ == "__main__":
    main()
