"""Lessons: one-click guided experiments, as data. A lesson is a narrative, a list of ordinary TrainConfigs (its
runs, tagged `lesson:<lesson>:<recipe>`), an estimated time, a result view and what to look for.

A lesson is not a new kind of job: its runs go through runs.jobs like any other, so Trainer, Compare and cancel
treat them as usual, and the page finds them again by tag after a restart (the store is the truth).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxrdemo.config import TrainConfig
from cxrdemo.errors import CxrError
from cxrdemo.runs import durations, examples, jobs, lifecycle, policy
from cxrdemo.runs import store as runs

TAG_PREFIX = "lesson:"
TINY_ENV = "CXRDEMO_LESSON_TINY"  # "1": every lesson at 32 px, 1 epoch, 8 images per split (tests, smoke runs)


@dataclass(frozen=True)
class Recipe:
    """One run of a lesson: a key unique in the lesson, words for tables, and the ordinary TrainConfig."""

    key: str
    label: str
    config: TrainConfig


@dataclass(frozen=True)
class Lesson:
    """A guided experiment: what a teacher reads aloud, the runs it queues, and what to point at."""

    key: str
    title: str
    narrative: str
    look_for: tuple[str, ...]
    data: str
    img_size: int
    epochs: int
    make_recipes: Callable[[TrainConfig], list[Recipe]]

    @property
    def tag(self) -> str:
        return f"{TAG_PREFIX}{self.key}"


def machine_words(infos: list[runs.RunInfo]) -> str:
    """The processor and thread count the runs were made with, in words ('' when not recorded)."""
    for info in infos:
        cpu = str((info.meta.get("speed_trial") or {}).get("device_model") or "")
        threads = info.meta.get("threads")
        if cpu:
            return f"{cpu}, {threads} threads" if threads else cpu
    return ""


def base_config(lesson: Lesson) -> TrainConfig:
    """What every run of `lesson` shares (the tiny override shrinks it for tests and smoke runs)."""
    c = TrainConfig(data=lesson.data, backbone="cnn5", init="scratch", epochs=lesson.epochs, img_size=lesson.img_size,
                    batch_size=32, patience=0, step_size=0, threshold="val", tag=lesson.tag)
    if os.environ.get(TINY_ENV, "").strip() == "1":
        c = c.replace(img_size=32, epochs=1, max_images=8, batch_size=8)
    return c


def recipes(lesson: Lesson) -> list[Recipe]:
    """The lesson's runs, each config tagged `lesson:<lesson>:<recipe>`."""
    out = lesson.make_recipes(base_config(lesson))
    return [Recipe(r.key, r.label, r.config.replace(tag=f"{lesson.tag}:{r.key}")) for r in out]


# ---------------------------------------------------------------- the four lessons

SHARES = (0.1, 0.25, 1.0)
STARTS = (("scratch", "from scratch", "scratch", "none"), ("demo-all", "demo model, all layers learn", "run:demo",
                                                            "none"),
          ("demo-head", "demo model, only the head learns", "run:demo", "head"))


MAX_EPOCH_FACTOR = 3  # each epoch also validates, follows the probes and saves: 10x the epochs cost 4x the time


def equal_steps_epochs(epochs: int, share: float) -> int:
    """Epochs that give a run on `share` of the images more nearly as many training steps as `epochs` on all.

    With a fixed number of epochs, 10% of the images would also mean 10% of the optimisation steps (one batch an
    epoch): the small-data runs would be undertrained rather than short of data, and the lesson would measure
    the wrong thing. Capped at 3x the epochs to keep the lesson within its time (10%: 24 steps vs 64 for all)."""
    return max(epochs, min(MAX_EPOCH_FACTOR * epochs, round(epochs / share)))


TRANSFER_SEED = 1  # the seed set for the bacterial/viral replicate (docs/lessons.md), kept for this design's one build


def _transfer(base: TrainConfig) -> list[Recipe]:
    return [Recipe(f"{key}-{round(share * 100)}", f"{words}, {round(share * 100)}% of training images",
                   base.replace(init=init, freeze=freeze, train_share=share, seed=TRANSFER_SEED,
                                split_seed=TRANSFER_SEED, epochs=equal_steps_epochs(base.epochs, share)))
            for key, words, init, freeze in STARTS for share in SHARES]


