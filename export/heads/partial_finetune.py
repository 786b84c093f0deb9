"""Adapting only the top layers of MiniLM, with the frozen lower layers run once per text.

With LoRA on the top ``k`` of 6 layers, nothing below layer ``6 - k`` changes during training, so
its output (the hidden states entering the first tuned layer) is computed once and reused every
epoch. Each training step then runs forward and backward through ``k`` layers instead of 6: on this
machine's single free core that is what brings review fine-tuning from hours to minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from export.heads.wordpieces import length_sorted_batches, pad


def layer_attention_mask(transformer: torch.nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor):
    """The mask argument a BertLayer expects, built the way BertModel.forward builds it."""
    try:  # transformers >= 5
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=transformer.config, inputs_embeds=hidden, attention_mask=attention_mask)
    except ImportError:  # transformers 4.x: additive float mask [batch, 1, 1, sequence]
        return transformer.get_extended_attention_mask(attention_mask, attention_mask.shape)


def run_layers(
    transformer: torch.nn.Module, layers: Sequence[torch.nn.Module], hidden: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    mask = layer_attention_mask(transformer, hidden, attention_mask)
    for layer in layers:
        out = layer(hidden, attention_mask=mask)
        hidden = out[0] if isinstance(out, tuple) else out  # 4.x layers return tuples
    return hidden


def frozen_prefix(
    transformer: torch.nn.Module, token_ids: Sequence[Sequence[int]], first_tuned_layer: int, batch_size: int = 32
) -> list[torch.Tensor]:
    """Per text, the ``[tokens, 384]`` hidden states entering layer ``first_tuned_layer``."""
    states: list[torch.Tensor] = [torch.empty(0)] * len(token_ids)
    transformer.eval()
    with torch.inference_mode():
        for batch in length_sorted_batches(token_ids, batch_size):
            ids, mask = pad([token_ids[i] for i in batch])
            hidden = transformer.embeddings(input_ids=ids)
            hidden = run_layers(transformer, transformer.encoder.layer[:first_tuned_layer], hidden, mask)
            for row, i in enumerate(batch):
                states[i] = hidden[row, : len(token_ids[i])].clone()
    return states


def mean_pooled(
    transformer: torch.nn.Module,
    first_tuned_layer: int,
    prefix: Sequence[torch.Tensor],
    batch: Sequence[int],
) -> torch.Tensor:
    """Unit-norm mean-pooled embeddings of ``batch`` from cached prefix states through the top layers.

    Equals :class:`export.encoder.MeanPooledEncoder` on the full model (checked at training start).
    """
    lengths = torch.tensor([len(prefix[i]) for i in batch])
    hidden = torch.nn.utils.rnn.pad_sequence([prefix[i] for i in batch], batch_first=True)
    mask = (torch.arange(hidden.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.int64)
    hidden = run_layers(transformer, transformer.encoder.layer[first_tuned_layer:], hidden, mask)
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


@dataclass(frozen=True)
class AdapterConfig:
    """What every adapted head shares: LoRA shape, schedule, and the cosine head's scale."""

    first_tuned_layer: int = 0
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-3
    head_learning_rate: float = 2e-3
    weight_decay: float = 0.01
    # Cosine classifier: logits = head(scale * unit embedding); the unit-norm embedding alone
    # gives logits too flat for softmax cross-entropy to train in a few epochs.
    logit_scale: float = 20.0


class CosineClassifier(torch.nn.Module):
    """What Triton runs: adapted encoder, mean-pooled and normalised, scaled linear head, softmax."""

    def __init__(self, transformer: torch.nn.Module, head: torch.nn.Linear, logit_scale: float):
        super().__init__()
        from export.encoder import MeanPooledEncoder

        self.encoder = MeanPooledEncoder(transformer)
        self.head = head
        self.logit_scale = logit_scale

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.encoder(input_ids, attention_mask) * self.logit_scale), dim=1)


# Every linear map of a BERT layer: attention projections, attention output, feed-forward.
LORA_TARGETS = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")


