"""First-principles peak memory of one FLUX.1 LoRA training step on the transformer.

    python benchmarks/memory_model.py      # FLUX.1-dev, rank 4, bf16: 512 and 1024, checkpointing off/on

peak = frozen weights + LoRA state + activations kept for backward + the step's own tensors
       + one block's backward working set

* Frozen weights: every transformer parameter, counted from the config through the same layer
  inventory diffusers' `FluxTransformer2DModel` builds, in the weight dtype.
* LoRA state: A and B of every targeted linear (peft's name matching), fp32, four times over: the
  weights, their gradients and AdamW's two moments (all alive while the backward pass runs).
* Activations: a symbolic forward pass (`Trace`) through the model in diffusers' order records which
  tensors autograd keeps for backward. It follows torch's rules: an op keeps a tensor only when some
  input needs a gradient, frozen linears keep nothing (their weights are parameters already), a
  LoRA linear keeps its input (a fresh compute-dtype copy under mixed precision, because peft casts
  the input to the fp32 LoRA dtype and `to_float` casts it back), RMSNorm keeps its input (on CPU as
  an fp32 copy under mixed precision), flash attention keeps q, k, v, its output and the log-sum-exp,
  mindspore_impl's CPU math attention (`cpu_kernels.MathAttention`) fp32 copies of q, k, v and its
  output, recomputing the probabilities in backward. With gradient checkpointing only every block's inputs
  stay, plus one block's activations while it is recomputed.
* The step's own tensors: cached prompt embeddings and VAE posterior, the latent-space stages the step
  returns (model input, packed input, prediction, target) and the squared error's difference.
* Working set: the largest set of gradients alive at once inside one block's backward pass.

Not counted: text encoders and VAE (the trainer caches prompt embeddings; the VAE encode is over
before the transformer runs), the interpreter, libraries, allocator slack and CUDA context.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass, field

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
MIXED_PRECISION = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}  # trainer flag -> dtype name
MLP_RATIO = 4  # FLUX's feed-forward width (both block kinds), fixed in diffusers' classes
TIMESTEP_CHANNELS = 256  # sinusoidal timestep/guidance features fed to the embedders
DEFAULT_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
FLUX_TEXT_TOKENS = 512  # T5 sequence length FLUX.1-dev trains with
LATENT_TOKEN_PIXELS = 16  # VAE downsamples 8x, then 2x2 latent patches make one token
FLOAT32 = 4


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Linear:
    name: str
    fan_in: int
    fan_out: int

    @property
    def parameters(self) -> int:
        return self.fan_in * self.fan_out + self.fan_out  # every linear in FLUX has a bias

    def lora_parameters(self, rank: int) -> int:
        return rank * (self.fan_in + self.fan_out)  # A: rank x fan_in, B: fan_out x rank


def inner_dim(config: dict) -> int:
    return config["num_attention_heads"] * config["attention_head_dim"]


def embedder_linears(config: dict) -> list[Linear]:
    d = inner_dim(config)
    layers = [Linear("x_embedder", config["in_channels"], d),
              Linear("context_embedder", config["joint_attention_dim"], d)]
    embedders = {"timestep_embedder": TIMESTEP_CHANNELS, "text_embedder": config["pooled_projection_dim"]}
    if config.get("guidance_embeds"):
        embedders["guidance_embedder"] = TIMESTEP_CHANNELS
    for embedder, width in embedders.items():
        layers += [Linear(f"time_text_embed.{embedder}.linear_1", width, d),
                   Linear(f"time_text_embed.{embedder}.linear_2", d, d)]
    return layers


def double_block_linears(config: dict, index: int) -> list[Linear]:
    d, name = inner_dim(config), f"transformer_blocks.{index}"
    square = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
              "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"]
    layers = [Linear(f"{name}.norm1.linear", d, 6 * d), Linear(f"{name}.norm1_context.linear", d, 6 * d)]
    layers += [Linear(f"{name}.{leaf}", d, d) for leaf in square]
    for ff in ("ff", "ff_context"):
        layers += [Linear(f"{name}.{ff}.net.0.proj", d, MLP_RATIO * d), Linear(f"{name}.{ff}.net.2", MLP_RATIO * d, d)]
    return layers


def single_block_linears(config: dict, index: int) -> list[Linear]:
    d, name = inner_dim(config), f"single_transformer_blocks.{index}"
    return [Linear(f"{name}.norm.linear", d, 3 * d), Linear(f"{name}.proj_mlp", d, MLP_RATIO * d),
            Linear(f"{name}.proj_out", d + MLP_RATIO * d, d),
            *(Linear(f"{name}.attn.{leaf}", d, d) for leaf in ("to_q", "to_k", "to_v"))]


def output_linears(config: dict) -> list[Linear]:
    d = inner_dim(config)
    patch_outputs = config["patch_size"] ** 2 * (config.get("out_channels") or config["in_channels"])
    return [Linear("norm_out.linear", d, 2 * d), Linear("proj_out", d, patch_outputs)]


def transformer_linears(config: dict) -> list[Linear]:
    layers = embedder_linears(config)
    for i in range(config["num_layers"]):
        layers += double_block_linears(config, i)
    for i in range(config["num_single_layers"]):
        layers += single_block_linears(config, i)
    return layers + output_linears(config)


def norm_gain_count(config: dict) -> int:
    """RMSNorm gains on q and k (per head dim): four per double block (image and text), two per single."""
    head = config["attention_head_dim"]
    return head * (4 * config["num_layers"] + 2 * config["num_single_layers"])


def parameter_count(config: dict) -> int:
    return sum(layer.parameters for layer in transformer_linears(config)) + norm_gain_count(config)


def matches_target(name: str, targets) -> bool:
    """peft's rule for a list of target names: the module's full name, or its dotted suffix."""
    return any(name == target or name.endswith("." + target) for target in targets)


def lora_layers(config: dict, targets=DEFAULT_TARGETS) -> list[Linear]:
    return [layer for layer in transformer_linears(config) if matches_target(layer.name, targets)]


def lora_parameter_count(config: dict, rank: int, targets=DEFAULT_TARGETS) -> int:
    return sum(layer.lora_parameters(rank) for layer in lora_layers(config, targets))


# ----------------------------------------------------------------------------- activations


@dataclass(eq=False)
class Tensor:
    nbytes: int
    requires_grad: bool
    base: "Tensor | None" = None  # a view keeps its base's whole storage alive

    @property
    def storage(self) -> "Tensor":
        return self.base or self


@dataclass
class StepShape:
    """Sizes of one training micro-batch."""

    config: dict
    batch: int
    image_tokens: int
    text_tokens: int
    dtype: str  # compute / frozen weight dtype: fp32, bf16 or fp16
    rank: int
    attention: str = "flash"  # "flash" (GPU, Ascend, torch CPU) or "math" (mindspore_impl's CPU attention)
    fused_rms_norm: bool = False  # CUDA/Ascend kernels keep the input as is; torch's CPU path an fp32 copy

    @property
    def tokens(self) -> int:
        return self.image_tokens + self.text_tokens

    @property
    def mixed(self) -> bool:
        return self.dtype != "fp32"


class Trace:
    """A symbolic forward pass: which storages autograd keeps for backward, attributed to the block
    that first kept them, and which storages every checkpointed block holds as its inputs."""

    def __init__(self, shape: StepShape, lora: set[str]):
        self.shape = shape
        self.lora = lora
        self.itemsize = BYTES[shape.dtype]
        self.saved: dict[str, dict[int, Tensor]] = {}
        self.block_inputs: dict[str, dict[int, Tensor]] = {}
        self.current = "embed"

    # --- bookkeeping
    @contextlib.contextmanager
    def block(self, name: str, *inputs: Tensor):
        self.current = name
        self.block_inputs[name] = {id(t.storage): t.storage for t in inputs}
        yield
        self.current = "output"

    def keep(self, *tensors: Tensor) -> None:
        for t in tensors:
            if not any(id(t.storage) in kept for kept in self.saved.values()):
                self.saved.setdefault(self.current, {})[id(t.storage)] = t.storage

    def new(self, tokens: int, width: int, requires_grad: bool, itemsize: int | None = None) -> Tensor:
        return Tensor(self.shape.batch * tokens * width * (itemsize or self.itemsize), requires_grad)

    def view(self, base: Tensor, tokens: int, width: int) -> Tensor:
        return Tensor(self.shape.batch * tokens * width * self.itemsize, base.requires_grad, base.storage)

    def saved_bytes(self, block: str) -> int:
        return sum(t.nbytes for t in self.saved.get(block, {}).values())

    # --- ops, each keeping what torch's backward formula needs
    def linear(self, name: str, x: Tensor, tokens: int, fan_in: int, fan_out: int) -> Tensor:
        if name not in self.lora:
            return self.new(tokens, fan_out, x.requires_grad)  # frozen: grad_input needs only the weight
        lora_input = self.new(tokens, fan_in, x.requires_grad) if self.shape.mixed else x
        self.keep(lora_input, self.new(tokens, self.shape.rank, True))  # for grad(A); lora_B keeps A's output
        return self.new(tokens, fan_out, True)

    def layer_norm(self, x: Tensor, tokens: int) -> Tensor:
        if x.requires_grad:
            self.keep(x, self.new(tokens, 2, True, FLOAT32))  # input, mean and rstd
        return self.new(tokens, inner_dim(self.shape.config), x.requires_grad)

    def rms_norm(self, x: Tensor, tokens: int) -> Tensor:
        """torch's composite RMSNorm (CPU) computes, and keeps its input, in fp32 when the input is half
        precision; the fused kernels keep the input as it is. Both keep the fp32 rstd per head."""
        if x.requires_grad:
            d, heads = inner_dim(self.shape.config), self.shape.config["num_attention_heads"]
            upcast = self.shape.mixed and not self.shape.fused_rms_norm
            self.keep(self.new(tokens, d, True, FLOAT32) if upcast else x, self.new(tokens, heads, True, FLOAT32))
        return self.new(tokens, inner_dim(self.shape.config), x.requires_grad)

    def modulate(self, x: Tensor, tokens: int, modulation: Tensor) -> Tensor:
        """x * (1 + scale) + shift (or gate * x) with per-sample vectors from the timestep embedding."""
        if modulation.requires_grad:
            self.keep(x)
        if x.requires_grad:
            self.keep(modulation)
        return self.new(tokens, inner_dim(self.shape.config), x.requires_grad or modulation.requires_grad)

    def gelu(self, x: Tensor, tokens: int, width: int) -> Tensor:
        if x.requires_grad:
            self.keep(x)
        return self.new(tokens, width, x.requires_grad)

    def silu(self, x: Tensor, width: int) -> Tensor:
        if x.requires_grad:
            self.keep(x)
        return self.new(1, width, x.requires_grad)

    def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Rotary embedding then scaled dot-product attention over all tokens."""
        shape, n = self.shape, self.shape.tokens
        d, heads = inner_dim(shape.config), shape.config["num_attention_heads"]
        q_rope, k_rope = self.new(n, d, q.requires_grad), self.new(n, d, k.requires_grad)  # rope keeps only cos/sin
        out = self.new(n, d, q.requires_grad or k.requires_grad or v.requires_grad)
        if out.requires_grad:
            if shape.attention == "flash":  # inputs, output and log-sum-exp
                self.keep(q_rope, k_rope, v, out, self.new(n, heads, True, FLOAT32))
            else:  # the custom backward's inputs and output: q, k, v and the output, in fp32
                self.keep(*(self.new(n, d, True, FLOAT32) for _ in range(4)))
        return out

    def cat(self, tokens: int, width: int, *parts: Tensor) -> Tensor:
        return self.new(tokens, width, any(p.requires_grad for p in parts))

    def add(self, x: Tensor, y: Tensor, tokens: int) -> Tensor:
        return self.new(tokens, inner_dim(self.shape.config), x.requires_grad or y.requires_grad)


