"""Classifier-free guidance on text: how often a guided sample reads as its label, against the scale gamma.

Two labelled sources of --data-dir (benchmarks/corpora.py), split 90 % / 10 % (training / held-out): ``tinyshakespeare.txt``
(label 0) and ``wikitext2.valid.txt`` (label 1, split at an article boundary as benchmarks/quality.py
does). One byte-level BPE of 1024 tokens is trained on both training parts. Two models of the
quality.py kind (128 x 4 blocks, its batch, schedule and learning rate) are trained with recipes:

- "conditional": an absorbing diffusion model with ``model.num_classes: 2`` on
  ``data.sources: [{source: shakespeare, label: 0}, {source: wikitext, label: 1}]`` and the default
  label dropout (0.1): the conditional and (null-class) unconditional scores in one network;
- "ar": an unconditional AR model on the same two sources (no labels), the reference of the
  generative perplexity.

The judge is a multinomial naive-Bayes classifier over token unigrams and bigrams (add-one
smoothing, equal priors), fitted on the training parts and checked on 128-token blocks of the
held-out parts (its accuracy is reported). For each gamma, ``--num-samples`` sequences of
``--length`` tokens are drawn per label with ``ddlm.guidance.guided_model_score`` (gamma = 0: the
null class, i.e. the unconditional model; 1: the conditional model; > 1: guided) and the analytic
predictor; the table reports the rate at which the samples are classified as their label (± 2 SE),
the mean per-sample unigram entropy and the generative perplexity under the AR model (± 2 SE),
with the held-out text as reference.

    python benchmarks/guidance.py --threads 1   # trains what runs/guidance lacks, then samples
    python benchmarks/guidance.py --quick       # smoke run of the whole pipeline (runs/guidance-quick); results/ untouched
    python benchmarks/guidance.py --report-only # rewrite guidance.md from guidance.json (no runs)
"""

from __future__ import annotations

import collections
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import quality  # noqa: E402  (data split, recipe settings)
from corpora import add_data_dir_argument, corpus  # noqa: E402

from ddlm.core.losses import ar_nll  # noqa: E402
from ddlm.evaluation import load_model  # noqa: E402
from ddlm.evaluation.sample_quality import unigram_entropies  # noqa: E402
from ddlm.sampling import sample  # noqa: E402
from ddlm.sampling.guidance import guided_model_score  # noqa: E402
from ddlm.text.tokenization import train_byte_bpe  # noqa: E402
from ddlm.training.loop import FINAL, latest_checkpoint, train  # noqa: E402
from ddlm.training.recipes import recipe_from_dict  # noqa: E402

SOURCES = {0: "tinyshakespeare.txt", 1: "wikitext2.valid.txt"}
NAMES = {0: "Shakespeare", 1: "WikiText"}


def split_source(data_dir: Path | None, label: int, fraction: float = 0.9) -> tuple[list[str], str]:
    """(training documents, held-out text) of a source: WikiText at the article boundary nearest ``fraction``
    (quality.py's split), Shakespeare at the blank line nearest it (one training document)."""
    text = corpus(data_dir, SOURCES[label]).read_text(encoding="utf-8")
    if label == 1:
        return quality.split_articles(text, fraction)
    cut = text.rfind("\n\n", 0, int(fraction * len(text))) + 2
    return [text[:cut]], text[cut:]


def prepare(work: Path, data_dir: Path | None) -> dict[int, str]:
    """Write each source's training documents (jsonl) and held-out text, and the shared tokenizer; -> label -> held-out text."""
    work.mkdir(parents=True, exist_ok=True)
    heldout, documents = {}, []
    for label in SOURCES:
        docs, heldout[label] = split_source(data_dir, label)
        (work / f"train{label}.jsonl").write_text("".join(json.dumps({"text": doc}) + "\n" for doc in docs))
        documents += docs
    if not (work / "tokenizer" / "tokenizer.json").is_file():
        train_byte_bpe(documents, 1024).save_pretrained(work / "tokenizer")
    return heldout