def lora(transformer: torch.nn.Module, first_tuned_layer: int, rank: int, alpha: int, dropout: float) -> torch.nn.Module:
    """Injects LoRA adapters into layers ``first_tuned_layer..`` of ``transformer`` in place; the
    returned peft wrapper owns the bookkeeping (state dict of the adapters, merge)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(LORA_TARGETS),
        layers_to_transform=list(range(first_tuned_layer, transformer.config.num_hidden_layers)),
    )
    return get_peft_model(transformer, config)


def shuffled_batches(
    rows: Sequence[int], prefix: Sequence[torch.Tensor], batch_size: int, generator: torch.Generator
) -> list[list[int]]:
    """Random batches of similar length: shuffle, sort within windows of 50 batches, shuffle batches.

    Padding is wasted compute; this cuts it to a few percent while keeping batches random.
    """
    order = [int(rows[i]) for i in torch.randperm(len(rows), generator=generator)]
    window = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(prefix[i]))
        batches += [chunk[s : s + batch_size] for s in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def fit_adapted(
    prefix: Sequence[torch.Tensor], rows: Sequence[int], n_classes: int, config, seed: int, loss
) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Linear]:
    """LoRA adapters on layers ``config.first_tuned_layer..`` and a linear cosine head, trained on
    ``rows`` with ``loss(logits, batch_rows)``; returns (peft wrapper, adapted transformer, head).

    ``config`` carries the LoRA shape, epochs, batch size, learning rates (adapters, head),
    weight decay and ``logit_scale`` (logits = head(scale * unit embedding): the unit-norm
    embedding alone gives logits too flat for softmax cross-entropy to train in a few epochs).
    """
    from export.encoder import load_transformer
    from export.heads.reproducibility import seed_everything

    generator = seed_everything(seed)
    transformer = load_transformer()
    peft_model = lora(transformer, config.first_tuned_layer, config.lora_rank, config.lora_alpha, config.lora_dropout)
    head = torch.nn.Linear(transformer.config.hidden_size, n_classes)
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in peft_model.parameters() if p.requires_grad], "lr": config.learning_rate},
            {"params": head.parameters(), "lr": config.head_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = -(-len(rows) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        [config.learning_rate, config.head_learning_rate],
        total_steps=config.epochs * steps_per_epoch,
        pct_start=0.06,
        anneal_strategy="linear",
    )
    for _ in range(config.epochs):
        peft_model.train()
        for batch in shuffled_batches(rows, prefix, config.batch_size, generator):
            embedding = mean_pooled(transformer, config.first_tuned_layer, prefix, batch)
            value = loss(head(embedding * config.logit_scale), batch)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            schedule.step()
    peft_model.eval()
    return peft_model, transformer, head


def predict_adapted(transformer, head, prefix: Sequence[torch.Tensor], rows: Sequence[int], config) -> np.ndarray:
    """Class probabilities ``[len(rows), n_classes]`` from cached prefix states, in ``rows`` order."""
    out = np.zeros((len(rows), head.out_features), dtype=np.float32)
    order = sorted(range(len(rows)), key=lambda k: len(prefix[rows[k]]))
    with torch.no_grad():
        for start in range(0, len(order), 64):
            ks = order[start : start + 64]
            embedding = mean_pooled(transformer, config.first_tuned_layer, prefix, [int(rows[k]) for k in ks])
            out[ks] = torch.softmax(head(embedding * config.logit_scale), dim=1).numpy()
    return out


HEAD_PREFIX = "head."


def save_adapted(peft_model, head: torch.nn.Linear, path) -> None:
    """Only what training changed: the adapters and the head (the base comes from its wheel)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
    tensors |= {HEAD_PREFIX + k: v.contiguous() for k, v in head.state_dict().items()}
    save_file(tensors, str(path))


def load_adapted(path, config, n_classes: int) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """Base MiniLM with the saved adapters merged in, and the head."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from export.encoder import load_transformer

    tensors = load_file(str(path))
    peft_model = lora(load_transformer(), config.first_tuned_layer, config.lora_rank, config.lora_alpha, config.lora_dropout)
    set_peft_model_state_dict(peft_model, {k: v for k, v in tensors.items() if not k.startswith(HEAD_PREFIX)})
    merged = peft_model.merge_and_unload()
    head = torch.nn.Linear(merged.config.hidden_size, n_classes)
    head.load_state_dict({k[len(HEAD_PREFIX) :]: v for k, v in tensors.items() if k.startswith(HEAD_PREFIX)})
    return merged, head
