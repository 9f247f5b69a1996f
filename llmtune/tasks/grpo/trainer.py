"""The grpo Trainer: llmtune's Trainer (passed in at run time) that generates a group of
completions per prompt, scores them and takes the clipped policy-gradient step.

Imported at run time only (``GRPOTask.trainer_class``). Module level stays torch-free.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from llmtune.tasks.base import RunContext
from llmtune.tasks.grpo.data import prompt_messages
from llmtune.tasks.grpo.loss import advantages, completion_logps, policy_loss


def grpo_trainer(base: type, ctx: RunContext) -> type:
    bound = {"grpo_ctx": ctx, "grpo_rewards": ctx.state["rewards"], "grpo_reference": ctx.state.get("reference")}
    return type("GRPOTrainer", (GRPOTrainerMixin, base), bound)


def sample_seed(seed: int, step: int, row: int, k: int = 0) -> int:
    """The sampling seed of completion ``k`` of one prompt's group: a function of the run's seed,
    the optimizer step and the prompt's row, so a resumed run or one on more processes samples the
    same completions."""
    digest = hashlib.sha256(f"grpo:{seed}:{step}:{row}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


class SeededSampler:
    """A logits processor that samples each row's next token with the row's own generator
    (temperature, then nucleus top-p, then the Gumbel-max trick) and leaves only that token
    possible, so greedy decoding emits it.

    Written here because transformers samples a whole batch from the global RNG: a row's
    completion would depend on the other rows of its batch, and on how many processes share the
    prompts. Here it depends only on its own seed (up to float noise of padding), and the global
    RNG the Trainer checkpoints is left untouched."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: Any):
        import torch

        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            ordered, index = torch.sort(logits, dim=-1, descending=True)
            cumulative = ordered.softmax(-1).cumsum(-1)
            drop = cumulative - ordered.softmax(-1) >= self.top_p  # keep the smallest set reaching top_p
            logits = logits.masked_fill(drop.scatter(-1, index, drop), float("-inf"))
        vocab = logits.shape[-1]
        noise = torch.stack([torch.rand(vocab, generator=g, device=logits.device) for g in self.generators]).clamp_(
            1e-20, 1.0
        )
        choice = (logits - torch.log(-torch.log(noise))).argmax(-1)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(choice), device=choice.device), choice] = 0.0
        return out


def stop_ids(tokenizer: Any, model: Any) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(i for i in ids if i is not None)


def trim(rows: Any, stops: list[int]) -> list[list[int]]:
    """Generated rows cut after their first stop token (kept: the model learns to stop)."""
    out = []
    for row in rows.tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        out.append(row[:end])
    return out


def pack(prompts: list[list[int]], completions: list[list[int]], pad: int, device: Any) -> dict:
    """Left-padded prompts followed by right-padded completions (one row per completion)."""
    import torch

    width_p = max(len(p) for p in prompts)
    width_c = max(1, max(len(c) for c in completions))
    ids, attn, comp, cmask = [], [], [], []
    for p, c in zip(prompts, completions, strict=True):
        lp, lc = width_p - len(p), width_c - len(c)
        ids.append([pad] * lp + p + c + [pad] * lc)
        attn.append([0] * lp + [1] * (len(p) + len(c)) + [0] * lc)
        comp.append(c + [pad] * lc)
        cmask.append([1] * len(c) + [0] * lc)
    t = lambda x: torch.tensor(x, device=device)  # noqa: E731
    return {"input_ids": t(ids), "attention_mask": t(attn), "completion_ids": t(comp), "completion_mask": t(cmask)}