def recipe(name: str, work: Path, args) -> dict:
    """quality.py's recipe for the absorbing (conditional) or AR model, on the two labelled sources."""
    values = quality.recipe("absorbing" if name == "conditional" else "ar", work, args)
    labelled = name == "conditional"
    values["data"] = {"sources": [{"source": str(work / f"train{label}.jsonl"), **({"label": label} if labelled else {})}
                                  for label in SOURCES],
                      "block_size": args.block_size, "validation_fraction": 0.02, "cache_dir": str(work / "cache")}
    if labelled:
        values["model"]["num_classes"] = len(SOURCES)
    values["train"].update(steps=args.steps if labelled else args.ar_steps, output_dir=str(work / name), trackers=["none"])
    steps = values["train"]["steps"]
    values["train"].update(warmup_steps=max(1, steps // 15), eval_every=max(1, steps // 5), save_every=max(1, steps // 4),
                           sample_every=steps)
    return values


def ensure_models(work: Path, args) -> dict[str, float]:
    """Train (or resume) the models the work dir lacks; -> name -> training seconds."""
    seconds = {}
    for name in ("conditional", "ar"):
        run = work / name
        if not (run / FINAL / "config.json").is_file():
            start = time.perf_counter()
            resume = latest_checkpoint(run) is not None
            train(recipe_from_dict(recipe(name, work, args)), resume=resume, progress=not args.quiet)
            (run / "seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - start, "resumed": resume}))
        seconds[name] = json.loads((run / "seconds.json").read_text())["seconds"]
    return seconds


class NaiveBayes:
    """Multinomial naive Bayes over token unigrams and bigrams with add-one smoothing and equal class priors."""

    def __init__(self, texts: dict[int, list[int]], vocab_size: int):
        self.log_probs = {}
        for label, ids in texts.items():
            self.log_probs[label] = (self._table(collections.Counter(ids), vocab_size),
                                     self._table(collections.Counter(zip(ids, ids[1:])), vocab_size ** 2))

    @staticmethod
    def _table(counts: collections.Counter, size: int) -> tuple[dict, float]:
        total = sum(counts.values()) + size
        return {key: math.log((n + 1) / total) for key, n in counts.items()}, math.log(1 / total)

    def log_likelihoods(self, ids: list[int]) -> dict[int, float]:
        """label -> log p(unigrams | label) + log p(bigrams | label)."""
        out = {}
        for label, ((uni, uni_unseen), (bi, bi_unseen)) in self.log_probs.items():
            out[label] = sum(uni.get(t, uni_unseen) for t in ids) + sum(bi.get(p, bi_unseen) for p in zip(ids, ids[1:]))
        return out

    def log_odds(self, ids: list[int], label: int) -> float:
        """Evidence for ``label`` against the best other class, nats per token (> 0: classified as ``label``)."""
        scores = self.log_likelihoods(ids)
        return (scores[label] - max(v for k, v in scores.items() if k != label)) / len(ids)


def judged(judge: NaiveBayes, samples: list[list[int]], label: int) -> dict:
    """The rate of samples classified as ``label`` (with its SE) and their mean log-odds per token (with its SE)."""
    odds = torch.tensor([judge.log_odds(ids, label) for ids in samples], dtype=torch.float64)
    return {**rate((odds > 0).tolist()), "log_odds": float(odds.mean()), "log_odds_se": float(odds.std() / math.sqrt(len(samples)))}


def rate(hits: list[bool]) -> dict:
    """A proportion with its standard error."""
    p = sum(hits) / len(hits)
    return {"rate": p, "se": math.sqrt(max(p * (1 - p), 1e-12) / len(hits)), "n": len(hits)}


def quality_of(reference, ids: torch.Tensor, eos: int) -> dict:
    """Generative perplexity under the AR model (exp of the mean per-sample NLL per token, with the SE of that
    mean) and the mean per-sample unigram entropy (with its SE)."""
    nll = torch.cat([ar_nll(reference, chunk, context=eos) for chunk in ids.split(64)]) / ids.shape[1]
    entropy = unigram_entropies(ids)
    n = ids.shape[0]
    return {"nll": float(nll.mean()), "nll_se": float(nll.std() / math.sqrt(n)), "gen_ppl": math.exp(float(nll.mean())),
            "entropy": float(entropy.mean()), "entropy_se": float(entropy.std() / math.sqrt(n))}


def guided_samples(model, label: int, scale: float, args) -> torch.Tensor:
    """Long[num_samples, length] drawn with classifier-free guidance towards ``label`` at ``scale``."""
    score_fn = guided_model_score(model, label, scale)
    generator = torch.Generator().manual_seed(1000 * label + round(100 * scale))
    return sample(score_fn, model.graph, model.noise, (args.num_samples, args.length), args.sample_steps,
                  predictor="analytic", generator=generator)


def run(work: Path, heldout: dict[int, str], args) -> dict:
    conditional, tokenizer = load_model(work / "conditional" / FINAL)
    reference, _ = load_model(work / "ar" / FINAL)
    eos = tokenizer.eos_token_id
    training = {label: [t for doc in (json.loads(line)["text"] for line in (work / f"train{label}.jsonl").read_text().splitlines())
                        for t in tokenizer(doc)["input_ids"] + [eos]] for label in SOURCES}
    judge = NaiveBayes(training, len(tokenizer))
    out = {"classifier": {}, "heldout": {}, "rows": []}
    for label, text in heldout.items():
        ids = tokenizer(text)["input_ids"]
        blocks = [ids[i:i + args.length] for i in range(0, len(ids) - args.length + 1, args.length)]
        out["classifier"][label] = judged(judge, blocks, label)
        out["heldout"][label] = quality_of(reference, torch.tensor(blocks[:args.num_samples]), eos)
    for scale in args.scales:
        row = {"scale": scale, "labels": {}}
        start = time.perf_counter()
        for label in SOURCES:
            ids = guided_samples(conditional, label, scale, args)
            row["labels"][label] = {**judged(judge, ids.tolist(), label), **quality_of(reference, ids, eos),
                                    "example": tokenizer.decode(ids[0][:48])}
        row["seconds"] = time.perf_counter() - start
        hits = [row["labels"][label]["rate"] for label in SOURCES]
        row["mean_rate"] = sum(hits) / len(hits)
        row["mean_rate_se"] = math.sqrt(sum(row["labels"][label]["se"] ** 2 for label in SOURCES)) / len(SOURCES)
        out["rows"].append(row)
        if not args.quiet:
            print(f"gamma {scale:4g}: " + "  ".join(f"{NAMES[label]} {row['labels'][label]['rate']:.3f} "
                  f"log-odds {row['labels'][label]['log_odds']:.3f} "
                  f"(gen ppl {row['labels'][label]['gen_ppl']:.0f}, entropy {row['labels'][label]['entropy']:.2f})" for label in SOURCES)
                  + f"  {row['seconds']:.0f} s", flush=True)
    return out


def markdown(out: dict) -> str:
    """guidance.md from a guidance.json record (its labels are strings there)."""
    args, seconds, params = harness.recorded(out), out["seconds"], out["params"]
    acc = out["classifier"]["0"], out["classifier"]["1"]
    lines = [
        f"A class-conditional absorbing model of {params / 1e6:.2f}M parameters (128 × 4 blocks, `model.num_classes: 2`, label dropout 0.1) "
        f"trained {args.steps} steps × 32 × {args.block_size} tokens on two labelled sources ({seconds['conditional'] / 60:.1f} min): "
        "the first 90 % of `tinyshakespeare.txt` (label 0) and of `wikitext2.valid.txt` (label 1); byte-level BPE of 1024 tokens. "
        f"{args.num_samples} samples of {args.length} tokens per label and γ, analytic predictor, {args.sample_steps} steps, "
        "classifier-free guidance `ddlm.guidance.guided_model_score` (γ = 0: the null class, i.e. unconditional; 1: conditional). "
        f"Judge: naive Bayes over token unigrams and bigrams fitted on the training parts; on held-out {args.length}-token blocks it is right "
        f"{acc[0]['rate']:.1%} (Shakespeare, {acc[0]['n']} blocks) and {acc[1]['rate']:.1%} (WikiText, {acc[1]['n']} blocks) of the time. "
        f"Generative perplexity under an unconditional AR model of the same size trained {args.ar_steps} steps on both sources. "
        f"Machine: {out['machine']}. Command: `python benchmarks/guidance.py --threads 1`.",
        "",
        "Columns per label (Shakespeare / WikiText): the rate classified as the label, the judge's mean log-odds for the label "
        "against the other class in nats per token (± 2 SE; it keeps measuring once the rate saturates), the generative "
        "perplexity and the mean per-sample unigram entropy (nats).",
        "",
        "| γ | classified as label | mean rate ± 2 SE | log-odds / token | gen. ppl | entropy |",
        "|---|---|---|---|---|---|",
    ]
    held = [out["heldout"][str(label)] for label in SOURCES]
    def cells(a: dict, b: dict, mean: str) -> str:
        return (f"{a['rate']:.3f} / {b['rate']:.3f} | {mean} | {a['log_odds']:.3f} ± {2 * a['log_odds_se']:.3f} / "
                f"{b['log_odds']:.3f} ± {2 * b['log_odds_se']:.3f} | {a['gen_ppl']:.0f} / {b['gen_ppl']:.0f} | {a['entropy']:.3f} / {b['entropy']:.3f} |")

    lines.append("| held-out text | " + cells({**acc[0], **held[0]}, {**acc[1], **held[1]}, f"{(acc[0]['rate'] + acc[1]['rate']) / 2:.3f}"))
    for row in out["rows"]:
        lines.append(f"| {row['scale']:g} | " + cells(row["labels"]["0"], row["labels"]["1"],
                                                      f"{row['mean_rate']:.3f} ± {2 * row['mean_rate_se']:.3f}"))
    lines += ["", "First 48 tokens of the first sample per label and γ:", ""]
    for row in out["rows"]:
        for label in SOURCES:
            text = row["labels"][str(label)]["example"].replace("\n", " ⏎ ").replace("`", "'")
            lines.append(f"- γ = {row['scale']:g}, {NAMES[label]}: `{text}`")
    return "\n".join(lines) + "\n"


def measure(args) -> dict:
    """Train what the work dir lacks, then sample and judge: the guidance.json record's numbers."""
    heldout = prepare(args.work, args.data_dir)
    seconds = ensure_models(args.work, args)
    out = run(args.work, heldout, args)
    params = sum(p.numel() for p in load_model(args.work / "conditional" / FINAL)[0].parameters())
    return {"seconds": seconds, **out, "params": params}


def parse_args(argv: list[str] | None = None):
    parser = harness.parser(__doc__)
    parser.add_argument("--work", type=Path, default=quality.ROOT / "runs" / "guidance", help="runs, tokenizer and split text")
    add_data_dir_argument(parser)
    parser.add_argument("--steps", type=int, default=400, help="training steps of the conditional model")
    parser.add_argument("--ar-steps", type=int, default=150, help="training steps of the AR reference model")
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--eval-blocks", type=int, default=32)
    parser.add_argument("--num-samples", type=int, default=64, help="samples per label and scale")
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--sample-steps", type=int, default=32)
    parser.add_argument("--scales", type=float, nargs="+", default=[0, 1, 1.5, 2, 3])
    parser.add_argument("--quick", action="store_true", help="tiny settings in runs/guidance-quick, which also gets the results; "
                        "results/ untouched")
    args = harness.parse(parser, argv)
    if args.quick:
        args.work = args.results = args.work.with_name("guidance-quick")
        args.steps, args.ar_steps, args.eval_blocks = 4, 4, 2
        args.num_samples, args.length, args.sample_steps, args.block_size = 4, 16, 4, 16
    return args


def main() -> None:
    args = parse_args()
    harness.report("guidance", args, lambda: measure(args), markdown)


if __name__ == "__main__":
    main()
