"""Exercises 8.1-8.3 (chapter 8, Method §8): the best threshold, zero-shot over several classes, recall@k.

8.1 compares the reader's ``best_threshold`` with :func:`medst.eval.sentence.best_threshold_accuracy` on scores
with ties, separable and uninformative ones. 8.2 compares ``zero_shot_log_probs``, a prompt-ensemble zero-shot
classifier over C classes with padded prompt sets, with the library's prompt ensemble
(:func:`medst.eval.embed.mean_embedding`) and, for two classes, its score
(:func:`medst.eval.zeroshot.zero_shot_scores`), values and gradients. 8.3 compares ``shared_report_recall`` with
:func:`medst.eval.retrieval.recall_at_k` on similarity matrices with ties and studies that share a report.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from medst.book.exercises.framework import (
    Case,
    Check,
    CheckResult,
    Exercise,
    argument_ignored,
    generator,
    randn,
    run_check,
)
from medst.eval.embed import mean_embedding
from medst.eval.retrieval import recall_at_k, retrieval_ranks
from medst.eval.sentence import best_threshold_accuracy
from medst.eval.zeroshot import prompt_embedding, zero_shot_scores


# ----------------------------------------------------------------------------------------------------
# 8.1 The best threshold of the sentence-similarity accuracy
# ----------------------------------------------------------------------------------------------------
def _threshold_reference(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    accuracy, threshold = best_threshold_accuracy(scores.double().numpy(), labels.long().numpy())
    return torch.tensor(accuracy, dtype=torch.float64), torch.tensor(threshold, dtype=torch.float64)


def _threshold_variant(scores, labels, *, strict=False, all_negative=True, largest=False, midpoints=False):
    """Mistake models: "score > t", no candidate above the largest score, the largest of the best thresholds,
    thresholds halfway between neighbouring scores."""
    s, y = scores.double(), labels.long()
    values = torch.unique(s)
    if midpoints:
        values = torch.cat([values[:1] - 1, (values[1:] + values[:-1]) / 2])
    candidates = torch.cat([values, torch.nextafter(s.max(), torch.tensor(torch.inf, dtype=s.dtype))[None]])
    if not all_negative:
        candidates = candidates[:-1]
    predicted = s[None] > candidates[:, None] if strict else s[None] >= candidates[:, None]
    accuracy = (predicted.long() == y[None]).double().mean(dim=1)
    best = accuracy.max()
    index = torch.nonzero(accuracy == best)[-1 if largest else 0, 0]
    return best, candidates[index]


def _threshold_cases() -> list[Case]:
    g = generator(80)
    cases = []
    scores, labels = torch.rand(20, generator=g), torch.randint(0, 2, (20,), generator=g)
    cases.append(Case("scores [20] uniform in [0, 1), labels at random (no signal)", (scores, labels)))
    labels = torch.tensor([0] * 6 + [1] * 6)
    scores = torch.cat([torch.rand(6, generator=g) * 0.4, 0.6 + torch.rand(6, generator=g) * 0.4])
    cases.append(Case("separable: 6 contradictions below 0.4, 6 paraphrases above 0.6", (scores, labels)))
    scores = torch.round(torch.rand(30, generator=g) * 5) / 5
    labels = (torch.rand(30, generator=g) < 0.3 + 0.5 * scores).long()
    cases.append(
        Case("scores [30] rounded to 0.2 (many ties across both classes), labels follow the score", (scores, labels))
    )
    scores, labels = torch.tensor([0.1, 0.5, 0.3, 0.9, 0.7]), torch.tensor([1, 0, 0, 0, 0])
    cases.append(
        Case(
            "scores [5], one paraphrase with the lowest score: best to call every pair a contradiction",
            (scores, labels),
        )
    )
    scores, labels = torch.tensor([0.2, 0.8, 0.8, 0.4]), torch.tensor([1, 1, 0, 0])
    cases.append(
        Case(
            "scores [4] with a tie between a paraphrase and a contradiction; several thresholds equally good",
            (scores, labels),
        )
    )
    cases.append(Case("a single pair, a paraphrase with score -0.3", (torch.tensor([-0.3]), torch.tensor([1]))))
    scores = randn(400, seed=81) * 0.1 + 0.8
    labels = (randn(400, seed=82) * 0.1 + scores > 0.8).long()
    cases.append(Case("scores [400] cosines near 0.8, labels correlated with them", (scores, labels)))
    return cases


def check_best_threshold(fn: Callable) -> CheckResult:
    """Grade exercise 8.1: ``fn(scores, labels)`` for scores [n] and 0/1 labels [n] must return (accuracy,
    threshold) as :func:`medst.eval.sentence.best_threshold_accuracy` does."""

    def variant(**options):
        return lambda scores, labels: _threshold_variant(scores, labels, **options)

    return run_check(
        Check(
            "8.1",
            "the best threshold",
            "best_threshold",
            _threshold_cases(),
            _threshold_reference,
            forbidden=(best_threshold_accuracy,),
            outputs=("accuracy", "threshold"),
            hint="candidates: every distinct score and the next float above the largest (predict no paraphrase "
            "at all); predict 1 iff score >= t; the best accuracy, and the smallest t that reaches it.",
            mistakes=[
                (
                    "the rule is 'paraphrase iff score >= t'; with > a pair scored exactly t is missed",
                    variant(strict=True),
                ),
                (
                    "a threshold above the largest score (call every pair a contradiction) is a candidate too",
                    variant(all_negative=False),
                ),
                ("among equally good thresholds the smallest wins, not the largest", variant(largest=True)),
                (
                    "the candidates are the observed scores themselves (and one just above the largest), not "
                    "midpoints between neighbours",
                    variant(midpoints=True),
                ),
            ],
        ),
        fn,
    )


# ----------------------------------------------------------------------------------------------------
# 8.2 Zero-shot classification over C classes
# ----------------------------------------------------------------------------------------------------
def _zero_shot_reference(images: Tensor, prompts: Tensor, prompt_mask: Tensor, temperature: float = 0.1) -> Tensor:
    """The library's prompt ensemble per class; for two classes the library's score is the log-odds."""
    v = F.normalize(images, dim=-1)
    classes = torch.stack([mean_embedding(F.normalize(p[m], dim=-1)) for p, m in zip(prompts, prompt_mask)])
    if len(classes) == 2:  # Method §8.3: score = <v, t_1> - <v, t_0>; p_1 = sigmoid(score / T)
        score = zero_shot_scores(v, classes[1], classes[0]) / temperature
        return torch.stack([F.logsigmoid(-score), F.logsigmoid(score)], dim=1)
    return F.log_softmax(v @ classes.T / temperature, dim=1)


def _zero_shot_variant(
    images,
    prompts,
    prompt_mask,
    temperature=0.1,
    *,
    renormalise=True,
    unit_prompts=True,
    use_mask=True,
    unit_images=True,
    over="classes",
    log=True,
):
    """Mistake models: the class means not re-normalised, raw prompts averaged, padding averaged in, raw image
    embeddings, softmax over images, probabilities instead of log-probabilities."""
    p = F.normalize(prompts, dim=-1) if unit_prompts else prompts
    mask = prompt_mask if use_mask else torch.ones_like(prompt_mask)
    w = mask.to(p.dtype)[..., None]
    mean = (p * w).sum(1) / w.sum(1)
    classes = F.normalize(mean, dim=-1) if renormalise else mean
    v = F.normalize(images, dim=-1) if unit_images else images
    logits = v @ classes.T / temperature
    dim = 1 if over == "classes" else 0
    return F.log_softmax(logits, dim=dim) if log else logits.softmax(dim=dim)


def _zero_shot_cases() -> list[Case]:
    plans = [  # (N, prompts per class, d, T, image scale)
        (5, (5, 5), 8, 0.1, 1.0),  # RSNA: two classes, five prompts each
        (4, (4, 2, 1), 6, 0.07, 1.0),
        (1, (1, 3, 2, 3), 5, 1.0, 1.0),  # one image, a class with one prompt
        (6, (3, 1), 8, 0.5, 10.0),  # two classes, padded, large image embeddings
        (3, (2, 2, 2), 4, 0.2, 0.3),
    ]
    cases = []
    for seed, (n, counts, dim, temperature, scale) in enumerate(plans):
        classes, width = len(counts), max(counts)
        images = randn(n, dim, seed=100 + seed, scale=scale)
        # prompts of very different lengths; the padding is random too, so that averaging it in shows
        prompts = randn(classes, width, dim, seed=110 + seed) * (
            0.2 + 3 * torch.rand(classes, width, 1, generator=generator(seed))
        )
        mask = torch.arange(width)[None] < torch.tensor(counts)[:, None]
        label = (
            f"images [N={n}, d={dim}] (scale {scale}), prompts [C={classes}, P={width}, d={dim}] with "
            f"{list(counts)} prompts per class{' (the rest padding)' if min(counts) < width else ''}, "
            f"temperature={temperature}"
        )
        cases.append(Case(label, (images, prompts, mask), {"temperature": temperature}, grad=(0, 1)))
    return cases


def check_zero_shot(fn: Callable) -> CheckResult:
    """Grade exercise 8.2: ``fn(images, prompts, prompt_mask, temperature=0.1)`` for images [N, d], prompts
    [C, P, d] and prompt_mask [C, P] must return [N, C] log-probabilities of the prompt-ensemble zero-shot
    classifier (:func:`medst.eval.embed.mean_embedding`, :func:`medst.eval.zeroshot.zero_shot_scores`)."""

    def variant(**options):
        return lambda images, prompts, prompt_mask, temperature=0.1: _zero_shot_variant(
            images, prompts, prompt_mask, temperature, **options
        )

    return run_check(
        Check(
            "8.2",
            "zero-shot over several classes",
            "zero_shot_log_probs",
            _zero_shot_cases(),
            _zero_shot_reference,
            forbidden=(mean_embedding, zero_shot_scores, prompt_embedding),
            hint="normalise every prompt, average the real ones of each class (prompt_mask), normalise the mean; "
            "normalise the images; logits = v @ t.T / T; log_softmax over the classes (dim 1).",
            mistakes=[
                (
                    "the mean of a class's unit prompt vectors is not re-normalised (a mean of unit vectors is "
                    "shorter than 1, and by how much differs from class to class)",
                    variant(renormalise=False),
                ),
                ("the prompts are averaged before each is normalised to a unit vector", variant(unit_prompts=False)),
                ("the padding prompts (prompt_mask False) are averaged in", variant(use_mask=False)),
                ("the image embeddings are not normalised: the similarity is the cosine", variant(unit_images=False)),
                ("the softmax runs over the images (dim 0); it is over the classes, per image", variant(over="images")),
                ("return log-probabilities (log_softmax), not probabilities", variant(log=False)),
                argument_ignored(_zero_shot_reference, "temperature", 0.1),
            ],
        ),
        fn,
    )


# ----------------------------------------------------------------------------------------------------
# 8.3 Recall@k with ties and shared reports
# ----------------------------------------------------------------------------------------------------
def _recall_reference(similarity: Tensor, report_ids: Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> Tensor:
    positives = (report_ids[:, None] == report_ids[None, :]).numpy()
    recalls = recall_at_k(similarity.numpy(), ks, positives=positives)
    return torch.tensor([recalls[k] for k in ks], dtype=torch.float64)


def _recall_variant(
    similarity, report_ids, ks=(1, 5, 10), *, ties="against", shared=True, best="best", transpose=False, below=False
):
    """Mistake models: ties counted for the model, only the study's own report correct, the own report's rank
    rather than the best correct one's, columns as queries, rank < k."""
    sim = similarity.double().T if transpose else similarity.double()
    n = len(sim)
    eye = torch.eye(n, dtype=torch.bool)
    pos = report_ids[:, None] == report_ids[None, :] if shared else eye
    target = sim.masked_fill(~pos, -torch.inf).amax(1, keepdim=True) if best == "best" else sim.diag()[:, None]
    ahead = (sim >= target) if ties == "against" else (sim > target)
    ranks = 1 + (ahead & ~pos).sum(1)
    return torch.stack([((ranks < k) if below else (ranks <= k)).double().mean() for k in ks])


