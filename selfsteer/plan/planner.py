"""`selfsteer plan`: where each role's Ray bundles go and what each GPU holds, before a run.

`requirements` lists the bundles a config asks Ray for, in the order the run starts them; `place`
puts them on nodes as Ray would (whole GPUs for whole requests, a shared GPU for a fraction, an
engine's tensor-parallel GPUs on one node); `check_cluster` runs the same placement against a live
cluster's nodes before any actor starts. Memory formulas: selfsteer.plan.memory. No Ray import here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from selfsteer.algorithms.registry import method
from selfsteer.plan import lora as lm
from selfsteer.plan import memory as gm
from selfsteer.plan.notes import host_line, vllm_note, vllm_problem
from selfsteer.plan.reference import could_score_on_ranks, frozen_reference, reference_gpus
from selfsteer.plan.workload import Card, card as find_card, work as method_work

EPS = 1e-9


class ClusterTooSmallError(RuntimeError):
    """The config's bundles cannot all be placed on the cluster's nodes."""


@dataclass
class Bundle:
    """One Ray resource bundle of a role; `memory` is per GPU (bytes by part), `note` a short summary."""

    role: str
    label: str
    cpus: float
    gpus: float
    memory: dict = field(default_factory=dict)
    host: float = 0.0  # host RAM of the role's process(es) at their peak (loading), bytes
    note: str = ""
    problem: str = ""  # set when the role cannot work even with a GPU to itself

    @property
    def gpu_bytes(self) -> float:
        return sum(self.memory.values())

    def describe(self) -> str:
        return f"CPU {self.cpus:g}" + (f", GPU {self.gpus:g}" if self.gpus else "")


@dataclass(frozen=True)
class Node:
    name: str
    cpus: Optional[float]  # None: not checked
    gpus: int
    gpu_bytes: Optional[float] = None  # None: memory not checked


def requirements(cfg) -> list[Bundle]:
    """The bundles the run asks Ray for (roles.start_roles and the algorithm's own long-lived actors)."""
    tc, rc, ref, llm = cfg.trainer, cfg.rollout, cfg.reference, cfg.principles.llm
    trainers = [("trainer", "trainer rank")] + ([("trainer B", "trainer B rank")] if method(cfg.algo).trainers > 1 else [])
    if cfg.placement == "colocated" and tc.num_gpus:  # one placement group of whole-GPU bundles, shared
        from selfsteer.plan.colocation import colocated_slots

        out = [Bundle("colocated", f"GPU bundle {i}", b["CPU"], b["GPU"]) for i, b in enumerate(colocated_slots(cfg)[0])]
        writer = llm.actor_resources(cfg.principles.mode)
        return out + [Bundle("principles", "principle writer", writer["num_cpus"], writer["num_gpus"])]
    out = [Bundle(role, f"{label} {i}", tc.num_cpus, tc.num_gpus) for role, label in trainers for i in range(tc.num_ranks)]
    out += [Bundle("rollout", f"rollout engine {i}", rc.num_cpus, rc.num_gpus * rc.tensor_parallel_size)
            for i in range(rc.num_engines)]
    refs = ref.num_actors if ref.mode == "actor" else 0  # adapter_off: the trainer ranks score, no actor
    out += [Bundle("reference", "reference" if refs == 1 else f"reference {i}", ref.num_cpus, ref.num_gpus)
            for i in range(refs)]
    writer = llm.actor_resources(cfg.principles.mode)
    out.append(Bundle("principles", "principle writer", writer["num_cpus"], writer["num_gpus"]))
    extra = {"self_contrast": ("embedder", cfg.self_contrast.num_cpus), "sepo": ("SePO oracle", cfg.sepo.num_cpus),
             "sipo": ("SIPO scorer", ref.num_cpus)}.get(cfg.algo)
    if extra:
        out.append(Bundle(extra[0], extra[0], extra[1], 0.0))
    return out


@dataclass
class Placement:
    where: dict = field(default_factory=dict)  # bundle index -> (node index, [gpu indices])
    problems: list = field(default_factory=list)  # (role label, reason)


def place(bundles: list[Bundle], nodes: list[Node]) -> Placement:
    """First fit in start order: whole GPUs for requests >= 1, the fullest GPU that has room for a fraction."""
    cpus = [n.cpus for n in nodes]
    gpus = [[1.0] * n.gpus for n in nodes]
    out = Placement()
    for b_index, b in enumerate(bundles):
        for n_index in range(len(nodes)):
            if cpus[n_index] is not None and cpus[n_index] + EPS < b.cpus:
                continue
            free = gpus[n_index]
            if b.gpus >= 1:
                taken = [g for g, f in enumerate(free) if f >= 1 - EPS][:math.ceil(b.gpus - EPS)]
                if len(taken) < math.ceil(b.gpus - EPS):
                    continue
                for g in taken:
                    free[g] = 0.0
            elif b.gpus > 0:
                fits = sorted((f, g) for g, f in enumerate(free) if f + EPS >= b.gpus)
                if not fits:
                    continue
                taken = [fits[0][1]]
                free[taken[0]] -= b.gpus
            else:
                taken = []
            if cpus[n_index] is not None:
                cpus[n_index] -= b.cpus
            out.where[b_index] = (n_index, taken)
            break
        else:
            out.problems.append((b.label, f"needs {{{b.describe()}}} on one node, and no node has that left"))
    return out


def memory_problems(bundles: list[Bundle], nodes: list[Node], placement: Placement) -> list[tuple[str, str]]:
    """GPUs whose roles together need more than the GPU has, and roles that cannot work on any GPU."""
    out = [(b.label, b.problem) for b in bundles if b.problem]
    load: dict[tuple[int, int], list[Bundle]] = {}
    for b_index, (n_index, taken) in placement.where.items():
        for g in taken:
            load.setdefault((n_index, g), []).append(bundles[b_index])
    for (n_index, g), held in sorted(load.items()):
        capacity = nodes[n_index].gpu_bytes
        total = sum(b.gpu_bytes for b in held)
        if capacity and total > capacity:
            who = " + ".join(f"{b.label} {b.gpu_bytes / gm.GIB:.1f}" for b in held)
            out.append((held[0].label, f"needs {total / gm.GIB:.1f} GiB on {nodes[n_index].name} gpu{g} "
                                       f"({who}) but the GPU has {capacity / gm.GIB:.0f} GiB"))
    return out


def attach_memory(cfg, bundles: list[Bundle], shape: gm.ModelShape, gpu_bytes: float, writer_shape=None) -> None:
    """Fill each bundle's per-GPU memory estimate and its host RAM (CPU bundles keep none)."""
    p = gm.DTYPE_BYTES[cfg.model.dtype]
    prompt, new = cfg.data.max_prompt_tokens, cfg.rollout.sampling.max_new_tokens
    width = prompt + new
    w = method_work(cfg)
    rc, tc = cfg.rollout, cfg.trainer
    lora = cfg.model.lora.enabled
    bucket = lm.sync_bucket_bytes(shape, cfg, p) if lora else gm.bucket_bytes(shape, p, cfg.sync.bucket_mb)
    collective = cfg.sync.method == "collective"
    for b in bundles:
        if not b.gpus:
            continue
        if b.role.startswith("trainer"):
            sync = 2 * bucket if b.label.endswith(" 0") and collective else 0  # two send slots on rank 0
            mb = tc.micro_batch_size
            kw = dict(tokens=w.forward_tokens(mb, prompt, new), sync_bytes=sync, split_head=tc.backend == "torch",
                      mask_bytes=gm.packed_mask_bytes(mb * w.contexts, prompt + new * w.rows // w.contexts, p, w.packed))
            if lora:
                scoring = lm.reference_forward(cfg, shape, p, w, split_head=kw["split_head"]) \
                    if cfg.reference.mode == "adapter_off" else None
                b.memory, b.note = lm.trainer_memory(shape, cfg, p, reference=scoring, **kw)
            else:
                b.memory = gm.trainer_memory(shape, tc, p, **kw)
                if cfg.reference.mode == "trainer":
                    b.note = frozen_reference(b.memory, cfg, shape, p, w, split_head=kw["split_head"])
            b.host = gm.host_trainer(shape, p, tc, reference=cfg.reference.mode == "trainer")
        elif b.role == "reference":
            rows = cfg.reference.micro_batch_size
            b.memory = gm.forward_memory(shape, p, tokens=w.scoring_tokens(rows, prompt, new, cfg.reference.packing),
                                         mask_bytes=gm.packed_mask_bytes(rows, width, p, cfg.reference.packing))
            b.host = gm.host_reference(shape, p)
        elif b.role == "rollout" and rc.backend in ("vllm", "auto"):
            budget = gm.vllm_budget(shape, p, gpu_bytes, utilization=rc.gpu_memory_utilization,
                                    tp=rc.tensor_parallel_size, max_model_len=rc.max_model_len or shape.max_positions,
                                    seq_len=width, lora_slot=lm.vllm_slot(cfg, shape, p))
            b.memory = {f"vLLM {rc.gpu_memory_utilization:g} x GPU": budget.per_gpu}
            if collective:
                b.memory["receive buffers"] = 2 * bucket  # outside vLLM's share: allocated after it started
            b.note = vllm_note(budget, width)
            b.host = gm.host_engine(shape, p, rc.tensor_parallel_size, vllm=True)
            if not budget.fits:
                b.problem = vllm_problem(budget, shape, p, gpu_bytes, rc.gpu_memory_utilization)
        elif b.role == "rollout":
            b.memory = gm.hf_generate_memory(shape, p, batch=rc.max_batch_size, width=width)
            if rc.backend == "hf_mod":
                b.memory["policy B weights"] = b.memory["weights"]
            if lora:  # peft's adapter beside the base, unmerged (docs/guide/lora.md)
                b.memory["adapter"] = lm.hf_engine_adapter_bytes(shape, cfg.model.lora)
            b.host = gm.host_engine(shape, p, 1, vllm=False)
        elif b.role == "principles" and writer_shape is not None:
            llm = cfg.principles.llm
            b.memory = gm.hf_generate_memory(writer_shape, p, batch=gm.HF_GENERATE_BATCH,
                                             width=cfg.data.max_prompt_tokens + llm.max_new_tokens)
            b.host = gm.host_engine(writer_shape, p, 1, vllm=False)


def host_problems(bundles: list[Bundle], nodes: list[Node], placement: Placement, host_bytes: Optional[float]):
    """Host RAM per node (sum of the processes placed there), and the nodes that lack it."""
    per_node = [0.0] * len(nodes)
    for b_index, (n_index, _) in placement.where.items():
        per_node[n_index] += bundles[b_index].host
    problems = []
    if host_bytes:
        problems = [(f"{nodes[i].name} host RAM", f"needs {used / gm.GIB:.0f} GiB while loading (trainer ranks, "
                                                  f"engines' host copies, reference), the node has {host_bytes / gm.GIB:.0f}")
                    for i, used in enumerate(per_node) if used > host_bytes]
    return per_node, problems


def nodes_from_ray(ray_nodes: list[dict]) -> list[Node]:
    """Alive nodes of `ray.nodes()` as plan nodes (totals, not what is free now)."""
    out = []
    for n in ray_nodes:
        if n.get("Alive", True):
            res = n.get("Resources", {})
            out.append(Node(n.get("NodeManagerAddress") or n.get("NodeID", "?")[:8], float(res.get("CPU", 0)),
                            int(res.get("GPU", 0))))
    return out


def check_cluster(cfg, nodes: list[Node]) -> None:
    """Raise ClusterTooSmallError, saying what the config needs and what the cluster has, if it cannot be placed."""
    bundles = requirements(cfg)
    placement = place(bundles, nodes)
    if not placement.problems:
        return
    label, reason = placement.problems[0]
    needs: dict[str, list[Bundle]] = {}
    for b in bundles:
        needs.setdefault(b.role, []).append(b)
    wanted = "; ".join(f"{role} {len(bs)} x {{{bs[0].describe()}}}" for role, bs in needs.items())
    has = "; ".join(f"{n.name}: CPU {n.cpus:g}, GPU {n.gpus}" for n in nodes) or "no alive node"
    raise ClusterTooSmallError(
        f"this config cannot be placed on the Ray cluster: {label} {reason}. It needs {wanted} "
        f"(CPU {sum(b.cpus for b in bundles):g}, GPU {sum(b.gpus for b in bundles):g} in all); the cluster has {has}. "
        f"See `selfsteer plan CONFIG --nodes N --gpus-per-node G`.")


def _gib(x: float) -> str:
    return f"{x / gm.GIB:.2f}"


def _where(nodes: list[Node], placement: Placement, indices: list[int]) -> str:
    spots = [placement.where.get(i) for i in indices]
    if any(s is None for s in spots):
        return "NOT PLACED"
    names = sorted({nodes[n].name for n, _ in spots})
    gpus = sorted({g for _, taken in spots for g in taken})
    return ",".join(names) + (f" gpu{_span(gpus)}" if gpus else "")


def _span(xs: list[int]) -> str:
    return f"{xs[0]}-{xs[-1]}" if len(xs) > 1 and xs == list(range(xs[0], xs[-1] + 1)) else ",".join(map(str, xs))


def _groups(bundles: list[Bundle]) -> list[list[int]]:
    """Runs of bundles of one role with the same request and estimate, shown as one line."""
    out: list[list[int]] = []
    for i, b in enumerate(bundles):
        prev = bundles[out[-1][-1]] if out else None
        key = lambda x: (x.role, x.cpus, x.gpus, x.memory, x.note)  # noqa: E731
        if prev is not None and key(prev) == key(b):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def make_plan(cfg, *, nodes: int, gpus_per_node: int, gpu: Card, cpus_per_node: Optional[float] = None,
              host_memory_gib: Optional[float] = None) -> tuple[str, list[tuple[str, str]]]:
    """The plan's text and its problems ((role, reason); none: the config fits)."""
    from selfsteer.plan import timing

    gpu_bytes = gpu.usable_gib * gm.GIB
    host_bytes = host_memory_gib * gm.GIB if host_memory_gib else None
    cluster = [Node(f"node{i}", cpus_per_node, gpus_per_node, gpu_bytes) for i in range(nodes)]
    shape = gm.model_shape(cfg.model.policy, cfg.model.toy)
    llm = cfg.principles.llm
    writer_gpus = llm.actor_resources(cfg.principles.mode)["num_gpus"]
    writer = gm.model_shape(llm.model_path) if writer_gpus else None
    w = method_work(cfg)
    lines = [f"cluster: {nodes} node(s) x {gpus_per_node} GPU(s) {gpu.name}, {gpu.usable_gib:g} GiB usable each"
             + (f", {cpus_per_node:g} CPUs each" if cpus_per_node is not None else " (CPUs not checked: --cpus-per-node)"),
             f"model: {shape.name}: {shape.params / 1e9:.3f} B parameters ({shape.params:,}), {cfg.model.dtype}; "
             f"sizes from {shape.source}",
             f"  {shape.layers} layers, hidden {shape.hidden}, {shape.heads} heads ({shape.kv_heads} kv, head_dim "
             f"{shape.head_dim}), intermediate {shape.intermediate}, vocab {shape.vocab}, tied embeddings {shape.tied}; "
             f"largest tensor {gm.largest_tensor(shape, gm.DTYPE_BYTES[cfg.model.dtype]) / gm.GIB:.2f} GiB"]
    if cfg.model.lora.enabled:
        lines.append(lm.summary(shape, cfg, gm.DTYPE_BYTES[cfg.model.dtype]))
    if writer is not None:
        lines.append(f"principle writer: {writer.name}: {writer.params / 1e9:.3f} B parameters; sizes from {writer.source}")
    tc = cfg.trainer
    lines.append(f"trainer: {tc.backend}" + (f" ZeRO-{tc.zero_stage}" if tc.backend == "deepspeed" else "")
                 + f" over {tc.num_ranks} ranks, micro-batch {tc.micro_batch_size} x {w.rows} rows "
                 f"({w.contexts} context(s), {'packed' if w.packed else 'padded'}) of {cfg.data.max_prompt_tokens}+"
                 f"{cfg.rollout.sampling.max_new_tokens} tokens, {w.responses_per_prompt} samples per prompt, "
                 f"gradient checkpointing {'on' if tc.gradient_checkpointing else 'off'}")
    if cfg.placement == "colocated":
        more, problems = _colocated(cfg, shape, cluster, gpu, host_bytes, nodes * gpus_per_node)
        return "\n".join(lines + [""] + more), problems
    bundles = requirements(cfg)
    attach_memory(cfg, bundles, shape, gpu_bytes, writer)
    placement = place(bundles, cluster)
    per_node, host_issues = host_problems(bundles, cluster, placement, host_bytes)
    problems = placement.problems + memory_problems(bundles, cluster, placement) + host_issues
    lines.append("")
    lines.append(f"{'role':<22} {'bundle':<16} {'placement':<18} {'GiB/GPU':>8}  estimate")
    for group in _groups(bundles):
        b = bundles[group[0]]
        label = b.label
        if len(group) > 1:  # "trainer rank 1" .. "trainer rank 5" -> "trainer ranks 1-5"
            (kind, first), last = b.label.rsplit(" ", 1), bundles[group[-1]].label.rsplit(" ", 1)[1]
            label = f"{kind}s {first}-{last}"
        parts = ", ".join(f"{k} {_gib(v)}" for k, v in b.memory.items())
        detail = " ".join(x for x in (parts, b.note) if x) or ("CPU only" if not b.gpus else "")
        total = _gib(b.gpu_bytes) if b.memory else "-"
        lines.append(f"{label:<22} {b.describe():<16} {_where(cluster, placement, group):<18} {total:>8}  {detail}")
    used = sum(b.gpus for b in bundles)
    lines.append(host_line(per_node, host_bytes))
    if tc.num_gpus:
        engine = next((b for b in bundles if b.role == "rollout"), None)
        seconds = timing.round_seconds(cfg, shape, gpu, w, train_gpus=tc.num_ranks, engines=cfg.rollout.num_engines,
                                       reference_gpus=reference_gpus(cfg), kv_sequences=_kv_sequences(
                                           cfg, shape, gpu_bytes, cfg.rollout.tensor_parallel_size, engine))
        lines.append(timing.round_line(cfg, seconds, gpu))
        problems += timing.timeout_problems(cfg, seconds)
        if could_score_on_ranks(cfg):
            alt = dict(seconds, reference=timing.round_seconds(
                cfg, shape, gpu, w, train_gpus=tc.num_ranks, engines=cfg.rollout.num_engines,
                reference_gpus=tc.num_ranks, kv_sequences=0 if engine is None else _kv_sequences(
                    cfg, shape, gpu_bytes, cfg.rollout.tensor_parallel_size, engine))["reference"])
            lines.append(f"with reference.mode=trainer (the start model frozen on the trainer ranks, no reference "
                         f"GPU): reference {alt['reference'] / 60:.1f} min, in all {sum(alt.values()) / 60:.0f} min")
    lines.append("")
    lines.append(f"GPUs requested: {used:g} of {nodes * gpus_per_node}; CPUs requested: {sum(b.cpus for b in bundles):g}")
    if problems:
        lines += [f"DOES NOT FIT: {role}: {reason}" for role, reason in problems]
    else:
        lines.append("fits: every role is placed, every GPU's estimate is within its memory, every phase within "
                     "its timeout")
    return "\n".join(lines), problems


def _kv_sequences(cfg, shape, gpu_bytes: float, tp: int, engine) -> float:
    """Full-length sequences one vLLM engine's KV cache holds (an HF engine: its max_batch_size)."""
    if engine is not None and cfg.rollout.backend not in ("vllm", "auto"):
        return float(cfg.rollout.max_batch_size)
    rc = cfg.rollout
    return gm.vllm_budget(shape, gm.DTYPE_BYTES[cfg.model.dtype], gpu_bytes, utilization=rc.gpu_memory_utilization,
                          tp=tp, max_model_len=rc.max_model_len or shape.max_positions,
                          seq_len=cfg.data.max_prompt_tokens + rc.sampling.max_new_tokens,
                          lora_slot=lm.vllm_slot(cfg, shape, gm.DTYPE_BYTES[cfg.model.dtype])).sequences


def _colocated(cfg, shape, cluster: list[Node], gpu: Card, host_bytes, total_gpus: int) -> tuple[list[str], list]:
    """placement=colocated: its GPU bundles placed here, each GPU's phases in selfsteer.plan.colocated."""
    from selfsteer.plan.colocation import colocated_slots
    from selfsteer.plan.colocated import colocated_lines

    try:
        gpu_bundles, slots = colocated_slots(cfg)
    except ValueError as exc:
        return [f"colocated: {exc}"], [("placement", str(exc))]
    placed = place([Bundle("colocated", f"GPU bundle {i}", b["CPU"], 1.0) for i, b in enumerate(gpu_bundles)], cluster)
    return colocated_lines(cfg, shape, gpu, host_bytes, total_gpus, gpu_bundles, slots, placed)


def main(args) -> int:
    """`selfsteer plan` (see selfsteer.cli.main): prints the plan; 0 when it fits, 2 when it does not."""
    import sys

    from selfsteer.config.schema import ConfigError, load_config

    try:
        cfg = load_config(args.config, list(args.overrides))
        gpu = find_card(getattr(args, "gpu", None), args.gpu_memory_gib)
        kw = dict(nodes=args.nodes, gpus_per_node=args.gpus_per_node, gpu=gpu, cpus_per_node=args.cpus_per_node,
                  host_memory_gib=getattr(args, "host_memory_gib", None))
        text, problems = make_plan(cfg, **kw)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"selfsteer plan: {exc}", file=sys.stderr)
        return 2
    print(f"selfsteer plan {args.config}")
    print(text)
    gpus = args.nodes * args.gpus_per_node
    if cfg.model.lora.enabled:  # config load refuses model.lora with placement=colocated (docs/guide/lora.md)
        return 2 if problems else 0
    if cfg.placement == "separate" and gpus and cfg.trainer.num_gpus and method(cfg.algo).supports("colocated"):
        from selfsteer.plan.colocated import colocated_variant

        other, _ = make_plan(colocated_variant(cfg, gpus), **kw)
        print(f"\nthe same run with placement=colocated on all {gpus} GPUs (a trainer rank and an engine per GPU):")
        print("\n".join(other.splitlines()[3:]))  # the cluster and model lines are the same
    return 2 if problems else 0
