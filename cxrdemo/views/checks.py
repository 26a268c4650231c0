"""Sentences for what the model and diagnosis layers measure: the in-domain check, a paired comparison of two
runs, the randomisation (sanity) check of a heatmap method. Those layers return numbers; these words are the
only place the numbers become sentences.
"""

from __future__ import annotations

from cxrdemo.model.domain import DomainCheck
from cxrdemo.model.paired import Difference
from cxrdemo.views import numbers

_LABEL = {"auroc": "AUROC", "accuracy": "accuracy"}


def domain_sentence(check: DomainCheck) -> str:
    """What a clinician reads beside the prediction: is this image like the training images, and how far."""
    if check.inside:
        return (f"This image resembles the {check.n_train:,} images this model learned from "
                f"(distance {check.score:.1f}, cut-off {check.cutoff:.1f}).")
    return (f"This image is unlike the {check.n_train:,} images this model learned from - an adult film, another "
            f"body part or not an X-ray? Its prediction means little here (distance {check.score:.1f}, above the "
            f"cut-off of {check.cutoff:.1f} that {numbers.level(check.quantile)} of validation images stay under).")


def difference_sentence(d: Difference, n: int, a: str = "A", b: str = "B") -> str:
    """One plain sentence: how much B differs from A, its interval, and whether that could be chance."""
    what = _LABEL.get(d.metric, d.metric)
    shown = numbers.difference(d.metric, abs(d.delta))
    if shown.lstrip("+").removesuffix(" points").strip("0.") == "":  # rounds to no difference at all
        head = f"{b}'s {what} is the same as {a}'s"
    else:
        head = f"{b}'s {what} is {shown.lstrip('+')} {'higher' if d.delta > 0 else 'lower'}"
    verdict = "the difference could be chance" if d.could_be_chance else "the difference is unlikely to be chance"
    return f"{head}, {numbers.difference_interval(d.metric, d.low, d.high)}: on these {n} images {verdict}."


def sanity_sentence(check) -> str:
    """The randomisation check of a heatmap method (a diagnosis.sanity.SanityCheck) in one sentence."""
    r = check.final_spearman
    if check.explains_the_image:
        return (f"With every layer re-initialised the {check.method} map still has rank correlation {r:.2f} "
                "with the original: a method whose map barely changes when the model is destroyed is "
                "explaining the image, not the model.")
    return (f"Re-initialising the layers from the head down changes the {check.method} map (rank correlation "
            f"{r:.2f} once every layer is random): it depends on what the model learnt; a method whose map "
            "barely changed when the model is destroyed would be explaining the image, not the model.")