def _recall_cases() -> list[Case]:
    cases = []
    sim = randn(8, 8, seed=120)
    cases.append(
        Case("similarity [8, 8] random, 8 different reports, ks=(1, 2, 5)", (sim, torch.arange(8)), {"ks": (1, 2, 5)})
    )
    ids = torch.tensor([0, 1, 0, 2, 3, 1, 0, 4, 5, 6])
    sim = torch.round(randn(10, 10, seed=121) * 2) / 2 + 0.5 * torch.eye(10)
    cases.append(
        Case(
            "similarity [10, 10] rounded to 0.5 (many ties), reports shared by studies 0/2/6 and 1/5, ks=(1, 3, 5)",
            (sim, ids),
            {"ks": (1, 3, 5)},
        )
    )
    cases.append(
        Case(
            "a collapsed model: every similarity 1, 6 different reports, ks=(1, 5, 6)",
            (torch.ones(6, 6), torch.arange(6)),
            {"ks": (1, 5, 6)},
        )
    )
    cases.append(
        Case(
            "a collapsed model: every similarity 1, studies 0-3 share one report, ks=(1, 2, 3)",
            (torch.ones(6, 6), torch.tensor([7, 7, 7, 7, 8, 9])),
            {"ks": (1, 2, 3)},
        )
    )
    cases.append(Case("a single study, ks=(1, 5)", (torch.tensor([[0.3]]), torch.tensor([0])), {"ks": (1, 5)}))
    ids = torch.randint(0, 25, (40,), generator=generator(122))
    v, t = F.normalize(randn(40, 6, seed=123), dim=-1), F.normalize(randn(40, 6, seed=124), dim=-1)
    sim = v @ (t + v).T
    cases.append(
        Case(
            "similarity [40, 40] of unit embeddings, 40 studies with 25 possible reports, ks=(1, 5, 10, 50)",
            (sim, ids),
            {"ks": (1, 5, 10, 50)},
        )
    )
    sim = randn(7, 7, seed=125)
    sim[torch.arange(7), torch.arange(7)] = sim.max(1).values  # the own report ties with the best other one
    cases.append(
        Case(
            "similarity [7, 7], each study's own report tied with its best wrong one, ks=(1, 2)",
            (sim, torch.arange(7)),
            {"ks": (1, 2)},
        )
    )
    return cases