def _freeze(base: TrainConfig) -> list[Recipe]:
    from cxrdemo.model import backbones  # torch: only when a lesson's runs are made

    # seed 1: the 2026-12-06 build is a fresh replicate, so its AUROC headline is not the one first seen (docs/lessons.md)
    out = [Recipe(f"cnn5-{level}", f"demo cnn5, freeze {level}", base.replace(init="run:demo", freeze=level, seed=1))
           for level in ("none", "1", "2", "3", "4", "head")]
    if backbones.find_imagenet_weights("resnet18"):  # ResNet rows only where ImageNet weights are present
        out += [Recipe(f"resnet18-{level}", f"ResNet-18 (ImageNet), freeze {level}",
                       base.replace(backbone="resnet18", init="imagenet", freeze=level)) for level in ("none", "2", "head")]
    return out


def _shortcut(base: TrainConfig) -> list[Recipe]:
    # The control trains on clean images but, like the others, is also tested on marked copies ("VIRUS:0": the
    # tag on no training image): that it ignores the tag is what the tagged models are compared with.
    return [Recipe("clean", "no marker in training (control)", base.replace(marker="VIRUS:0")),
            Recipe("marked-50", "marker on 50% of VIRUS training images", base.replace(marker="VIRUS:0.5")),
            Recipe("marked-100", "marker on every VIRUS training image", base.replace(marker="VIRUS:1.0"))]


LEAKAGE_SEEDS = (1, 2)  # seed 0 was the prototype whose numbers chose this design: the examples are fresh (docs/lessons.md)


def _leakage(base: TrainConfig) -> list[Recipe]:
    return [Recipe(f"{split}-{seed}", f"split by {split}, seed {seed}",
                   base.replace(init="run:demo", split_by=split, split_seed=seed, seed=seed))
            for split in ("image", "patient") for seed in LEAKAGE_SEEDS]


LESSONS: dict[str, Lesson] = {lesson.key: lesson for lesson in (
    Lesson("transfer", "Transfer with little data",
           "Telling viral pneumonia from a normal film is a new task: the shipped demo model learned NORMAL vs "
           "PNEUMONIA, with bacterial and viral cases together — as CheXNet, trained on hospital films, was the "
           "start for the first COVID-19 models. We train a small network three ways — from random weights, from "
           "the demo model with every layer learning, and from the demo model with only its last layer learning — "
           "each on 10%, 25% and all of 240 training images (smaller sets train for up to three times the epochs, "
           "so they are not simply undertrained). The test images come from children the demo model never saw.",
           ("With 10% of the images (24 films), does starting from the demo model beat starting from scratch?",
            "Does the advantage shrink as the number of training images grows?",
            "Is training only the last layer enough here? On bacterial vs viral it was not: the demo model's "
            "features help most where the new task is close to the one it learned."),
           "lesson:virus_normal", 128, 8, _transfer),
    Lesson("freeze", "Which layers to freeze",
           "Starting from the demo model, we freeze none, the first 1-4, or all five convolution groups and train "
           "the rest on bacterial vs viral pneumonia, as in the freeze-level table of 'Lung Diseases "
           "Identification from X-Rays'. Freezing more trains fewer parameters and runs faster per epoch; what does "
           "it cost? We read the test AUROC, which does not depend on the decision threshold (chosen on only 60 "
           "validation images), paired on the same 100 test images.",
           ("Trainable parameters: most of cnn5's weights sit in its last convolution group, so freezing groups "
            "1-4 still trains over a million of them; only 'head' falls to about a thousand.",
            "Seconds per epoch fall as more is frozen: frozen layers need no gradients, and 'head' computes the "
            "trunk's features once.",
            "What does 'head' cost? Read the AUROC gap against training every layer, and its interval."),
           "lesson:bacteria_virus", 128, 8, _freeze),
    Lesson("shortcut", "Shortcut learning",
           "A hospital-style tag is burned into some of the VIRUS training and validation images only — as when one "
           "hospital, with its own markers, sends most of one diagnosis (Zech et al. 2018; DeGrave et al. 2021). "
           "We then test every model twice: on clean test images, and on the same images with the tag on all of "
           "them.",
           ("Validation looks fine for every run: the tag is in the validation images too.",
            "On marked test copies, the tagged models call far more images VIRUS: they learned the tag.",
            "Heatmaps of a tagged model move to the corner with the tag (see Diagnosis with that run)."),
           "lesson:bacteria_virus", 128, 8, _shortcut),
    Lesson("leakage", "Leakage: the same film on both sides",
           "This training folder was put together the way many public sets were in the COVID-19 years: from two "
           "sources that both held the same films, each saved at its own size and compression (the 'Frankenstein' "
           "data sets of Roberts et al. 2021). Every child here has two to four films, and every film is there "
           "twice. Split image by image and a film sits in validation while its duplicate is in training: "
           "validation then tests the model on films it has memorised, and flatters it. Split by patient (the file "
           "names carry the child) and a child's films and their duplicates stay on one side: validation is "
           "honest. Both recipes are then tested on 80 children neither has seen; each is run with two seeds.",
           ("Compare the validation accuracy each split reports with its accuracy on unseen patients.",
            "The gap is the leakage: read its interval — does it exclude zero for the image split? For the patient "
            "split?",
            "The Trainer notes that patients appear in two splits for the image split: heed that warning — the "
            "same check finds duplicates, because they carry the child's name."),
           "lesson:leakage", 128, 8, _leakage),
)}


