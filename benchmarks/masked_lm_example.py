"""A tiny BERT-style masked LM, made here in minutes, used as a diffusion model through ``ddlm``.

The worked example of ddlm's transformers masked-LM loader (``ddlm.models.masked_lm``), on a CPU:

1. a byte-level BPE tokenizer (``tokenizers``; [PAD] [UNK] [CLS] [SEP] [MASK], ids 0-4, and
   ``[CLS] text [SEP]`` around every text) is trained on the first 90 % of
   tests/data/tinyshakespeare.txt and wrapped as a transformers ``PreTrainedTokenizerFast`` with its
   mask token set; the last 10 % (cut at a line start) is held out;
2. two masked LMs of the same shape (``ModernBertForMaskedLM``; ``--arch bert``: ``BertForMaskedLM``)
   are trained from the same initialisation on the same windows of --length tokens (between [CLS]
   and [SEP]) for the same number of AdamW steps, without dropout:
   - ``mlm15``: BERT's objective. 15 % of the tokens (each independently) are replaced by [MASK]
     (always [MASK]: no 80/10/10 random/kept split) and the cross-entropy of the masked tokens is
     averaged;
   - ``diffusion``: the masked-diffusion objective (MDLM, LLaDA). Each sequence draws a rate
     t ~ U(0, 1) (stratified over the batch: one uniform offset, the batch's rates spread evenly
     over [0, 1), as MDLM does), each token is masked with probability t, and the masked tokens' cross-entropy,
     weighted by 1/t, is summed and divided by the number of tokens. Its expectation is the
     absorbing process's continuous-time bound on -log p per token, so this model is trained on
     every mask rate and the bound is what it minimises;
3. each is saved with ``save_pretrained`` (model and tokenizer) under --out, loaded back with
   ``ddlm.DiffusionPipeline.from_pretrained`` and measured: the held-out bound on -log p (nats per
   token, bits per byte, one standard error; ``pipe.nll_bound`` on the held-out text in --pieces
   pieces, fixed seed), the cross-entropy -log p(x0_i | x_t) of the masked tokens of the held-out
   blocks at mask rates 15, 50 and 90 % (the same masks for both models; read through ddlm's
   score function at sigma_bar = ln 2, where the log-score is log p), two samples (``pipe.generate``)
   and an infill (``pipe.infill``).

Why ModernBERT by default: in a few CPU minutes a tiny ``BertForMaskedLM`` (post-norm layers, learned
absolute positions) does not leave the unigram plateau. Tried here for 200-800 steps (learning rates
1e-4 to 5e-3, windows of 32 to 128 tokens, 300 or 1024 tokens, both objectives): its held-out
cross-entropy stayed at that of the training tokens' frequencies (with the default settings and
``--arch bert``: 5.77-5.82 nats at every mask rate for both objectives, the frequencies 5.79),
so there is nothing to compare. ModernBERT (pre-norm layers,
rotary positions), a BERT-style encoder with the same [CLS] / [SEP] / [MASK] interface, starts using
the context within a couple of hundred steps. Both load through the same ddlm loader.

A model trained only at 15 % masking has rarely seen a sequence that is mostly masks: its
cross-entropy at 90 % shows it, and the bound, which integrates over every mask rate, charges it.

Writes benchmarks/results/masked_lm_example.{json,md}; the models and the held-out text (heldout.txt)
stay in --out for the CLI:

    python benchmarks/masked_lm_example.py --threads 1      # a few minutes on one CPU thread
    ddlm sample runs/masked_lm_example/diffusion --length 64 --num-samples 2 --seed 0
    ddlm infill runs/masked_lm_example/diffusion "What we will do, we do {{5}}." --num-samples 2 --seed 0
    ddlm eval runs/masked_lm_example/diffusion runs/masked_lm_example/heldout.txt --compare runs/masked_lm_example/mlm15 --num-t 16
    python benchmarks/masked_lm_example.py --report-only    # the table again from the JSON
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "data" / "tinyshakespeare.txt"
NAME = "masked_lm_example"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
OBJECTIVES = {
    "mlm15": "BERT: 15 % of tokens -> `[MASK]`, mean cross-entropy of the masked tokens",
    "diffusion": "masked diffusion: t ~ U(0,1) per sequence (stratified), tokens masked w.p. t, cross-entropy x 1/t per token",
}
MASK_RATES = (0.15, 0.5, 0.9)  # the table's columns
GRID = tuple(round(0.05 + 0.1 * k, 2) for k in range(10))  # midpoints of ten equal bins of [0, 1]
ARCHITECTURES = {"modernbert": "ModernBertForMaskedLM", "bert": "BertForMaskedLM"}
INFILL = "First Murderer:\nWhat we will do, we do {{5}}.\n\nSecond Murderer:\nAnd he that hath commanded is the king.\n"
HELD_OUT_FRACTION = 0.1


def build_parser():
    out = harness.parser(__doc__)
    out.add_argument("--out", type=Path, default=ROOT / "runs" / NAME, help="where the two model directories go (mlm15/, diffusion/)")
    out.add_argument("--corpus", type=Path, default=CORPUS, help="text file; its last 10 %% is held out")
    out.add_argument("--vocab-size", type=int, default=1024, help="tokenizer vocabulary, specials included")
    out.add_argument("--arch", choices=ARCHITECTURES, default="modernbert",
                     help="the masked LM: ModernBertForMaskedLM (default) or BertForMaskedLM (see the docstring)")
    out.add_argument("--hidden", type=int, default=128, help="hidden size (the feed-forward is 4x)")
    out.add_argument("--layers", type=int, default=2)
    out.add_argument("--heads", type=int, default=4)
    out.add_argument("--length", type=int, default=64, help="tokens per training window, between [CLS] and [SEP]")
    out.add_argument("--batch-size", type=int, default=32)
    out.add_argument("--steps", type=int, default=800, help="AdamW steps per model")
    out.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (linear warm-up over 5 %%, linear decay to 10 %%)")
    out.add_argument("--seed", type=int, default=0)
    out.add_argument("--num-t", type=int, default=16, help="t samples per block of the held-out bound")
    out.add_argument("--pieces", type=int, default=5, help="the held-out text is bounded in this many pieces (cut at line starts)")
    out.add_argument("--eval-chars", type=int, default=None, help="use only the first N held-out characters (default: all)")
    out.add_argument("--sample-length", type=int, default=64, help="tokens per sample")
    out.add_argument("--sample-steps", type=int, default=64, help="sampler steps of the samples and the infill")
    out.add_argument("--num-samples", type=int, default=2)
    out.add_argument("--infill", default=INFILL, help="the infill template ({{n}}: a gap of n tokens; default: held-out lines)")
    return out


def split_corpus(text: str) -> tuple[str, str]:
    """(training text, held-out text): the held-out part is the last 10 %, starting at a line start."""
    cut = text.find("\n", int(len(text) * (1 - HELD_OUT_FRACTION)))
    cut = len(text) if cut < 0 else cut + 1
    return text[:cut], text[cut:]


def cut_in_pieces(text: str, pieces: int) -> list[str]:
    """``text`` in ``pieces`` parts of about equal length, each cut just after a newline where one is near."""
    out, start = [], 0
    for index in range(1, pieces):
        target = len(text) * index // pieces
        end = text.find("\n", target)
        end = target if end < 0 else end + 1
        if end > start:
            out.append(text[start:end])
            start = end
    out.append(text[start:])
    return [piece for piece in out if piece.strip()]


def train_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE over ``text`` with BERT's specials (ids 0-4) that puts [CLS] ... [SEP] around a text,
    as a transformers fast tokenizer whose mask token is [MASK]."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", clean_up_tokenization_spaces=False)  # the model's config bounds the length


def masked_lm(args, tokenizer):
    """A freshly initialised masked LM of --arch (seeded by the caller) sized by the arguments, no dropout:
    (model, encoder, head), where encoder(ids) -> hidden states [B, L, H] and head(hidden [M, H]) -> logits [M, V]."""
    import torch
    import transformers

    shape = dict(vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
                 num_attention_heads=args.heads, intermediate_size=4 * args.hidden, max_position_embeddings=args.length + 2,
                 pad_token_id=tokenizer.pad_token_id)
    if args.arch == "bert":
        model = transformers.BertForMaskedLM(transformers.BertConfig(
            **shape, type_vocab_size=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
        return model, lambda ids: model.bert(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state, model.cls
    # ModernBERT: pre-norm layers with rotary positions; every layer attends globally (the windows are short).
    model = transformers.ModernBertForMaskedLM(transformers.ModernBertConfig(
        **shape, cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id, global_attn_every_n_layers=1, embedding_dropout=0.0, mlp_dropout=0.0,
        attention_dropout=0.0))
    return (model, lambda ids: model.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state,
            lambda hidden: model.decoder(model.head(hidden)))


def masked_loss(objective: str, logits, x0, masked, t):
    """The training loss of a batch: logits [M, V] of the M masked positions of x0 Long[B, L] (masked: Bool[B, L]),
    t Float[B] (the diffusion objective's rates)."""
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, x0[masked], reduction="none")
    if objective == "mlm15":
        return ce.sum() / max(int(masked.sum()), 1)
    weight = (1.0 / t)[:, None].expand_as(masked)[masked]
    return (ce * weight).sum() / masked.numel()


