"""The fine-tune recipe: setup → train → publish → cleanup, read top to bottom.

Shaped like accelerate's ``examples/nlp_example.py`` (everything through ``accelerator.prepare``,
metrics through ``gather_for_metrics``, only the main process talks to the outside world) and
torchtune's recipes (one short class, components picked by name from the config, which here is
the FineTuneRun spec). Each feature is a visible step; the components live in sibling modules.

Ordering traps are marked where they occur: the seed before the model is built, the dense
statistics before ``prepare``, ``load_state`` last in setup (it restores the RNG), AdaLoRA's
update between the optimizer step and zeroing the gradients.

Kept in one module although it is long, on purpose: the recipe is read top to bottom, as
accelerate's examples are; every component it calls already lives in a sibling module.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from accelerate.utils.constants import SAFE_MODEL_NAME
from safetensors.torch import load_file
from transformers import AutoTokenizer

from sampleforge.api.finetune import AdaLoraMethod, FineTuneRunSpec, Task
from sampleforge.jobs.common.context import RunContext
from sampleforge.jobs.common.heartbeat import HeartbeatSender
from sampleforge.jobs.common.storage import MANIFEST_NAME, ObjectStore, S3Uri

from . import publish
from .calibration import calibrate, cross_fit, decision_metrics, resolve_method
from .checkpoint import STATE, Checkpoints, Committed, describe_config
from .errors import Preempted, SpecError
from .evaluate import CrossEvalSet, EvalResult, check_metrics, evaluate_cross, evaluate_towers
from .htmlreport import render_html_report
from .inputs import Inputs, Split, build_loaders, dense_stats, read_inputs, split_and_encode
from .labels import LabelSpace
from .losses import grouped_loss, info_nce_loss, ranking_scores, task_loss
from .methods import uses_token_types
from .model_source import load_failure, resolve_model
from .modeling import (
    LINEAR_HEAD,
    SEQUENCE_CLASSIFICATION_HEAD,
    CrossEncoder,
    HeadConfig,
    adalora_update,
    build_model,
    encoder_pooling,
    supports_sequence_classification,
)
from .progress import Progress
from .team import Team
from .training import EarlyStopper, LossCurve, PreemptionFlag, TrainingState, make_optimizer, make_scheduler

log = logging.getLogger(__name__)


class FineTuneRecipe:
    """One FineTuneRun's training, on this process (one of possibly many ranks)."""

    def __init__(self, ctx: RunContext[FineTuneRunSpec], store: ObjectStore | None, cache_dir: Path,
                 heartbeat: HeartbeatSender | None = None) -> None:
        self.ctx = ctx
        self.spec = ctx.spec
        self.store = store
        #: Downloads shared by runs (models); this run's scratch space (checkpoint staging, publishing).
        self.cache_dir = cache_dir
        self.work_dir = cache_dir / "runs" / (ctx.uid or f"{ctx.namespace}.{ctx.name}")
        self.heartbeat = heartbeat
        self.output = S3Uri.parse(self.spec.output.uri)
        self.state = TrainingState()
        self.preemption = PreemptionFlag()
        self.already_published = False
        self.last_eval: EvalResult | None = None
        self.last_checkpoint: str | None = None
        self.train_seconds = 0.0
        self._last_eval_step = -1
        #: The step whose weights are published: the last one, or the best one's (restoreBest).
        self.published_step: int | None = None
        #: evaluation.calibration's tuned decision and its effect, for metrics.json and the model.
        self.calibration: dict[str, Any] | None = None

    # -- setup ------------------------------------------------------------------------------------

    def setup(self, inputs: Inputs | None = None) -> None:
        """Everything before the first step. ``inputs`` is given by the benchmark; the job reads
        them from MinIO."""
        spec, d, t = self.spec, self.spec.distribution, self.spec.training
        self.preemption.install()
        on_gpu = torch.cuda.is_available()
        mixed = d.mixed_precision
        if mixed == "fp16" and not on_gpu:
            log.warning("distribution.mixedPrecision fp16 needs a GPU; training in fp32 on CPU")
            mixed = "no"
        self.accelerator = acc = Accelerator(cpu=not on_gpu, mixed_precision=mixed,
                                             gradient_accumulation_steps=d.gradient_accumulation_steps,
                                             step_scheduler_with_optimizer=False)
        if self.store is not None and self._published_by_this_run():
            self.already_published = True
            return

        # Inputs: the model is downloaded once per node (local main first); the data is read into
        # Arrow files that the pod's processes share, each reading its share of the files.
        self.team = Team.from_env(os.environ, acc.wait_for_everyone)
        if inputs is None:
            assert self.store is not None
            if self.heartbeat is not None:  # a keep-alive repeats it through a long download
                self.heartbeat.stage("downloading the model and reading the data")
            with acc.local_main_process_first():
                base = resolve_model(spec.model, self.store, self.cache_dir, acc.is_local_main_process)
            inputs = read_inputs(spec, self.ctx.input_uri, self.store, base, self.work_dir / "data", self.team)
        self.inputs = inputs
        if self.heartbeat is not None:  # tokenising and building the model report nothing either
            self.heartbeat.stage("setting up training: tokenizing the data and building the model")

        # Resume: the newest committed checkpoint decides the label space (it is part of the model).
        self.checkpoints = (Checkpoints(self.store, self.output, self.work_dir / "checkpoints",
                                        spec.checkpoint.keep, acc) if self.store is not None else None)
        resume: Committed | None = self.checkpoints.latest() if self.checkpoints else None
        saved = self.checkpoints.description(resume) if self.checkpoints and resume else None
        self.config = describe_config(spec, self.ctx.input_uri, acc.num_processes)
        if resume is not None and self.checkpoints is not None:
            # Before any heavy lifting: a checkpoint of another configuration is a spec error.
            for line in self.checkpoints.check_compatible(resume, self.config):
                log.warning("resuming with a configuration that differs from the checkpoint's; the spec wins",
                            extra={"difference": line, "checkpoint": str(resume.prefix)})
        need_labels = spec.task == Task.RELEVANCE
        labels = inputs.train.examples.labels
        self.space = (LabelSpace.from_json(saved["labels"]) if saved
                      else LabelSpace.learn(spec.task, labels.distinct() if need_labels and labels is not None
                                            else None))
        self.metric_names = spec.effective_metrics()
        check_metrics(spec.task, self.space, self.metric_names)
        if t.loss != "pointwise" and not self.space.ordered:
            raise SpecError(f"training.loss {t.loss} ranks by grade, but the label classes {list(self.space.classes)} "
                            "are names without an order; use numeric grades (or ESCI names) or training.loss pointwise")
        self.class_grades = (torch.as_tensor(self.space.class_grades, dtype=torch.float32, device=acc.device)
                             if self.space.class_grades is not None else None)
        if spec.evaluation.calibration is not None:  # a method that does not fit the labels fails now
            resolve_method(spec.evaluation.calibration, self.space.decision_classes)
        self.split: Split = split_and_encode(spec, inputs, self.space)
        # training.classWeights: from the training labels, so a resumed run computes the same ones.
        weights = self.space.class_weights(t.class_weights, self.split.train_targets.targets)
        self.class_weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float32,
                                                                          device=acc.device)

        # Tokenise once, into files the pod's processes share; batches of similar length, padded per batch.
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(inputs.model.location)
        except (OSError, ValueError) as err:
            raise load_failure(inputs.model, err) from err
        loaders = build_loaders(spec, self.split, self.tokenizer, uses_token_types(spec.method), on_gpu,
                                directory=self.work_dir / "data", team=self.team)
        self.sampler = loaders.sampler
        self.hard_negatives = loaders.hard_negatives
        # The training loader first: its length per rank (after sharding) sets the step count,
        # which AdaLoRA's schedule needs before the model is built.
        self.train_loader = acc.prepare(loaders.train)
        self.batches_per_rank = batches_per_rank = len(self.train_loader)
        self.steps_per_epoch = math.ceil(batches_per_rank / d.gradient_accumulation_steps)
        self.total_steps = min(t.max_steps or 10**12, t.epochs * self.steps_per_epoch)

        # The model. Seed first: the head (and adapters) are initialised at random.
        set_seed(t.seed)
        dense = dense_stats(self.split.train)
        towers = spec.two_tower_options()
        # Dense features of an AugmentationRun's output: its preprocess.json transform, not our own statistics.
        preprocess = inputs.preprocess if dense is not None else None
        # Without dense features a cross-encoder uses its architecture's sequence-classification head,
        # so that the published model loads with AutoModelForSequenceClassification; a two-tower model
        # pools as its base model's sentence-transformers files say.
        sequence_head = (spec.task != Task.TWO_TOWER and dense is None
                         and supports_sequence_classification(inputs.model.location))
        self.head = HeadConfig(task=spec.task, num_outputs=self.space.num_outputs,
                               num_dense=0 if dense is None else len(dense[0]),
                               shared_towers=towers.shared_encoder, temperature=towers.temperature,
                               dense_clip=preprocess is not None,
                               head_style=SEQUENCE_CLASSIFICATION_HEAD if sequence_head else LINEAR_HEAD,
                               pooling=encoder_pooling(inputs.model))
        model = build_model(inputs.model, self.head, spec.method, self.total_steps, d.gradient_checkpointing)
        if isinstance(model, CrossEncoder) and dense is not None:
            # before prepare: DDP broadcasts buffers from rank 0
            if preprocess is not None:
                model.set_dense_transform(preprocess)
            else:
                model.set_dense_stats(*dense)
        optimizer = make_optimizer(model, t)
        scheduler = make_scheduler(optimizer, t, self.total_steps)

        # Everything device- and process-related goes through accelerate.
        eval_loaders = ([loaders.eval.loader] if isinstance(loaders.eval, CrossEvalSet)
                        else [loaders.eval.query_loader, loaders.eval.item_loader])
        self.model, self.optimizer, self.scheduler, *prepared_eval = acc.prepare(
            model, optimizer, scheduler, *eval_loaders)
        self.eval_set = (replace(loaders.eval, loader=prepared_eval[0]) if isinstance(loaders.eval, CrossEvalSet)
                         else replace(loaders.eval, query_loader=prepared_eval[0], item_loader=prepared_eval[1]))
        acc.register_for_checkpointing(self.state)
        self.stopper = EarlyStopper(spec.evaluation.early_stopping, self.metric_names[0])
        self.adalora = isinstance(spec.method, AdaLoraMethod)
        self.progress = Progress(self.heartbeat, self.total_steps, acc.is_main_process, acc.is_local_main_process)
        self.progress.set_epoch_batches(batches_per_rank)

        # Last: load_state restores the RNG, so nothing after it may draw random numbers.
        if resume is not None and self.checkpoints is not None:
            self._resume(resume)

    def _published_by_this_run(self) -> bool:
        """A pod restarted after the final commit has nothing left to do."""
        assert self.store is not None
        manifest = self.store.read_manifest(self.output)
        if manifest is None or manifest.get("kind") != "model":
            return False
        if manifest.get("run", {}).get("uid") != self.ctx.uid:
            raise SpecError(f"output.uri {self.output} already holds a model published by another run "
                            f"({manifest.get('run', {}).get('name')}); choose a new output.uri")
        return True

    def _resume(self, checkpoint: Committed) -> None:
        assert self.checkpoints is not None
        self.progress.stage(f"resuming from the checkpoint {checkpoint.prefix}")
        local = self.checkpoints.fetch(checkpoint)
        self.accelerator.load_state(str(local / "state"))
        self.last_checkpoint = str(checkpoint.prefix)
        self.progress.checkpoint_uri = self.last_checkpoint
        log.info("resumed", extra={"checkpoint": str(checkpoint.prefix), "step": self.state.step,
                                   "epoch": self.state.epoch, "batches_in_epoch": self.state.batches_in_epoch})

    # -- train ------------------------------------------------------------------------------------

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.spec.task == Task.TWO_TOWER:
            negative = batch.get("negative")  # twoTower.hardNegatives: some rows carry a judged-irrelevant item
            queries, items, *hard = self.model(batch["query"], batch["item"], negative)
            return info_nce_loss(queries, items, batch["query_key"], batch["item_key"], self.head.temperature,
                                 hard[0] if hard else None, batch.get("negative_key"))
        outputs = self.model(batch["inputs"], batch.get("dense"))
        if self.spec.training.loss != "pointwise":  # pairwise / listwise, over the batch's whole queries
            return grouped_loss(self.spec.training.loss, ranking_scores(self.spec.task, outputs, self.class_grades),
                                batch["grade"], batch["query_key"])
        return task_loss(self.spec.task, outputs, batch["target"], self.class_weights)

    def _preempted(self) -> bool:
        """Whether any rank got SIGTERM: all ranks must agree on the step they checkpoint at."""
        if self.accelerator.num_processes == 1:
            return self.preemption.requested
        flag = torch.tensor([float(self.preemption.requested)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def train(self) -> None:
        acc, state, spec = self.accelerator, self.state, self.spec
        every_eval = spec.evaluation.every_steps
        every_checkpoint = spec.checkpoint.every_steps
        clip = spec.training.gradient_clipping
        self.progress.start(state)
        started = time.perf_counter()
        self.model.train()
        losses: list[torch.Tensor] = []
        curve = LossCurve(self.total_steps)
        while state.step < self.total_steps and not state.stopped_early:
            # Resuming mid-epoch: skip the batches this epoch already trained on.
            loader = (acc.skip_first_batches(self.train_loader, state.batches_in_epoch)
                      if state.batches_in_epoch else self.train_loader)
            # Both: accelerate's loader re-sets the sampler's epoch from its own iteration counter
            # on every iter() (which a resumed run must not restart from 0), and a skipping loader
            # does not pass set_epoch on to the sampler.
            loader.set_epoch(state.epoch)
            self.sampler.set_epoch(state.epoch)
            for batch in loader:
                with acc.accumulate(self.model):
                    loss = self._loss(batch)
                    acc.backward(loss)
                    if acc.sync_gradients and clip > 0:
                        acc.clip_grad_norm_(self.model.parameters(), clip)
                    self.optimizer.step()
                    if self.adalora and acc.sync_gradients:
                        adalora_update(acc.unwrap_model(self.model), state.step + 1)  # before zero_grad
                    self.optimizer.zero_grad()
                state.batches_in_epoch += 1
                state.samples_seen += len(batch["row"]) * acc.num_processes
                losses.append(loss.detach())
                if not acc.sync_gradients:
                    continue
                self.scheduler.step()
                state.step += 1
                step_loss = torch.stack(losses).mean()
                if self.progress.due() or state.step == self.total_steps:
                    state.loss = float(step_loss)
                curve.add(state, step_loss)
                losses.clear()
                self.progress.stepped(state)
                if every_eval and state.step % every_eval == 0:
                    self.evaluate()
                if self._preempted():
                    curve.flush(state)
                    self._stop_for_preemption()
                if state.step % every_checkpoint == 0 and state.step < self.total_steps:
                    self.save_checkpoint()
                if state.step >= self.total_steps or state.stopped_early:
                    break
            else:
                state.epoch += 1
                state.batches_in_epoch = 0
                if every_eval is None and (not self.last_eval or self._last_eval_step != state.step):
                    self.evaluate()
        curve.flush(state)
        if self._last_eval_step != state.step or self.last_eval is None:
            self.evaluate()
        self.train_seconds += time.perf_counter() - started
        self.published_step = state.step
        if self._keeps_best() and state.best is not None and state.best.step != state.step:
            self._restore_best(state.best.step)
        self.calibrate()

    def calibrate(self) -> None:
        """evaluation.calibration: tune the decision on the final evaluation (of the published
        weights) and apply it to the predictions that are published. Deterministic, so every rank
        agrees without a collective."""
        config = self.spec.evaluation.calibration
        if config is None or self.last_eval is None or not isinstance(self.eval_set, CrossEvalSet):
            return
        predictions = self.last_eval.predictions
        probabilities = predictions["probabilities" if self.spec.task == Task.RELEVANCE else "probability"]
        targets = predictions["target"]
        classes = self.space.decision_classes
        decision = calibrate(config, classes, probabilities, targets)
        predicted = decision.predict(probabilities)
        before = decision_metrics(targets, predictions["predicted"], len(classes))
        measured = "the evaluation rows it was tuned on"
        after = decision_metrics(targets, predicted, len(classes))
        if config.estimate == "crossFit":
            held_out = cross_fit(config, classes, probabilities, targets, predictions["query"])
            if held_out is None:
                log.warning("evaluation.calibration.estimate crossFit needs evaluation queries in both halves; "
                            "the calibrated metrics are in-sample", extra={"queries": len(set(predictions["query"]))})
            else:
                measured = "each half of the evaluation queries, with a decision tuned on the other half"
                after = decision_metrics(targets, held_out, len(classes))
        predictions["uncalibratedPredicted"] = predictions["predicted"]
        predictions["predicted"] = predicted.tolist()
        if "predictedLabel" in predictions:
            predictions["predictedLabel"] = [classes[i] for i in predicted]
        self.calibration = {**decision.to_json(classes), "objective": config.objective, "tunedOn": "evaluation",
                            "rows": len(targets), "uncalibrated": before, "calibrated": after,
                            "calibratedMeasuredOn": measured}
        log.info("calibrated the decision on the evaluation split", extra={"calibration": self.calibration})

    def _measure(self) -> EvalResult:
        if isinstance(self.eval_set, CrossEvalSet):
            return evaluate_cross(self.accelerator, self.model, self.eval_set, self.spec.task, self.space,
                                  self.metric_names)
        return evaluate_towers(self.accelerator, self.model, self.eval_set, self.metric_names)

    def evaluate(self) -> EvalResult:
        """Evaluate, record the result, and update early stopping (and the best checkpoint)."""
        self.progress.stage(f"evaluating at step {self.state.step}")
        result = self._measure()
        self.last_eval, self._last_eval_step = result, self.state.step
        best_before = self.state.best
        stop = self.stopper.update(self.state, result.metrics)
        self.state.history.append({"step": self.state.step, "metrics": result.metrics})
        self.progress.evaluated(self.state, result.metrics)
        if stop:
            log.info("early stopping", extra={"metric": self.stopper.metric, "best": self.state.best.__dict__
                                              if self.state.best else None, "step": self.state.step})
        improved = self.state.best is not best_before
        if improved and self._keeps_best() and not stop and self.state.step < self.total_steps:
            # Training goes on and may get worse: keep these weights to publish if it does.
            self.save_checkpoint()
        return result

    def _keeps_best(self) -> bool:
        stopping = self.spec.evaluation.early_stopping
        return stopping is not None and stopping.restore_best and self.checkpoints is not None

    def _restore_best(self, step: int) -> None:
        """Load the model weights of the best evaluation's checkpoint (every rank) and evaluate
        them again, so that what is published and what metrics.json reports are the same model."""
        assert self.checkpoints is not None
        found = self.checkpoints.at_step(step)
        if found is None:  # only if someone deleted it: say so, publish the last weights
            log.warning("the best evaluation's checkpoint is gone; publishing the last step's weights",
                        extra={"best_step": step, "last_step": self.state.step})
            return
        local = self.checkpoints.fetch(found)
        # accelerate's save_state writes the (unwrapped) model's state dict as model.safetensors.
        weights = load_file(str(local / STATE / f"{SAFE_MODEL_NAME}.safetensors"))
        self.accelerator.unwrap_model(self.model).load_state_dict(weights)
        self.last_eval = self._measure()
        self.published_step = step
        log.info("restored the best evaluation's weights", extra={
            "step": step, "last_step": self.state.step, "metric": self.stopper.metric,
            "value": self.last_eval.metrics.get(self.stopper.metric)})

    def _stop_for_preemption(self) -> None:
        """SIGTERM: commit a checkpoint at this step (unless one was just committed) and unwind."""
        log.warning("termination requested; checkpointing before exit",
                    extra={"signal": self.preemption.signal_name, "step": self.state.step})
        self.save_checkpoint()
        raise Preempted(self.state.step, self.last_checkpoint)

    # -- save_checkpoint ---------------------------------------------------------------------------

    def save_checkpoint(self) -> str | None:
        """Commit the full training state to MinIO (collective: every rank calls it)."""
        if self.checkpoints is None:
            return None
        state = self.state
        if (self.last_checkpoint or "").endswith(f"step-{state.step:09d}/"):
            return self.last_checkpoint  # this step is committed already (best model, then cadence)
        description = {"step": state.step, "epoch": state.epoch, "batchesInEpoch": state.batches_in_epoch,
                       "samplesSeen": state.samples_seen, "seed": self.spec.training.seed,
                       "worldSize": self.accelerator.num_processes, "config": self.config,
                       "labels": self.space.to_json(), "totalSteps": self.total_steps,
                       "best": state.best.__dict__ if state.best else None}
        protect = state.best.step if self._keeps_best() and state.best is not None else None
        self.progress.stage(f"saving a checkpoint at step {state.step}")
        self.last_checkpoint = str(self.checkpoints.save(state.step, description, protect))
        self.progress.checkpointed(state, self.last_checkpoint)
        return self.last_checkpoint

    # -- publish ----------------------------------------------------------------------------------

    def publish(self) -> str | None:
        """Write the model, metrics, predictions and model card; commit with the manifest last."""
        acc, state, spec = self.accelerator, self.state, self.spec
        acc.wait_for_everyone()
        if not acc.is_main_process or self.store is None:
            acc.wait_for_everyone()
            return str(self.output.join(MANIFEST_NAME)) if self.store is not None else None
        self.progress.stage("publishing the model, metrics and predictions")
        staging = self.work_dir / "publish"
        shutil.rmtree(staging, ignore_errors=True)
        model_dir = staging / publish.MODEL_DIR
        description = publish.save_model(acc.unwrap_model(self.model), self.tokenizer, self.head,
                                         self.space.to_json(), spec, model_dir,
                                         calibration=publish.calibration_for_model(self.calibration),
                                         preprocess=self.inputs.preprocess if self.head.dense_clip else None,
                                         sample=self._sample_texts())
        assert self.last_eval is not None
        results = self.results()
        (staging / "metrics.json").write_text(json.dumps(results, indent=2, sort_keys=True))
        publish.write_predictions(self.last_eval.predictions, staging / "predictions.parquet")
        if self.split.rejected.rows:
            publish.write_rejected(self.split.rejected.rows, staging / "rejected_rows.jsonl")
        data = self.data_summary()
        run = {"kind": self.ctx.kind, "name": self.ctx.name, "namespace": self.ctx.namespace, "uid": self.ctx.uid}
        (model_dir / "README.md").write_text(publish.model_card(spec, run, data, results, description,
                                                                acc.num_processes))
        (staging / "report.html").write_text(render_html_report(spec, run, data, results, acc.num_processes),
                                             encoding="utf-8")
        manifest_uri = publish.commit_output(self.store, self.output, staging, {
            "kind": "model", "run": run, "task": str(spec.task), "model": publish.MODEL_DIR + "/",
            "step": state.step, "publishedStep": results["publishedStep"], "metrics": results["final"],
            "data": {k: v for k, v in data.items() if k != "augmentationManifest"},
        })
        log.info("published", extra={"manifest": str(manifest_uri), "step": state.step})
        acc.wait_for_everyone()
        return str(manifest_uri)

    def _sample_texts(self) -> tuple[list[str], list[str] | None]:
        """Evaluation texts the ONNX export is checked on: (queries, items) pairs for a cross-encoder,
        queries for a two-tower model."""
        if isinstance(self.eval_set, CrossEvalSet):
            return list(self.eval_set.queries), list(self.eval_set.items)
        return list(self.eval_set.queries), None

    def results(self) -> dict[str, Any]:
        """metrics.json: the final evaluation, the best one, the history and the throughput."""
        state = self.state
        assert self.last_eval is not None
        return {
            "final": self.last_eval.metrics, "step": state.step, "totalSteps": self.total_steps,
            "epochs": state.epoch + state.batches_in_epoch / max(1, self.batches_per_rank),
            "best": state.best.__dict__ if state.best else None, "stoppedEarly": state.stopped_early,
            "publishedStep": self.published_step if self.published_step is not None else state.step,
            "history": state.history, "loss": state.loss, "lossCurve": state.loss_curve,
            "samplesSeen": state.samples_seen,
            "trainingSeconds": self.train_seconds,
            # The operator fills FineTuneRun status from these two keys: rows set aside, and why.
            "rejectedRows": self.split.rejected.count, "rejected": dict(self.split.rejected.reasons),
            # rankingQueries / rankingQueriesSkipped: what the final ranking metrics are averaged over.
            **(self.last_eval.ranking.to_json() if self.last_eval.ranking is not None else {}),
            **({"classWeights": dict(zip(self.space.decision_classes, self.class_weights.tolist(), strict=True))}
               if self.class_weights is not None else {}),
            # The decision tuned on the evaluation split; "final" keeps the uncalibrated decision metrics.
            **({"calibration": self.calibration} if self.calibration is not None else {}),
            # twoTower: judged-irrelevant rows read, and how many trained as negatives (twoTower.hardNegatives).
            **({"hardNegatives": self.hard_negatives} if self.hard_negatives is not None else {}),
        }

    def data_summary(self) -> dict[str, Any]:
        inputs = self.inputs
        return {
            "train": {"uri": inputs.train.uri, "rows": len(self.split.train), "files": inputs.train.files},
            "eval": {"uri": inputs.eval.uri if inputs.eval else f"{self.spec.eval_fraction():.0%} of the training "
                     "data's source rows, held out by query with every generated variant",
                     "rows": len(self.split.eval), "includeSynthetic": self.spec.evaluation.include_synthetic,
                     "heldOutGeneratedRows": self.split.held_out},
            "rejectedRows": self.split.rejected.count, "rejected": dict(self.split.rejected.reasons),
            "fromAugmentationRun": self.spec.data.from_augmentation_run,
            "augmentationManifest": inputs.train.manifest,
        }

    # -- cleanup ----------------------------------------------------------------------------------

    def cleanup(self) -> None:
        self.preemption.uninstall()
        if hasattr(self, "progress"):
            self.progress.close(self.state, f"finished at step {self.state.step}")
        if hasattr(self, "accelerator"):
            self.accelerator.end_training()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def run(self) -> str | None:
        """setup → train → publish; returns the output manifest URI. Raises Preempted on SIGTERM."""
        try:
            self.setup()
            if self.already_published:
                log.info("already published by this run; nothing to do", extra={"output": str(self.output)})
                return str(self.output.join(MANIFEST_NAME))
            if self.preemption.requested:
                raise Preempted(self.state.step, self.last_checkpoint)
            self.train()
            return self.publish()
        finally:
            self.cleanup()