def check_shared_report_recall(fn: Callable) -> CheckResult:
    """Grade exercise 8.3: ``fn(similarity, report_ids, ks=(1, 5, 10))`` for similarity [n, n] (image i,
    report j) and report ids [n] must return [len(ks)] image -> report recall@k as
    :func:`medst.eval.retrieval.recall_at_k` with identical reports as interchangeable answers."""

    def variant(**options):
        return lambda similarity, report_ids, ks=(1, 5, 10): _recall_variant(similarity, report_ids, ks, **options)

    return run_check(
        Check(
            "8.3",
            "recall@k with ties and shared reports",
            "shared_report_recall",
            _recall_cases(),
            _recall_reference,
            forbidden=(recall_at_k, retrieval_ranks),
            hint="correct[i, j] = report_ids[i] == report_ids[j]; best[i] = the highest similarity of a correct "
            "report; rank[i] = 1 + #(wrong reports j with sim[i, j] >= best[i]); recall@k = mean(rank <= k).",
            mistakes=[
                (
                    "ties count against the model: a wrong report scored exactly as high as the right one ranks "
                    "before it (>=, not >)",
                    variant(ties="for"),
                ),
                (
                    "studies with the same report_id have word-for-word the same report: any of them is a correct "
                    "answer, not only the study's own",
                    variant(shared=False),
                ),
                (
                    "the rank is that of the best-scoring correct report, which need not be the study's own",
                    variant(best="own"),
                ),
                ("the rows are the queries (image i); the columns are the reports", variant(transpose=True)),
                ("recall@k counts ranks 1 to k (rank <= k)", variant(below=True)),
            ],
        ),
        fn,
    )