def trace_embedders(trace: Trace, config: dict) -> tuple[Tensor, Tensor, Tensor]:
    """(image tokens, text tokens, timestep embedding) entering the first block."""
    s, d = trace.shape, inner_dim(config)
    by_name = {layer.name: layer for layer in embedder_linears(config)}

    def apply(name: str, x: Tensor, tokens: int) -> Tensor:
        layer = by_name[name]
        return trace.linear(name, x, tokens, layer.fan_in, layer.fan_out)

    image = apply("x_embedder", trace.new(s.image_tokens, config["in_channels"], False), s.image_tokens)
    text = apply("context_embedder", trace.new(s.text_tokens, config["joint_attention_dim"], False), s.text_tokens)
    temb = None
    for embedder in ("timestep_embedder", "guidance_embedder", "text_embedder"):
        first = by_name.get(f"time_text_embed.{embedder}.linear_1")
        if first is None:
            continue  # no guidance embedder in a model without guidance_embeds
        hidden = apply(first.name, trace.new(1, first.fan_in, False), 1)
        out = apply(f"time_text_embed.{embedder}.linear_2", trace.silu(hidden, d), 1)
        temb = out if temb is None else trace.add(temb, out, 1)
    # rotary tables (cos, sin), fp32, one row per token: every block's rope keeps them for backward
    trace.keep(Tensor(2 * s.tokens * config["attention_head_dim"] * FLOAT32, True))
    return image, text, temb


