"""Scoring a round's global weights on the validation parts, beside the next round's workers.

Nothing the next round does depends on the score, so the loop (orchestrator.training.loop)
scores a round on its own thread as soon as its weights are stored, and commits it when the
score is in, while the next round's workers train: on Lambda both are just more invocations
at once. Only the last round's evaluation adds to the run's time.
"""

from __future__ import annotations

from dlpipe.runs.record import ValScore
from dlpipe.train.averaging import weighted_metrics
from dlpipe.wire import EvaluateRequest, EvaluateResponse
from orchestrator.invokers.base import Invocation, Invoker
from orchestrator.invokers.retry import invoke_for_replies
from orchestrator.training.plan import Plan, TrainingFailed, TrainOptions


def evaluate(invoker: Invoker, plan: Plan, weights_key: str, retries: int,
             images: int | None = None) -> tuple[ValScore | None, list[Invocation]]:
    """Validation loss/accuracy of stored weights, one invocation per validation part, at once; and those
    invocations (the caller's round pays for them).

    images: score a fixed subset of about that many (every k-th image of each part); None: all.
    """
    if not plan.val_parts:
        return None, []
    limit = None if images is None else max(1, -(-images // len(plan.val_parts)))
    events = [EvaluateRequest(action="evaluate", weights_key=weights_key, shard_keys=[part], model=plan.config.model,
                              trainable=plan.config.training.trainable, batch_size=plan.eval_batch_size,
                              limit=limit).model_dump(mode="json")
              for part in plan.val_parts]
    calls: list[Invocation] = []
    done, errors = invoke_for_replies(invoker, "train", events, retries, EvaluateResponse, calls.append)
    if errors:
        reasons = "; ".join(f"part {i}: {err}" for i, (_, err) in sorted(errors.items()))
        raise TrainingFailed(f"evaluating {weights_key} failed: {reasons}")
    results = [done[i] for i in sorted(done)]
    return ValScore(count=sum(r.count for r in results),
                    **weighted_metrics((r.model_dump(), r.count) for r in results),
                    seconds=max(r.seconds for r in results), subset=limit is not None,
                    lambda_seconds=round(max(inv.lambda_seconds for inv in calls), 3)), calls


def eval_images(plan: Plan, options: TrainOptions, round_: int) -> int | None:
    """The subset's size this round; None (everything) every --full-eval-every rounds, at the end, and when the
    subset would hold every validation image anyway (then the round line does not mark it as a subset)."""
    if options.eval_images is None or round_ == plan.rounds or round_ % options.full_eval_every == 0 or \
            options.eval_images >= plan.val_images:
        return None
    return options.eval_images