# ---------------------------------------------------------------- time, start, progress

def _recipe_config(info: runs.RunInfo) -> TrainConfig | None:
    try:
        return TrainConfig.from_dict(info.config)
    except (CxrError, TypeError):
        return None


def measured_seconds(recipe: Recipe, shipped: list[runs.RunInfo]) -> float | None:
    """The wall time of the shipped example run made with exactly this recipe (None when there is none)."""
    for info in reversed(shipped):  # the newest build wins
        if info.state == "completed" and _recipe_config(info) == recipe.config:
            return examples.wall_seconds(info)
    return None


def _estimated_seconds(c: TrainConfig, speed: durations.Speed) -> float:
    """The recipe's epochs on its dataset's image counts, at `speed` (no start-up)."""
    from cxrdemo.data import scan_dataset

    counts = scan_dataset(c.data, seed=c.split_seed, max_per_split=c.max_images, train_share=c.train_share,
                          by_patient=c.split_by == "patient").summary()["totals"]
    return durations.training_seconds(c, counts["train"], counts["val"], speed)


@dataclass(frozen=True)
class Estimate:
    """The lesson's estimated wall time at one job at a time, and how many of its runs were timed for real."""

    seconds: float
    measured: int
    planned: int
    machine: str
    speed: durations.Speed = durations.REFERENCE_SPEED
    start: durations.StartCost = durations.REFERENCE_START


def estimate(lesson: Lesson, shipped: list[runs.RunInfo] | None = None,
             runs_dir: str | Path | None = None) -> Estimate:
    """Estimated wall time (runs/durations), every run started, trained and finished here one after another: each
    run's epochs at this computer's own measured training speed when it has one (its speed trials or sweep
    measurement: the example runs were timed on another machine at another load), else the measured time of the
    example run made with the same recipe, else the epochs at the reference speed; plus starting each run here
    (`durations.run_start`: the worker process, set-up and finishing; an example run already counts the latter)."""
    shipped = examples.list_examples() if shipped is None else shipped
    speed, start = durations.training_speed(runs_dir), durations.run_start(runs_dir)
    own_speed = speed.source != "reference"
    total, measured = 0.0, 0
    plan = recipes(lesson)
    for r in plan:
        seconds = None if own_speed else measured_seconds(r, shipped)
        if seconds is None:
            total += start.seconds + _estimated_seconds(r.config, speed)
        else:
            total += start.process_s + seconds
            measured += 1
    mine = [i for i in shipped if recipe_key(i, lesson) is not None]
    return Estimate(total, measured, len(plan), machine_words(mine) if measured else "", speed, start)


def estimate_seconds(lesson: Lesson, shipped: list[runs.RunInfo] | None = None) -> float:
    """Estimated wall time of the whole lesson at one job at a time (see `estimate`)."""
    return estimate(lesson, shipped).seconds


def example_runs(lesson: Lesson, shipped: list[runs.RunInfo]) -> dict[str, runs.RunInfo]:
    """Recipe key -> the lesson's completed shipped example run."""
    return {k: i for k, i in lesson_runs(lesson, shipped).items() if i.state == "completed"}


def example_wall_seconds(lesson: Lesson, shipped: list[runs.RunInfo]) -> float | None:
    """What the lesson's example runs took together where they were made (None when any time is missing)."""
    times = [examples.wall_seconds(i) for i in example_runs(lesson, shipped).values()]
    return float(sum(times)) if times and None not in times else None


def start(lesson: Lesson, runs_dir: str | Path | None = None, asker: policy.Asker | None = None) -> list[str]:
    """Queue every run of the lesson through the ordinary job system, all or none (the classroom policy counts
    them as `asker`'s jobs); returns the run ids."""
    return jobs.submit_all([(r.config, f"{lesson.key}-{r.key}") for r in recipes(lesson)], runs_dir, asker=asker,
                           kind="lesson")