def trace_double_block(trace: Trace, config: dict, index: int, image: Tensor, text: Tensor,
                       temb: Tensor) -> tuple[Tensor, Tensor]:
    s, d, name = trace.shape, inner_dim(config), f"transformer_blocks.{index}"
    ni, nt = s.image_tokens, s.text_tokens
    linear = lambda leaf, x, tokens, fan_in=d, fan_out=d: trace.linear(f"{name}.{leaf}", x, tokens, fan_in, fan_out)
    silu_temb = trace.silu(temb, d)
    mod_image = linear("norm1.linear", silu_temb, 1, d, 6 * d)
    mod_text = linear("norm1_context.linear", silu_temb, 1, d, 6 * d)
    x = trace.modulate(trace.layer_norm(image, ni), ni, mod_image)
    c = trace.modulate(trace.layer_norm(text, nt), nt, mod_text)
    q = trace.rms_norm(linear("attn.to_q", x, ni), ni)
    k = trace.rms_norm(linear("attn.to_k", x, ni), ni)
    v = linear("attn.to_v", x, ni)
    cq = trace.rms_norm(linear("attn.add_q_proj", c, nt), nt)
    ck = trace.rms_norm(linear("attn.add_k_proj", c, nt), nt)
    cv = linear("attn.add_v_proj", c, nt)
    n = s.tokens
    attended = trace.attention(trace.cat(n, d, cq, q), trace.cat(n, d, ck, k), trace.cat(n, d, cv, v))
    image_out = linear("attn.to_out.0", trace.view(attended, ni, d), ni)
    text_out = linear("attn.to_add_out", trace.view(attended, nt, d), nt)
    image = trace.add(image, trace.modulate(image_out, ni, mod_image), ni)
    text = trace.add(text, trace.modulate(text_out, nt, mod_text), nt)
    outputs = []
    for stream, tokens, ff, mod in ((image, ni, "ff", mod_image), (text, nt, "ff_context", mod_text)):
        hidden = linear(f"{ff}.net.0.proj", trace.modulate(trace.layer_norm(stream, tokens), tokens, mod), tokens,
                        d, MLP_RATIO * d)
        ff_out = linear(f"{ff}.net.2", trace.gelu(hidden, tokens, MLP_RATIO * d), tokens, MLP_RATIO * d, d)
        outputs.append(trace.add(stream, trace.modulate(ff_out, tokens, mod), tokens))
    return outputs[0], outputs[1]