def train(objective: str, ids, tokenizer, args) -> tuple:
    """(masked LM trained on windows of ``ids`` with ``objective``, its record). Both objectives start from the
    same initialisation and read the same windows (their own generator); the masks come from a second generator."""
    import torch
    from tqdm import tqdm
    torch.manual_seed(args.seed)
    model, encoder, head = masked_lm(args, tokenizer)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    rate = lambda step: min(1.0, (step + 1) / warmup) * max(0.1, 1 - max(0, step - warmup) / max(1, args.steps - warmup))  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, rate)
    windows = torch.Generator().manual_seed(args.seed)
    masks = torch.Generator().manual_seed(args.seed + 1)
    offsets = torch.arange(args.length)
    cls = torch.full((args.batch_size, 1), tokenizer.cls_token_id)
    sep = torch.full((args.batch_size, 1), tokenizer.sep_token_id)
    losses, start = [], time.perf_counter()
    bar = tqdm(range(args.steps), desc=f"training {objective}", disable=args.quiet)
    for _ in bar:
        x0 = ids[torch.randint(0, len(ids) - args.length, (args.batch_size,), generator=windows)[:, None] + offsets]
        if objective == "mlm15":
            t = torch.full((args.batch_size,), 0.15)
        else:
            t = ((torch.rand(1, generator=masks) + torch.arange(args.batch_size) / args.batch_size) % 1).clamp_min(1e-3)
        masked = torch.rand(x0.shape, generator=masks) < t[:, None]
        inputs = torch.cat([cls, x0.masked_fill(masked, tokenizer.mask_token_id), sep], dim=1)
        loss = masked_loss(objective, head(encoder(inputs)[:, 1:-1][masked]), x0, masked, t)  # the head only where it is read
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    tenth = max(1, len(losses) // 10)
    curve = [sum(losses[i:i + tenth]) / len(losses[i:i + tenth]) for i in range(0, len(losses), tenth)]
    return model.eval(), {"train_seconds": time.perf_counter() - start, "final_train_loss": curve[-1], "loss_curve": curve,
                          "parameters": sum(p.numel() for p in model.parameters())}


def masked_cross_entropy(pipe, blocks, rate: float, seed: int, batch_size: int = 16) -> float:
    """Mean -log p(x0_i | x_t) over the masked tokens of ``blocks`` (Long[N, L]) with each token masked w.p. ``rate``
    (the masks fixed by ``seed``), read through ddlm's score function: at sigma_bar = ln 2, e^sigma_bar - 1 = 1 and
    the log-score of a masked position is log p(y | x_t) (specials have probability 0)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    masked = torch.rand(blocks.shape, generator=generator) < rate
    total, count = 0.0, 0
    for first in range(0, len(blocks), batch_size):
        x0, where = blocks[first:first + batch_size], masked[first:first + batch_size]
        if not where.any():
            continue
        x_t = x0.masked_fill(where, pipe.graph.num_tokens)  # ddlm's mask state: one past the vocabulary
        rows = pipe.score_fn(x_t, torch.full((len(x0),), math.log(2.0)), positions=where)
        total -= float(rows.double().gather(1, x0[where][:, None]).sum())
        count += int(where.sum())
    return total / count


def evaluate(directory: Path, held_out: str, args) -> dict:
    """Load a saved model directory through ddlm and measure it (module docstring, 3)."""
    import ddlm

    pipe = ddlm.DiffusionPipeline.from_pretrained(directory, progress=False)
    start = time.perf_counter()
    bounds = pipe.nll_bound(cut_in_pieces(held_out, args.pieces), num_t=args.num_t, seed=args.seed, progress=not args.quiet)
    nats, tokens, size = sum(b.bound for b in bounds), sum(b.num_tokens for b in bounds), sum(b.num_bytes for b in bounds)
    stderr = math.sqrt(sum(b.stderr ** 2 for b in bounds))
    bound_seconds = time.perf_counter() - start
    import torch

    ids = pipe.tokenizer(held_out, add_special_tokens=False)["input_ids"]
    usable = len(ids) // pipe.max_length * pipe.max_length
    blocks = torch.tensor(ids[:usable]).reshape(-1, pipe.max_length)
    cross_entropy = {str(rate): masked_cross_entropy(pipe, blocks, rate, args.seed + 2) for rate in sorted({*GRID, *MASK_RATES})}
    samples = pipe.generate(args.num_samples, args.sample_length, args.sample_steps, seed=args.seed, progress=False)
    infill = pipe.infill(args.infill, num_samples=1, steps=args.sample_steps, seed=args.seed, progress=False)[0]
    return {"family": pipe.model.family, "max_length": pipe.max_length, "bound_nats": nats, "bound_stderr_nats": stderr,
            "tokens": tokens, "bytes": size, "nats_per_token": nats / tokens, "nats_per_token_stderr": stderr / tokens,
            "bits_per_byte": nats / math.log(2) / size, "bits_per_byte_stderr": stderr / math.log(2) / size,
            "bound_seconds": bound_seconds, "ce_blocks": len(blocks), "cross_entropy": cross_entropy,
            "mean_cross_entropy": sum(cross_entropy[str(rate)] for rate in GRID) / len(GRID),
            "samples": samples, "infill": infill}


def unigram_cross_entropy(ids, held_out: str, tokenizer) -> float:
    """Nats per held-out token of the training tokens' frequencies (add-one over the non-special tokens): what a
    model that ignores every context can reach."""
    import torch

    counts = torch.bincount(ids, minlength=len(tokenizer)).double() + 1
    counts[tokenizer.all_special_ids] = 0
    held = torch.tensor(tokenizer(held_out, add_special_tokens=False)["input_ids"])
    return float(-(counts / counts.sum()).log()[held].mean())


def measure(args) -> dict:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    start = time.perf_counter()
    training_text, held_out = split_corpus(Path(args.corpus).read_text(encoding="utf-8"))
    if args.eval_chars:
        held_out = held_out[:args.eval_chars]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "heldout.txt").write_text(held_out, encoding="utf-8")  # for ddlm eval
    tokenizer = train_tokenizer(training_text, args.vocab_size)
    ids = torch.tensor(tokenizer(training_text, add_special_tokens=False)["input_ids"])
    corpus = Path(args.corpus).resolve()
    record = {"corpus": str(corpus.relative_to(ROOT) if corpus.is_relative_to(ROOT) else corpus),
              "training_chars": len(training_text), "held_out_chars": len(held_out), "training_tokens": len(ids),
              "vocab_size": len(tokenizer), "unigram_cross_entropy": unigram_cross_entropy(ids, held_out, tokenizer), "models": {}}
    for objective in OBJECTIVES:
        model, trained = train(objective, ids, tokenizer, args)
        directory = Path(args.out) / objective
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        record["models"][objective] = {"objective": OBJECTIVES[objective], "steps": args.steps, "directory": str(directory),
                                       **trained, **evaluate(directory, held_out, args)}
    record["total_seconds"] = time.perf_counter() - start
    return record


def fenced(text: str) -> str:
    return "```text\n" + text.replace("```", "'''") + "\n```"


def comparison(models: dict, unigram: float) -> list[str]:
    """The measured contrast of the two models, in words (nothing if either is missing)."""
    if set(models) != set(OBJECTIVES):
        return []
    bert, diffusion = models["mlm15"], models["diffusion"]
    ce = lambda m, rate: m["cross_entropy"][str(rate)]  # noqa: E731
    return ["", f"Measured: at 15 % masking the mlm15 model's cross-entropy is {ce(bert, 0.15):.3f} nats/token against the "
            f"diffusion model's {ce(diffusion, 0.15):.3f}; at 90 % masking {ce(bert, 0.9):.3f} against {ce(diffusion, 0.9):.3f}, "
            f"and at 95 % {ce(bert, 0.95):.3f} against {ce(diffusion, 0.95):.3f} (the training tokens' frequencies alone: "
            f"{unigram:.3f}). "
            f"Held-out bound: mlm15 {bert['nats_per_token']:.3f} +- {bert['nats_per_token_stderr']:.3f}, diffusion "
            f"{diffusion['nats_per_token']:.3f} +- {diffusion['nats_per_token_stderr']:.3f} nats/token "
            f"({bert['bits_per_byte']:.3f} and {diffusion['bits_per_byte']:.3f} bits/byte)."]


def markdown(record: dict) -> str:
    settings = record["settings"]
    rates = [f"CE at {round(float(rate) * 100)} % masked" for rate in MASK_RATES]
    lines = [
        "# A tiny BERT-style masked LM as a diffusion model",
        "",
        f"{record['machine']}; {record['total_seconds']:.0f} s in all (tokenizer, training both, evaluation).",
        "",
        f"Corpus {record['corpus']}: {record['training_chars']:,} training characters ({record['training_tokens']:,} tokens), "
        f"the last {record['held_out_chars']:,} held out. Byte-level BPE of {record['vocab_size']} tokens "
        "(`[PAD] [UNK] [CLS] [SEP] [MASK]` + bytes + merges). Two "
        f"{ARCHITECTURES[settings['arch']]} of the same shape "
        f"(hidden {settings['hidden']}, {settings['layers']} layers, {settings['heads']} heads, "
        f"{next(iter(record['models'].values()))['parameters']:,} parameters), windows of {settings['length']} tokens + "
        f"`[CLS]`/`[SEP]`, batch {settings['batch_size']}, AdamW at peak lr {settings['lr']}, no dropout, seed {settings['seed']}; "
        "both loaded back with `ddlm.DiffusionPipeline.from_pretrained`.",
        "",
        "| model | training objective | steps | train s | final train loss | held-out bound, nats/token (+- SE) | bits/byte (+- SE) | "
        + " | ".join(rates) + " | mean CE, rates 5-95 % |",
        "|---|---|---:|---:|---:|---:|---:|" + "---:|" * (len(rates) + 1),
    ]
    for name, m in record["models"].items():
        ce = [f"{m['cross_entropy'][str(rate)]:.3f}" for rate in MASK_RATES]
        lines.append(f"| {name} | {m['objective']} | {m['steps']} | {m['train_seconds']:.0f} | {m['final_train_loss']:.3f} | "
                     f"{m['nats_per_token']:.3f} +- {m['nats_per_token_stderr']:.3f} | "
                     f"{m['bits_per_byte']:.3f} +- {m['bits_per_byte_stderr']:.3f} | " + " | ".join(ce)
                     + f" | {m['mean_cross_entropy']:.3f} |")
    first = next(iter(record["models"].values()))
    lines += [
        "",
        f"Held-out bound: `pipe.nll_bound` of the held-out text in {settings['pieces']} pieces ({first['tokens']:,} tokens, "
        f"{first['bytes']:,} bytes, blocks of {first['max_length']} tokens, {settings['num_t']} t per block, seed "
        f"{settings['seed']}); an upper bound on -log p, summed over the pieces, with one standard error. "
        f"A uniform guess over the {record['vocab_size'] - len(SPECIALS)} drawable tokens costs "
        f"{math.log(record['vocab_size'] - len(SPECIALS)):.3f} nats/token; the training tokens' frequencies, which ignore "
        f"every context, {record['unigram_cross_entropy']:.3f} nats per held-out token. CE at r % masked: mean -log p(x0_i | x_t) of the "
        f"masked tokens of the {first['ce_blocks']} full held-out blocks, each token masked with probability r (the same "
        "masks for both models), as ddlm reads the model (specials have probability 0). Mean CE: the average of the CE at "
        f"the ten rates {', '.join(f'{round(r * 100)}' for r in GRID)} %. With masking probability t the 1/t weight of the "
        "bound cancels the t L masked tokens of a block of L, so the bound per token is the integral over t in [0, 1] of "
        "CE at rate t (plus a negligible prior term): the mean CE is its midpoint-rule estimate on the full held-out "
        "blocks (not a bound; no error bar). The mlm15 model's training loss is its training CE at 15 %; the "
        "diffusion model's is an estimate of its bound per token on the training windows.",
        "",
        "A BERT-style model trained with BERT's 15 % masking is a poor model of high mask rates: it has rarely seen a mostly masked "
        "sequence. The bound integrates the model's predictions over every mask rate (the absorbing process runs from "
        "nothing masked to everything masked), so it charges the model for the rates it was not trained on.",
    ]
    lines += comparison(record["models"], record["unigram_cross_entropy"])
    for name, m in record["models"].items():
        lines += ["", f"## {name}", "",
                  f"{len(m['samples'])} samples (`pipe.generate({len(m['samples'])}, {settings['sample_length']}, "
                  f"{settings['sample_steps']}, seed={settings['seed']})`, analytic sampler):", ""]
        for sample in m["samples"]:
            lines += [fenced(sample), ""]
        lines += [f"Infill (`pipe.infill(template, steps={settings['sample_steps']}, seed={settings['seed']})`, "
                  "each `{{n}}` a gap of n tokens, the given text kept):", "", fenced(m["infill"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = harness.parse(build_parser(), argv)
    return harness.report(NAME, args, lambda: measure(args), markdown)


if __name__ == "__main__":
    main()