# ----------------------------------------------------------------------------------------------------
# The exercise texts; the solutions are solutions/ch08_best_threshold.py, ch08_zero_shot.py, ch08_recall.py
# ----------------------------------------------------------------------------------------------------
BEST_THRESHOLD = r"""
The sentence-similarity `accuracy` calls a pair a paraphrase when its cosine is at least a threshold $t$,
and takes the best $t$ on the pairs themselves (Method §8.2). Write `best_threshold(scores, labels)` for
scores `[n]` and labels `[n]` (1 = paraphrase) that returns `(accuracy, threshold)` as tensors: the
candidates are every distinct score and the next float above the largest (`torch.nextafter`: call no pair a
paraphrase), the rule is "paraphrase iff score $\ge t$", and among equally good thresholds the smallest
wins. Then measure the optimism that `accuracy_cv` avoids: on scores with no signal at all
(`torch.rand(60)`, labels at random) your best accuracy is well above 0.5, on average over many draws.
"""

ZERO_SHOT = r"""
The RSNA task has two classes, and the chapter's score $s(x) = \langle v, \bar t_+\rangle -
\langle v, \bar t_-\rangle$ (Method §8.3). COVIDx has three, and a zero-shot classifier for $C$ classes
needs a probability per class. Write `zero_shot_log_probs(images, prompts, prompt_mask, temperature=0.1)`:
images `[N, d]` and prompt text embeddings `[C, P, d]`, neither normalised, with `prompt_mask` `[C, P]`
True where a class has a prompt (classes have different numbers of prompts; the rest is padding). Each
class's prompt ensemble is the re-normalised mean of its prompts as unit vectors; the logits are the cosine
similarities divided by the temperature, and the result is `[N, C]` log-probabilities (softmax over the
classes). The check compares values and gradients; for $C = 2$ it uses `zero_shot_scores`. With class 0
the negative prompts and class 1 the positive ones, show that $T \log(p_1 / p_0)$ is exactly the chapter's
score.
"""