def trace_single_block(trace: Trace, config: dict, index: int, image: Tensor, text: Tensor,
                       temb: Tensor) -> tuple[Tensor, Tensor]:
    s, d, name = trace.shape, inner_dim(config), f"single_transformer_blocks.{index}"
    n, mlp = s.tokens, MLP_RATIO * d
    linear = lambda leaf, x, fan_in=d, fan_out=d: trace.linear(f"{name}.{leaf}", x, n, fan_in, fan_out)
    modulation = trace.linear(f"{name}.norm.linear", trace.silu(temb, d), 1, d, 3 * d)
    joint = trace.cat(n, d, text, image)
    x = trace.modulate(trace.layer_norm(joint, n), n, modulation)
    mlp_hidden = trace.gelu(linear("proj_mlp", x, d, mlp), n, mlp)
    attended = trace.attention(trace.rms_norm(linear("attn.to_q", x), n), trace.rms_norm(linear("attn.to_k", x), n),
                               linear("attn.to_v", x))
    projected = linear("proj_out", trace.cat(n, d + mlp, attended, mlp_hidden), d + mlp, d)
    out = trace.add(joint, trace.modulate(projected, n, modulation), n)
    return trace.view(out, s.image_tokens, d), trace.view(out, s.text_tokens, d)  # split: views of one storage