class GRPOTrainerMixin:
    """Mixed into llmtune's Trainer by :func:`grpo_trainer` (see the package doc)."""

    grpo_ctx: RunContext
    grpo_rewards: Any  # llmtune.tasks.grpo.rewards.RewardSet
    grpo_reference: Any  # None, "adapters" or a frozen model

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # compute_loss returns a mean
        ref = self.grpo_reference
        self.ref_model = ref.to(self.args.device) if ref is not None and not isinstance(ref, str) else None
        self._sums: Any = None
        self._times = [0.0, 0.0, 0.0]  # generation, rewards, whole steps (this process, since the last log)

    # ---- generation and rewards -------------------------------------------------------
    def _generate(self, model: Any, prompts: list[list[int]], rows: list[int], sample: bool) -> list[list[int]]:
        """``num_generations`` sampled completions per prompt (each seeded by :func:`sample_seed`
        through :class:`SeededSampler`), or one greedy completion per prompt; batched, left-padded."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        o, tok = self.grpo_ctx.cfg.options, self.processing_class
        unwrapped = self.accelerator.unwrap_model(model)
        stops = stop_ids(tok, unwrapped)
        common = {"max_new_tokens": o.max_completion_length, "eos_token_id": stops, "pad_token_id": tok.pad_token_id}
        device = self.args.device
        was_training = unwrapped.training
        unwrapped.eval()
        try:
            with torch.no_grad():
                if sample:  # each prompt repeated num_generations times, every row its own generator
                    prompts = [p for p in prompts for _ in range(o.num_generations)]
                    seeds = [
                        sample_seed(self.args.seed, self.state.global_step, row, k)
                        for row in rows
                        for k in range(o.num_generations)
                    ]
                    processors = LogitsProcessorList([SeededSampler(seeds, o.temperature, o.top_p, device)])
                else:
                    processors = LogitsProcessorList()
                width = max(len(p) for p in prompts)
                ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts], device=device)
                attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
                # greedy over the sampler's output: it leaves one token per row (see SeededSampler)
                config = GenerationConfig(do_sample=False, **common)
                gen = unwrapped.generate(
                    input_ids=ids, attention_mask=attn, generation_config=config, logits_processor=processors
                )
                return trim(gen[:, width:], stops)
        finally:
            unwrapped.train(was_training)

    def _rewards(self, inputs: dict, completions: list[list[int]], repeat: int) -> Any:
        """[N, F] float64 rewards of the completions (``repeat`` per prompt)."""
        import torch

        ctx, tok = self.grpo_ctx, self.processing_class
        column, system = ctx.columns["prompt"], ctx.cfg.options.system_prompt
        columns = {k: [v for v in values for _ in range(repeat)] for k, values in inputs["columns"].items()}
        prompts = columns[column]
        columns["completion_ids"] = completions
        columns["prompt_messages"] = [prompt_messages(p, column, system) for p in prompts]
        texts = tok.batch_decode(completions, skip_special_tokens=True)
        table = self.grpo_rewards(prompts, texts, columns)
        return torch.tensor(table, dtype=torch.float64, device=self.args.device)

    # ---- training ---------------------------------------------------------------------
    def training_step(self, model, inputs, *args, **kwargs):
        started = time.perf_counter()
        try:
            return super().training_step(model, inputs, *args, **kwargs)
        finally:
            self._times[2] += time.perf_counter() - started

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        import torch

        o = self.grpo_ctx.cfg.options
        group = o.num_generations
        rows = inputs["row"].tolist()
        t0 = time.perf_counter()
        completions = self._generate(model, inputs["prompt_ids"], rows, sample=True)
        t1 = time.perf_counter()
        table = self._rewards(inputs, completions, group)
        t2 = time.perf_counter()
        self._times[0] += t1 - t0
        self._times[1] += t2 - t1
        weights = torch.tensor(self.grpo_rewards.weights, dtype=torch.float64, device=table.device)
        total = (table * weights).sum(-1)
        adv, zero_std = advantages(total, group, o.scale_rewards)
        prompts = [p for p in inputs["prompt_ids"] for _ in range(group)]
        batch = pack(prompts, completions, self.processing_class.pad_token_id, self.args.device)
        mask = batch["completion_mask"].float()
        logps = completion_logps(model, batch)  # under the Trainer's autocast (training_step)
        ref = self._reference_logps(model, batch) if o.beta != 0.0 else None
        loss, seq_kl = policy_loss(
            o.loss_type, logps, ref, adv.to(logps.dtype), mask, o.beta, o.epsilon, o.max_completion_length
        )
        with torch.no_grad():
            n = float(len(completions))
            sums = torch.cat(
                [
                    torch.tensor(
                        [n, float(len(zero_std)), float(zero_std.sum())], dtype=torch.float64, device=table.device
                    ),
                    torch.stack([mask.sum(), seq_kl.sum()]).double(),
                    total.sum().unsqueeze(0),
                    (total**2).sum().unsqueeze(0),
                    table.sum(0),
                    (table**2).sum(0),
                ]
            )
            self._sums = sums if self._sums is None else self._sums + sums
        return (loss, {"rewards": table}) if return_outputs else loss

    def _reference_logps(self, model: Any, batch: dict) -> Any:
        import torch

        with torch.no_grad():
            if self.ref_model is not None:
                return completion_logps(self.ref_model, batch)
            unwrapped = self.accelerator.unwrap_model(model)
            with unwrapped.disable_adapter():
                return completion_logps(unwrapped, batch)

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if "loss" in logs and self._sums is not None:
            import math

            import torch

            # Every process logs at the same steps: sums over all of them (exact means).
            sums = self.accelerator.reduce(self._sums, reduction="sum").tolist()
            times = self.accelerator.reduce(torch.tensor(self._times, device=self.args.device), reduction="mean")
            self._sums, self._times = None, [0.0, 0.0, 0.0]
            n, groups, zero, tokens, kl, tsum, tsq = sums[:7]
            names, f = self.grpo_rewards.names, len(self.grpo_rewards.names)
            means, squares = sums[7 : 7 + f], sums[7 + f : 7 + 2 * f]

            def std(s: float, q: float) -> float:
                return math.sqrt(max(q / n - (s / n) ** 2, 0.0))

            logs.update(reward=round(tsum / n, 4), reward_std=round(std(tsum, tsq), 4))
            for name, s, q in zip(names, means, squares, strict=True):
                logs[f"reward_{name}"] = round(s / n, 4)
                logs[f"reward_{name}_std"] = round(std(s, q), 4)
            logs.update(
                kl=round(kl / n, 6),
                completion_length=round(tokens / n, 2),
                frac_reward_zero_std=round(zero / groups, 4),
            )
            gen, rew, whole = times.tolist()
            logs.update(
                seconds_generation=round(gen, 3),
                seconds_rewards=round(rew, 3),
                seconds_update=round(whole - gen - rew, 3),
            )
        super().log(logs, start_time)

    # ---- evaluation: greedy completions, rewards ---------------------------------------
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        import torch

        inputs = self._prepare_inputs(inputs)
        completions = self._generate(model, inputs["prompt_ids"], inputs["row"].tolist(), sample=False)
        table = self._rewards(inputs, completions, 1).float()
        if prediction_loss_only:
            return None, None, None
        width = max(1, max(len(c) for c in completions))
        ids = torch.tensor([c + [-100] * (width - len(c)) for c in completions], device=table.device)
        return None, (table, ids), inputs["row"].unsqueeze(1)
