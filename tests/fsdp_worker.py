"""Run by tests/test_train.py on two CPU processes (``torch.distributed.run``, gloo): the trainer's EMA,
checkpoint (model, optimizer, EMA) and export with FSDP2-sharded parameters against an unsharded replica
trained on the same batches.

accelerate enables FSDP on accelerators only, so this drives ``fully_shard`` directly and hands ``export``
an object with the accelerator methods it calls, gathering whole state dicts the way accelerate does
under FSDP2.
"""

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from ddlm.checkpoints import load_checkpoint, save_checkpoint
from ddlm.model import DDLMConfig, DDLMForDiffusion
from ddlm.recipes import TrainConfig
from ddlm.tokenization import train_byte_bpe
from ddlm.train import export, whole
from ddlm.training.state import EMA, load_training_state, lr_lambda, training_state


class FSDP2Accelerator:
    """The accelerator methods ``export`` calls, as accelerate implements them under FSDP2."""

    is_main_process = property(lambda self: dist.get_rank() == 0)

    def get_state_dict(self, model):
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def unwrap_model(self, model):
        return model

    def wait_for_everyone(self):
        dist.barrier()


def shard(model: DDLMForDiffusion) -> DDLMForDiffusion:
    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def check_checkpoint_round_trip(out: Path, replica, sharded, optimizers, emas) -> None:
    """A checkpoint of the sharded run holds whole tensors equal to the replica's, and loads back into a
    freshly sharded model, optimizer and EMA shard for shard."""
    train_cfg = TrainConfig(lr=1e-2, weight_decay=0.01, warmup_steps=0, decay="constant")
    schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(train_cfg)) for name, opt in optimizers.items()}
    state = training_state(sharded, optimizers["sharded"], schedulers["sharded"], emas["sharded"], None)
    recipe = {"train": {"steps": 4, "global_batch_size": 2}, "data": {"block_size": 8}}  # what load_checkpoint checks the step against
    meta = {"step": 4, "tokens": 4 * 2 * 8, "recipe": recipe, "model": {}}
    path = save_checkpoint(out / "run", 4, state, meta, write=dist.get_rank() == 0, keep=1)
    dist.barrier()
    saved, _ = load_checkpoint(path)
    for name, value in replica.state_dict().items():
        torch.testing.assert_close(saved["model"][name], value, rtol=1e-6, atol=1e-7)
    reference = optimizers["replica"].state_dict()["state"]
    for index, values in reference.items():
        for key, value in values.items():
            torch.testing.assert_close(saved["optimizer"]["state"][index][key], value, rtol=1e-5, atol=1e-8)

    fresh = shard(DDLMForDiffusion(replica.config))
    optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train_cfg))
    ema = EMA(fresh.parameters(), 0.9)
    load_training_state(saved, fresh, optimizer, scheduler, ema, None, train_cfg)
    for a, b in zip(fresh.parameters(), sharded.parameters()):
        assert isinstance(a, DTensor) and a.placements == b.placements and torch.equal(a.to_local(), b.to_local())
    for a, b in zip(ema.shadow, emas["sharded"].shadow):
        assert torch.equal(a.to_local(), b.to_local())
    mine, theirs = optimizer.state_dict()["state"], optimizers["sharded"].state_dict()["state"]
    for index, values in theirs.items():
        for key, value in values.items():
            value, loaded = (v.to_local() if isinstance(v, DTensor) else v for v in (value, mine[index][key]))
            assert torch.equal(loaded, value), (index, key)
    assert scheduler.last_epoch == schedulers["sharded"].last_epoch


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    tokenizer = train_byte_bpe(["an example corpus for the tokenizer"] * 4, 300)
    torch.manual_seed(0)
    replica = DDLMForDiffusion(DDLMConfig.from_preset("tiny", vocab_size=len(tokenizer), dropout=0.0))
    sharded = shard(copy.deepcopy(replica))
    assert all(isinstance(p, DTensor) for p in sharded.parameters())
    assert any(p.to_local().numel() < p.numel() for p in sharded.parameters()), "nothing was sharded"

    models = {"replica": replica, "sharded": sharded}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-2) for name, m in models.items()}
    emas = {name: EMA(m.parameters(), 0.9) for name, m in models.items()}
    for step in range(4):  # the same batch on both ranks: the sharded gradient is the replica's
        generator = torch.Generator().manual_seed(step)
        x = torch.randint(0, replica.config.vocab_size, (2, 16), generator=generator)
        sigma_bar = torch.rand(2, generator=generator)
        for name, model in models.items():
            model(x, sigma_bar).square().mean().backward()
            optimizers[name].step()
            optimizers[name].zero_grad()
            emas[name].update()

    saved = emas["sharded"].state_dict()  # a collective: whole tensors on every rank
    for mine, reference, p in zip(saved["shadow"], emas["replica"].shadow, replica.parameters()):
        assert mine.shape == p.shape, (mine.shape, p.shape)
        torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-7)
    restored = EMA(sharded.parameters(), 0.9)
    restored.load_state_dict(saved)
    assert restored.updates == 4
    for a, b in zip(restored.shadow, emas["sharded"].shadow):
        assert isinstance(a, DTensor) and a.placements == b.placements
        assert torch.equal(a.to_local(), b.to_local())

    check_checkpoint_round_trip(out, replica, sharded, optimizers, emas)
    final = export(FSDP2Accelerator(), sharded, emas["sharded"], tokenizer, out)
    for p, q in zip(sharded.parameters(), replica.parameters()):  # the raw weights are back after the export
        torch.testing.assert_close(whole(p.detach()), q.detach(), rtol=1e-6, atol=1e-7)
    if dist.get_rank() == 0:
        loaded = DDLMForDiffusion.from_pretrained(final).eval()
        with emas["replica"].applied():
            replica.eval()
            x = torch.randint(0, replica.config.vocab_size, (3, 16), generator=torch.Generator().manual_seed(9))
            sigma_bar = torch.tensor([0.1, 1.0, 5.0])
            torch.testing.assert_close(loaded(x, sigma_bar), replica(x, sigma_bar), rtol=1e-5, atol=1e-5)
        (out / "ok").write_text("ok")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