def trace_output(trace: Trace, config: dict, image: Tensor, temb: Tensor) -> None:
    s, d = trace.shape, inner_dim(config)
    norm, proj = output_linears(config)
    modulation = trace.linear(norm.name, trace.silu(temb, d), 1, norm.fan_in, norm.fan_out)
    x = trace.modulate(trace.layer_norm(image, s.image_tokens), s.image_tokens, modulation)
    trace.linear(proj.name, x, s.image_tokens, proj.fan_in, proj.fan_out)


def trace_transformer(shape: StepShape, targets=DEFAULT_TARGETS) -> Trace:
    config = shape.config
    trace = Trace(shape, {layer.name for layer in lora_layers(config, targets)})
    image, text, temb = trace_embedders(trace, config)
    for i in range(config["num_layers"]):
        with trace.block(f"transformer_blocks.{i}", image, text):
            image, text = trace_double_block(trace, config, i, image, text, temb)
    for i in range(config["num_single_layers"]):
        with trace.block(f"single_transformer_blocks.{i}", image, text):
            image, text = trace_single_block(trace, config, i, image, text, temb)
    trace_output(trace, config, image, temb)
    return trace


def backward_working_set(shape: StepShape) -> int:
    """Gradients alive at once in a single block's backward: of its output, of the concatenated
    [attention, MLP] input of proj_out, of the MLP hidden state, and of the normalized input."""
    d = inner_dim(shape.config)
    n, heads = shape.tokens, shape.config["num_attention_heads"]
    elements = shape.batch * n * (d + (d + MLP_RATIO * d) + MLP_RATIO * d + d)
    working = elements * BYTES[shape.dtype]
    if shape.attention == "math":  # recomputed probabilities, [dO, -delta][V, 1]^T, and their product dS
        working += 3 * shape.batch * heads * n * n * FLOAT32
    return working


def step_tensors(shape: StepShape) -> int:
    """What the trainers' step holds through backward besides the transformer's activations: its cached
    inputs (T5 embeddings, pooled CLIP embedding, VAE posterior mean and std) and the latent-space stages
    it returns for the parity harness (model input, packed noisy input, prediction, target), all in the
    weight dtype, plus the fp32 prediction-target difference the squared error keeps."""
    config = shape.config
    latent = shape.batch * shape.image_tokens * config["in_channels"]  # one latent image: 16 channels x 2x2
    prompts = shape.batch * (shape.text_tokens * config["joint_attention_dim"] + config["pooled_projection_dim"])
    return (prompts + 2 * latent + 4 * latent) * BYTES[shape.dtype] + latent * FLOAT32


# ----------------------------------------------------------------------------- the estimate


@dataclass
class MemoryEstimate:
    frozen_weights: int
    lora_weights: int
    lora_grads: int
    adam_moments: int
    activations: int  # kept for backward at the peak (checkpointing: block inputs + one block)
    step_tensors: int
    working_set: int
    parameters: int
    lora_parameters: int
    detail: dict = field(default_factory=dict)

    @property
    def lora_state(self) -> int:
        return self.lora_weights + self.lora_grads + self.adam_moments

    @property
    def total(self) -> int:
        return self.frozen_weights + self.lora_state + self.activations + self.step_tensors + self.working_set

    def as_dict(self) -> dict:
        return {"frozen_weights": self.frozen_weights, "lora_weights": self.lora_weights,
                "lora_grads": self.lora_grads, "adam_moments": self.adam_moments, "lora_state": self.lora_state,
                "activations": self.activations, "step_tensors": self.step_tensors,
                "working_set": self.working_set, "total": self.total,
                "parameters": self.parameters, "lora_parameters": self.lora_parameters, **self.detail}


