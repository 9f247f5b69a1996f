"""Online RL of a causal LM with verifiable rewards: ``grpo`` (Group Relative Policy Optimization).

Per training step, for each prompt of the batch: ``options.num_generations`` completions are
sampled from the model itself (``temperature``, ``top_p``, at most ``max_completion_length``
tokens, ending at EOS), every reward function scores every completion, the weighted sum is the
completion's reward, and its advantage is the reward minus its group's mean (divided by the
group's std with ``options.scale_rewards``). The loss is TRL's clipped policy objective with a
KL penalty ``options.beta`` (k3 estimator) to the reference, the starting model (a frozen copy;
with ``--lora`` the same model with adapters disabled; ``beta: 0`` keeps no reference):

- ``grpo``: each completion's token mean, averaged over completions;
- ``bnpo``: the mean over the batch's completion tokens;
- ``dr_grpo``: the token sum over ``completions x max_completion_length`` (no length bias).

One update per generation (on-policy): the importance ratio is 1 in value and the clipping
(``options.epsilon``) never binds; it is kept so the formula is TRL's.

Data: a prompt column (strings or chat messages; a ``messages`` chat is cut after its last user
turn), rendered with the chat template and a generation prompt; every other column goes to the
reward functions. Rewards (``options.rewards``, ``options.reward_weights``): see
:mod:`.rewards` for the built-ins (``math_answer``, ``regex_format``, ``length``), Python
references and reward-model folders; the contract is TRL's
``fn(prompts, completions, **columns) -> list[float]``.

Sampling is seeded per completion from the prompt's row and the optimizer step
(:func:`.trainer.sample_seed`, each row drawing from its own generator through
:class:`.trainer.SeededSampler`), so a resumed run and a run over several processes (each
generates the groups of its own prompts) sample the same completions; the global RNG the Trainer
checkpoints is left untouched. All groups of a batch are generated together (left-padded).

Logged per step (sums over all processes): ``reward`` and ``reward_std``, ``reward_<name>`` and
``reward_<name>_std`` per function, ``kl``, ``completion_length``, ``frac_reward_zero_std``
(groups whose completions all got the same reward: nothing to learn), and the seconds spent in
generation, rewards and the rest of the step (forward/backward/optimizer). Evaluation (during
training and ``llmtune eval``) scores one greedy completion per prompt: mean reward, each
function's mean, ``accuracy`` (math_answer's), completion length; ``predictions.jsonl`` holds
prompt, completion and rewards.

Built on ``transformers.Trainer``, not TRL's ``GRPOTrainer``: TRL 1.16's trainer builds its own
dataloader (a repeat sampler that hands each process a share of every group, and buffers
generations over ``steps_per_generation``), so llmtune's samplers, exact resume and its
evaluation records (``predictions.jsonl`` with per-prompt completions) would not carry over; it
reloads the reference from the model's config path (GGUF and ``package:`` models fail, as for
dpo), and it gathers rewards across processes before normalising, where here a group stays on
one process. The loss formulas are TRL's (see :mod:`.loss`). TRL's vLLM generation is not wired
in (CPU-only here).

Modules: :mod:`.options`, :mod:`.data` (prompts, collator), :mod:`.rewards`, :mod:`.loss`,
:mod:`.trainer` (generation, rewards, loss, logs; imported at run time), :mod:`.task`.
"""

from __future__ import annotations

from llmtune.tasks.grpo.task import GRPOTask

TASKS = [GRPOTask()]