RECALL = r"""
The retrieval table counts ties against the model, and studies whose reports are word for word the same as
interchangeable answers. Write `shared_report_recall(similarity, report_ids, ks=(1, 5, 10))`: similarity `[n, n]`
(image $i$ against report $j$), `report_ids` `[n]` (equal ids: identical report texts); return the
image $\to$ report recall@$k$ for each $k$ in `ks` as a tensor `[len(ks)]`. A study's rank is 1 plus
the number of *wrong* reports scoring at least as high as its *best* correct one. No loop over studies.
Then predict, before you compute it: what does a collapsed model (every embedding the same) score at
recall@5 on 100 studies with different reports, and on 100 studies that all share one report?
"""

CHAPTER = "08_evaluation"
EXERCISES = [
    Exercise(
        key="best-threshold",
        chapter=CHAPTER,
        number="8.1",
        title="the best threshold",
        function="best_threshold",
        prompt=BEST_THRESHOLD,
        solution="ch08_best_threshold",
        checker=check_best_threshold,
        level="easy",
    ),
    Exercise(
        key="zero-shot",
        chapter=CHAPTER,
        number="8.2",
        title="zero-shot over several classes",
        function="zero_shot_log_probs",
        prompt=ZERO_SHOT,
        solution="ch08_zero_shot",
        checker=check_zero_shot,
        level="hard",
    ),
    Exercise(
        key="recall-at-k",
        chapter=CHAPTER,
        number="8.3",
        title="recall@k with ties and shared reports",
        function="shared_report_recall",
        prompt=RECALL,
        solution="ch08_recall",
        checker=check_shared_report_recall,
        level="medium",
    ),
]