def image_tokens(resolution: int) -> int:
    return (resolution // LATENT_TOKEN_PIXELS) ** 2


def activation_bytes(trace: Trace, gradient_checkpointing: bool) -> tuple[int, dict]:
    blocks = list(trace.block_inputs)
    outside = sum(trace.saved_bytes(name) for name in trace.saved if name not in trace.block_inputs)
    if not gradient_checkpointing:
        kept = sum(trace.saved_bytes(name) for name in trace.saved)
        return kept, {"outside_blocks": outside}
    # checkpointed blocks keep only their inputs; the block being recomputed holds its own activations
    inputs = {}
    for name in blocks:
        inputs.update(trace.block_inputs[name])
    held = sum(t.nbytes for t in inputs.values())
    recomputed = max(trace.saved_bytes(name) for name in blocks)
    return outside + held + recomputed, {"outside_blocks": outside, "block_inputs": held,
                                         "recomputed_block": recomputed}


def estimate_peak(config: dict, resolution: int, rank: int = 4, targets=DEFAULT_TARGETS, precision: str = "bf16",
                  gradient_checkpointing: bool = False, batch_size: int = 1, text_tokens: int = FLUX_TEXT_TOKENS,
                  attention: str = "flash", device: str = "cuda") -> MemoryEstimate:
    """Peak bytes of one LoRA training step on a FLUX transformer `config` (diffusers' constructor args);
    `device` picks the RMSNorm kernel (cpu: composite, upcasting; cuda/ascend: fused)."""
    precision = MIXED_PRECISION.get(precision, precision)
    shape = StepShape(config, batch_size, image_tokens(resolution), text_tokens, precision, rank, attention,
                      fused_rms_norm=device != "cpu")
    parameters = parameter_count(config)
    lora = lora_parameter_count(config, rank, targets)
    trace = trace_transformer(shape, targets)
    activations, detail = activation_bytes(trace, gradient_checkpointing)
    return MemoryEstimate(
        frozen_weights=parameters * BYTES[precision],
        lora_weights=lora * FLOAT32,
        lora_grads=lora * FLOAT32,
        adam_moments=2 * lora * FLOAT32,
        activations=activations,
        step_tensors=step_tensors(shape),
        working_set=backward_working_set(shape),
        parameters=parameters,
        lora_parameters=lora,
        detail=detail,
    )


# ----------------------------------------------------------------------------- command line


UNITS = {"GiB": 2**30, "MiB": 2**20}


def report_table(config: dict, rank: int, precision: str, resolutions: list[int], batch_size: int,
                 targets, device: str, unit: str) -> str:
    size = lambda nbytes: f"{nbytes / UNITS[unit]:8.2f}"  # noqa: E731
    rows = []
    for resolution in resolutions:
        for checkpointing in (False, True):
            e = estimate_peak(config, resolution, rank, targets, precision, checkpointing, batch_size, device=device)
            parts = (e.frozen_weights, e.lora_state, e.activations, e.step_tensors, e.working_set, e.total)
            rows.append(f"{resolution:>10} {'on' if checkpointing else 'off':>13} " + " ".join(map(size, parts)))
    header = (f"{'resolution':>10} {'checkpointing':>13} {'frozen':>8} {'LoRA+opt':>8} {'activ.':>8} "
              f"{'step io':>8} {'working':>8} {'peak':>8}   ({unit})")
    return "\n".join([header, *rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="full", choices=("tiny", "small", "full"))
    parser.add_argument("--resolution", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--precision", default="bf16", choices=tuple(BYTES))
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--lora_layers", default=",".join(DEFAULT_TARGETS))
    parser.add_argument("--device", default="cuda", choices=("cuda", "ascend", "cpu"),
                        help="which kernels: cuda/ascend fused RMSNorm, cpu torch's composite one")
    args = parser.parse_args(argv)

    from fluxlora.tiny import transformer_config

    config = transformer_config(args.size)
    targets = args.lora_layers.split(",")
    layers = lora_layers(config, targets)
    print(f"FLUX transformer '{args.size}': {parameter_count(config):,} parameters; LoRA on {', '.join(targets)}: "
          f"{len(layers)} layers, {lora_parameter_count(config, 1, targets):,} x rank = "
          f"{lora_parameter_count(config, args.rank, targets):,} at rank {args.rank}")
    print(f"peak memory of one training step, {args.precision}, rank {args.rank}, batch {args.batch_size}, "
          f"{FLUX_TEXT_TOKENS} text tokens, flash attention, {args.device} RMSNorm kernel:")
    unit = "GiB" if args.size == "full" else "MiB"
    print(report_table(config, args.rank, args.precision, args.resolution, args.batch_size, targets, args.device,
                       unit))


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
    main()