def cancel(lesson: Lesson, runs_dir: str | Path | None = None, asker: policy.Asker | None = None
           ) -> tuple[int, list[str]]:
    """Cancel the lesson's waiting and training runs (a student: only the runs this browser queued); returns how
    many were cancelled and the sentence of each that could not be (a run being calibrated ends by itself)."""
    done, refused = 0, []
    for info in lesson_runs(lesson, runs.list_runs(runs_dir)).values():
        if info.state not in lifecycle.ACTIVE:
            continue
        if asker is not None and asker.student and info.meta.get("browser") != asker.browser:
            continue
        try:
            jobs.cancel(info.run_id, runs_dir, grace_s=5.0)
            done += 1
        except CxrError as exc:
            refused.append(str(exc))
    return done, refused


def recipe_key(info: runs.RunInfo, lesson: Lesson) -> str | None:
    """The recipe of `lesson` a run belongs to (from its tag), or None."""
    tag = str(info.config.get("tag") or "")
    return tag[len(lesson.tag) + 1:] if tag.startswith(lesson.tag + ":") else None


def lesson_runs(lesson: Lesson, infos: list[runs.RunInfo]) -> dict[str, runs.RunInfo]:
    """Recipe key -> the latest run of that recipe (a lesson run again replaces its earlier results)."""
    out: dict[str, runs.RunInfo] = {}
    for info in infos:  # oldest first: later runs win
        key = recipe_key(info, lesson)
        if key is not None:
            out[key] = info
    return out


def runs_stamp(lesson: Lesson, infos: list[runs.RunInfo]) -> tuple:
    """What the lesson's result view depends on: each of its runs and its state as last written (a cache key)."""
    return tuple((k, i.run_id, i.state, i.status.get("updated")) for k, i in sorted(lesson_runs(lesson, infos).items()))


def progress(lesson: Lesson, infos: list[runs.RunInfo]) -> dict[str, int]:
    """How many of the lesson's recipes are waiting or training, completed, or ended otherwise (and planned)."""
    found = lesson_runs(lesson, infos)
    states = [i.state for i in found.values()]
    return {"planned": len(recipes(lesson)), "active": sum(s in lifecycle.ACTIVE for s in states),
            "completed": states.count("completed"), "other": sum(s not in lifecycle.ACTIVE + ("completed",)
                                                                for s in states)}


# ---------------------------------------------------------------- words for the page

def epochs_words(lesson: Lesson) -> str:
    """The lesson's epochs per run: '8', or '8–24' when its recipes differ (smaller shares train longer)."""
    epochs = [r.config.epochs for r in recipes(lesson)]
    return f"{min(epochs)}" if min(epochs) == max(epochs) else f"{min(epochs)}–{max(epochs)}"


def estimate_words(lesson: Lesson, est: Estimate) -> str:
    """How long the lesson takes here before it starts, and where the figure comes from."""
    from cxrdemo.views.sweep_cost import speed_words
    from cxrdemo.views.trainer import rough_duration

    c = recipes(lesson)[0].config
    estimated = (f"estimated from image counts and the training speed {speed_words(est.speed)}, plus about "
                 f"{round(est.start.seconds)} s to start and finish each run")
    how = (f"measured: the example runs of this recipe took that on {est.machine}, plus starting each run"
           if est.measured == est.planned else
           f"{est.measured} of {est.planned} runs measured on {est.machine}, the rest {estimated}"
           if est.measured else estimated)
    return (f"{est.planned} runs at {c.img_size} px, {epochs_words(lesson)} epochs each. Running it yourself takes about "
            f"{rough_duration(est.seconds)} at one job at a time ({how}); a slower computer or other jobs take "
            "longer.")


def example_words(lesson: Lesson, shipped: list[runs.RunInfo]) -> str:
    """The label over a lesson's shipped example results: what they are, how they were made, what they took."""
    from cxrdemo.views.text import escape_markdown
    from cxrdemo.views.trainer import format_duration

    found = example_runs(lesson, shipped)
    wall = example_wall_seconds(lesson, shipped)
    machine = escape_markdown(machine_words(list(found.values())))  # read from run files
    took = f"; its {len(found)} runs took {format_duration(wall)} in all" if wall is not None else ""
    on = f" on {machine}" if machine else ""
    return (f"Example results, shipped with the project (read-only): made by the project's command "
            f"`{examples.BUILD_COMMAND}`{on}{took}. Press “Run it yourself” to train the same recipe here.")
